"""Celery settings of the Mitrailleuse fleet, which ``mitrailleuse.pipeline.app`` loads.

Every worker, beat and Flower process loads this module; importing it starts nothing. Broker
and result backend are the same Redis: ``REDIS_URL``, or the embedded server under
``<tasks dir>/.mitrailleuse/redis/``, which ``mitrailleuse.pipeline.app`` resolves once the
configuration is loaded (set ``broker_url`` here to choose another).
Environment overrides: ``MITRAILLEUSE_VISIBILITY_TIMEOUT_S``, ``MITRAILLEUSE_CONCURRENCY``,
``MITRAILLEUSE_TASK_EVENTS``.

A deployment names its own settings module with ``MITRAILLEUSE_CELERY_CONFIG`` (a module path
such as ``mysite.celery_settings``, importable by every process of the fleet); that module
usually starts with ``from mitrailleuse.celeryconfig import *`` and changes what it must.
"""

from kombu import Queue

from mitrailleuse.config import Environment
from mitrailleuse.pipeline.queues import CONTROL_QUEUE, all_queues

_environment = Environment()
# kombu's Redis transport, with each delivery owned by the channel that received it: the
# messages of a dead worker (or of a channel dropped when Redis went away) come back to their
# queue within seconds, and a late ack on a dropped channel cannot make a worker exit
# (see the module). A deployment's own settings module must keep this line.
broker_transport = "mitrailleuse.pipeline.transport:Transport"
broker_connection_retry_on_startup = True

task_serializer = result_serializer = "json"
accept_content = ["json"]

# A message is acknowledged only after its task has run, so a worker killed mid-call leaves
# it in Redis to be delivered again; the per-item record store makes that redelivery harmless.
task_acks_late = True
task_reject_on_worker_lost = True
# One message reserved per worker slot: a killed worker strands as few messages as possible.
worker_prefetch_multiplier = 1
# A dead worker's messages come back within seconds because their channel died (see the
# transport). The visibility timeout is the last resort, for a message nobody owns: it must
# exceed any call (timeout_s) and any wait. A retry waiting for its countdown is an
# unacknowledged message too, so countdowns (backoff, Retry-After, rate-limit waits) are capped
# at half of it (pipeline.retries.countdown_s). A live worker looks for such messages every
# 10 s (kombu's default throttle would make it every 100 s).
broker_transport_options = {
    "visibility_timeout": _environment.mitrailleuse_visibility_timeout_s,
    "unacked_restore_interval": 10,
    "unacked_restore_throttle": 1,
}
result_backend_transport_options = {"retry_policy": {"timeout": 5.0}}
# Redis restarting (AOF on: it comes back with its data) must not fail a task or lose a chord
# count: result-backend writes are retried for about a minute, as are the pipeline's own Redis
# commands (run_state.redis_client); the worker reconnects to the broker by itself. Tasks running
# when the connection drops go on: their messages are redelivered if their ack is lost, and the
# per-item record store turns the redelivery into a no-op.
result_backend_always_retry = True
result_backend_max_retries = 30
result_backend_max_sleep_between_retries_ms = 2000
worker_cancel_long_running_tasks_on_connection_loss = False
# Publishing rides out a Redis restart the same way (about a minute): a retry Celery cannot
# publish is rejected without requeue (lost); a chord callback or the next feed slice would be
# too. pipeline.tasks puts a message whose follow-up still could not be published back.
task_publish_retry_policy = {
    "max_retries": 30,
    "interval_start": 0,
    "interval_step": 0.5,
    "interval_max": 2,
}
result_expires = 24 * 3600

task_queues = [Queue(name) for name in all_queues()]
task_default_queue = CONTROL_QUEUE
# Provider calls spend their time waiting on the network: threads keep many in flight on
# few cores (see the README's Performance section for the measurement).
worker_pool = "threads"
worker_concurrency = _environment.mitrailleuse_concurrency

# Task events feed Flower, which switches them on in the workers while it watches (its
# --enable-events default); unwatched, they would cost about a tenth of a worker's CPU.
# MITRAILLEUSE_TASK_EVENTS=1 keeps them on. What Flower shows of a task is its argsrepr:
# run, provider and item ids, never the request.
worker_send_task_events = _environment.mitrailleuse_task_events
task_send_sent_event = worker_send_task_events
worker_hijack_root_logger = False

# Beat polls the native batches; each batch is looked at only once its batch_check_time passed.
beat_schedule = {
    "poll-native-batches": {
        "task": "mitrailleuse.poll_native_batches",
        "schedule": _environment.mitrailleuse_batch_poll_s,
        "options": {"queue": CONTROL_QUEUE, "expires": 60},
    }
}

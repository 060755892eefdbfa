"""A worker survives Redis going away, again and again, and tasks that end across the outage.

Celery 5.7.0 with kombu 5.7.0 alone exits ("Unrecoverable error: AttributeError: 'NoneType'
object has no attribute 'hostname'") when it closes, acks or rejects on a channel whose
connection it dropped: ``pipeline.transport`` is what keeps it alive.
"""

from __future__ import annotations

import json
import signal
import time

import pytest
import redis

from mitrailleuse.pipeline.app import app
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.tasks import feed
from tests.e2e.helpers import new_task, questions, results

pytestmark = pytest.mark.e2e

RESTARTS = 10


def wait_for(condition, what: str, timeout_s: float = 30.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        assert time.monotonic() < deadline, f"{what} did not happen in {timeout_s}s"
        time.sleep(0.05)


def held(redis_server) -> int:
    """The test's feed messages a worker holds unacknowledged (earlier tests' are not counted)."""
    deliveries = redis.Redis.from_url(redis_server.url).hvals("unacked")
    return sum("no-such-run-" in json.loads(d)[0]["headers"]["argsrepr"] for d in deliveries)


def test_worker_survives_redis_restarts_and_goes_on_working(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    worker = start_worker(concurrency=4)
    for n in range(4):  # held by the worker, unacknowledged, until their countdown
        feed.apply_async((f"no-such-run-{n}", "x"), queue=CONTROL_QUEUE, countdown=3600)
    wait_for(lambda: held(redis_server) == 4, "the worker holding the 4 messages")
    for n in range(RESTARTS):
        redis_server.stop(signal.SIGKILL)
        redis_server.start()
        worker.wait_ready()  # it answers a ping again: it reconnected
        assert worker.process.poll() is None, f"the worker exited at Redis restart {n + 1}"

    m, task = new_task(tmp_path, questions(20))
    progress = m.submit(task).wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 20

    worker.stop()  # hands the held messages back to their queue: no later test gets them
    app.control.purge()


def test_tasks_that_end_during_an_outage_ack_on_a_dropped_channel(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """Calls in flight when Redis dies end while it is down; their acks reach a dropped channel.

    The worker lives, the messages come back (their channel is dead) and find their records:
    each item is sent exactly once.
    """
    sim.configure(latency_ms=3000)
    worker = start_worker(concurrency=8)
    m, task = new_task(tmp_path, questions(8), {"general": {"calls_per_message": 1}})
    run = m.submit(task)
    wait_for(lambda: sim.stats()["in_flight"] == 8, "8 calls in flight")
    redis_server.stop(signal.SIGKILL)
    wait_for(lambda: sim.stats()["in_flight"] == 0, "the calls ending")
    redis_server.start()

    progress = run.wait(timeout=120)
    assert worker.process.poll() is None, "the worker exited after the outage"
    assert progress.state == "completed" and progress.succeeded == 8, progress
    assert [r["index"] for r in results(task)] == list(range(1, 9))
    assert sim.stats()["chat_requests"] == 8, "an item was sent again"

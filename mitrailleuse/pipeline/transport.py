"""The fleet's broker transport: kombu's Redis transport, with every delivery owned by a channel.

kombu keeps a delivered, unacknowledged message in Redis (``unacked``) until it is acked, and
puts it back on its queue only once it is older than the visibility timeout (an hour here: it
must exceed any call and any retry's wait). A worker killed by the OOM killer would strand its
messages that long. Here each delivery tag names the broker channel that received it
(``<owner>|<tag>``), every worker keeps its consuming channel alive (:mod:`liveness`), and any
live worker puts the deliveries of channels nobody keeps alive back on their queues, with
kombu's own ``restore_by_tag`` (:func:`restore_orphans`): a dead worker's messages are
delivered again within about :data:`liveness.ALIVE_TTL_S` plus :data:`REDELIVERY_S`. A channel
Celery dropped when Redis went away is dead in the same way, so the messages whose acks it can
no longer send come back too; the visibility timeout is only the last resort.

A channel whose transport Celery detached (``Connection.collect`` after a lost connection) has
no server address left: kombu 5.7 then fails with ``AttributeError: 'NoneType' object has no
attribute 'hostname'`` on every late ack, reject, requeue or close that reaches it (its
``_connparams``; the same root as celery/kombu#582 and #970), and Celery takes that for an
unrecoverable error and exits. Here it is a ``ConnectionError``, which kombu and Celery log and
survive; the message stays unacknowledged and comes back as above, and the record store makes
the redelivery harmless.

Set by ``mitrailleuse.celeryconfig`` (``broker_transport``) for every process of the fleet; the
worker's part (:class:`DeliveryKeeper`) is a consumer bootstep added by
:mod:`mitrailleuse.pipeline.app`.
"""

from __future__ import annotations

import base64
import contextlib
import logging
import time
import uuid
from collections import defaultdict
from typing import Any

import orjson
import redis
from celery import bootsteps
from kombu.transport import redis as kombu_redis
from kombu.transport.virtual import Message

from mitrailleuse import keys
from mitrailleuse.credentials import key_variables_set
from mitrailleuse.pipeline import liveness
from mitrailleuse.pipeline.run_state import redis_client

log = logging.getLogger(__name__)

#: Between the owner and kombu's own tag in a delivery tag.
TAG_SEP = "|"
#: How often a worker looks for deliveries of dead channels (one worker at a time).
REDELIVERY_S = 4.0


class DetachedChannel(redis.exceptions.ConnectionError):
    """A channel of a broker connection that was closed after Redis went away."""


class OwnedMessage(Message):
    """A delivered message whose tag names the channel that received it."""

    def __init__(self, payload: dict[str, Any], channel: Any = None, **kwargs: Any) -> None:
        properties = payload["properties"]
        tag = str(properties["delivery_tag"]).rpartition(TAG_SEP)[2]
        properties["delivery_tag"] = f"{channel.owner}{TAG_SEP}{tag}"
        super().__init__(payload, channel=channel, **kwargs)


class Channel(kombu_redis.Channel):
    """kombu's Redis channel, owning its deliveries, and failing cleanly once detached."""

    Message = OwnedMessage

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        self.owner = uuid.uuid4().hex
        super().__init__(*args, **kwargs)

    def _connparams(self, asynchronous: bool = False) -> dict[str, Any]:
        if self.connection is None or self.connection.client is None:
            raise DetachedChannel("the broker connection of this channel was closed")
        return super()._connparams(asynchronous=asynchronous)


class Transport(kombu_redis.Transport):
    """kombu's Redis transport with :class:`Channel`."""

    Channel = Channel


#: The tasks whose messages name a chunk (``args`` begin ``run_id, part``).
CHUNK_TASKS = frozenset({"mitrailleuse.call", "mitrailleuse.assemble_chunk"})


def chunks_in_broker(client: redis.Redis, run_id: str, queues: tuple[str, ...]) -> set[int]:
    """The chunks of ``run_id`` that have a message in the broker.

    A message is waiting in one of ``queues``, or delivered and unacknowledged (running,
    reserved, or waiting for a retry's countdown). A chunk with none will never be finished by
    its chord; the feeder's watch sends it again (``feeder.resend_lost``).
    """
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.lrange(queue, 0, -1)
    pipe.hvals(Channel.unacked_key)
    *waiting, unacked = pipe.execute()
    needle = run_id.encode()
    payloads = [raw for batch in waiting for raw in batch if needle in raw]
    payloads += [raw for raw in unacked if needle in raw]
    chunks = set()
    for raw in payloads:
        payload = orjson.loads(raw)
        if isinstance(payload, list):  # an unacknowledged one: [payload, exchange, routing key]
            payload = payload[0]
        if payload.get("headers", {}).get("task") not in CHUNK_TASKS:
            continue
        args = orjson.loads(base64.b64decode(payload["body"]))[0]
        if args[0] == run_id:
            chunks.add(int(args[1]))
    return chunks


def restore_orphans(channel: Channel, heartbeat: liveness.Heartbeat) -> int:
    """Put the deliveries of dead channels back on their queues; returns how many.

    A delivery acked meanwhile is left alone (``restore_by_tag`` finds it gone). Tags without an
    owner (a consumer of another transport) are left to the visibility timeout.
    """
    with channel.conn_or_acquire() as client:
        tags = client.zrange(channel.unacked_index_key, 0, -1)
    by_owner: defaultdict[str, list[bytes]] = defaultdict(list)
    for tag in tags:
        owner, sep, _ = tag.decode().partition(TAG_SEP)
        if sep:
            by_owner[owner].append(tag)
    if not by_owner:
        return 0
    pipe = heartbeat.redis.pipeline(transaction=False)
    for owner in by_owner:
        pipe.exists(keys.alive(owner))
    dead = [owner for owner, alive in zip(by_owner, pipe.execute(), strict=True) if not alive]
    restored = 0
    for owner in dead:
        for tag in by_owner[owner]:
            channel.qos.restore_by_tag(tag)
            restored += 1
    if restored:
        log.warning("%d messages of %d dead channels are back on their queues", restored, len(dead))
    return restored


class DeliveryKeeper(bootsteps.StartStopStep):
    """Worker consumer step: keep this worker's channel alive; bring back dead channels' messages.

    Celery restarts consumer steps when it reconnects: the old channel is then forgotten (its
    messages come back), and the new one kept alive.
    """

    requires = ("celery.worker.consumer.tasks:Tasks",)

    def __init__(self, parent: Any, **kwargs: Any) -> None:
        super().__init__(parent, **kwargs)
        self.heartbeat: liveness.Heartbeat | None = None
        self.owner: str | None = None
        self._connection: Any = None
        self._next_look = 0.0

    def start(self, parent: Any) -> None:
        """Keep the channel the task consumer now reads from alive."""
        app = parent.app
        if self.heartbeat is None:
            self.heartbeat = liveness.heartbeat(redis_client(app.conf.broker_url))
            self._connection = app.connection_for_write()
            self.heartbeat.on_beat(self._restore)
        self.owner = parent.task_consumer.channel.owner
        self.heartbeat.keep_alive(self.owner)
        queues = [queue.name for queue in parent.task_consumer.queues]
        liveness.announce(self.heartbeat.redis, self.owner, queues, key_variables_set(queues))

    def stop(self, parent: Any) -> None:
        """The channel is being closed: its deliveries are dead from now on."""
        if self.heartbeat is not None and self.owner is not None:
            self.heartbeat.forget(self.owner)
            self.owner = None

    def shutdown(self, parent: Any) -> None:
        """The worker stops: its channel is dead, and it looks for no others."""
        self.stop(parent)
        connection, self._connection = self._connection, None
        if connection is not None:
            connection.release()

    def _restore(self) -> None:
        heartbeat = self.heartbeat
        if self._connection is None or heartbeat is None or not heartbeat.steady:
            return
        if time.monotonic() < self._next_look:
            return
        self._next_look = time.monotonic() + REDELIVERY_S
        lock = heartbeat.redis.lock(keys.redelivery_lock(), timeout=REDELIVERY_S * 4)
        if not lock.acquire(blocking=False):
            return
        try:
            restore_orphans(self._connection.default_channel, heartbeat)
        except self._connection.connection_errors as error:
            log.warning("could not look for messages of dead channels: %r", error)
            self._connection.release()  # a fresh connection next time
            self._connection = self._connection.clone()
        finally:
            with contextlib.suppress(redis.exceptions.LockError):
                lock.release()

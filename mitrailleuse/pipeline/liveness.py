"""Who in the fleet is alive: heartbeat keys with a short TTL, and leases a dead holder frees.

A claim on an item, a cost-limit reservation, an exclusive step (a native batch's
submission) and a worker's unacknowledged messages each have a holder that may die without a
word: SIGKILL, the OOM killer, a lost machine. A holder is an *owner* id whose key
``mtr:alive:<owner>`` a daemon thread of its process (:class:`Heartbeat`) refreshes every
:data:`HEARTBEAT_S`; the key expires :data:`ALIVE_TTL_S` after the process stops. What an owner
holds is free as soon as its key is gone (``held.lua``), long before the holding's own expiry
(``timeout_s`` plus a margin for a claim, the visibility timeout for a message).

Every process that takes a claim or a lease starts its heartbeat first (:func:`heartbeat`); a
worker also keeps its consuming broker channel alive (:mod:`mitrailleuse.pipeline.transport`).
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable
from types import TracebackType

import redis

from mitrailleuse import keys
from mitrailleuse.scripts import script

log = logging.getLogger(__name__)

#: How long an owner's alive key outlives its last heartbeat: how soon a dead one is known.
ALIVE_TTL_S = 10.0
#: How often a process refreshes its owners' alive keys.
HEARTBEAT_S = 2.0
#: The prefix the Lua scripts put before an owner id to find its alive key.
ALIVE_PREFIX = keys.alive("")


class Heartbeat:
    """Keeps a process's owner ids alive in Redis, from a daemon thread.

    ``owner`` is the process's own id (its claims and leases); :meth:`keep_alive` adds others
    (a worker's consuming channel). Hooks registered with :meth:`on_beat` run after each beat.
    """

    def __init__(self, client: redis.Redis) -> None:
        self.redis = client
        self.owner = uuid.uuid4().hex
        self._owners = {self.owner}
        self._hooks: list[Callable[[], None]] = []
        self._lock = threading.Lock()
        self._connected_since: float | None = None
        self._thread = threading.Thread(
            target=self._run, name="mitrailleuse-heartbeat", daemon=True
        )

    def start(self) -> Heartbeat:
        """Beat once now (so that the owner is alive before it holds anything), then go on."""
        self._beat()
        self._thread.start()
        return self

    def keep_alive(self, owner: str) -> None:
        """Keep ``owner`` alive too, from now on."""
        with self._lock:
            self._owners.add(owner)
        self._beat()

    def forget(self, owner: str) -> None:
        """Stop keeping ``owner`` alive and drop its key: it is dead from now on."""
        with self._lock:
            self._owners.discard(owner)
        with contextlib.suppress(redis.RedisError):  # else it expires on its own
            self.redis.delete(keys.alive(owner))

    def on_beat(self, hook: Callable[[], None]) -> None:
        """Run ``hook`` in the heartbeat thread after every beat that reached Redis."""
        with self._lock:
            self._hooks.append(hook)

    @property
    def steady(self) -> bool:
        """Whether this process has reached Redis for a whole TTL without a gap.

        Only then does another owner's missing key mean it is dead: after an outage every key
        may have expired, and the living need a beat to say so.
        """
        since = self._connected_since
        return since is not None and time.monotonic() - since >= ALIVE_TTL_S

    def _beat(self) -> bool:
        with self._lock:
            owners = list(self._owners)
        ttl_ms = int(ALIVE_TTL_S * 1000)
        try:
            pipe = self.redis.pipeline(transaction=False)
            for owner in owners:
                pipe.set(keys.alive(owner), os.getpid(), px=ttl_ms)
            pipe.execute()
        except redis.RedisError:
            self._connected_since = None
            return False
        if self._connected_since is None:
            self._connected_since = time.monotonic()
        return True

    def _run(self) -> None:
        while True:
            time.sleep(HEARTBEAT_S)
            if not self._beat():
                continue
            with self._lock:
                hooks = list(self._hooks)
            for hook in hooks:
                try:
                    hook()
                except Exception:  # a hook's failure must not stop the heartbeat
                    log.exception("heartbeat hook %r failed", hook)


_heartbeats: dict[tuple[int, int], Heartbeat] = {}
_heartbeats_lock = threading.Lock()


def heartbeat(client: redis.Redis) -> Heartbeat:
    """The process's heartbeat on ``client``'s Redis, started on first use (again after a fork)."""
    key = (os.getpid(), id(client))
    with _heartbeats_lock:
        beating = _heartbeats.get(key)
        if beating is None:
            beating = _heartbeats[key] = Heartbeat(client).start()
        return beating


def holder(owner: str) -> str:
    """A new holding of ``owner``: the value a claim or a lease keeps (``"<owner> <token>"``)."""
    return f"{owner} {uuid.uuid4().hex}"


class Lease:
    """An exclusive step: one live holder at a time; free as soon as its holder dies.

    ``ttl_s`` bounds how long a holder that stopped renewing keeps it while still alive; a dead
    holder's lease is free once its alive key expires (:data:`ALIVE_TTL_S`).
    """

    def __init__(self, client: redis.Redis, name: str, ttl_s: float) -> None:
        self.redis = client
        self.key = keys.lease(name)
        self.ttl_ms = int(ttl_s * 1000)
        self.holder = holder(heartbeat(client).owner)
        self._take = script(client, "pipeline/held.lua", "pipeline/take_lease.lua")
        self._end = script(client, "pipeline/end_lease.lua")

    def acquire(self) -> bool:
        """Take (or renew) the lease; False while a live holder has it."""
        return bool(self._take(keys=[self.key], args=[self.holder, self.ttl_ms, ALIVE_PREFIX]))

    def release(self) -> None:
        """End the lease, if it is still ours."""
        self._end(keys=[self.key], args=[self.holder])

    def __enter__(self) -> bool:
        return self.acquire()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.release()


def announce(client: redis.Redis, owner: str, queues: Iterable[str], keys_set: list[str]) -> None:
    """Say that ``owner`` serves ``queues``, with these key variables set (names, never values).

    Written once per channel: the announcement lives as long as ``owner``'s alive key.
    """
    value = ",".join(sorted(keys_set))
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hset(keys.serving(queue), owner, value)
    pipe.execute()


def serving(client: redis.Redis, queues: Iterable[str]) -> dict[str, list[set[str]]]:
    """The live workers of each queue, as the key variables each has; dead entries dropped."""
    queues = list(queues)
    pipe = client.pipeline(transaction=False)
    for queue in queues:
        pipe.hgetall(keys.serving(queue))
    entries = dict(zip(queues, pipe.execute(), strict=True))
    owners = sorted({owner for found in entries.values() for owner in found})
    for owner in owners:
        pipe.exists(keys.alive(owner.decode()))
    alive = {owner for owner, live in zip(owners, pipe.execute(), strict=True) if live}
    found: dict[str, list[set[str]]] = {}
    for queue, announced in entries.items():
        found[queue] = [_names(value) for owner, value in announced.items() if owner in alive]
        if dead := [o for o in announced if o not in alive]:
            pipe.hdel(keys.serving(queue), *dead)
    pipe.execute()
    return found


def _names(value: bytes) -> set[str]:
    return set(value.decode().split(",")) - {""}

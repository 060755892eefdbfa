"""A run's shared state in Redis: settings, feeding cursor, counts, chunk bitmaps, records.

Every process of the fleet reads and writes a run through :class:`RunState`: the submitter
creates it, the feeder advances its cursor, workers store records (at most once per item) and
bump the counts, the assembler drains the records of finished chunks to disk.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from functools import cache, cached_property
from pathlib import Path
from typing import Any, cast

import orjson
import redis
from redis.backoff import ExponentialBackoff
from redis.commands.core import Script
from redis.retry import Retry

from mitrailleuse import keys
from mitrailleuse.inputs import Cursor
from mitrailleuse.pipeline.liveness import ALIVE_PREFIX
from mitrailleuse.ratelimit import Claims, Lease
from mitrailleuse.records import Mode, new_spend
from mitrailleuse.scripts import script
from mitrailleuse.taskfolder import FINAL_STATES, Counts, TaskFolder, TaskState

#: Count fields of the run hash, as in ``status.json``.
COUNT_FIELDS = ("done", "succeeded", "failed", "cached")


def new_counts() -> dict[str, Any]:
    """The count fields at zero, and ``spent_usd``."""
    return {**dict.fromkeys(COUNT_FIELDS, 0), "spent_usd": 0.0}


def count_record(counts: dict[str, Any], record: dict[str, Any]) -> None:
    """Add one record to counts made by :func:`new_counts`."""
    counts["done"] += 1
    counts["succeeded" if record["status"] == "succeeded" else "failed"] += 1
    counts["cached"] += bool(record.get("cached"))
    counts["spent_usd"] += record.get("cost_usd") or 0.0


def record_counts(records: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """The count fields of some records, and what they cost (``spent_usd``)."""
    counts = new_counts()
    for record in records:
        count_record(counts, record)
    return counts


def _outcome(record: dict[str, Any]) -> str:
    """A record's count in ``store.lua``: ``s`` succeeded, ``c`` from the cache, ``f`` failed."""
    if record["status"] != "succeeded":
        return "f"
    return "c" if record.get("cached") else "s"


@cache
def _store_script(client: redis.Redis) -> Script:
    return script(client, "ratelimit/lease.lua", "pipeline/store.lua")


@dataclass(slots=True)
class HeldClaims:
    """The claim keys a call holds; ``settled`` once its records were stored with their release."""

    keys: list[str]
    settled: bool = False


@dataclass(frozen=True, slots=True)
class CallGate:
    """What a worker checks before calling the provider for a group of items."""

    recorded: set[int]
    cancelled: bool
    halted_reason: str | None


#: How long one change of ``status.json`` may hold the run's status lock.
STATUS_LOCK_S = 10.0

#: How long a worker keeps retrying Redis while it restarts, before a task gives up.
REDIS_OUTAGE_S = 60.0
#: Connections one client may open at once: one per thread talking to Redis at that moment.
#: redis-py 8 caps a pool at 100 and refuses the 101st; a worker's ``-c`` may run more threads.
MAX_CONNECTIONS = 1024


@cache
def redis_client(url: str) -> redis.Redis:
    """One thread-safe client (and connection pool) per URL and process.

    A Redis restart must not fail a task that already has its provider's answer: commands are
    retried with backoff (capped at 2 s) for about :data:`REDIS_OUTAGE_S`.
    """
    return redis.Redis.from_url(
        url,
        max_connections=MAX_CONNECTIONS,
        health_check_interval=30,
        socket_keepalive=True,
        retry=Retry(ExponentialBackoff(cap=2.0, base=0.05), int(REDIS_OUTAGE_S / 2)),
        retry_on_error=[redis.ConnectionError, redis.TimeoutError],
    )


@dataclass(frozen=True, slots=True)
class RunSettings:
    """What a run was submitted with: written once, never changed, read once per process."""

    provider: str
    task_path: Path
    mode: Mode
    #: Items in the run (after sampling).
    total: int
    #: Items a chunk holds (``<provider>.batch.batch_size``).
    chunk_size: int
    #: How many chunks may be in flight (``general.max_items_in_flight`` in chunks).
    window_chunks: int
    #: ``general.sampling``'s sample size, when sampling is on.
    limit: int | None
    #: The first native batch number of this run (they go on from the task's earlier runs).
    batch_base: int

    def fields(self) -> dict[str, Any]:
        """The settings as run hash fields."""
        return {
            **{name: getattr(self, name) for name in self.__slots__},
            "task_path": str(self.task_path),
            "limit": "" if self.limit is None else self.limit,
        }

    @classmethod
    def parse(cls, fields: dict[str, str]) -> RunSettings:
        """The settings from the run hash fields."""
        return cls(
            provider=fields["provider"],
            task_path=Path(fields["task_path"]),
            mode=cast(Mode, fields["mode"]),
            total=int(fields["total"]),
            chunk_size=int(fields["chunk_size"]),
            window_chunks=int(fields["window_chunks"]),
            limit=int(fields["limit"]) if fields["limit"] else None,
            batch_base=int(fields["batch_base"]),
        )


class RunState:
    """The Redis side of one run."""

    def __init__(self, client: redis.Redis, run_id: str) -> None:
        self.redis = client
        self.run_id = run_id
        self.key = keys.run(run_id)

    def create(self, settings: RunSettings, config_json: bytes) -> None:
        """Record a new run's settings and its config (keys only as references)."""
        fields = {**settings.fields(), "state": "queued", "created_at": time.time()}
        pipe = self.redis.pipeline()
        pipe.hset(self.key, mapping=fields)
        pipe.set(keys.run_config(self.run_id), config_json)
        pipe.execute()

    @cached_property
    def settings(self) -> RunSettings:
        """The run's settings; :class:`LookupError` when Redis no longer knows the run."""
        names = list(RunSettings.__slots__)
        values = self.redis.hmget(self.key, names)
        if values[0] is None:
            raise LookupError(f"run {self.run_id} is not in Redis")
        return RunSettings.parse(
            {name: value.decode() for name, value in zip(names, values, strict=True)}
        )

    @property
    def folder(self) -> TaskFolder:
        """The run's task folder."""
        return TaskFolder(self.settings.task_path)

    @property
    def provider(self) -> str:
        """The provider the run was submitted for."""
        return self.settings.provider

    def exists(self) -> bool:
        """Whether Redis still knows this run."""
        return bool(self.redis.exists(self.key))

    def info(self) -> dict[str, str]:
        """Every field of the run hash, decoded."""
        raw = self.redis.hgetall(self.key)
        return {k.decode(): v.decode() for k, v in raw.items()}

    def get(self, field: str) -> str | None:
        """One field of the run hash."""
        value = self.redis.hget(self.key, field)
        return value.decode() if value is not None else None

    def set(self, **fields: Any) -> None:
        """Set fields of the run hash."""
        self.redis.hset(self.key, mapping=fields)

    def enter(self, state: TaskState, **changes: Any) -> bool:
        """Move the run to a new lifecycle state: in Redis and ``status.json`` together.

        The one way a run's state changes (``running``, ``batch_submitted``, its final state).
        False, and nothing written, once the run has ended: a late writer never undoes the end.
        """
        with self._status_lock():
            if self.get("state") in FINAL_STATES:
                return False
            self.folder.update_status(state=state, **changes)
            self.set(state=state)
            return True

    def show(self, **changes: Any) -> None:
        """Change what ``status.json`` shows of the run, unless the run has ended."""
        with self._status_lock():
            if self.get("state") not in FINAL_STATES:
                self.folder.update_status(**changes)

    def show_counts(self) -> None:
        """Bring the counts in ``status.json`` up to date (read under the lock: never backwards)."""
        with self._status_lock():
            if self.get("state") not in FINAL_STATES:
                self.folder.update_status(counts=Counts(**self.counts()))

    def _status_lock(self) -> Any:
        """One writer of ``status.json`` at a time, across the fleet."""
        return self.redis.lock(keys.status_lock(self.run_id), timeout=STATUS_LOCK_S)

    def config_json(self) -> bytes:
        """The run's config, as saved at submission."""
        value = self.redis.get(keys.run_config(self.run_id))
        if value is None:
            raise LookupError(f"run {self.run_id} has no config in Redis")
        return value

    def spent_usd(self) -> float:
        """What the run's records cost so far (with those carried over from earlier runs)."""
        return float(self.get("spent_usd") or 0.0)

    def stop(self, state: str, reason: str) -> bool:
        """End dispatching like ``cancel``, to end as ``state`` (e.g. ``stopped_budget``).

        True for the first caller only: the others see the run already stopping.
        """
        if not self.redis.hsetnx(self.key, "stop_state", state):
            return False
        self.redis.hset(self.key, mapping={"stop_reason": reason, "cancelled": 1})
        return True

    def counts(self, info: dict[str, str] | None = None) -> dict[str, int]:
        """``total`` and the count fields, as integers (from ``info`` when already read)."""
        if info is None:
            values = self.redis.hmget(self.key, ["total", *COUNT_FIELDS])
            fields = ["total", *COUNT_FIELDS]
            info = {k: v.decode() for k, v in zip(fields, values, strict=True) if v}
        return {name: int(info.get(name) or 0) for name in ("total", *COUNT_FIELDS)}

    @property
    def cancelled(self) -> bool:
        """Whether dispatching has been stopped."""
        return self.redis.hget(self.key, "cancelled") == b"1"

    def cancel(self) -> None:
        """Stop dispatching: queued items are skipped, in-flight ones finish."""
        self.redis.hset(self.key, mapping={"cancelled": 1})

    def halt(self, reason: str) -> None:
        """Fail every remaining item of the run at once, with ``reason``."""
        self.redis.hsetnx(self.key, "halted", reason)

    def cursor(self) -> Cursor:
        """Where the feeder resumes reading the inputs."""
        raw = self.redis.hget(self.key, "cursor")
        return Cursor(**orjson.loads(raw)) if raw else Cursor()

    def advance(self, cursor: Cursor, next_chunk: int, pipe: Any = None) -> None:
        """Save the feeder's position after a chunk was dispatched (in ``pipe``, if given)."""
        (pipe or self.redis).hset(
            self.key, mapping={"cursor": _cursor_json(cursor), "next_part": next_chunk}
        )

    def next_batch_number(self) -> int:
        """A new native batch number, unique in the task folder across runs."""
        return self.settings.batch_base + self.redis.hincrby(self.key, "batches", 1) - 1

    def next_chunk(self) -> int:
        """The number of the next chunk to dispatch."""
        return int(self.get("next_part") or 0)

    def new_feeder(self) -> str:
        """Make a new feed chain the run's only one; older chains stop at their next slice."""
        token = uuid.uuid4().hex
        self.redis.hset(self.key, "feeder", token)
        return token

    def is_feeder(self, token: str) -> bool:
        """Whether ``token`` names the run's current feed chain."""
        return self.get("feeder") == token

    def mark_dispatched(self, chunk: int, start: Cursor) -> None:
        """Chunk ``part`` has been sent; its items begin at ``start`` (to send it again)."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.setbit(keys.chunks_dispatched(self.run_id), chunk, 1)
        pipe.hset(keys.chunk_starts(self.run_id), chunk, _cursor_json(start))
        pipe.execute()

    def chunk_start(self, chunk: int) -> Cursor:
        """Where chunk ``part``'s items begin in the inputs."""
        raw = self.redis.hget(keys.chunk_starts(self.run_id), chunk)
        return Cursor(**orjson.loads(raw)) if raw else Cursor()

    def is_dispatched(self, chunk: int) -> bool:
        """Whether chunk ``part`` was sent (by a feeder that died before saving its cursor)."""
        return bool(self.redis.getbit(keys.chunks_dispatched(self.run_id), chunk))

    def duplicate_ids(self, items: list[tuple[str, int, str]]) -> dict[int, str]:
        """Claim each ``(custom_id, ordinal, place)``; ordinals whose id an earlier item holds.

        The value maps each such ordinal to the place (``file:index``) of the first holder. A
        chunk fed twice finds its own claims, which are not duplicates.
        """
        if not items:
            return {}
        key = keys.custom_ids(self.run_id)
        pipe = self.redis.pipeline(transaction=False)
        for custom_id, ordinal, place in items:
            pipe.hsetnx(key, custom_id, f"{ordinal} {place}")
        claimed = pipe.execute()
        taken = [item for item, new in zip(items, claimed, strict=True) if not new]
        if not taken:
            return {}
        holders = self.redis.hmget(key, [custom_id for custom_id, _, _ in taken])
        duplicates = {}
        for (_, ordinal, _), holder in zip(taken, holders, strict=True):
            first, place = holder.decode().split(" ", 1)
            if int(first) != ordinal:
                duplicates[ordinal] = place
        return duplicates

    def carry(self, chunk: int, records: list[dict[str, Any]]) -> None:
        """Count a chunk's records found on disk into this run, once however often it is fed."""
        if self.redis.hsetnx(keys.chunks_carried(self.run_id), chunk, len(records)):
            self.add_counts(record_counts(records))

    def mark_done(self, chunk: int) -> bool:
        """Chunk ``part`` is on disk; False if it already was (a redelivered callback)."""
        return self.redis.setbit(keys.chunks_done(self.run_id), chunk, 1) == 0

    def chunks_in_flight(self) -> int:
        """Chunks sent whose records are not on disk yet."""
        pipe = self.redis.pipeline()
        pipe.bitcount(keys.chunks_dispatched(self.run_id))
        pipe.bitcount(keys.chunks_done(self.run_id))
        dispatched, done = pipe.execute()
        return dispatched - done

    def chunks_unfinished(self) -> list[int]:
        """Chunks sent whose records are not on disk, by number."""
        pipe = self.redis.pipeline(transaction=False)
        pipe.get(keys.chunks_dispatched(self.run_id))
        pipe.get(keys.chunks_done(self.run_id))
        dispatched, done = (value or b"" for value in pipe.execute())
        done = done.ljust(len(dispatched), b"\0")
        return [
            index * 8 + bit
            for index, (sent, landed) in enumerate(zip(dispatched, done, strict=False))
            if sent & ~landed
            for bit in range(8)
            if (sent & ~landed) & (0x80 >> bit)
        ]

    def records_in(self, chunks: list[int]) -> list[int]:
        """How many records each chunk has, in Redis and carried over from disk."""
        if not chunks:
            return []
        pipe = self.redis.pipeline(transaction=False)
        for chunk in chunks:
            pipe.hlen(keys.chunk_records(self.run_id, chunk))
        pipe.hmget(keys.chunks_carried(self.run_id), chunks)
        *held, carried = pipe.execute()
        return [count + int(c or 0) for count, c in zip(held, carried, strict=True)]

    def chunks_done(self) -> int:
        """How many chunks are on disk."""
        return self.redis.bitcount(keys.chunks_done(self.run_id))

    def before_call(self, chunk: int, ordinals: list[int]) -> CallGate:
        """In one round trip: which items already have a record, and may the run call at all.

        Every item of a chunk already on disk has its record there, not in Redis: a message
        delivered again after its chunk was written must not call.
        """
        pipe = self.redis.pipeline(transaction=False)
        pipe.hmget(keys.chunk_records(self.run_id, chunk), ordinals)
        pipe.getbit(keys.chunks_done(self.run_id), chunk)
        pipe.hmget(self.key, ["cancelled", "halted"])
        values, on_disk, (cancelled, halted) = pipe.execute()
        return CallGate(
            recorded=set(ordinals)
            if on_disk
            else {o for o, v in zip(ordinals, values, strict=True) if v is not None},
            cancelled=cancelled == b"1",
            halted_reason=halted.decode() if halted else None,
        )

    def claims(
        self, chunk: int, ordinals: list[int], holder: str, request_hashes: list[str] | None
    ) -> Claims:
        """The claims of a call on items of chunk ``part`` (and on their requests, when cached).

        Taken with the call's rate grant (``acquire.lua``), which also checks that the run is
        not cancelled and that no item has its record yet.
        """
        run_id = self.run_id
        item_keys = [keys.item_claim(run_id, ordinal) for ordinal in ordinals]
        request_keys = [
            (keys.cache_claim(digest), keys.cache_entry(digest)) for digest in request_hashes or ()
        ]
        return Claims(
            keys=[
                self.key,
                keys.chunk_records(run_id, chunk),
                keys.chunks_done(run_id),
                *item_keys,
                *(key for pair in request_keys for key in pair),
            ],
            args=[chunk, holder, ALIVE_PREFIX, *ordinals],
            held=[
                (item, *(request_keys[n][:1] if request_keys else ()))
                for n, item in enumerate(item_keys)
            ],
            holder=holder,
        )

    @contextmanager
    def holding(self, keys_held: list[str]) -> Iterator[HeldClaims]:
        """A call's claims, freed when it is over, unless its records took them with them."""
        held = HeldClaims(keys_held)
        try:
            yield held
        finally:
            if not held.settled and held.keys:
                self.redis.delete(*held.keys)

    def store_records(
        self,
        chunk: int,
        records: Iterable[tuple[int, dict[str, Any]]],
        release: HeldClaims | None = None,
        lease: Lease | None = None,
    ) -> int:
        """Store each item's record once; count only those stored first. Returns how many.

        The records, their counts, the call's rate ``lease``, its claims (``release``) and the
        progress event go in one round trip (``store.lua``), the records before the claims: a
        copy of the message then finds the records, never a free item.
        """
        lease_keys, lease_args = lease.ending() if lease is not None else ([], ["", 0, 0])
        args: list[Any] = [keys.events(self.run_id), *lease_args]
        for ordinal, record in records:
            args += [ordinal, orjson.dumps(record), _outcome(record), new_spend(record)]
        claim_keys = release.keys if release is not None else []
        stored = _store_script(self.redis)(
            keys=[keys.chunk_records(self.run_id, chunk), self.key, *lease_keys, *claim_keys],
            args=args,
        )
        if release is not None:
            release.settled = True
        if lease is not None:
            lease.ended = True
        return int(stored)

    def add_counts(self, counts: dict[str, Any]) -> None:
        """Add to the run's counts and spend, and tell listeners."""
        if not counts.get("done"):
            return
        pipe = self.redis.pipeline(transaction=False)
        for name, value in counts.items():
            if name == "spent_usd":
                if value:
                    pipe.hincrbyfloat(self.key, name, value)
            elif value:
                pipe.hincrby(self.key, name, value)
        pipe.publish(keys.events(self.run_id), b"progress")
        pipe.execute()

    def chunk_records(self, chunk: int) -> list[dict[str, Any]]:
        """The records of a chunk held in Redis, in input order."""
        raw = self.redis.hgetall(keys.chunk_records(self.run_id, chunk))
        return [orjson.loads(raw[k]) for k in sorted(raw, key=int)]

    def drop_chunk_records(self, chunk: int) -> None:
        """Forget a chunk's records once they are on disk."""
        self.redis.delete(keys.chunk_records(self.run_id, chunk))

    def retire(self) -> None:
        """Let a finished run's keys expire."""
        pipe = self.redis.pipeline()
        for key in self.redis.scan_iter(match=keys.run_keys_pattern(self.run_id), count=1000):
            pipe.expire(key, keys.FINISHED_RUN_TTL_S)
        pipe.execute()


def _cursor_json(cursor: Cursor) -> bytes:
    return orjson.dumps(
        {
            "file_index": cursor.file_index,
            "offset": cursor.offset,
            "number": cursor.number,
            "ordinal": cursor.ordinal,
        }
    )

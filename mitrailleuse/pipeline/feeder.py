"""The feeder: streams a run's inputs and dispatches them chunk by chunk, within a window.

The ``mitrailleuse.feed`` control task calls :func:`feed_slice`. A slice holds the run's feed
lock, reads items from the saved cursor, cuts them into chunks of ``batch_size`` and hands each
chunk to ``send_chunk`` (which makes it a chord), while fewer than ``window_parts`` chunks are in
flight. After ``slice_s`` it returns, and the task schedules the next slice: no worker slot is
held for the length of a run, and no process holds more than one chunk of the inputs. Once every
chunk is sent, the chain goes on every few seconds as a watch: a chunk whose records are all in
but whose chord callback was lost (Redis restarted at the wrong moment) is written by it, and a
chunk none of whose messages is left in the broker is sent again (:func:`resend_lost`).

Chunk ``k`` always holds the run's items ``k * batch_size`` to ``(k + 1) * batch_size - 1``, so
a resumed run finds its chunks' earlier records in ``outputs/parts/`` and sends only the items
that have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Hashable, Iterable
from dataclasses import dataclass, field
from enum import Enum
from itertools import islice
from pathlib import Path
from typing import Any, Protocol

import redis.exceptions

from mitrailleuse import keys
from mitrailleuse.batch.submit import MAX_REQUESTS, BatchWriter
from mitrailleuse.config import TaskConfig
from mitrailleuse.inputs import Item, iter_items
from mitrailleuse.pipeline import assembler
from mitrailleuse.pipeline.cache import cache_enabled, load_file_cache
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.pipeline.transport import chunks_in_broker
from mitrailleuse.providers import InvalidItem, Provider, provider_class
from mitrailleuse.records import ItemRef, invalid_input
from mitrailleuse.taskfolder import FINAL_STATES, TaskFolder

log = logging.getLogger(__name__)

#: How long one feed task runs before it hands over to the next one.
SLICE_S = 10.0
#: How often a feeder with a full window looks again.
POLL_S = 0.05
#: How long the feed lock outlives a slice whose worker died holding it.
LOCK_MARGIN_S = 5.0
#: How soon a feed task that found the run locked tries again.
LOCKED_RETRY_S = 2.0
#: How often a fully dispatched run is looked at for chunks whose callback was lost.
WATCH_S = 5.0


@dataclass(slots=True)
class Chunk:
    """The items of one chunk that must be sent, packed into Celery messages.

    A message holds up to ``general.calls_per_message`` provider calls (each of up to the
    provider's ``max_items_per_call`` items), made one after the other by one worker thread.
    """

    part: int
    messages: list[list[dict[str, Any]]] = field(default_factory=list)

    @property
    def size(self) -> int:
        """How many items go to the provider."""
        return sum(len(message) for message in self.messages)


class Dispatcher(Protocol):
    """How chunks leave the feeder: Celery in production (``pipeline.tasks``)."""

    def send_chunk(self, run: RunState, chunk: Chunk) -> None:
        """Send a chunk's calls to the workers (the callback alone when it has none)."""

    def send_batch(self, run: RunState, number: int) -> None:
        """Have a written native batch uploaded and created."""


def group_calls(
    provider: type[Provider], messages: list[dict[str, Any]]
) -> list[list[dict[str, Any]]]:
    """Pack item messages into calls: same group key, at most the provider's items and bytes."""
    calls: list[list[dict[str, Any]]] = []
    open_calls: dict[Hashable, tuple[list[dict[str, Any]], int]] = {}
    for message in messages:
        key = provider.group_key(message["request"])
        added = provider.payload_size(message["request"])
        call, size = open_calls.get(key, (None, 0))
        fits = (
            call is not None
            and len(call) < provider.max_items_per_call
            and (provider.max_bytes_per_call is None or size + added <= provider.max_bytes_per_call)
        )
        if not fits:
            call, size = [], 0
            calls.append(call)
        call.append(message)
        open_calls[key] = (call, size + added)
    return calls


def build_chunk(
    run: RunState,
    part: int,
    items: Iterable[Item],
    config: TaskConfig,
    already_recorded: set[str],
) -> Chunk:
    """Turn a chunk's items into call groups; invalid items get their failed record at once."""
    name = run.provider
    provider, section = provider_class(name), config.provider(name)
    messages: list[dict[str, Any]] = []
    invalid: list[tuple[int, dict[str, Any]]] = []
    duplicates = run.duplicate_ids(
        [(item.id, item.ordinal, item.place) for item in items if item.id != item.place]
    )
    for item in items:
        first = duplicates.get(item.ordinal)
        item_id = item.place if first is not None else item.id
        if item_id in already_recorded:
            continue
        ref = ItemRef(item_id, item.input_file, item.index, item.ordinal)
        if first is not None:
            reason = f"duplicate custom_id {item.id!r}: item {first} has it"
            invalid.append((item.ordinal, invalid_input(ref, name, reason)))
            continue
        if item.data is None:
            invalid.append((item.ordinal, invalid_input(ref, name, item.error or "invalid")))
            continue
        try:
            messages.append(ref.as_message(provider.build_request(item.data, section)))
        except InvalidItem as error:
            invalid.append((item.ordinal, invalid_input(ref, name, str(error))))
    if invalid:
        run.store_records(part, invalid)
    calls = group_calls(provider, messages)
    per_message = config.general.calls_per_message
    packed = [calls[n : n + per_message] for n in range(0, len(calls), per_message)]
    return Chunk(part, [[item for call in message for item in call] for message in packed])


class Slice(Enum):
    """What the feed task does after a slice."""

    DONE = "done"  # the run ended, was cancelled, or the chain was superseded
    MORE = "more"  # out of time: the next slice follows at once
    LOCKED = "locked"  # another slice holds the run (or a dead worker did): try again soon
    WATCH = "watch"  # every chunk sent: look for chunks whose callback was lost, soon again


def feed_slice(
    run: RunState, dispatcher: Dispatcher, feeder: str, slice_s: float = SLICE_S
) -> Slice:
    """Dispatch chunks for up to ``slice_s``, if ``feeder`` is still the run's feed chain.

    The lock is renewed at every chunk and expires :data:`LOCK_MARGIN_S` after its holder
    stops renewing it: a feeder killed mid-slice holds the run for seconds, not minutes.
    """
    if not run.is_feeder(feeder):
        return Slice.DONE
    lock = run.redis.lock(keys.feed_lock(run.run_id), timeout=slice_s + LOCK_MARGIN_S)
    if not lock.acquire(blocking=False):
        return Slice.LOCKED
    try:
        if run.get("exhausted") == "1":
            return _watch(run, dispatcher)
        more = _feed(run, dispatcher, lock, time.monotonic() + slice_s)
        return Slice.MORE if more else _watch(run, dispatcher)
    finally:
        try:
            lock.release()
        except redis.exceptions.LockError:
            log.warning("run %s: the feed lock expired while feeding", run.run_id)


def _watch(run: RunState, dispatcher: Dispatcher) -> Slice:
    """After the last chunk: rescue chunks whose callback or messages were lost, until the end.

    A cancelled run is watched too: its chunks must still be written for it to end. Native
    batch runs are not watched: their chunks are written when their batch is collected.
    """
    info = run.info()
    if info.get("state") in FINAL_STATES or info.get("mode") == "batch":
        return Slice.DONE
    assembler.rescue_parts(run)
    if run.get("state") in FINAL_STATES:
        return Slice.DONE
    resend_lost(run, dispatcher, info)
    return Slice.WATCH


def resend_lost(run: RunState, dispatcher: Dispatcher, info: dict[str, str]) -> list[int]:
    """Send again the chunks that have no message left in the broker; returns them.

    A message can vanish when Redis is killed as it hands it to a worker (kombu's ``BRPOP``
    took it off its queue; the reply never arrived): its chunk's chord would never end. Looked
    for only once the run stopped making progress, and a chunk is sent again only when two
    looks in a row found no message of it, so a message passing between two lists is not
    taken for lost. Sending a chunk again is harmless: its items' records and claims keep
    every item to one call.
    """
    done = info.get("done") or "0"
    if info.get("watched_done") != done:
        run.set(watched_done=done, suspects="")
        return []
    unfinished = run.parts_unfinished()
    if not unfinished:
        return []
    present = chunks_in_broker(run.redis, run.run_id, (run.provider, CONTROL_QUEUE))
    missing = [part for part in unfinished if part not in present]
    suspects = {int(part) for part in (info.get("suspects") or "").split()}
    lost = [part for part in missing if part in suspects]
    run.set(suspects=" ".join(str(part) for part in missing if part not in suspects))
    if lost:
        folder = TaskFolder(Path(info["task_path"]))
        config = folder.config()
        limit = int(info["limit"]) if info.get("limit") else None
        for part in lost:
            start = run.part_start(part)
            taken = islice(iter_items(folder.input_files(), start, limit), int(info["batch_size"]))
            items = [item for item, _ in taken]
            recorded = assembler.carry_over(folder, part, run)
            dispatcher.send_chunk(run, build_chunk(run, part, items, config, recorded))
            folder.log(f"run {run.run_id}: chunk {part} sent again, its messages were lost")
    return lost


def _feed(run: RunState, dispatcher: Dispatcher, lock: Any, deadline: float) -> bool:
    info = run.info()
    if info.get("exhausted") == "1" or run.cancelled:
        return False
    folder = TaskFolder(Path(info["task_path"]))
    config = folder.config()
    batch_size, window_parts = int(info["batch_size"]), int(info["window_parts"])
    limit = int(info["limit"]) if info.get("limit") else None
    if info.get("state") == "queued":
        _load_file_cache(run, folder, config)
        run.set(state="running")
        folder.update_status(state="running")
    writer = _batch_writer(run, folder, config, info)
    start = run.cursor()
    stream = iter_items(folder.input_files(), start, limit)
    part = run.next_part()
    while True:
        if run.cancelled:
            return False
        lock.reacquire()
        out_of_time = time.monotonic() > deadline
        if writer is None and run.parts_in_flight() >= window_parts:
            if out_of_time:
                return True
            time.sleep(POLL_S)
            continue
        if writer is not None and out_of_time:
            _send_closed(run, dispatcher, writer.close())
            return True
        taken = list(islice(stream, batch_size))
        if not taken:
            if writer is not None:
                _send_closed(run, dispatcher, writer.close())
                run.set(state="batch_submitted")
                folder.update_status(state="batch_submitted")
            run.set(exhausted=1, parts_total=part)
            assembler.finish_if_complete(run)
            return False
        resume = (taken[-1][1], part + 1)
        if writer is not None or not run.is_dispatched(part):
            items = [item for item, _ in taken]
            recorded = assembler.carry_over(folder, part, run)
            chunk = build_chunk(run, part, items, config, recorded)
            messages = [item for message in chunk.messages for item in message]
            if writer is None:
                dispatcher.send_chunk(run, chunk)
            elif not messages:
                dispatcher.send_chunk(run, Chunk(part))
                writer.skip(resume)
            else:
                _send_closed(run, dispatcher, writer.add(part, messages, resume))
            # marked after sending: a feeder killed in between sends the chunk again; its
            # items are called once all the same (the workers' claims and records)
            run.mark_dispatched(part, start)
        if writer is None:
            run.advance(*resume)
        start = resume[0]
        part += 1


def _batch_writer(
    run: RunState, folder: TaskFolder, config: TaskConfig, info: dict[str, str]
) -> BatchWriter | None:
    """A writer of native batch files when the run is in batch mode."""
    if info.get("mode") != "batch":
        return None
    name = run.provider
    section = config.provider(name)
    provider = provider_class(name)(section, None)
    batch_size = int(info["batch_size"])
    per_batch = max(1, MAX_REQUESTS // batch_size) if section.batch.combine_batches else 1
    return BatchWriter(run, folder, provider, per_batch)


def _load_file_cache(run: RunState, folder: TaskFolder, config: TaskConfig) -> None:
    """Before the first chunk: answers kept in the task's ``cache/`` go into Redis."""
    settings = config.general.cache
    provider = provider_class(run.provider)(config.provider(run.provider), None)
    if settings.file and cache_enabled(settings, provider):
        loaded = load_file_cache(run.redis, folder.cache_dir, settings.ttl_s)
        if loaded:
            folder.log(f"run {run.run_id}: {loaded} cached answers loaded from cache/")


def _send_closed(run: RunState, dispatcher: Dispatcher, number: int | None) -> None:
    if number is not None:
        dispatcher.send_batch(run, number)

"""The feeder: streams a run's inputs and dispatches them chunk by chunk, within a window.

The ``mitrailleuse.feed`` control task calls :func:`feed_slice`. A slice holds the run's feed
lock and reads items from the saved cursor, chunk by chunk (``pipeline.chunks``). Live, it hands
each chunk to ``send_chunk`` (which makes it a chord) while fewer than ``window_chunks`` are in
flight; in native batch mode it writes each into a batch file. After ``slice_s`` it returns, and
the task schedules the next slice: no worker slot is held for the length of a run, and no
process holds more than one chunk of the inputs. Once every chunk is sent, the chain goes on
every few seconds as a watch: a chunk whose records are all in but whose chord callback was lost
(Redis restarted at the wrong moment) is written by it, and a chunk none of whose messages is
left in the broker is sent again (:func:`resend_lost`).

A resumed run finds its chunks' earlier records in their part files and sends only the items
that have none.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass
from enum import Enum
from itertools import islice
from typing import Any, Protocol

import redis.exceptions

from mitrailleuse import keys
from mitrailleuse.batch.create import BatchWriter
from mitrailleuse.config import TaskConfig
from mitrailleuse.inputs import Cursor, Item, iter_items
from mitrailleuse.pipeline import assembler
from mitrailleuse.pipeline.cache import cache_enabled, load_file_cache
from mitrailleuse.pipeline.chunks import Chunk, build_chunk, carry_over, read_chunk
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.pipeline.transport import chunks_in_broker
from mitrailleuse.providers import provider_class
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


class Dispatcher(Protocol):
    """How chunks leave the feeder: Celery in production (``pipeline.tasks``)."""

    def send_chunk(self, run: RunState, chunk: Chunk) -> None:
        """Send a chunk's calls to the workers (the callback alone when it has none)."""

    def send_batch(self, run: RunState, number: int) -> None:
        """Have a written native batch uploaded and created."""


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
    if info.get("state") in FINAL_STATES or run.settings.mode == "batch":
        return Slice.DONE
    assembler.rescue_chunks(run)
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
    unfinished = run.chunks_unfinished()
    if not unfinished:
        return []
    present = chunks_in_broker(run.redis, run.run_id, (run.provider, CONTROL_QUEUE))
    missing = [number for number in unfinished if number not in present]
    suspects = {int(number) for number in (info.get("suspects") or "").split()}
    lost = [number for number in missing if number in suspects]
    run.set(suspects=" ".join(str(number) for number in missing if number not in suspects))
    if lost:
        folder, settings = run.folder, run.settings
        config = folder.config()
        for number in lost:
            taken = read_chunk(folder, run.chunk_start(number), settings.limit, settings.chunk_size)
            dispatcher.send_chunk(run, _build(run, folder, config, number, taken))
            folder.log(f"run {run.run_id}: chunk {number} sent again, its messages were lost")
    return lost


@dataclass(frozen=True, slots=True)
class _Next:
    """The next chunk of the inputs: where its items begin, and where the one after begins."""

    number: int
    start: Cursor
    items: list[tuple[Item, Cursor]]

    @property
    def resume(self) -> tuple[Cursor, int]:
        """The feeder's position once this chunk is dispatched."""
        return self.items[-1][1], self.number + 1


@dataclass(slots=True)
class _Feeding:
    """One slice's feeding of a run: the chunks from the saved cursor, until the deadline."""

    run: RunState
    dispatcher: Dispatcher
    lock: Any
    deadline: float
    folder: TaskFolder
    config: TaskConfig
    chunks_read: int = 0

    @property
    def out_of_time(self) -> bool:
        """Whether the slice has had its time."""
        return time.monotonic() > self.deadline

    def chunks(self) -> Iterator[_Next]:
        """The chunks left to dispatch, in order; the feed lock is renewed before each."""
        settings = self.run.settings
        start, number = self.run.cursor(), self.run.next_chunk()
        stream = iter_items(self.folder.input_files(), start, settings.limit)
        while True:
            self.lock.reacquire()
            taken = list(islice(stream, settings.chunk_size))
            if not taken:
                self.chunks_read = number
                return
            yield _Next(number, start, taken)
            start, number = taken[-1][1], number + 1

    def build(self, upcoming: _Next) -> Chunk:
        """The chunk's messages, without the items an earlier run recorded."""
        return _build(self.run, self.folder, self.config, upcoming.number, upcoming.items)

    def inputs_ended(self) -> None:
        """Every chunk is dispatched: the run ends when the last one lands."""
        self.run.set(exhausted=1, chunks_total=self.chunks_read)
        assembler.finish_if_complete(self.run)


def _build(
    run: RunState,
    folder: TaskFolder,
    config: TaskConfig,
    number: int,
    items: list[tuple[Item, Cursor]],
) -> Chunk:
    recorded = carry_over(folder, number, run)
    return build_chunk(run, number, [item for item, _ in items], config, recorded)


def _feed(run: RunState, dispatcher: Dispatcher, lock: Any, deadline: float) -> bool:
    """Feed the run until the deadline; True when there is more to feed."""
    if run.get("exhausted") == "1" or run.cancelled:
        return False
    folder = run.folder
    config = folder.config()
    if run.get("state") == "queued":
        _load_file_cache(run, folder, config)
        run.enter("running")
    feeding = _Feeding(run, dispatcher, lock, deadline, folder, config)
    return (_feed_batches if run.settings.mode == "batch" else _feed_live)(feeding)


def _feed_live(feeding: _Feeding) -> bool:
    """Send each chunk as a chord, while fewer than ``window_chunks`` are in flight."""
    run = feeding.run
    for upcoming in feeding.chunks():
        while run.chunks_in_flight() >= run.settings.window_chunks:
            if run.cancelled:
                return False
            if feeding.out_of_time:
                return True
            time.sleep(POLL_S)
            feeding.lock.reacquire()
        if run.cancelled:
            return False
        if not run.is_dispatched(upcoming.number):
            feeding.dispatcher.send_chunk(run, feeding.build(upcoming))
            # marked after sending: a feeder killed in between sends the chunk again; its
            # items are called once all the same (the workers' claims and records)
            run.mark_dispatched(upcoming.number, upcoming.start)
        run.advance(*upcoming.resume)
    feeding.inputs_ended()
    return False


def _feed_batches(feeding: _Feeding) -> bool:
    """Write each chunk's requests into native batch files; each closed file is submitted.

    The cursor is saved with each batch file's close (``BatchWriter``): a feeder killed with a
    file half written feeds its chunks again, into a new batch.
    """
    run, dispatcher = feeding.run, feeding.dispatcher
    writer = _batch_writer(run, feeding.folder, feeding.config)
    for upcoming in feeding.chunks():
        if run.cancelled:
            return False
        if feeding.out_of_time:
            _send_closed(run, dispatcher, writer.close())
            return True
        items = feeding.build(upcoming).items
        if items:
            _send_closed(run, dispatcher, writer.add(upcoming.number, items, upcoming.resume))
        else:
            dispatcher.send_chunk(run, Chunk(upcoming.number))
            writer.skip(upcoming.resume)
        run.mark_dispatched(upcoming.number, upcoming.start)
    _send_closed(run, dispatcher, writer.close())
    run.enter("batch_submitted")
    feeding.inputs_ended()
    return False


def _batch_writer(run: RunState, folder: TaskFolder, config: TaskConfig) -> BatchWriter:
    """The writer of the run's native batch files."""
    section = config.provider(run.provider)
    api = provider_class(run.provider)(section, None).native_batches()
    chunk_size = run.settings.chunk_size
    per_batch = max(1, api.max_requests // chunk_size) if section.batch.combine_batches else 1
    return BatchWriter(run, folder, api, per_batch)


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

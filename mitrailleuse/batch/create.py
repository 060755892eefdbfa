"""Native batches, first half: write the request files, upload them, create the batches.

In batch mode the feeder hands each chunk to a :class:`BatchWriter` instead of sending it to
the workers; a full batch file is handed to the ``create_native_batch`` control task, which
calls :func:`upload_and_create`, as beat's poll does for a creation that seems stalled. Only one
process creates a batch at a time (a lease its holder's death frees); each step is recorded
before and after it happens, and a batch found in step ``creating`` is looked up at the
provider (``NativeBatchAPI.created_for``: by its input file, its display name, or its size and
time) before one is created: neither a race nor a crash creates the same batch twice. A batch
the provider refuses for good is recorded ``refused``: the poll fails its items. The provider
is reached through its ``NativeBatchAPI`` alone.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any, BinaryIO

import orjson
import redis

from mitrailleuse.atomic import write_atomic
from mitrailleuse.batch import state as batches
from mitrailleuse.inputs import Cursor
from mitrailleuse.pipeline.liveness import Lease
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.providers import BatchFile, NativeBatch, NativeBatchAPI
from mitrailleuse.structured import Reask
from mitrailleuse.taskfolder import TaskFolder

log = logging.getLogger(__name__)

#: Where a feed goes on: the input cursor after a chunk, and the next chunk's number.
Resume = tuple[Cursor, int]
#: How long a live submitter may hold a batch's submission (an upload of 200 MB included; a
#: Gemini file of up to 2 GB on a slow link may outlast it, and be submitted by the poll too).
SUBMISSION_LEASE_S = 1800.0


class BatchWriter:
    """Writes chunks' request lines into batch files of up to ``chunks_per_batch`` chunks."""

    def __init__(
        self, run: RunState, folder: TaskFolder, api: NativeBatchAPI, chunks_per_batch: int
    ) -> None:
        self.run, self.folder, self.api = run, folder, api
        self.chunks_per_batch = chunks_per_batch
        self._open: tuple[int, BinaryIO, BinaryIO] | None = None
        self._chunks: list[int] = []
        self._requests = 0
        self._bytes = 0
        self._resume: Resume | None = None

    def add(self, chunk: int, items: list[dict[str, Any]], resume: Resume) -> int | None:
        """Add a chunk's requests; returns the number of a batch it closed, if any.

        ``resume`` is where the feed goes on after this chunk: saved only once the chunk's
        batch is closed and tracked (in the same transaction), so that a feeder killed with a
        batch file half written feeds its chunks again, into a new batch, instead of losing
        them.
        """
        api = self.api
        lines = [
            api.request_line(
                api.custom_id(self.run.run_id, item["id"], item["ordinal"]), item["request"]
            )
            for item in items
        ]
        size = sum(len(line) for line in lines)
        closed = None
        too_big = (
            self._requests + len(lines) > self.api.max_requests
            or self._bytes + size > self.api.max_bytes
        )
        if self._open is not None and (len(self._chunks) >= self.chunks_per_batch or too_big):
            closed = self.close()
        if self._open is None:
            number = self.run.next_batch_number()
            self.folder.batches_dir.mkdir(parents=True, exist_ok=True)
            self._open = (
                number,
                batches.input_path(self.folder, number).open("wb"),
                batches.items_path(self.folder, number).open("wb"),
            )
        _, requests_file, items_file = self._open
        requests_file.writelines(lines)
        items_file.writelines(
            orjson.dumps([item["id"], item["input_file"], item["index"], item["ordinal"]]) + b"\n"
            for item in items
        )
        self._chunks.append(chunk)
        self._requests += len(lines)
        self._bytes += size
        self._resume = resume
        return closed

    def skip(self, resume: Resume) -> None:
        """A chunk with nothing to send: the feed goes on after it once the open batch closes."""
        if self._open is None:
            self.run.advance(*resume)
        else:
            self._resume = resume

    def close(self) -> int | None:
        """Close the open batch file and record it as written; returns its number.

        Tracking the batch and saving the feed's position are one transaction: no chunk is
        left out of every batch, nor put into two.
        """
        if self._open is None:
            return None
        number, requests_file, items_file = self._open
        requests_file.close()
        items_file.close()
        state = batches.BatchState(
            run_id=self.run.run_id, number=number, items=self._requests, chunks=self._chunks
        )
        batches.save(self.folder, state)
        pipe = self.run.redis.pipeline(transaction=True)
        batches.track(pipe, self.folder, number)
        if self._resume is not None:
            self.run.advance(*self._resume, pipe=pipe)
        pipe.execute()
        self._open, self._chunks, self._requests, self._bytes = None, [], 0, 0
        self._resume = None
        return number


def write_retry_batch(
    run: RunState,
    folder: TaskFolder,
    of: batches.BatchState,
    item_ids: set[str],
    chunks: list[int],
    api: NativeBatchAPI,
    reasks: Mapping[str, Reask] | None = None,
) -> int:
    """A new batch of only ``item_ids`` of batch ``of``: their lines copied as they were.

    An item of ``reasks`` is asked again: its line's conversation told what was wrong, its
    items line carrying what its earlier answers cost; any other was left out of ``of``'s
    results, and its items line says it was sent once more.
    """
    reasks = reasks or {}
    number = run.next_batch_number()
    count = 0
    with (
        batches.input_path(folder, of.number).open("rb") as source,
        batches.items_path(folder, of.number).open("rb") as source_items,
        batches.input_path(folder, number).open("wb") as target,
        batches.items_path(folder, number).open("wb") as target_items,
    ):
        for line, item_line in zip(source, source_items, strict=True):
            item = orjson.loads(item_line)
            if item[0] not in item_ids:
                continue
            carried = item[4] if len(item) > 4 else {}
            reask = reasks.get(item[0])
            if reask is None:  # left out of the batch's results: sent once more
                carried = {**carried, "resent": True}
            else:
                line = api.reasked_line(line, reask.messages)
                carried = {**carried, "earlier": reask.earlier}
            target.write(line)
            target_items.write(orjson.dumps([*item[:4], carried]) + b"\n")
            count += 1
    state = batches.BatchState(
        run_id=run.run_id, number=number, items=count, chunks=chunks, retry_of=of.number
    )
    batches.save(folder, state)
    batches.track(run.redis, folder, number)
    return number


def upload_and_create(
    store: redis.Redis,
    folder: TaskFolder,
    number: int,
    api: NativeBatchAPI,
    completion_window: str,
    check_s: float,
) -> bool:
    """Upload a batch's file and create the batch, resuming from whichever step was recorded.

    Returns False when another live process is submitting it (it goes on; the poll looks at
    the batch again later).
    """
    lease = Lease(store, f"native-batch:{folder.path}|{number}", SUBMISSION_LEASE_S)
    with lease as held:
        if held:
            _upload_and_create(folder, number, api, completion_window, check_s)
        return held


def _upload_and_create(
    folder: TaskFolder, number: int, api: NativeBatchAPI, completion_window: str, check_s: float
) -> None:
    state = batches.load(folder, number)  # read under the lease: the step another left
    try:
        _submit(folder, state, api, completion_window, check_s)
    except Exception as error:
        refusal = api.refusal(error)
        if refusal is None:
            raise
        log.error("%s of %s refused: %s", state.name, folder.path, refusal.message)
        state.step, state.status, state.message = "refused", "failed", refusal.message
        state.next_check_at = 0.0  # the next poll fails its items
        batches.save(folder, state)


def _submit(
    folder: TaskFolder,
    state: batches.BatchState,
    api: NativeBatchAPI,
    completion_window: str,
    check_s: float,
) -> None:
    if state.step in ("written", "uploading"):
        state.step = "uploading"
        batches.save(folder, state)
        state.file_id = api.upload(state.request_file(folder))
        state.step = "uploaded"
        batches.save(folder, state)
    if state.step in ("uploaded", "creating"):
        request_file = state.request_file(folder)
        found = None
        if state.step == "creating":
            found = _created_before(folder, api, request_file, state.creating_since or 0.0)
        state.step = "creating"
        state.creating_since = state.creating_since or time.time()
        batches.save(folder, state)
        created = found or api.create(request_file, completion_window)
        state.batch_id, state.status = created.batch_id, created.status
        state.raw_status = created.raw_status
        state.step = "created"
        state.next_check_at = time.time() + check_s
        batches.save(folder, state)


def _created_before(
    folder: TaskFolder, api: NativeBatchAPI, batch: BatchFile, since: float
) -> NativeBatch | None:
    """The provider's batch for ``batch``, if a crash hid its creation from us."""
    recorded = {state.batch_id for state in batches.all_states(folder) if state.batch_id}
    for found in api.created_for(batch, since):
        if found.batch_id not in recorded:
            log.info("%s was created (%s) before a restart", batch.display_name, found.batch_id)
            return found
    return None


def downloaded(api: NativeBatchAPI, file_id: str | None, path: Path) -> Path | None:
    """Download a provider file once (kept in ``outputs/batches/``)."""
    if file_id is None:
        return None
    if not path.exists():
        write_atomic(path, api.download(file_id))
    return path

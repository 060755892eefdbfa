"""Native batches, second half: poll them from beat, collect their files into records.

Beat runs the ``poll_native_batches`` task every few seconds; :func:`poll_all` (under a lock,
so two polls never overlap) looks at each tracked batch whose ``batch_check_time`` has passed,
re-drives a submission a crash interrupted, follows the provider's status, and collects a batch
that ended: output and error files are downloaded into ``outputs/batches/``, each line mapped
back to its item by ``custom_id``, and items missing from both files (or from an expired or
failed batch) are sent once more in a new batch, then fail with a clear error.
"""

from __future__ import annotations

import logging
import time
from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import orjson
import redis

from mitrailleuse import keys
from mitrailleuse.batch import state as batches
from mitrailleuse.batch.create import downloaded, upload_and_create, write_retry_batch
from mitrailleuse.cost.pricing import cost_usd
from mitrailleuse.pipeline import assembler
from mitrailleuse.pipeline.caller import RunContext, context_for
from mitrailleuse.pipeline.chunks import chunk_of
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.providers import Answer, ProviderError
from mitrailleuse.records import ItemRef, answered, failed, read_records
from mitrailleuse.structured import (
    Reask,
    earlier_after,
    paid_before,
    reask_messages,
    reasks_of,
    structured_record,
)
from mitrailleuse.taskfolder import TaskFolder

log = logging.getLogger(__name__)

#: A submission still not ``created`` this long after its last step is re-driven by the poll.
STALE_SUBMISSION_S = 60.0


def poll_all(client: redis.Redis) -> int:
    """Poll every due batch once; returns how many were looked at."""
    lock = client.lock(keys.poll_lock(), timeout=600)
    if not lock.acquire(blocking=False):
        return 0
    try:
        looked = 0
        for folder, number in batches.tracked(client):
            try:
                looked += poll_one(client, folder, number)
            except Exception:  # one broken batch must not stop the others' polling
                log.exception("polling batch %s of %s failed; trying again later", number, folder)
        return looked
    finally:
        lock.release()


def poll_one(client: redis.Redis, folder: TaskFolder, number: int) -> int:
    """Poll one batch if its check time has come."""
    if not batches.state_path(folder, number).exists():
        batches.untrack(client, folder, number)
        return 0
    state = batches.load(folder, number)
    if not batches.due(state):
        return 0
    run = RunState(client, state.run_id)
    context = context_for(run)
    section = context.config.provider(run.provider)
    api = context.provider.native_batches()
    if state.step == "refused":
        refuse(run, folder, state, context.provider)
        return 1
    if state.step != "created":
        age = time.time() - batches.state_path(folder, number).stat().st_mtime
        if state.step == "written" or age > STALE_SUBMISSION_S:
            upload_and_create(
                client,
                folder,
                number,
                api,
                section.batch.completion_window,
                section.batch.batch_check_time,
            )
        return 1
    batch = api.retrieve(state.batch_id or "")
    state.status, state.raw_status = batch.status, batch.raw_status
    state.request_counts = batch.request_counts
    state.output_file_id, state.error_file_id = batch.output_file_id, batch.error_file_id
    state.next_check_at = time.time() + section.batch.batch_check_time
    batches.save(folder, state)
    if batch.ended:
        collect(run, folder, state, context)
    return 1


def collect(
    run: RunState, folder: TaskFolder, state: batches.BatchState, context: RunContext
) -> None:
    """Turn an ended batch's files into one record per item.

    An item missing from the results is sent once more, and an answer that does not match the
    response schema asked again (``structured.max_reasks``), in a new batch: written once,
    however often a crash makes the poll collect this batch again, and its re-asked answers'
    cost counted once.
    """
    provider = context.provider
    refs, carried = _item_refs(folder, state)
    results = _Results(state, refs, carried, context, may_reask=not run.cancelled)
    results.read(folder)
    records, again = results.records, set(results.reasks)
    missing = {item_id for item_id in refs if item_id not in records and item_id not in again}
    if missing and not run.cancelled:
        resend = {item_id for item_id in missing if not carried[item_id].resent}
        again |= resend
        records.update(_missing_after_resend(state, provider, missing - resend, refs, carried))
    resent = {chunk_of(refs[i].ordinal, run.settings.chunk_size) for i in again}
    if again and not any(s.retry_of == state.number for s in batches.all_states(folder)):
        api = provider.native_batches()
        write_retry_batch(run, folder, state, again, sorted(resent), api, results.reasks)
    context.cost_limit.spend_once(results.reasked_usd, f"reasked:{state.number}")
    _store(run, folder, state, refs, records, resent)


def refuse(run: RunState, folder: TaskFolder, state: batches.BatchState, provider: Any) -> None:
    """Fail each item of a batch the provider refused for good (a bad request, a bad key).

    At once, with the refusal: not a batch submitted again forever.
    """
    refs, carried = _item_refs(folder, state)
    error = {"type": "batch_refused", "message": state.message, "status_code": None}
    records = {
        item_id: carried[item_id].failed_record(ref, provider, error)
        for item_id, ref in refs.items()
    }
    _store(run, folder, state, refs, records, set())


def _store(
    run: RunState,
    folder: TaskFolder,
    state: batches.BatchState,
    refs: dict[str, ItemRef],
    records: dict[str, dict[str, Any]],
    resent: set[int],
) -> None:
    """Store a batch's records by chunk, write its chunks, take it off beat's list.

    A chunk with items resent in a new batch is not final yet.
    """
    by_chunk: dict[int, list[tuple[int, dict[str, Any]]]] = defaultdict(list)
    for item_id, record in records.items():
        ordinal = refs[item_id].ordinal
        by_chunk[chunk_of(ordinal, run.settings.chunk_size)].append((ordinal, record))
    for chunk in sorted(set(state.chunks) | set(by_chunk)):
        run.store_records(chunk, by_chunk.get(chunk, []))
        assembler.write_chunk(run, chunk, final=chunk not in resent)
    state.step = "collected"
    batches.save(folder, state)
    batches.untrack(run.redis, folder, state.number)
    assembler.finish_if_complete(run)


@dataclass(frozen=True, slots=True)
class _Carried:
    """What an item brings into a batch from earlier ones (its items line's fifth field)."""

    #: Its answers asked again so far: what they cost, their usage.
    earlier: dict[str, Any] | None = None
    #: Sent once more already, after a batch left it out: left out again, it fails.
    resent: bool = False

    @property
    def attempts(self) -> int:
        """The calls made for the item, this batch's included."""
        return 1 + reasks_of({"earlier": self.earlier}) + self.resent

    def failed_record(self, ref: ItemRef, provider: Any, error: dict[str, Any]) -> dict[str, Any]:
        """A failed record, keeping what earlier answers cost."""
        record = failed(ref, provider.name, provider.model, error, self.attempts, mode="batch")
        if self.earlier:
            record.update(paid_before(self.earlier))
        return record


def _item_refs(
    folder: TaskFolder, state: batches.BatchState
) -> tuple[dict[str, ItemRef], dict[str, _Carried]]:
    """The items of a batch by id, from its items file (one line per request line).

    And what each carries from earlier batches; a four-field line of a re-sent batch (written
    before the fifth field existed) was re-sent.
    """
    refs: dict[str, ItemRef] = {}
    carried: dict[str, _Carried] = {}
    with batches.items_path(folder, state.number).open("rb") as handle:
        for line in handle:
            item_id, input_file, index, ordinal, *extra = orjson.loads(line)
            refs[item_id] = ItemRef(item_id, input_file, index, ordinal)
            given = extra[0] if extra else {"resent": state.retry_of is not None}
            carried[item_id] = _Carried(given.get("earlier"), given.get("resent", False))
    return refs, carried


class _Results:
    """A batch's output and error files read into records, and the answers to ask again."""

    def __init__(
        self,
        state: batches.BatchState,
        refs: dict[str, ItemRef],
        carried: dict[str, _Carried],
        context: RunContext,
        may_reask: bool,
    ) -> None:
        self.state, self.refs, self.carried = state, refs, carried
        self.provider, self.price = context.provider, context.price
        self.may_reask = may_reask
        self.records: dict[str, dict[str, Any]] = {}
        self.reasks: dict[str, Reask] = {}
        #: What the answers asked again cost (no record carries it yet).
        self.reasked_usd = 0.0

    def read(self, folder: TaskFolder) -> None:
        """A record (or a re-ask) for each item the files answer (the first answer wins)."""
        state = self.state
        api = self.provider.native_batches()
        refs = self.refs.values()
        by_custom_id = {api.custom_id(state.run_id, r.id, r.ordinal): r for r in refs}
        for kind, file_id in (("output", state.output_file_id), ("errors", state.error_file_id)):
            path = downloaded(api, file_id, folder.batches_dir / f"{state.name}-{kind}.jsonl")
            if path is None:
                continue
            for entry in read_records(path):
                result = api.result(entry)
                ref = by_custom_id.get(result.custom_id or "")
                taken = ref is None or ref.id in self.records or ref.id in self.reasks
                if not taken and result.outcome is not None:
                    self._take(ref, result.outcome)

    def _take(self, ref: ItemRef, outcome: Answer | ProviderError) -> None:
        provider, carried = self.provider, self.carried[ref.id]
        if isinstance(outcome, ProviderError):
            self.records[ref.id] = carried.failed_record(ref, provider, outcome.as_record_error())
            return
        name, model, attempts = provider.name, provider.model, carried.attempts
        cost = cost_usd(self.price, outcome.usage, batch=True)
        structured = provider.structured
        if structured is None:
            self.records[ref.id] = answered(ref, name, model, outcome, attempts, 0, "batch", cost)
            return
        judgement = structured.judge(outcome)
        earlier = carried.earlier
        item = {"earlier": earlier}
        if (
            judgement.problem is not None
            and self.may_reask
            and structured.may_reask(item, judgement)
        ):
            messages = reask_messages(outcome.output, judgement.problem)
            self.reasks[ref.id] = Reask(messages, earlier_after(earlier, outcome, cost))
            self.reasked_usd += cost or 0.0
            return
        self.records[ref.id] = structured_record(
            ref, earlier, name, model, outcome, judgement, attempts, 0, "batch", cost
        )


def _missing_after_resend(
    state: batches.BatchState,
    provider: Any,
    missing: set[str],
    refs: dict[str, ItemRef],
    carried: dict[str, _Carried],
) -> dict[str, dict[str, Any]]:
    """Failed records for the items a re-sent batch still did not answer."""
    error = {
        "type": f"batch_{state.status}" if state.status != "completed" else "batch_missing",
        "message": f"not in the results of batch {state.batch_id} ({state.raw_status}), "
        f"after one re-submission",
        "status_code": None,
    }
    return {
        item_id: carried[item_id].failed_record(refs[item_id], provider, error)
        for item_id in missing
    }


def cancel_all(run: RunState, folder: TaskFolder) -> int:
    """Ask the provider to cancel the run's batches that have not ended; returns how many."""
    api = context_for(run).provider.native_batches()
    cancelled = 0
    for state in batches.all_states(folder):
        if state.run_id != run.run_id or not state.batch_id or state.ended:
            continue
        if state.step in ("collected", "refused"):
            continue
        try:
            api.cancel(state.batch_id)
        except Exception:  # one batch the provider will not cancel must not keep the others
            log.exception("cancelling batch %s (%s) failed", state.number, state.batch_id)
            continue
        state.next_check_at = 0.0
        batches.save(folder, state)
        cancelled += 1
    return cancelled

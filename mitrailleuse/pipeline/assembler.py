"""Writes records to the task folder: one durable part file per chunk, then the run's outputs.

The chord callback of each chunk calls :func:`write_chunk`; whoever sees the last chunk land (the
callback, the feeder or ``cancel``) calls :func:`finish_if_complete`, which assembles
``outputs/results.jsonl`` (input order, one record per item), ``errors.jsonl``, ``summary.json``
and the final ``status.json``. Every write is atomic and every step may run twice.
"""

from __future__ import annotations

import statistics
from contextlib import ExitStack
from typing import Any

import orjson

from mitrailleuse import keys
from mitrailleuse.atomic import atomic_file, write_atomic, write_json
from mitrailleuse.hints import hint
from mitrailleuse.pipeline.cache import save_new_answers
from mitrailleuse.pipeline.chunks import items_in_chunk, part_files, part_path
from mitrailleuse.pipeline.run_state import COUNT_FIELDS, RunState, count_record, new_counts
from mitrailleuse.ratelimit import task_limiter
from mitrailleuse.records import read_records
from mitrailleuse.taskfolder import Counts, TaskFolder, now


def write_chunk(run: RunState, chunk: int, final: bool = True) -> None:
    """Move chunk ``chunk``'s records from Redis to its part file, merged with earlier ones.

    ``final`` marks the chunk done; a native batch whose missing items were sent again writes
    what it has without it, and the re-sent batch finishes the chunk.
    """
    folder = run.folder
    path = part_path(folder, chunk)
    merged = {record["id"]: record for record in run.chunk_records(chunk)}
    if path.exists():
        merged.update((record["id"], record) for record in read_records(path))
    ordered = sorted(merged.values(), key=lambda r: (r["input_file"], r["index"]))
    path.parent.mkdir(parents=True, exist_ok=True)
    write_atomic(path, b"".join(orjson.dumps(record) + b"\n" for record in ordered))
    if final:
        run.mark_done(chunk)  # before the records go: a late message then sees the chunk done
    run.drop_chunk_records(chunk)
    save_new_answers(run.redis, run.run_id, folder.cache_dir)
    if not final:
        return
    run.redis.publish(keys.events(run.run_id), f"{keys.CHUNK_WRITTEN}{chunk}")
    run.show_counts()


def finish_if_complete(run: RunState) -> bool:
    """Assemble the run if every chunk is on disk (or it was cancelled and nothing is in flight)."""
    info = run.info()
    all_chunks = info.get("exhausted") == "1" and run.chunks_done() >= int(info["chunks_total"])
    cancelled = info.get("cancelled") == "1"
    if not (all_chunks or (cancelled and run.chunks_in_flight() <= 0)):
        return False
    if not run.redis.set(keys.finish_lock(run.run_id), 1, nx=True):
        return False
    counts = run.counts()  # read again: records may have landed since ``info``
    complete = all_chunks and counts["done"] >= counts["total"]
    state = "completed" if complete or not cancelled else info.get("stop_state", "cancelled")
    assemble(run, run.folder, state, info.get("stop_reason"))
    return True


def rescue_chunks(run: RunState) -> int:
    """Write the chunks whose records are all in but whose chord callback never came.

    A callback can be lost when Redis restarts at the wrong moment; the feeder looks for such
    chunks every few seconds until the run ends. Writing a chunk twice is harmless.
    """
    settings = run.settings
    chunks = run.chunks_unfinished()
    rescued = 0
    for chunk, held in zip(chunks, run.records_in(chunks), strict=True):
        if held >= items_in_chunk(chunk, settings.chunk_size, settings.total):
            write_chunk(run, chunk)
            rescued += 1
    if rescued:
        finish_if_complete(run)
    return rescued


def fail_run(run: RunState, message: str) -> None:
    """End a run that cannot go on (its inputs or config became unusable), saying why."""
    run.cancel()
    run.enter("failed", message=message, finished_at=now())
    run.folder.log(f"run {run.run_id} failed: {message}")
    run.redis.publish(keys.events(run.run_id), b"finished")


def assemble(run: RunState, folder: TaskFolder, state: str, reason: str | None = None) -> None:
    """Concatenate the part files into the run's outputs, in input order."""
    save_new_answers(run.redis, run.run_id, folder.cache_dir)
    status = folder.status()
    tally = _concatenate(folder, status.provider)
    finished = now()
    counts = Counts(total=status.counts.total, **{f: tally.counts[f] for f in COUNT_FIELDS})
    started = status.started_at or status.created_at
    duration_s = max((finished - started).total_seconds(), 1e-9)
    summary = {
        "run_id": run.run_id,
        "state": state,
        "provider": status.provider,
        "mode": status.mode,
        "mode_reason": status.mode_reason,
        "counts": counts.model_dump(),
        "missing": max(counts.total - counts.done, 0),
        "started_at": started.isoformat(),
        "finished_at": finished.isoformat(),
        "duration_s": round(duration_s, 3),
        "items_per_s": round(counts.done / duration_s, 2),
    }
    if status.mode != "batch":
        summary["rate_limit"] = _limits_in_force(run, folder)
    write_json(folder.summary_path, {**summary, **tally.totals()})
    run.enter(state, counts=counts, finished_at=finished, message=reason)
    folder.log(
        f"run {run.run_id} {state}: {counts.succeeded} succeeded, {counts.failed} failed,"
        f" {counts.total - counts.done} not done, ${tally.cost_usd:.6f} in {duration_s:.1f}s"
        + (f" ({reason})" if reason else "")
    )
    run.redis.publish(keys.events(run.run_id), b"finished")
    run.retire()


def _limits_in_force(run: RunState, folder: TaskFolder) -> dict[str, Any]:
    """The budgets the run ended under, and which of them the provider announced."""
    limits = task_limiter(run.redis, folder).limits
    return {
        "requests_per_minute": limits.requests_per_minute,
        "tokens_per_minute": limits.tokens_per_minute,
        "max_in_flight": limits.max_in_flight,
        "announced_by_provider": sorted(limits.announced),
    }


def _concatenate(folder: TaskFolder, provider: str) -> _Tally:
    """Write ``results.jsonl`` and ``errors.jsonl`` from the part files; what they hold."""
    folder.outputs_dir.mkdir(exist_ok=True)
    tally = _Tally(provider)
    with ExitStack() as stack:
        results = stack.enter_context(atomic_file(folder.results_path, buffering=1 << 20))
        errors = stack.enter_context(atomic_file(folder.errors_path, buffering=1 << 20))
        for _, path in part_files(folder):
            with path.open("rb") as handle:
                for line in handle:
                    if not line.strip():
                        continue
                    record = orjson.loads(line)
                    tally.add(record)
                    results.write(line)
                    if record["status"] != "succeeded":
                        errors.write(line)
    return tally


class _Tally:
    """Counts, tokens, cost and latency of the records streamed through the assembler."""

    def __init__(self, provider: str) -> None:
        self.provider = provider
        self.counts = new_counts()
        #: error type -> how many failed records have it, the first one's id and message.
        self.failures: dict[str, dict[str, Any]] = {}
        self.tokens = dict.fromkeys(("prompt_tokens", "completion_tokens", "total_tokens"), 0)
        self.attempts = 0
        self.latencies: list[int] = []

    @property
    def cost_usd(self) -> float:
        """What the records cost."""
        return self.counts["spent_usd"]

    def add(self, record: dict[str, Any]) -> None:
        count_record(self.counts, record)
        for name in self.tokens:
            self.tokens[name] += (record.get("usage") or {}).get(name, 0)
        self.attempts += record.get("attempts") or 0
        if record.get("latency_ms") is not None:
            self.latencies.append(record["latency_ms"])
        if record["status"] != "succeeded":
            self._add_failure(record.get("error") or {}, record["id"])

    def _add_failure(self, error: dict[str, Any], item_id: str) -> None:
        kind = error.get("type") or "unknown"
        if kind in self.failures:
            self.failures[kind]["count"] += 1
            return
        self.failures[kind] = {
            "count": 1,
            "first_id": item_id,
            "first_message": error.get("message"),
            "hint": hint(kind, self.provider),
        }

    def totals(self) -> dict[str, Any]:
        latency: dict[str, float] = {}
        if len(self.latencies) >= 2:
            cuts = statistics.quantiles(self.latencies, n=100)
            latency = {"p50": cuts[49], "p95": cuts[94], "max": max(self.latencies)}
        return {
            "tokens": self.tokens,
            "cost_usd": round(self.cost_usd, 8),
            "attempts": self.attempts,
            "latency_ms": latency,
            "failures": dict(sorted(self.failures.items(), key=lambda kv: -kv[1]["count"])),
        }

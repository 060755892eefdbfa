"""Starts, resumes and cancels runs: the submitting side of the pipeline.

The Python API and the CLI call :func:`submit` and :func:`cancel`; both only write Redis and
``status.json`` and send one ``feed`` message: the fleet does the rest.

A task that already ran is resumed by a new run over the same folder: the feeder skips the
items whose records are on disk. A run still going in Redis is not doubled: ``submit`` kicks its
feeder again instead.
"""

from __future__ import annotations

import logging
import math
import time
import uuid

import orjson
import redis

from mitrailleuse.batch.state import all_states as batch_states
from mitrailleuse.config import TaskConfig
from mitrailleuse.cost.pricing import price_of
from mitrailleuse.errors import ConfigError, InputError
from mitrailleuse.inputs import count_items
from mitrailleuse.modes import resolve_mode
from mitrailleuse.pipeline import assembler
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.run_state import RunSettings, RunState
from mitrailleuse.providers import provider_class
from mitrailleuse.taskfolder import FINAL_STATES, Counts, TaskFolder, now

log = logging.getLogger(__name__)

#: How long ``submit`` waits for a cancelled run's in-flight items before resuming.
DRAIN_TIMEOUT_S = 120.0


def current_run(folder: TaskFolder, client: redis.Redis) -> RunState | None:
    """The task's latest run, if Redis still knows it."""
    run_id = folder.status().run_id
    if not run_id:
        return None
    run = RunState(client, run_id)
    return run if run.exists() else None


def submit(folder: TaskFolder, client: redis.Redis) -> RunState:
    """Send the task to the fleet; resume it if an earlier run left items without a record."""
    from mitrailleuse.pipeline.tasks import start_feeding

    previous = current_run(folder, client)
    if previous is not None and previous.get("state") not in FINAL_STATES:
        if not previous.cancelled:
            start_feeding(previous)
            folder.log(f"run {previous.run_id}: feeding started again")
            return previous
        _drain(previous)
    config = folder.config()
    settings, why = _settings(folder, config)
    run = RunState(client, uuid.uuid4().hex)
    run.create(settings, orjson.dumps(config.model_dump(mode="json")))
    run.show(
        state="queued",
        run_id=run.run_id,
        mode=settings.mode,
        mode_reason=why,
        counts=Counts(total=settings.total),
        started_at=now(),
        finished_at=None,
        message=None,
    )
    start_feeding(run)
    folder.log(
        f"run {run.run_id} submitted: {settings.total} items, {settings.mode} mode"
        f" ({why}), {settings.provider}"
    )
    return run


def _settings(folder: TaskFolder, config: TaskConfig) -> tuple[RunSettings, str]:
    """A new run's settings and why it goes in its mode; refused (one line) before any call."""
    provider = folder.provider
    section = config.provider(provider)
    sampling = config.general.sampling
    limit = sampling.sample_size if sampling.enable_sampling else None
    total = count_items(folder.input_files(), limit)
    if total == 0:
        raise InputError(f"{folder.inputs_dir}: no items to send")
    chunk_size = section.batch.batch_size
    mode, why = resolve_mode(provider, section)
    _check_priced(config, provider)
    if mode == "batch" and config.general.cost_limit_usd is not None:
        warning = (
            "general.cost_limit_usd is not enforced for native batches: their cost is known "
            "when they end (records carry it, at the batch price)"
        )
        log.warning(warning)
        folder.log(warning)
    settings = RunSettings(
        provider=provider,
        task_path=folder.path.resolve(),
        mode=mode,
        total=total,
        chunk_size=chunk_size,
        window_chunks=max(1, math.ceil(config.general.max_items_in_flight / chunk_size)),
        limit=limit,
        batch_base=_next_batch_number(folder),
    )
    return settings, why


def cancel(folder: TaskFolder, client: redis.Redis) -> RunState | None:
    """Stop dispatching the task's run: no new provider call starts; in-flight ones finish."""
    run = current_run(folder, client)
    if run is None or run.get("state") in FINAL_STATES:
        return run
    run.cancel()
    run.show(state="cancelled", counts=Counts(**run.counts()))
    folder.log(f"run {run.run_id} cancelled: no new call starts; in-flight calls finish")
    if run.settings.mode == "batch":
        from mitrailleuse.pipeline.tasks import cancel_native_batches

        cancel_native_batches.apply_async((run.run_id,), queue=CONTROL_QUEUE)
    assembler.finish_if_complete(run)
    return run


def _check_priced(config: TaskConfig, provider: str) -> None:
    """A cost limit needs the model's price: refuse the run before anything is sent."""
    if config.general.cost_limit_usd is None:
        return
    model = provider_class(provider).model_name(config.provider(provider))
    if price_of(provider, model, config.general.prices) is None:
        raise ConfigError(
            f"general.cost_limit_usd: no price for {provider}/{model}; add it under general.prices"
        )


def _next_batch_number(folder: TaskFolder) -> int:
    """Native batch numbers go on from the task's earlier runs, so no file is overwritten."""
    numbers = [state.number for state in batch_states(folder)]
    return max(numbers, default=-1) + 1


def _drain(run: RunState) -> None:
    """Wait until a cancelled run has no chunk in flight, so its items are not sent twice."""
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    while run.chunks_in_flight() > 0 and time.monotonic() < deadline:
        time.sleep(0.2)

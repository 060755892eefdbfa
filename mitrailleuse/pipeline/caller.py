"""One provider call for a group of items, turned into records: the body of the worker task.

:func:`call_group` is called by the ``mitrailleuse.call`` Celery task with the items of one
message. It skips items that already have a record (a redelivered message), calls the provider
once, and stores one record per item, or asks the task to retry later. It never raises for a
provider's failure, so a chord always reaches its callback.
"""

from __future__ import annotations

import logging
import random
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from typing import Any

import orjson

from mitrailleuse.config import TaskConfig, parse_config
from mitrailleuse.credentials import resolve_api_key
from mitrailleuse.pipeline.run_state import RunState
from mitrailleuse.providers import ErrorKind, Provider, ProviderError, provider_class
from mitrailleuse.records import ItemRef, failed, succeeded

log = logging.getLogger(__name__)

#: How many runs' providers (and their connection pools) a worker keeps open.
MAX_CACHED_RUNS = 16


@dataclass(slots=True)
class RunContext:
    """What a worker needs to call a run's provider: built once per run and process."""

    config: TaskConfig
    provider: Provider


_contexts: OrderedDict[str, RunContext] = OrderedDict()
_contexts_lock = threading.Lock()


def context_for(run: RunState) -> RunContext:
    """The run's provider, built from the config in Redis and the worker's own environment."""
    with _contexts_lock:
        context = _contexts.get(run.run_id)
        if context is not None:
            _contexts.move_to_end(run.run_id)
            return context
    config = parse_config(orjson.loads(run.config_json()), f"run {run.run_id}")
    name = run.provider
    section = config.provider(name)  # type: ignore[arg-type]
    provider = provider_class(name)(section, resolve_api_key(name, section.api_key))  # type: ignore[arg-type]
    context = RunContext(config, provider)
    with _contexts_lock:
        _contexts[run.run_id] = context
        while len(_contexts) > MAX_CACHED_RUNS:
            _contexts.popitem(last=False)[1].provider.close()
    return context


@dataclass(slots=True)
class CallOutcome:
    """What became of a group: records stored, or a wait before the next attempt."""

    stored: int = 0
    retry_in_s: float | None = None


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), capped at ``max_s``."""
    return random.uniform(0, min(max_s, initial_s * 2 ** (attempt - 1)))


def call_group(
    run: RunState, part: int, messages: list[dict[str, Any]], attempt: int
) -> CallOutcome:
    """Call the provider once for the items of ``messages`` that have no record yet."""
    gate = run.before_call(part, [m["ordinal"] for m in messages])
    pending = [m for m in messages if m["ordinal"] not in gate.recorded]
    if not pending or gate.cancelled:
        return CallOutcome()
    context = context_for(run)
    provider, section = context.provider, context.config.provider(gate.provider)
    items = [ItemRef.from_message(m) for m in pending]
    if gate.halted_reason:
        error = {"type": "quota_exceeded", "message": gate.halted_reason, "status_code": None}
        return _store_failed(run, part, provider, items, error, attempts=0)
    started = time.monotonic()
    try:
        result = provider.send([m["request"] for m in pending], section.timeout_s)
    except ProviderError as error:
        return _after_error(run, part, provider, items, error, attempt, section.retry)
    except Exception as error:  # a bug or an SDK surprise must not stall the chord
        log.exception("unexpected error calling %s", provider.name)
        wrapped = ProviderError(ErrorKind.RETRY, "internal_error", type(error).__name__)
        return _after_error(run, part, provider, items, wrapped, attempt, section.retry)
    latency_ms = round((time.monotonic() - started) * 1000)
    records = [
        (item.ordinal, succeeded(item, provider.name, provider.model, answer, attempt, latency_ms))
        for item, answer in zip(items, result.answers, strict=True)
    ]
    return CallOutcome(stored=run.store_records(part, records))


def _after_error(
    run: RunState,
    part: int,
    provider: Provider,
    items: list[ItemRef],
    error: ProviderError,
    attempt: int,
    policy: Any,
) -> CallOutcome:
    if error.kind is ErrorKind.QUOTA:
        run.halt(error.message)
    elif error.kind is not ErrorKind.FATAL and attempt < policy.max_attempts:
        wait = backoff_s(attempt, policy.initial_backoff_s, policy.max_backoff_s)
        if error.retry_after_s is not None:
            wait = max(wait, error.retry_after_s)
        return CallOutcome(retry_in_s=wait)
    return _store_failed(run, part, provider, items, error.as_record_error(), attempt)


def _store_failed(
    run: RunState,
    part: int,
    provider: Provider,
    items: list[ItemRef],
    error: dict[str, Any],
    attempts: int,
) -> CallOutcome:
    records = [
        (item.ordinal, failed(item, provider.name, provider.model, error, attempts))
        for item in items
    ]
    return CallOutcome(stored=run.store_records(part, records))

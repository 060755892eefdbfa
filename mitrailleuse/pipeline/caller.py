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
from mitrailleuse.ratelimit import Grant, Limits, RedisLimiter
from mitrailleuse.records import ItemRef, failed, succeeded

log = logging.getLogger(__name__)

#: How many runs' providers (and their connection pools) a worker keeps open.
MAX_CACHED_RUNS = 16


#: A wait for the rate limiter this short is slept in the worker thread; a longer one frees
#: the slot: the task is re-scheduled with a countdown.
MOMENT_S = 0.5


@dataclass(slots=True)
class RunContext:
    """What a worker needs to call a run's provider: built once per run and process."""

    config: TaskConfig
    provider: Provider
    limiter: RedisLimiter


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
    section = config.provider(name)
    provider = provider_class(name)(section, resolve_api_key(name, section.api_key))
    limits = Limits.resolve(name, section.rate_limit)
    context = RunContext(config, provider, RedisLimiter(run.redis, name, provider.model, limits))
    with _contexts_lock:
        _contexts[run.run_id] = context
        while len(_contexts) > MAX_CACHED_RUNS:
            _contexts.popitem(last=False)[1].provider.close()
    return context


@dataclass(slots=True)
class CallOutcome:
    """What became of a group: records stored, or a wait before trying again.

    ``attempted`` says whether the provider was called (a failed attempt) or the rate limiter
    held the call back (no attempt used).
    """

    stored: int = 0
    retry_in_s: float | None = None
    attempted: bool = True


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
    payloads = [m["request"] for m in pending]
    grant = _acquire(context.limiter, provider.estimate_tokens(payloads), section.timeout_s)
    if not isinstance(grant, Grant):
        return CallOutcome(retry_in_s=grant, attempted=False)
    if run.cancelled:  # cancelled while waiting for the grant: no call starts after cancel
        context.limiter.release(grant, 0)
        return CallOutcome()
    started = time.monotonic()
    used_tokens = None
    try:
        result = provider.send(payloads, section.timeout_s)
        used_tokens = provider.used_tokens(result.answers)
    except ProviderError as error:
        if error.kind is ErrorKind.RATE_LIMITED:
            context.limiter.pause(error.retry_after_s or section.retry.initial_backoff_s)
        return _after_error(run, part, provider, items, error, attempt, section.retry)
    except Exception as error:  # a bug or an SDK surprise must not stall the chord
        log.exception("unexpected error calling %s", provider.name)
        wrapped = ProviderError(ErrorKind.RETRY, "internal_error", type(error).__name__)
        return _after_error(run, part, provider, items, wrapped, attempt, section.retry)
    finally:
        context.limiter.release(grant, used_tokens)
    context.limiter.observe(result.headers)
    latency_ms = round((time.monotonic() - started) * 1000)
    records = [
        (item.ordinal, succeeded(item, provider.name, provider.model, answer, attempt, latency_ms))
        for item, answer in zip(items, result.answers, strict=True)
    ]
    return CallOutcome(stored=run.store_records(part, records))


def _acquire(limiter: RedisLimiter, tokens: int, timeout_s: float) -> Grant | float:
    """A grant, waiting in place for a moment at most; else the longer wait still needed."""
    deadline = time.monotonic() + MOMENT_S
    while True:
        grant = limiter.acquire(tokens, timeout_s)
        if isinstance(grant, Grant) or time.monotonic() + grant > deadline:
            return grant
        time.sleep(grant)


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

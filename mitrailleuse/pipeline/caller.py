"""A message's provider calls, turned into records: the body of the worker task.

:func:`call_message` is called by the ``mitrailleuse.call`` Celery task with the items of one
message. It skips items that already have a record (a redelivered message), calls the provider
once per group, and stores one record per item, or asks the task to retry later. It never
raises for a provider's failure, so a chord always reaches its callback.

Each call claims its items in the same round trip as its rate grant (``acquire.lua``): a copy of
the message running at the same time (a feeder that sent a chunk twice, a message brought back
after a Redis restart) waits for the record instead of calling again; only an item whose worker
died with its request on the wire can be sent twice. Every path that makes no call after the
grant frees the claims, and a dead worker's claims are free once its heartbeat stops.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import threading
import time
from collections import OrderedDict, deque
from collections.abc import Generator, Iterator
from concurrent import futures
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

import orjson

from mitrailleuse.config import RetryPolicy, TaskConfig, parse_config
from mitrailleuse.cost.limit import CostLimit, Reservation
from mitrailleuse.cost.pricing import ModelPrice, cost_usd, price_of, worst_case_usd
from mitrailleuse.credentials import resolve_api_key, resolve_proxies
from mitrailleuse.logs import shortened, shown_ids
from mitrailleuse.pipeline import call_loop, liveness
from mitrailleuse.pipeline.cache import ResponseCache, cache_enabled, request_hash
from mitrailleuse.pipeline.chunks import group_calls
from mitrailleuse.pipeline.retries import Verdict, after_error, attempt_of
from mitrailleuse.pipeline.run_state import HeldClaims, RunState
from mitrailleuse.pipeline.similarity import check_answers
from mitrailleuse.providers import (
    Answer,
    CallResult,
    ErrorKind,
    Provider,
    ProviderError,
    provider_class,
)
from mitrailleuse.ratelimit import (
    WAITING,
    AllInFlight,
    Claims,
    Grant,
    Held,
    ItemState,
    Lease,
    Limits,
    RedisLimiter,
)
from mitrailleuse.records import ItemRef, answered, failed, new_spend, succeeded
from mitrailleuse.structured import (
    first_request,
    paid_before,
    reasked_item,
    reasks_of,
    structured_record,
)

log = logging.getLogger(__name__)

#: How many runs' providers (and their connection pools) a worker keeps open.
MAX_CACHED_RUNS = 16


#: How soon an item held by a live call elsewhere (a copy of its message, or an identical
#: request) is looked at again.
CLAIM_POLL_S = 1.0
#: Why such items wait (the log line's reason).
HELD = "held by a call elsewhere"
#: How soon a call the cost limit cannot cover yet (other calls hold reservations) asks again.
COST_POLL_S = 0.5

#: A call books its rate-limit slot this far ahead at most, and sleeps until then.
HORIZON_S = 0.5
#: A message with no call out that cannot book a slot yet waits in its worker thread this long
#: at most; a longer wait frees the thread: the task is re-scheduled with a countdown.
MOMENT_S = 0.5


@dataclass(slots=True)
class RunContext:
    """What a worker needs to call a run's provider: built once per run and process."""

    config: TaskConfig
    provider: Provider
    limiter: RedisLimiter
    cost_limit: CostLimit
    price: ModelPrice | None
    cache: ResponseCache | None

    @property
    def section(self) -> Any:
        """The provider's config section."""
        return self.provider.config


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
    general = config.general
    provider = provider_class(name)(
        section, resolve_api_key(name, section.api_key), resolve_proxies(general.proxies)
    )
    limits = Limits.resolve(name, section.rate_limit)
    context = RunContext(
        config,
        provider,
        RedisLimiter(run.redis, name, provider.model, limits),
        CostLimit.of_run(run.redis, run.run_id, general.cost_limit_usd),
        price_of(name, provider.model, general.prices),
        ResponseCache(run.redis, run.run_id, general.cache)
        if cache_enabled(general.cache, provider)
        else None,
    )
    with _contexts_lock:
        first = _contexts.setdefault(run.run_id, context)
        evicted = [
            _contexts.popitem(last=False)[1].provider
            for _ in range(len(_contexts) - MAX_CACHED_RUNS)
        ]
    if first is not context:  # another thread built it meanwhile: one provider per run
        provider.close()  # never used: it has no async client to close
    for old in evicted:  # closed outside the lock: other threads find their contexts meanwhile
        old.close()
        if old.async_calls:
            call_loop.run(old.aclose())
    return first


@dataclass(slots=True)
class CallOutcome:
    """What became of a group: records stored, or a wait before trying again.

    ``attempted`` holds the items whose failed call used an attempt; items the rate limiter or
    the cost limit held back (``limited``), or that wait for a call elsewhere, used none.
    """

    stored: int = 0
    retry_in_s: float | None = None
    attempted: set[int] = field(default_factory=set)
    limited: bool = False
    #: Items sent again as changed here (a re-ask's conversation), by ordinal.
    changed: dict[int, dict[str, Any]] = field(default_factory=dict)

    def add(self, other: CallOutcome) -> None:
        """Fold another call's outcome in: the message retries after the longest wait."""
        self.stored += other.stored
        self.attempted |= other.attempted
        self.changed |= other.changed
        self.limited = self.limited or other.limited
        if other.retry_in_s is not None:
            self.retry_in_s = max(self.retry_in_s or 0.0, other.retry_in_s)


@dataclass(frozen=True, slots=True)
class Send:
    """A granted call, ready to go at ``at`` (``time.monotonic()``: its booked rate slot)."""

    payloads: list[dict[str, Any]]
    timeout_s: float
    at: float


@dataclass(frozen=True, slots=True)
class Sent:
    """A call's result, and how long it took."""

    result: CallResult
    latency_ms: int


#: A call, step by step: it yields the :class:`Send` it was granted, is sent back what came of
#: it (a :class:`Sent`, or the exception thrown in), and returns its outcome. Everything it holds
#: (the cost reservation, the claims, the rate lease) stays held across the send.
Step = Generator[Send, Sent, CallOutcome]


def call_message(run: RunState, chunk: int, items: list[dict[str, Any]]) -> CallOutcome:
    """Call the provider for the message's items that have no record yet.

    A message carries up to ``general.calls_per_message`` calls: Celery's cost per message is
    shared by them. As many go at once as the budgets grant (on the call loop, when the provider
    has an async client), each answer's records stored as it lands and the next call sent in its
    place; a message none of whose calls can go comes back later. Items the response cache knows
    are recorded as ``cached`` without a call; items a live call elsewhere is sending wait for
    it. Each item carries its own ``attempt`` count (1 when absent).
    """
    gate = run.before_call(chunk, [item["ordinal"] for item in items])
    pending = [item for item in items if item["ordinal"] not in gate.recorded]
    if not pending or gate.cancelled:
        return CallOutcome()
    context = context_for(run)
    provider = context.provider
    if gate.halted_reason:
        error = {"type": "quota_exceeded", "message": gate.halted_reason, "status_code": None}
        return _store_failed(run, chunk, provider, pending, error, attempts=0)
    hashes: dict[int, str] = {}
    hits = 0
    if context.cache is not None:
        found = context.cache.lookup(provider, pending)
        hits = _store_hits(run, chunk, provider, pending, found.hits)
        context.cache.put(((found.hashes[o], a) for o, a in found.hits.items()), fresh=False)
        pending, hashes = found.misses, found.hashes
    owner = liveness.heartbeat(run.redis).owner
    outcome = CallOutcome(stored=hits)
    groups = deque(group_calls(type(provider), pending))
    _Window(run, chunk, context, groups, hashes, owner, outcome).send_all()
    return outcome


@dataclass(slots=True)
class _Window:
    """A message's calls: as many out as the budgets grant, until all have gone.

    An answer frees its call's in-flight lease and rate slot, and the next call takes them: a
    message never waits for its slowest call before sending more (calls sent in waves left
    leases idle, and a wave granted one free lease went out as one call). Answers are taken as
    they land; with the similarity check on, in the order their calls went (of two near-copies,
    the later item is always the one flagged), so that an answer landing before an earlier
    call's keeps its lease until that one is back. A call a budget holds back stays first in
    ``groups`` and asks again when an answer is taken, or when the budget said; when none is
    out, it waits in place ``MOMENT_S`` at most, then the message comes back later with its
    outcome.
    """

    run: RunState
    chunk: int
    context: RunContext
    groups: deque[list[dict[str, Any]]]
    hashes: dict[int, str]
    owner: str
    outcome: CallOutcome
    out: dict[Future[Sent | BaseException], Step] = field(default_factory=dict)

    def send_all(self) -> None:
        """Send the calls, store what comes back; fold it all into ``outcome``."""
        out = self.out
        try:
            while self.groups or out:
                wait_s = self._grant()
                if isinstance(wait_s, CallOutcome):
                    self.outcome.add(wait_s)  # held back with none out: the message comes back
                    return
                if not out:
                    return  # the last calls ended unsent (answered meanwhile, or held elsewhere)
                for landed in self._landed(wait_s):
                    self.outcome.add(_finish(out.pop(landed), landed.result()))
        finally:
            if out:  # an error on the way: let the calls out land, then free what they hold
                futures.wait(out)
                for step in out.values():
                    step.close()

    def _landed(self, wait_s: float | None) -> list[Future[Sent | BaseException]]:
        """The answers to take now, waiting ``wait_s`` at most for one."""
        out = self.out
        if not self.context.config.general.similarity_check.enabled:
            return list(futures.wait(out, wait_s, futures.FIRST_COMPLETED).done)
        futures.wait([next(iter(out))], timeout=wait_s)
        return list(itertools.takewhile(Future.done, out))

    def _grant(self) -> float | CallOutcome | None:
        """Send the calls the budgets grant now; how long to wait for an answer before asking again.

        ``None`` (wait for an answer) when every call has gone, or every in-flight slot is taken
        (an answer frees one, and polling for the others' cost a core); the budget's wait when it
        holds a call back; the held-back call's outcome when none is out.
        Calls that end without being sent (cached meanwhile, held elsewhere) fold into
        ``outcome``.
        """
        groups, out = self.groups, self.out
        while groups:
            # a holding per call: calls of one message, out at once, must not take one another's
            # claims for their own (two items with one request would both go); a call waits for
            # its grant in place only when none is out: an answer frees a lease sooner
            holder = liveness.holder(self.owner)
            patience_s = 0.0 if out else MOMENT_S
            step = _call(
                self.run, self.chunk, self.context, groups[0], self.hashes, holder, patience_s
            )
            try:
                send = next(step)
            except StopIteration as ended:
                if ended.value.limited:
                    if not out:
                        return ended.value
                    wait_s = ended.value.retry_in_s  # every in-flight slot taken: ours free one
                    return None if isinstance(wait_s, AllInFlight) else wait_s
                groups.popleft()
                self.outcome.add(ended.value)
                continue
            groups.popleft()
            out[_dispatch(self.context.provider, send)] = step
        return None


def _dispatch(provider: Provider, send: Send) -> Future[Sent | BaseException]:
    """Send a granted call at its slot; its answer, when it lands.

    On the call loop when the provider has an async client, else here, in this thread (the
    future comes back done).
    """
    if provider.async_calls:
        return call_loop.submit(_send_async(provider, send))
    future: Future[Sent | BaseException] = Future()
    time.sleep(max(send.at - time.monotonic(), 0.0))
    started = time.monotonic()
    try:
        future.set_result(Sent(provider.send(send.payloads, send.timeout_s), _ms_since(started)))
    except Exception as error:  # thrown into the call's step, which sorts it
        future.set_result(error)
    return future


async def _send_async(provider: Provider, send: Send) -> Sent | BaseException:
    await asyncio.sleep(max(send.at - time.monotonic(), 0.0))
    started = time.monotonic()
    try:
        return Sent(await provider.send_async(send.payloads, send.timeout_s), _ms_since(started))
    except Exception as error:  # thrown into the call's step, which sorts it
        return error


def _finish(step: Step, sent: Sent | BaseException) -> CallOutcome:
    """Hand a call what came of it; its outcome."""
    try:
        if isinstance(sent, BaseException):
            step.throw(sent)
        else:
            step.send(sent)
    except StopIteration as ended:
        return ended.value
    raise RuntimeError("a call asked to be sent twice")


def _ms_since(started: float) -> int:
    return round((time.monotonic() - started) * 1000)


def _call(
    run: RunState,
    chunk: int,
    context: RunContext,
    pending: list[dict[str, Any]],
    hashes: dict[int, str],
    holder: str,
    patience_s: float,
) -> Step:
    """Reserve the cost, take the grant and the claims, have the call sent, store the records.

    The grant is waited for in place ``patience_s`` at most.
    """
    provider, section = context.provider, context.section
    payloads = [item["request"] for item in pending]
    worst = 0.0  # only a run with a cost limit reserves anything
    if context.price is not None and context.cost_limit.limit_usd is not None:
        worst = worst_case_usd(context.price, *provider.cost_units(payloads))
    with context.cost_limit.reserved(worst, holder) as reservation:
        if reservation is Reservation.WAIT:
            return _put_off(run, provider, pending, COST_POLL_S, "cost limit", limited=True)
        if reservation is Reservation.EXHAUSTED:
            limit, spent = context.cost_limit.limit_usd, run.spent_usd()
            run.stop("stopped_budget", f"cost limit ${limit:g} reached: ${spent:.6f} spent")
            return CallOutcome()
        ordinals = [item["ordinal"] for item in pending]
        request_hashes = [hashes[o] for o in ordinals] if hashes else None
        claims = run.claims(chunk, ordinals, holder, request_hashes)
        tokens = provider.estimate_tokens(payloads)
        turn = acquire_within(context.limiter, tokens, section.timeout_s, claims, patience_s)
        if isinstance(turn, Held):
            waiting = _waiting(pending, turn.items)
            if not waiting:
                return CallOutcome()  # cancelled, or every item is recorded
            return _put_off(run, provider, waiting, CLAIM_POLL_S, HELD)
        if not isinstance(turn, Grant):
            reason = "in-flight cap" if isinstance(turn, AllInFlight) else "rate budget"
            return _put_off(run, provider, pending, turn, reason, limited=True)
        with run.holding(claims.held_keys(turn.items)) as held:
            outcome = yield from _call_claimed(run, chunk, context, pending, turn, held, hashes)
        waiting = _waiting(pending, turn.items)
        if waiting:
            outcome.add(_put_off(run, provider, waiting, CLAIM_POLL_S, HELD))
        return outcome


def _waiting(pending: list[dict[str, Any]], states: tuple[ItemState, ...]) -> list[dict[str, Any]]:
    """The items a live call elsewhere sends (a cancelled run's Held has no states: none)."""
    return [item for item, state in zip(pending, states, strict=False) if state in WAITING]


def _put_off(
    run: RunState,
    provider: Provider,
    items: list[dict[str, Any]],
    wait_s: float,
    reason: str,
    limited: bool = False,
) -> CallOutcome:
    """Items sent again later without using an attempt, in one DEBUG line saying why.

    DEBUG, not INFO: under a tight rate limit every message looks again about once a second,
    thousands of lines a minute that say only "the budget is spent"; the pace hint says it once.
    """
    ids = [item["id"] for item in items]
    extra = {"run": run.run_id, "items": ids, "provider": provider.name, "wait_s": wait_s}
    log.debug(
        "wait run=%s items=%s %.1fs: %s", run.run_id, shown_ids(ids), wait_s, reason, extra=extra
    )
    return CallOutcome(retry_in_s=wait_s, limited=limited)


def _call_claimed(
    run: RunState,
    chunk: int,
    context: RunContext,
    pending: list[dict[str, Any]],
    grant: Grant,
    held: HeldClaims,
    hashes: dict[int, str],
) -> Step:
    """Have the items the grant claimed sent, and store their records (and free the claims)."""
    provider, section = context.provider, context.section
    claimed = [
        item for item, state in zip(pending, grant.items, strict=True) if state is ItemState.CLAIMED
    ]
    attempt = max(attempt_of(item) for item in claimed)
    send = Send(
        [item["request"] for item in claimed], section.timeout_s, time.monotonic() + grant.delay_s
    )
    with context.limiter.leased(grant) as lease:
        try:
            sent = yield send
            lease.tokens = provider.used_tokens(sent.result.answers)
        except ProviderError as error:
            if error.kind is ErrorKind.RATE_LIMITED:
                context.limiter.pause(error.retry_after_s or section.retry.initial_backoff_s)
            return _after_error(run, chunk, provider, claimed, error, attempt, section.retry)
        except Exception as error:  # a bug or an SDK surprise must not stall the chord
            log.exception("unexpected error calling %s for run=%s", provider.name, run.run_id)
            wrapped = ProviderError(ErrorKind.RETRY, "internal_error", type(error).__name__)
            return _after_error(run, chunk, provider, claimed, wrapped, attempt, section.retry)
        context.limiter.observe(sent.result.limits)
        answers = sent.result.answers
        return _store_answers(
            run, chunk, context, claimed, answers, attempt, sent.latency_ms, hashes, held, lease
        )


def _store_answers(
    run: RunState,
    chunk: int,
    context: RunContext,
    claimed: list[dict[str, Any]],
    answers: list[Answer],
    attempt: int,
    latency_ms: int,
    hashes: dict[int, str],
    held: HeldClaims,
    lease: Lease,
) -> CallOutcome:
    """Records of a call's answers, its claims freed and its lease ended with them.

    An answer that does not match the response schema, or is too like recent ones (similarity
    check), may be asked again instead.
    """
    provider = context.provider
    records: dict[int, dict[str, Any]] = {}
    changed: dict[int, dict[str, Any]] = {}  # items asked again with what was wrong
    for item, answer in zip(claimed, answers, strict=True):
        ref, cost = ItemRef.of(item), cost_usd(context.price, answer.usage)
        structured = provider.structured
        if structured is None:
            records[ref.ordinal] = answered(
                ref, provider.name, provider.model, answer, attempt, latency_ms, cost_usd=cost
            )
            continue
        judgement = structured.judge(answer)
        if judgement.problem is not None and structured.may_reask(item, judgement):
            changed[ref.ordinal] = reasked_item(item, answer, judgement.problem, cost)
            context.cost_limit.spend(cost or 0.0)
            reason = "answer does not match the response schema"  # the problem quotes it
            _log_retry(run, provider, [ref.id], attempt + 1, 0.0, reason)
            continue
        earlier = item.get("earlier")
        records[ref.ordinal] = structured_record(
            ref, earlier, provider.name, provider.model, answer, judgement, attempt, latency_ms,
            cost_usd=cost,
        )  # fmt: skip
    by_ordinal = {item["ordinal"]: (item, a) for item, a in zip(claimed, answers, strict=True)}
    valid = [o for o, record in records.items() if record["status"] == "succeeded"]
    reask: set[int] = set()
    similarity = context.config.general.similarity_check
    if similarity.enabled:
        texts = [(by_ordinal[o][0]["id"], by_ordinal[o][1].output) for o in valid]
        matches = check_answers(run.redis, run.run_id, similarity.settings, texts)
        for ordinal in valid:
            match = matches.get(by_ordinal[ordinal][0]["id"])
            if match is None:
                continue
            if attempt <= similarity.settings.reask_attempts:
                reask.add(ordinal)
                context.cost_limit.spend(new_spend(records[ordinal]))
            else:
                records[ordinal].update(similar_to=match.similar_to, similarity=match.similarity)
    if context.cache is not None:
        context.cache.put(_to_cache(provider, by_ordinal, valid, hashes, reask))
    kept = [(o, record) for o, record in records.items() if o not in reask]
    stored = run.store_records(chunk, kept, release=held, lease=lease)
    if reask:
        wait_s = similarity.settings.cooldown_period
        ids = [by_ordinal[o][0]["id"] for o in reask]
        _log_retry(run, provider, ids, attempt + 1, wait_s, "answer too like a recent one")
    if reask or changed:
        wait_s = similarity.settings.cooldown_period if reask else 0.0
        return CallOutcome(stored, wait_s, reask | set(changed), changed=changed)
    return CallOutcome(stored)


def _to_cache(
    provider: Provider,
    by_ordinal: dict[int, tuple[dict[str, Any], Answer]],
    valid: list[int],
    hashes: dict[int, str],
    reask: set[int],
) -> Iterator[tuple[str, Answer]]:
    """The answers the cache keeps, by request hash.

    A valid answer to a re-ask is kept for the question as first asked too: the same item
    in a later run is answered by the cache, not asked (and paid for) wrongly first again.
    """
    for ordinal in valid:
        item, answer = by_ordinal[ordinal]
        if ordinal not in hashes or ordinal in reask:
            continue
        yield hashes[ordinal], answer
        if reasks_of(item):
            yield request_hash(provider, first_request(item)), answer


def _store_hits(
    run: RunState,
    chunk: int,
    provider: Provider,
    items: list[dict[str, Any]],
    hits: dict[int, Answer],
) -> int:
    """``cached`` records for the items the cache answered: no call, no cost."""
    records = [
        (item["ordinal"], _cached_record(provider, item, hits[item["ordinal"]]))
        for item in items
        if item["ordinal"] in hits
    ]
    return run.store_records(chunk, records) if records else 0


def _cached_record(provider: Provider, item: dict[str, Any], answer: Answer) -> dict[str, Any]:
    """The record of an answer the cache gave (judged like a fresh one, when structured).

    A re-ask the cache answers still counts the earlier answers it paid for.
    """
    name, model, ref = provider.name, provider.model, ItemRef.of(item)
    if provider.structured is None:
        return succeeded(ref, name, model, answer, 0, 0, cost_usd=0.0, cached=True)
    judgement = provider.structured.judge(answer)
    earlier = item.get("earlier")
    return structured_record(
        ref, earlier, name, model, answer, judgement, 0, 0, cost_usd=0.0, cached=True
    )


def acquire_within(
    limiter: RedisLimiter,
    tokens: int,
    timeout_s: float,
    claims: Claims | None,
    patience_s: float,
) -> Grant | Held | float:
    """A grant, waiting in place ``patience_s`` at most; else the longer wait still needed."""
    deadline = time.monotonic() + patience_s
    while True:
        turn = limiter.acquire(tokens, timeout_s, claims, horizon_s=HORIZON_S)
        if not isinstance(turn, float) or time.monotonic() + turn > deadline:
            return turn
        time.sleep(turn)


def _after_error(
    run: RunState,
    chunk: int,
    provider: Provider,
    items: list[dict[str, Any]],
    error: ProviderError,
    attempt: int,
    policy: RetryPolicy,
) -> CallOutcome:
    """Try a failed call again later, or store its items' failed records.

    A re-ask is not a failed try: the retry policy counts the tries since the last answer.
    """
    tries = attempt - max(reasks_of(item) for item in items)
    decision = after_error(error, tries, policy)
    if decision.verdict is Verdict.RETRY:
        _log_retry(
            run,
            provider,
            [item["id"] for item in items],
            tries + 1,
            decision.wait_s,
            _error_line(error.as_record_error()),
            max_attempts=policy.max_attempts,
            error_type=error.type,
            status_code=error.status_code,
        )
        attempted = {item["ordinal"] for item in items}
        return CallOutcome(retry_in_s=decision.wait_s, attempted=attempted)
    if decision.verdict is Verdict.HALT:
        run.halt(error.message)
    return _store_failed(run, chunk, provider, items, error.as_record_error(), attempt)


def _store_failed(
    run: RunState,
    chunk: int,
    provider: Provider,
    items: list[dict[str, Any]],
    error: dict[str, Any],
    attempts: int,
) -> CallOutcome:
    """Failed records for ``items``, each in one WARNING line: its error, not its request.

    An item asked again keeps what its earlier answers cost.
    """
    refs = [ItemRef.of(item) for item in items]
    records = [
        (ref.ordinal, failed(ref, provider.name, provider.model, error, attempts)) for ref in refs
    ]
    for item, (_, record) in zip(items, records, strict=True):
        if item.get("earlier"):
            record.update(paid_before(item["earlier"]))
    for item in refs:
        log.warning(
            "failed run=%s item=%s after %d attempt(s): %s %s",
            run.run_id,
            item.id,
            attempts,
            provider.name,
            _error_line(error),
            extra={
                "run": run.run_id,
                "item": item.id,
                "provider": provider.name,
                "attempt": attempts,
                "error_type": error["type"],
                "status_code": error["status_code"],
            },
        )
    return CallOutcome(stored=run.store_records(chunk, records))


def _log_retry(
    run: RunState,
    provider: Provider,
    ids: list[str],
    attempt: int,
    wait_s: float,
    reason: str,
    max_attempts: int | None = None,
    **known: Any,
) -> None:
    """One INFO line for items sent again, using an attempt: when, which attempt, and why."""
    log.info(
        "retry run=%s items=%s attempt %s in %.1fs: %s %s",
        run.run_id,
        shown_ids(ids),
        f"{attempt}/{max_attempts}" if max_attempts else attempt,
        wait_s,
        provider.name,
        reason,
        extra={
            "run": run.run_id,
            "items": ids,
            "provider": provider.name,
            "attempt": attempt,
            "max_attempts": max_attempts,
            "wait_s": wait_s,
            **known,
        },
    )


def _error_line(error: dict[str, Any]) -> str:
    """A record's error for a log line (``http_503: <message>``): never its request."""
    return f"{error['type']}: {shortened(error['message'])}"

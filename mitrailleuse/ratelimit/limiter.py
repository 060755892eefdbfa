"""The fleet-wide rate limiter: one budget per provider and model, in Redis, for every worker.

The ``call`` task asks :meth:`RedisLimiter.acquire` before each provider call and ends its
:class:`Lease` afterwards, correcting the token estimate from the response's usage: with the
call's records, in their round trip (``pipeline/store.lua``), or by :meth:`RedisLimiter.leased`
when the call ends otherwise. A 429's ``Retry-After`` pauses the whole fleet's use of the
provider (:meth:`pause`), and what a response says of the limits (its provider reads its own
headers into a ``RateLimitReport``) lowers the budget to what remains (:meth:`observe`). Each
check is one Lua script run: atomic, one round trip.

A budget the task left unset follows the limit the provider announces
(OpenAI's ``x-ratelimit-limit-requests``, Anthropic's ``anthropic-ratelimit-requests-limit``): the
worker that reads a new figure writes it to Redis, and every worker adopts it within
:data:`ANNOUNCED_REFRESH_S`. A budget the task set is a ceiling the announcement can only lower.

Requests and tokens per minute are GCRA budgets (a theoretical arrival time per budget) that
space calls evenly, with no burst: a provider's sliding 60-second window never sees more than
the limit (a burst allowance, measured, cost a few 429s at each window's edge). A call books
its slot up to a moment ahead and sleeps until then, so the fleet keeps the full rate.
In-flight calls are leases in a sorted set: a lease is its call's holder (as its claims are),
and one whose holder died mid-call frees its slot as soon as the holder's heartbeat stops,
else at its expiry.

A grant can carry :class:`Claims`: the items of the call are claimed in the same round trip
(``acquire.lua``), so that no other copy of the message, and no identical request, is sent while
this call is out; a call the limiter holds back claims nothing.
"""

from __future__ import annotations

import enum
import math
import os
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

import redis

from mitrailleuse import keys
from mitrailleuse.config import RateLimit
from mitrailleuse.providers.base import header_int
from mitrailleuse.scripts import script

if TYPE_CHECKING:
    from mitrailleuse.providers.base import RateLimitReport
    from mitrailleuse.taskfolder import TaskFolder

#: A lease (and a claim) outlives a call by this much before it is presumed lost.
LEASE_MARGIN_S = 30.0
#: The budgets of a task that left them to the provider, until the provider has said.
DEFAULT_REQUESTS_PER_MINUTE = 500
DEFAULT_TOKENS_PER_MINUTE = 200_000
#: How often a worker reads the limits other workers heard the provider announce.
ANNOUNCED_REFRESH_S = 1.0
#: How long an announced limit is kept without being heard again (then the defaults return);
#: an unchanged figure is written again at most this often, so a busy fleet writes rarely.
ANNOUNCED_TTL_S = 600
ANNOUNCED_REWRITE_S = 60.0
#: The share of an announced limit the fleet uses: a call that starts a little late (a busy
#: worker) then shares a 60-second window with the calls booked after it, and the provider,
#: counting arrivals, would see one too many.
ANNOUNCED_SHARE = 0.98


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one provider and model.

    ``requests_ceiling`` and ``tokens_ceiling`` are what the task (or the operator) set, None
    where they left the budget to the provider; ``announced`` names the budgets that follow
    the provider's own word now. A token budget of None is no token budget.
    """

    requests_per_minute: int
    tokens_per_minute: int | None
    max_in_flight: int
    requests_ceiling: int | None = None
    tokens_ceiling: int | None = None
    announced: frozenset[str] = frozenset()

    @classmethod
    def resolve(cls, provider: str, configured: RateLimit) -> Limits:
        """The config's limits, overridden by ``MITRAILLEUSE_<PROVIDER>_<LIMIT>`` variables.

        Before the provider announces its limits, an unset budget is the default one.
        """
        prefix = f"MITRAILLEUSE_{provider.upper().replace('-', '_')}_"

        def pick(name: str, value: int | None) -> int | None:
            raw = os.environ.get(prefix + name.upper())
            return int(raw) if raw else value

        requests = pick("requests_per_minute", configured.requests_per_minute)
        tokens = pick("tokens_per_minute", configured.tokens_per_minute)
        return cls(
            requests_per_minute=requests or DEFAULT_REQUESTS_PER_MINUTE,
            tokens_per_minute=DEFAULT_TOKENS_PER_MINUTE if tokens is None else tokens or None,
            max_in_flight=pick("max_in_flight", configured.max_in_flight) or 1,
            requests_ceiling=requests,
            tokens_ceiling=tokens,
        )

    def adopting(self, requests: int | None, tokens: int | None) -> Limits:
        """These limits once the provider announced ``requests`` and ``tokens`` per minute.

        An announced budget (:data:`ANNOUNCED_SHARE` of it) replaces the default, and lowers a
        budget the task set, never raises it; a budget not announced stays as it is.
        """
        rpm, tpm, announced = self.requests_per_minute, self.tokens_per_minute, set()
        requests = math.floor(requests * ANNOUNCED_SHARE) if requests else None
        tokens = math.floor(tokens * ANNOUNCED_SHARE) if tokens else None
        if requests and (self.requests_ceiling is None or requests < self.requests_ceiling):
            rpm = requests
            announced.add("requests")
        if tokens and (not self.tokens_ceiling or tokens < self.tokens_ceiling):
            tpm = tokens  # a ceiling of 0 (no token budget) gives way to the provider's
            announced.add("tokens")
        if not announced:
            return self
        return Limits(
            rpm,
            tpm,
            self.max_in_flight,
            self.requests_ceiling,
            self.tokens_ceiling,
            frozenset(announced),
        )


class ItemState(enum.IntEnum):
    """What ``acquire.lua`` found of one item of a call (see :class:`Claims`)."""

    CLAIMED = 0  #: claimed for this call: send it
    RECORDED = 1  #: it has its record already: skip it
    IN_FLIGHT = 2  #: a live call elsewhere sends it: look again once that one is done
    IDENTICAL = 3  #: a live call elsewhere sends the same request, or its answer is cached


#: The states that ask for another look soon.
WAITING = frozenset({ItemState.IN_FLIGHT, ItemState.IDENTICAL})


@dataclass(frozen=True, slots=True)
class Claims:
    """The items a call is for, claimed with its grant.

    ``keys`` and ``args`` are what ``acquire.lua`` reads after its own; ``held`` lists, per
    item, the keys its claim holds (freed after the call); ``holder`` holds them, and the
    call's rate lease.
    """

    keys: list[str]
    args: list[Any]
    held: list[tuple[str, ...]]
    holder: str

    def held_keys(self, states: Sequence[ItemState]) -> list[str]:
        """The keys held for the items claimed."""
        return [
            key
            for state, held in zip(states, self.held, strict=True)
            if state is ItemState.CLAIMED
            for key in held
        ]


@dataclass(frozen=True, slots=True)
class Grant:
    """A granted call: send it in ``delay_s``, then end its lease (:class:`Lease`).

    ``delay_s`` is the wait until the slot the call booked; ``items`` holds the state of each
    item of the grant's claims (none without claims).
    """

    lease_id: str
    tokens: int
    items: tuple[ItemState, ...] = ()
    delay_s: float = 0.0


class AllInFlight(float):
    """A wait because every in-flight slot is taken: the next one is free with an answer."""


@dataclass(slots=True)
class Lease:
    """A granted call's in-flight lease, ended once, by whoever ends it first.

    ``tokens``: what the call used, when its response says (the grant's estimate is fixed).
    """

    limiter: RedisLimiter
    grant: Grant
    tokens: int | None = None
    ended: bool = False

    def ending(self) -> tuple[list[str], list[Any]]:
        """The keys and args that end it (``end_lease`` in ``ratelimit/lease.lua``), as of now."""
        scope = self.limiter.scope
        delta = 0 if self.tokens is None else self.tokens - self.grant.tokens
        return (
            [
                keys.limit(scope, "tokens"),
                keys.limit(scope, "in-flight"),
                keys.rate_counters(scope, _minute()),
            ],
            [self.grant.lease_id, self.limiter.limits.tokens_per_minute or 0, delta],
        )


@dataclass(frozen=True, slots=True)
class Held:
    """Nothing to call: the run is cancelled, or every item is recorded or held elsewhere."""

    cancelled: bool = False
    items: tuple[ItemState, ...] = field(default=())

    @property
    def waiting(self) -> bool:
        """Whether some item waits for a call elsewhere (look again soon)."""
        return any(state in WAITING for state in self.items)


@dataclass(frozen=True, slots=True)
class Rates:
    """Requests and tokens per minute over the last few seconds, with the limits."""

    requests_per_minute: float
    tokens_per_minute: float
    limits: Limits
    #: Calls holding a lease now, fleet-wide (a dead holder's until it is found dead).
    in_flight: int = 0


class RedisLimiter:
    """The budget of one provider and model, shared through Redis by the whole fleet."""

    def __init__(self, client: redis.Redis, provider: str, model: str, limits: Limits) -> None:
        self.redis = client
        #: The limits the task and the operator set (or the defaults): see :attr:`limits`.
        self.configured = limits
        self.scope = f"{provider}:{model}"
        self._acquire = script(client, "pipeline/held.lua", "ratelimit/acquire.lua")
        self._release = script(client, "ratelimit/lease.lua", "ratelimit/release.lua")
        self._pause = script(client, "ratelimit/pause.lua")
        self._observe = script(client, "ratelimit/observe.lua")
        self._limits = limits
        self._announced: tuple[int | None, int | None] = (None, None)
        self._read_at = -math.inf
        self._written_at = -math.inf

    @property
    def limits(self) -> Limits:
        """The limits in force: the configured ones, after what the provider announced."""
        if time.monotonic() - self._read_at >= ANNOUNCED_REFRESH_S:
            said = self.redis.hmget(keys.limit(self.scope, "announced"), ["requests", "tokens"])
            self._adopt(*(header_int(value) for value in said))
        return self._limits

    def _adopt(self, requests: int | None, tokens: int | None) -> None:
        self._announced = (requests, tokens)
        self._limits = self.configured.adopting(requests, tokens)
        self._read_at = time.monotonic()

    @property
    def interval_ms(self) -> float:
        """The spacing of requests at the limit in force."""
        return 60_000 / self.limits.requests_per_minute

    def acquire(
        self,
        tokens: int,
        timeout_s: float,
        claims: Claims | None = None,
        horizon_s: float = 0.0,
    ) -> Grant | Held | float:
        """Take a request and ``tokens`` (and ``claims``): a Grant, or how long to wait first.

        A slot at most ``horizon_s`` away is booked: the grant says how long to wait before
        sending (a wait slept by the caller, so that no slot is lost to a late wake-up).
        With claims, :class:`Held` says there is nothing to call; the claims of a grant last
        ``timeout_s`` plus :data:`LEASE_MARGIN_S`, or until their holder's process dies.
        """
        limits = self.limits
        lease_id = claims.holder if claims else uuid.uuid4().hex
        reply = self._acquire(
            keys=[
                keys.limit(self.scope, "requests"),
                keys.limit(self.scope, "tokens"),
                keys.limit(self.scope, "in-flight"),
                keys.limit(self.scope, "pause"),
                keys.rate_counters(self.scope, _minute()),
                *(claims.keys if claims else ()),
            ],
            args=[
                limits.requests_per_minute,
                limits.tokens_per_minute or 0,
                tokens,
                limits.max_in_flight,
                lease_id,
                math.ceil((timeout_s + LEASE_MARGIN_S) * 1000),
                math.floor(horizon_s * 1000),
                *(claims.args if claims else ()),
            ],
        )
        outcome, wait_ms, *states = reply
        items = tuple(ItemState(state) for state in states)
        if outcome == 1:
            return Grant(lease_id, tokens, items, wait_ms / 1000)
        if outcome == 0:
            return wait_ms / 1000
        if outcome == 4:
            return AllInFlight(wait_ms / 1000)
        return Held(cancelled=outcome == 3, items=items)

    @contextmanager
    def leased(self, grant: Grant) -> Iterator[Lease]:
        """The call's lease, ended when the call is over unless its records ended it."""
        lease = Lease(self, grant)
        try:
            yield lease
        finally:
            if not lease.ended:
                lease_keys, args = lease.ending()
                self._release(keys=lease_keys, args=args)
                lease.ended = True

    def pause(self, seconds: float) -> None:
        """Stop the whole fleet's calls to this provider and model for ``seconds``."""
        self._pause(keys=[keys.limit(self.scope, "pause")], args=[math.ceil(seconds * 1000)])

    def observe(self, report: RateLimitReport) -> None:
        """Follow what a response said of the rate limits.

        An announced limit that differs from the one in force is written for the whole fleet
        (and again now and then while it holds). None remaining pauses the fleet until the
        announced reset; fewer remaining than our pace would use before the reset spreads them
        over it, whatever the config claims.
        """
        self._hear(report.requests.limit, report.tokens.limit)
        for budget, said in (("requests", report.requests), ("tokens", report.tokens)):
            remaining, reset = said.remaining, said.reset_s
            if remaining is None or not reset:
                continue
            if remaining <= 0:
                self.pause(reset)
            elif budget == "requests":
                self._observe(
                    keys=[keys.limit(self.scope, "requests")],
                    args=[remaining, math.ceil(reset * 1000), self.interval_ms],
                )

    def _hear(self, requests: int | None, tokens: int | None) -> None:
        """Share the limits a response announced, when they are news (or due for a rewrite)."""
        if requests is None and tokens is None:
            return
        said = (requests or self._announced[0], tokens or self._announced[1])
        now = time.monotonic()
        if said == self._announced and now - self._written_at < ANNOUNCED_REWRITE_S:
            return
        key = keys.limit(self.scope, "announced")
        pipe = self.redis.pipeline(transaction=False)
        budgets = zip(("requests", "tokens"), said, strict=True)
        pipe.hset(key, mapping={budget: value for budget, value in budgets if value})
        pipe.expire(key, ANNOUNCED_TTL_S)
        pipe.execute()
        self._written_at = now
        self._adopt(*said)

    def rates(self, window_s: int = 10) -> Rates:
        """The fleet's request and token rates over the last ``window_s`` seconds, per minute."""
        now = int(time.time())
        minutes = {_minute(now - back) for back in (0, window_s)}
        pipe = self.redis.pipeline(transaction=False)
        for minute in sorted(minutes):
            pipe.hgetall(keys.rate_counters(self.scope, minute))
        pipe.zcard(keys.limit(self.scope, "in-flight"))
        *parts, in_flight = pipe.execute()
        counters: dict[bytes, bytes] = {}
        for part in parts:
            counters.update(part)
        seconds = range(now - window_s, now)
        requests = sum(int(counters.get(f"r{s}".encode(), 0)) for s in seconds)
        tokens = sum(int(counters.get(f"t{s}".encode(), 0)) for s in seconds)
        scale = 60 / window_s
        return Rates(requests * scale, tokens * scale, self.limits, in_flight)


def task_limiter(client: redis.Redis, folder: TaskFolder) -> RedisLimiter:
    """The budget a task's calls draw from: its provider and model, its config's limits."""
    from mitrailleuse.providers import provider_class

    name = folder.provider
    section = folder.config().provider(name)
    model = provider_class(name).model_name(section)
    return RedisLimiter(client, name, model, Limits.resolve(name, section.rate_limit))


def _minute(epoch_s: float | None = None) -> int:
    return int((time.time() if epoch_s is None else epoch_s) // 60)

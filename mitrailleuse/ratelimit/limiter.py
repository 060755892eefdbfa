"""The fleet-wide rate limiter: one budget per provider and model, in Redis, for every worker.

The ``call`` task asks :meth:`RedisLimiter.acquire` before each provider call and gives the
lease back with :meth:`RedisLimiter.release`, correcting the token estimate from the response's
usage. A 429's ``Retry-After`` pauses the whole fleet's use of the provider (:meth:`pause`), and
``x-ratelimit-*`` response headers lower the budget to what the provider says remains
(:meth:`observe`). Each check is one Lua script run: atomic, one round trip.

Requests and tokens per minute are GCRA budgets (a theoretical arrival time per budget) that
space calls evenly, with no burst: a provider's sliding 60-second window never sees more than
the limit (a burst allowance, measured, cost a few 429s at each window's edge).
In-flight calls are leases in a sorted set that expire on their own if a worker dies mid-call.

A grant can carry :class:`Claims`: the items of the call are claimed in the same round trip
(``acquire.lua``), so that no other copy of the message, and no identical request, is sent while
this call is out; a call the limiter holds back claims nothing.
"""

from __future__ import annotations

import enum
import math
import os
import re
import time
import uuid
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

from mitrailleuse import keys
from mitrailleuse.config import RateLimit
from mitrailleuse.scripts import script

#: A lease (and a claim) outlives a call by this much before it is presumed lost.
LEASE_MARGIN_S = 30.0


@dataclass(frozen=True, slots=True)
class Limits:
    """The limits in force for one provider and model."""

    requests_per_minute: int
    tokens_per_minute: int | None
    max_in_flight: int

    @classmethod
    def resolve(cls, provider: str, configured: RateLimit) -> Limits:
        """The config's limits, overridden by ``MITRAILLEUSE_<PROVIDER>_<LIMIT>`` variables."""
        prefix = f"MITRAILLEUSE_{provider.upper().replace('-', '_')}_"

        def pick(name: str, value: int | None) -> int | None:
            raw = os.environ.get(prefix + name.upper())
            return int(raw) if raw else value

        return cls(
            requests_per_minute=pick("requests_per_minute", configured.requests_per_minute) or 1,
            tokens_per_minute=pick("tokens_per_minute", configured.tokens_per_minute) or None,
            max_in_flight=pick("max_in_flight", configured.max_in_flight) or 1,
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
    item, the keys its claim holds (freed after the call).
    """

    keys: list[str]
    args: list[Any]
    held: list[tuple[str, ...]]

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
    """A granted call: give it back with :meth:`RedisLimiter.release`.

    ``items`` holds the state of each item of the grant's claims (none without claims).
    """

    lease_id: str
    tokens: int
    items: tuple[ItemState, ...] = ()


@dataclass(slots=True)
class TokenUse:
    """The tokens a granted call used, when its response says (the grant's estimate is fixed)."""

    tokens: int | None = None


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


class RedisLimiter:
    """The budget of one provider and model, shared through Redis by the whole fleet."""

    def __init__(self, client: redis.Redis, provider: str, model: str, limits: Limits) -> None:
        self.redis = client
        self.limits = limits
        self.scope = f"{provider}:{model}"
        self._acquire = script(client, "pipeline/held.lua", "ratelimit/acquire.lua")
        self._release = script(client, "ratelimit/release.lua")
        self._pause = script(client, "ratelimit/pause.lua")
        self._observe = script(client, "ratelimit/observe.lua")
        self.interval_ms = 60_000 / limits.requests_per_minute

    def acquire(
        self, tokens: int, timeout_s: float, claims: Claims | None = None
    ) -> Grant | Held | float:
        """Take a request and ``tokens`` (and ``claims``): a Grant, or how long to wait first.

        With claims, :class:`Held` says there is nothing to call; the claims of a grant last
        ``timeout_s`` plus :data:`LEASE_MARGIN_S`, or until their holder's process dies.
        """
        limits = self.limits
        lease_id = uuid.uuid4().hex
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
                self.interval_ms,
                *(claims.args if claims else ()),
            ],
        )
        outcome, wait_ms, *states = reply
        items = tuple(ItemState(state) for state in states)
        if outcome == 1:
            return Grant(lease_id, tokens, items)
        if outcome == 0:
            return wait_ms / 1000
        return Held(cancelled=outcome == 3, items=items)

    def release(self, grant: Grant, actual_tokens: int | None = None) -> None:
        """End a call's lease; correct its tokens when the response said how many it used."""
        delta = 0 if actual_tokens is None else actual_tokens - grant.tokens
        self._release(
            keys=[
                keys.limit(self.scope, "tokens"),
                keys.limit(self.scope, "in-flight"),
                keys.rate_counters(self.scope, _minute()),
            ],
            args=[grant.lease_id, self.limits.tokens_per_minute or 0, delta],
        )

    @contextmanager
    def leased(self, grant: Grant) -> Iterator[TokenUse]:
        """The call's lease, ended when the call is over; set the tokens it used, if known."""
        use = TokenUse()
        try:
            yield use
        finally:
            self.release(grant, use.tokens)

    def pause(self, seconds: float) -> None:
        """Stop the whole fleet's calls to this provider and model for ``seconds``."""
        self._pause(keys=[keys.limit(self.scope, "pause")], args=[math.ceil(seconds * 1000)])

    def observe(self, headers: Mapping[str, str]) -> None:
        """Follow the provider's ``x-ratelimit-*`` headers.

        None remaining pauses the fleet until the announced reset; fewer remaining than our pace
        would use before the reset spreads them over it, whatever the config claims.
        """
        for budget in ("requests", "tokens"):
            remaining = _int(headers.get(f"x-ratelimit-remaining-{budget}"))
            if remaining is None:
                continue
            reset = parse_duration_s(headers.get(f"x-ratelimit-reset-{budget}"))
            if not reset:
                continue
            if remaining <= 0:
                self.pause(reset)
            elif budget == "requests":
                self._observe(
                    keys=[keys.limit(self.scope, "requests")],
                    args=[remaining, math.ceil(reset * 1000), self.interval_ms],
                )

    def rates(self, window_s: int = 10) -> Rates:
        """The fleet's request and token rates over the last ``window_s`` seconds, per minute."""
        now = int(time.time())
        minutes = {_minute(now - back) for back in (0, window_s)}
        pipe = self.redis.pipeline(transaction=False)
        for minute in sorted(minutes):
            pipe.hgetall(keys.rate_counters(self.scope, minute))
        counters: dict[bytes, bytes] = {}
        for part in pipe.execute():
            counters.update(part)
        seconds = range(now - window_s, now)
        requests = sum(int(counters.get(f"r{s}".encode(), 0)) for s in seconds)
        tokens = sum(int(counters.get(f"t{s}".encode(), 0)) for s in seconds)
        scale = 60 / window_s
        return Rates(requests * scale, tokens * scale, self.limits)


def _minute(epoch_s: float | None = None) -> int:
    return int((time.time() if epoch_s is None else epoch_s) // 60)


def _int(value: str | None) -> int | None:
    try:
        return int(float(value)) if value is not None else None
    except ValueError:
        return None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration_s(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1h2m3.5s"``, or seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = _DURATION.findall(value)
    return sum(float(number) * units[unit] for number, unit in parts) if parts else None

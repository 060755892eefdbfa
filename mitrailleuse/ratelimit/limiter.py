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
"""

from __future__ import annotations

import math
import os
import re
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from importlib.resources import files

import redis

from mitrailleuse import keys
from mitrailleuse.config import RateLimit

#: A lease outlives a call by this much before it is presumed lost (a killed worker).
LEASE_MARGIN_S = 30.0


def _script(client: redis.Redis, name: str) -> redis.commands.core.Script:
    return client.register_script(files("mitrailleuse.ratelimit").joinpath(name).read_text())


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


@dataclass(frozen=True, slots=True)
class Grant:
    """A granted call: give it back with :meth:`RedisLimiter.release`."""

    lease_id: str
    tokens: int


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
        self._acquire = _script(client, "acquire.lua")
        self._release = _script(client, "release.lua")
        self._pause = _script(client, "pause.lua")
        self._observe = _script(client, "observe.lua")
        self.interval_ms = 60_000 / limits.requests_per_minute

    def acquire(self, tokens: int, timeout_s: float) -> Grant | float:
        """Take a request and ``tokens``: a Grant, or how many seconds to wait first."""
        limits = self.limits
        lease_id = uuid.uuid4().hex
        granted, wait_ms = self._acquire(
            keys=[
                keys.limit(self.scope, "requests"),
                keys.limit(self.scope, "tokens"),
                keys.limit(self.scope, "in-flight"),
                keys.limit(self.scope, "pause"),
                keys.rate_counters(self.scope, _minute()),
            ],
            args=[
                limits.requests_per_minute,
                limits.tokens_per_minute or 0,
                tokens,
                limits.max_in_flight,
                lease_id,
                math.ceil((timeout_s + LEASE_MARGIN_S) * 1000),
                self.interval_ms,
            ],
        )
        return Grant(lease_id, tokens) if granted else wait_ms / 1000

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

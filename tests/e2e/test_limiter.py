"""The Redis limiter's algorithms, on a real redis-server."""

from __future__ import annotations

import time
import uuid

import pytest
import redis

from mitrailleuse.config import RateLimit
from mitrailleuse.providers.anthropic import rate_limits as anthropic_rate_limits
from mitrailleuse.providers.openai import parse_duration_s, rate_limits
from mitrailleuse.ratelimit import Grant, Limits, RedisLimiter
from mitrailleuse.ratelimit.limiter import ANNOUNCED_REFRESH_S

pytestmark = pytest.mark.e2e


@pytest.fixture
def limiter_for(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    def make(rpm=600, tpm=None, in_flight=1000):
        return RedisLimiter(client, "test", uuid.uuid4().hex, Limits(rpm, tpm, in_flight))

    return make


def grants(limiter, count, tokens=0):
    return [limiter.acquire(tokens, 10) for _ in range(count)]


def take(limiter, tokens=0):
    """A grant, or the wait once it is longer than the spacing of a fast budget."""
    while True:
        grant = limiter.acquire(tokens, 10)
        if isinstance(grant, Grant) or grant > 0.01:
            return grant
        time.sleep(grant)


def test_calls_are_spaced_evenly(limiter_for):
    limiter = limiter_for(rpm=600)  # one per 100 ms, no burst
    started = time.monotonic()
    first, second = grants(limiter, 2)
    between = time.monotonic() - started  # a loaded machine may stall between the two
    assert isinstance(first, Grant)
    assert not isinstance(second, Grant) and 0.09 - between < second <= 0.1


def test_in_flight_cap_and_release(limiter_for):
    limiter = limiter_for(rpm=60000, in_flight=2)
    first, second, third = take(limiter), take(limiter), limiter.acquire(0, 10)
    assert isinstance(first, Grant) and isinstance(second, Grant) and not isinstance(third, Grant)
    with limiter.leased(first):
        pass  # the call is over
    assert isinstance(take(limiter), Grant)


def test_tokens_budget_and_correction(limiter_for):
    limiter = limiter_for(rpm=60000, tpm=6000)  # 100 tokens a second
    big = take(limiter, 100)
    assert isinstance(big, Grant)
    wait = take(limiter, 100)
    assert not isinstance(wait, Grant) and 0.9 < wait <= 1.0
    with limiter.leased(big) as lease:
        lease.tokens = 10  # the response used far fewer: 90 refunded
    after = take(limiter, 5)
    assert isinstance(after, Grant) or after <= 0.1


def test_pause_and_provider_headers(limiter_for):
    limiter = limiter_for(rpm=6000)  # one per 10 ms
    # 3 left for the next 3 s: the next call waits a second, not 10 ms
    limiter.observe(
        rate_limits({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "3s"})
    )
    wait = limiter.acquire(0, 10)
    assert not isinstance(wait, Grant) and 0.9 < wait <= 1.0
    plenty = limiter_for(rpm=6000)
    plenty.observe(
        rate_limits({"x-ratelimit-remaining-requests": "900", "x-ratelimit-reset-requests": "3s"})
    )
    assert isinstance(plenty.acquire(0, 10), Grant)
    other = limiter_for(rpm=6000)
    other.observe(
        rate_limits({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
    )
    wait = other.acquire(0, 10)
    assert not isinstance(wait, Grant) and 1.5 < wait <= 2.0
    paused = limiter_for()
    paused.pause(1.5)
    assert 1.0 < paused.acquire(0, 10) <= 1.5


def test_durations():
    assert parse_duration_s("6m0s") == 360
    assert parse_duration_s("120ms") == pytest.approx(0.12)
    assert parse_duration_s("1h2m3.5s") == pytest.approx(3723.5)
    assert parse_duration_s("2") == 2
    assert parse_duration_s(None) is None


def test_announced_limits_are_adopted_up_and_down_under_the_tasks_ceiling(redis_server):
    """Limits left unset follow the provider's headers (98% of them), for every worker; a set
    one caps them."""
    client = redis.Redis.from_url(redis_server.url)
    model = uuid.uuid4().hex
    unset = Limits.resolve("test", RateLimit())
    one, other = (RedisLimiter(client, "test", model, unset) for _ in range(2))
    assert (one.limits.requests_per_minute, one.limits.tokens_per_minute) == (500, 200_000)

    one.observe(
        rate_limits({"x-ratelimit-limit-requests": "3000", "x-ratelimit-limit-tokens": "2000000"})
    )
    assert (one.limits.requests_per_minute, one.limits.tokens_per_minute) == (2940, 1_960_000)
    assert one.limits.announced == {"requests", "tokens"}
    time.sleep(ANNOUNCED_REFRESH_S)
    assert other.limits.requests_per_minute == 2940  # another worker, through Redis

    one.observe(anthropic_rate_limits({"anthropic-ratelimit-requests-limit": "1000"}))  # down
    time.sleep(ANNOUNCED_REFRESH_S)
    assert other.limits.requests_per_minute == 980
    assert other.limits.tokens_per_minute == 1_960_000

    capped = Limits.resolve("test", RateLimit(requests_per_minute=800, tokens_per_minute=0))
    ceiling = RedisLimiter(client, "test", model, capped)
    assert ceiling.limits.requests_per_minute == 800  # the task's is lower than the 1000
    assert ceiling.limits.tokens_per_minute == 1_960_000  # "no token budget" gives way
    one.observe(rate_limits({"x-ratelimit-limit-requests": "400"}))
    time.sleep(ANNOUNCED_REFRESH_S)
    assert ceiling.limits.requests_per_minute == 392
    assert ceiling.limits.announced == {"requests", "tokens"}

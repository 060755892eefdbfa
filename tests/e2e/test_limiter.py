"""The Redis limiter's algorithms, on a real redis-server."""

from __future__ import annotations

import uuid

import pytest
import redis

from mitrailleuse.ratelimit import Grant, Limits, RedisLimiter
from mitrailleuse.ratelimit.limiter import parse_duration_s

pytestmark = pytest.mark.e2e


@pytest.fixture
def limiter_for(redis_server):
    client = redis.Redis.from_url(redis_server.url)

    def make(rpm=600, tpm=None, in_flight=1000):
        return RedisLimiter(client, "test", uuid.uuid4().hex, Limits(rpm, tpm, in_flight))

    return make


def grants(limiter, count, tokens=0):
    return [limiter.acquire(tokens, 10) for _ in range(count)]


def test_a_second_of_burst_then_the_steady_rate(limiter_for):
    limiter = limiter_for(rpm=600)  # one per 100 ms, a burst of 10
    taken = grants(limiter, 12)
    assert all(isinstance(g, Grant) for g in taken[:10])
    assert not isinstance(taken[10], Grant) and 0 < taken[10] <= 0.1


def test_in_flight_cap_and_release(limiter_for):
    limiter = limiter_for(rpm=60000, in_flight=2)
    first, second, third = grants(limiter, 3)
    assert isinstance(first, Grant) and isinstance(second, Grant) and not isinstance(third, Grant)
    limiter.release(first)
    assert isinstance(limiter.acquire(0, 10), Grant)


def test_tokens_budget_and_correction(limiter_for):
    limiter = limiter_for(rpm=60000, tpm=6000)  # 100 tokens a second
    big = limiter.acquire(100, 10)
    assert isinstance(big, Grant)
    assert not isinstance(limiter.acquire(100, 10), Grant)
    limiter.release(big, actual_tokens=10)  # the response used far fewer: refunded
    assert isinstance(limiter.acquire(50, 10), Grant)


def test_pause_and_provider_headers(limiter_for):
    limiter = limiter_for(rpm=6000)  # a burst of 100
    limiter.observe({"x-ratelimit-remaining-requests": "3", "x-ratelimit-reset-requests": "10s"})
    taken = grants(limiter, 4)
    assert [isinstance(g, Grant) for g in taken] == [True, True, True, False]
    other = limiter_for(rpm=6000)
    other.observe({"x-ratelimit-remaining-requests": "0", "x-ratelimit-reset-requests": "2s"})
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

"""The retry policy: what a failed call's items become, how long they wait, attempts counted."""

from __future__ import annotations

import pytest

from mitrailleuse.config import RetryPolicy
from mitrailleuse.pipeline.retries import (
    Verdict,
    after_error,
    backoff_s,
    count_attempts,
    countdown_s,
)
from mitrailleuse.providers import ErrorKind, ProviderError

POLICY = RetryPolicy()  # the defaults: 6 attempts, 1 s initial, 60 s cap


def error(kind, retry_after_s=None):
    return ProviderError(kind, "t", "m", 500, retry_after_s)


@pytest.mark.parametrize("kind", [ErrorKind.RETRY, ErrorKind.RATE_LIMITED])
def test_transient_errors_retry_until_the_last_attempt(kind):
    for attempt in range(1, POLICY.max_attempts):
        decision = after_error(error(kind), attempt, POLICY)
        assert decision.verdict is Verdict.RETRY
        assert 0 <= decision.wait_s <= min(60.0, 2 ** (attempt - 1))
    assert after_error(error(kind), POLICY.max_attempts, POLICY).verdict is Verdict.FAIL


def test_fatal_fails_at_once_and_quota_halts():
    assert after_error(error(ErrorKind.FATAL), 1, POLICY).verdict is Verdict.FAIL
    assert after_error(error(ErrorKind.QUOTA), 1, POLICY).verdict is Verdict.HALT


def test_the_providers_retry_after_wins_over_a_shorter_backoff():
    decision = after_error(error(ErrorKind.RATE_LIMITED, retry_after_s=42.0), 1, POLICY)
    assert decision.verdict is Verdict.RETRY and decision.wait_s == 42.0


def test_backoff_is_capped():
    assert all(0 <= backoff_s(30, 1.0, 5.0) <= 5.0 for _ in range(200))


def test_only_items_whose_call_failed_use_an_attempt():
    items = [{"ordinal": 0}, {"ordinal": 1, "attempt": 3}, {"ordinal": 2}]
    again = count_attempts(items, {1, 2})
    assert [item.get("attempt", 1) for item in again] == [1, 4, 2]


def test_a_countdown_never_outlasts_half_the_visibility_timeout():
    assert countdown_s(10.0, 3600.0) == 10.0
    assert countdown_s(5000.0, 3600.0) == 1800.0

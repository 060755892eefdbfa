"""Retries: when a failed call is tried again, how long it waits, and how attempts are counted.

The caller asks :func:`after_error` what a provider error means for the items of a call (try
again after a wait, fail them, or halt the run); the ``call`` task counts the attempts on the
items it sends again (:func:`count_attempts`) and caps the countdown (:func:`countdown_s`). The
provider only sorts its errors (``Provider.classify``); the policy is ``<provider>.retry``.
"""

from __future__ import annotations

import random
from collections.abc import Collection, Mapping
from dataclasses import dataclass
from enum import Enum
from typing import Any

from mitrailleuse.config import RetryPolicy
from mitrailleuse.providers import ErrorKind, ProviderError


class Verdict(Enum):
    """What becomes of the items of a call that failed."""

    RETRY = "retry"  # called again after ``wait_s``
    FAIL = "fail"  # each gets a failed record
    HALT = "halt"  # the account is out of quota: every remaining item of the run fails


@dataclass(frozen=True, slots=True)
class Decision:
    """A verdict, and the wait before the call is made again."""

    verdict: Verdict
    wait_s: float = 0.0


def backoff_s(attempt: int, initial_s: float, max_s: float) -> float:
    """Exponential backoff with full jitter (AWS architecture blog), capped at ``max_s``."""
    return random.uniform(0, min(max_s, initial_s * 2 ** (attempt - 1)))


def after_error(error: ProviderError, attempt: int, policy: RetryPolicy) -> Decision:
    """The decision for a call's ``attempt``-th failure; the provider's ``Retry-After`` wins."""
    if error.kind is ErrorKind.QUOTA:
        return Decision(Verdict.HALT)
    if error.kind is ErrorKind.FATAL or attempt >= policy.max_attempts:
        return Decision(Verdict.FAIL)
    wait = backoff_s(attempt, policy.initial_backoff_s, policy.max_backoff_s)
    if error.retry_after_s is not None:
        wait = max(wait, error.retry_after_s)
    return Decision(Verdict.RETRY, wait)


def attempt_of(item: dict[str, Any]) -> int:
    """Which attempt sending an item is (items carry it; 1 when absent)."""
    return item.get("attempt", 1)


def count_attempts(
    items: list[dict[str, Any]],
    attempted: Collection[int],
    changed: Mapping[int, dict[str, Any]] | None = None,
) -> list[dict[str, Any]]:
    """The items of a message sent again: those whose call failed (``attempted``) used one.

    Items the rate limiter or the cost limit held back, or that waited for a call elsewhere,
    used none. An item asked again goes as ``changed`` says (its conversation extended).
    """
    changed = changed or {}
    items = [changed.get(item["ordinal"], item) for item in items]
    return [
        {**item, "attempt": attempt_of(item) + 1} if item["ordinal"] in attempted else item
        for item in items
    ]


def countdown_s(wait_s: float, visibility_timeout_s: float) -> float:
    """How long a message waits before it runs again.

    A message held past the broker's visibility timeout is delivered again, so a longer wait
    is cut to half of it, and the woken task asks the limiter again.
    """
    return min(wait_s, visibility_timeout_s / 2)

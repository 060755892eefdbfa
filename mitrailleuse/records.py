"""Result records (README, "Results"): the one line each input item ends as.

The workers build records from answers and errors, the feeder builds the failed records of
invalid input lines, and the assembler only moves records around; nothing else shapes them.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from mitrailleuse.providers.base import Answer

#: How a record was produced.
Mode = Literal["realtime", "batch"]


@dataclass(frozen=True, slots=True)
class ItemRef:
    """What a Celery message carries about an item besides its request: where it came from."""

    id: str
    input_file: str
    index: int
    ordinal: int

    def with_request(self, request: dict[str, Any] | None) -> dict[str, Any]:
        """The item as a message carries it: its reference and its request, JSON-serializable."""
        return {**asdict(self), "request": request}

    @classmethod
    def of(cls, item: dict[str, Any]) -> ItemRef:
        """The reference of an item a message carries."""
        return cls(item["id"], item["input_file"], item["index"], item["ordinal"])


def succeeded(
    item: ItemRef,
    provider: str,
    model: str,
    answer: Answer,
    attempts: int,
    latency_ms: int,
    mode: Mode = "realtime",
    cost_usd: float | None = None,
    cached: bool = False,
) -> dict[str, Any]:
    """The record of an item the provider answered (or the response cache, for it)."""
    return {
        "id": item.id,
        "input_file": item.input_file,
        "index": item.index,
        "status": "succeeded",
        "provider": provider,
        "model": model,
        "output": answer.output,
        "response": answer.response,
        "error": None,
        "attempts": attempts,
        "cached": cached,
        "usage": answer.usage,
        "cost_usd": cost_usd,
        "latency_ms": latency_ms,
        "mode": mode,
    }


def failed(
    item: ItemRef,
    provider: str,
    model: str | None,
    error: dict[str, Any],
    attempts: int,
    latency_ms: int | None = None,
    mode: Mode = "realtime",
) -> dict[str, Any]:
    """The record of an item that failed, with ``error = {type, message, status_code}``."""
    return {
        "id": item.id,
        "input_file": item.input_file,
        "index": item.index,
        "status": "failed",
        "provider": provider,
        "model": model,
        "output": None,
        "response": None,
        "error": error,
        "attempts": attempts,
        "cached": False,
        "usage": {},
        "cost_usd": 0.0,
        "latency_ms": latency_ms,
        "mode": mode,
    }


def answered(
    item: ItemRef,
    provider: str,
    model: str,
    answer: Answer,
    attempts: int,
    latency_ms: int,
    mode: Mode = "realtime",
    cost_usd: float | None = None,
) -> dict[str, Any]:
    """The record of an answer: succeeded, or failed (``refusal``) when the model declined.

    A refusal was paid for: its record keeps the response, the usage and the cost.
    """
    if answer.refusal is None:
        return succeeded(item, provider, model, answer, attempts, latency_ms, mode, cost_usd)
    said = f"the model refused: {answer.refusal}"
    error = {"type": "refusal", "message": said, "status_code": None}
    record = failed(item, provider, model, error, attempts, latency_ms, mode)
    record.update(response=answer.response, usage=answer.usage, cost_usd=cost_usd)
    return record


def invalid_input(item: ItemRef, provider: str, reason: str) -> dict[str, Any]:
    """The record of an input line no request could be built from."""
    error = {"type": "invalid_input", "message": reason, "status_code": None}
    return failed(item, provider, None, error, attempts=0)


def new_spend(record: dict[str, Any]) -> float:
    """What storing a record adds to the run's spend: its last answer's cost.

    The answers of an item asked again (structured outputs) were counted as they came.
    """
    costs = record.get("attempt_costs_usd")
    return (costs[-1] if costs else record.get("cost_usd")) or 0.0


def read_records(path: Path) -> Iterator[dict[str, Any]]:
    """The records of a JSONL file, streamed."""
    with path.open("rb") as handle:
        for line in handle:
            if line.strip():
                yield orjson.loads(line)

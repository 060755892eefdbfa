"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mitrailleuse.records import read_records

#: What the tests' fleet environment sets to keep the simulator unlimited, cleared: workers take
#: the task's ``rate_limit`` block (or its defaults), as they do for a user.
NO_OVERRIDES = {
    f"MITRAILLEUSE_{provider}_{limit}": ""
    for provider in ("OPENAI", "DEEPSEEK", "DEEPL")
    for limit in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "MAX_IN_FLIGHT")
}


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def results(folder: Any) -> list[dict[str, Any]]:
    return list(read_records(folder.results_path))


def questions(count: int, prefix: str = "q") -> list[dict[str, str]]:
    return [{"input_text": f"{prefix}-{n}: what is {n} squared?"} for n in range(1, count + 1)]


def new_task(
    tmp_path: Path,
    rows: list[Any],
    config: dict | None = None,
    api: str = "openai",
    name: str = "t",
) -> tuple[Any, Any]:
    """A task of ``rows`` (written as JSONL), and the API object that made it."""
    from mitrailleuse.api import Mitrailleuse

    source = write_jsonl(tmp_path / f"{name}.jsonl", rows)
    m = Mitrailleuse()
    return m, m.create_task("e2e", api, name, config or {}, [source])


def wait_done(run: Any, count: int, timeout_s: float = 60) -> None:
    """Wait until ``count`` items of a run have their record."""
    import time

    deadline = time.monotonic() + timeout_s
    while (progress := run.progress()).done < count:
        assert not progress.finished, f"the run ended ({progress}) before {count} items were done"
        assert time.monotonic() < deadline, f"fewer than {count} items done in {timeout_s}s"
        time.sleep(0.05)


def sent_twice(sim: Any) -> dict[str, list[float]]:
    """Texts the simulator was sent more than once, with the times each request started."""
    times: dict[str, list[float]] = {}
    for entry in sim.log():
        for text in entry["texts"]:
            times.setdefault(text, []).append(entry["t"])
    return {text: sorted(ts) for text, ts in times.items() if len(ts) > 1}


def calls_per_slot(batch_size: int | None = None) -> int:
    """The calls one worker slot may have out at once: its message's, at most a chunk's."""
    from mitrailleuse.config import BatchConfig, General

    return min(General().calls_per_message, batch_size or BatchConfig().batch_size)

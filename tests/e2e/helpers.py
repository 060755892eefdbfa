"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson
import pytest

from mitrailleuse.records import read_records

if TYPE_CHECKING:
    from mitrailleuse.simulator import SimulatorSettings

#: What the tests' fleet environment sets to keep the simulator unlimited, cleared: workers take
#: the task's ``rate_limit`` block (or its defaults), as they do for a user.
NO_OVERRIDES = {
    f"MITRAILLEUSE_{provider}_{limit}": ""
    for provider in ("OPENAI", "DEEPSEEK", "DEEPL")
    for limit in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "MAX_IN_FLIGHT")
}


def newcomer_env() -> dict[str, str]:
    """The environment a README example runs in: none of the test fleet's Redis, settings, keys."""
    return {
        name: value
        for name, value in os.environ.items()
        if not name.startswith(("REDIS_URL", "MITRAILLEUSE_", "OPENAI_"))
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


def simulator_fixtures(settings: SimulatorSettings) -> tuple[Any, Any]:
    """A module's ``sim`` fixture (one simulator of ``settings``) and its autouse cleaner.

    Bind both at module level, under these names: ``sim, _clean = simulator_fixtures(SETTINGS)``.
    Before each test the cleaner sets the simulator back to ``settings`` and resets its
    counters; after it, it sets ``settings`` back again.
    """
    from mitrailleuse.simulator import SimulatorThread

    @pytest.fixture(scope="module", name="sim")
    def sim() -> Iterator[SimulatorThread]:
        with SimulatorThread(settings) as simulator:
            yield simulator

    @pytest.fixture(autouse=True, name="_clean")
    def _clean(sim: SimulatorThread) -> Iterator[None]:
        sim.configure(**settings.model_dump())
        sim.reset()
        yield
        sim.configure(**settings.model_dump())

    return sim, _clean


def check_broken_bodies(post: Callable[[str], Any], truncated_start: bytes = b"{") -> None:
    """Check the simulator's broken-body markers; ``post(marker)`` sends one, returns the answer.

    ``[[garbage]]`` and ``[[truncated]]`` (starting ``truncated_start``) answer 200 with a body
    that is not JSON, ``[[html]]`` a 502 HTML page and ``[[empty]]`` 200 with no body.
    """
    garbage = post("[[garbage]]")
    assert garbage.status_code == 200, garbage
    with pytest.raises(ValueError):
        garbage.json()
    truncated = post("[[truncated]]")
    assert truncated.status_code == 200, truncated
    assert truncated.content.startswith(truncated_start), truncated.content
    with pytest.raises(ValueError):
        truncated.json()
    html = post("[[html]]")
    assert html.status_code == 502, html
    assert html.headers["content-type"].startswith("text/html"), html.headers
    empty = post("[[empty]]")
    assert (empty.status_code, empty.content) == (200, b""), empty

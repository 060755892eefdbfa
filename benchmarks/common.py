"""What every benchmark needs: a real Redis, the simulator, workers, /proc readings, one report.

Every bench script prints its own table and, as its last stdout line, ``RESULTS-JSON: {...}``
with the same rows (``name | figure | baseline | target | met?``) and its raw numbers: run.py
gathers those lines into one table and ``results.json``. Memory is in MB of 10^6 bytes, so a
figure is compared with its target without rounding in its favour.

Importing this module is cheap (no Celery, no Redis client): the children that measure their
own peak memory import it too.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))
# Every bench starts its own Redis (bench_env); importing the Celery app before that must not
# start the embedded one in the working directory, as it does when REDIS_URL is unset.
os.environ.setdefault("REDIS_URL", "redis://127.0.0.1:1/0")

if TYPE_CHECKING:
    from mitrailleuse.simulator.process import SimulatorProcess
    from mitrailleuse.testing import BeatProcess, RedisServer, WorkerProcess

BENCH_KEY = "sk-bench-not-a-real-key"
RESULTS_PREFIX = "RESULTS-JSON: "
MB = 1_000_000

#: The simulator has no limit unless a bench gives it one: the workers' budgets are lifted
#: (the operator's variables win over a task's ``rate_limit``), so the pipeline is measured.
UNLIMITED_ENV = {
    "MITRAILLEUSE_OPENAI_REQUESTS_PER_MINUTE": "1000000000",
    "MITRAILLEUSE_OPENAI_TOKENS_PER_MINUTE": "1000000000000",
    "MITRAILLEUSE_OPENAI_MAX_IN_FLIGHT": "1000000",
}
#: The same, as a task's ``rate_limit`` block.
UNLIMITED_CONFIG = {"requests_per_minute": 10**9, "tokens_per_minute": 0, "max_in_flight": 10**6}


@dataclass
class Bench:
    """A scratch dir, a Redis and a simulator, with the fleet's environment set."""

    scratch: Path
    redis: RedisServer
    simulator: SimulatorProcess
    env: dict[str, str]
    started: list[Any] = field(default_factory=list)

    def worker(
        self,
        concurrency: int | None = None,
        queues: tuple[str, ...] = ("openai", "mitrailleuse"),
        name: str = "bench",
        env: Mapping[str, str] | None = None,
    ) -> WorkerProcess:
        """A ready ``celery worker`` (threads pool); stopped with the bench if not before."""
        from mitrailleuse.testing import WorkerProcess

        worker = WorkerProcess(
            {**self.env, **(env or {})},
            queues,
            concurrency,
            f"{name}-{time.monotonic_ns()}",
            cwd=REPO,
        )
        self.started.append(worker)
        return worker.wait_ready()

    def beat(self, poll_s: float) -> BeatProcess:
        """``celery beat`` polling native batches every ``poll_s``."""
        from mitrailleuse.testing import BeatProcess

        env = {**self.env, "MITRAILLEUSE_BATCH_POLL_S": str(poll_s)}
        beat = BeatProcess(env, self.scratch, cwd=REPO)
        self.started.append(beat)
        return beat

    def redis_info(self) -> dict[str, Any]:
        """Redis's ``INFO memory``."""
        return self._redis_client.info("memory")

    @cached_property
    def _redis_client(self) -> Any:
        import redis

        return redis.Redis.from_url(self.redis.url)


@contextmanager
def bench_env(*simulator_args: str) -> Iterator[Bench]:
    """A fresh Redis (so ``used_memory_peak`` is this bench's) and simulator, torn down after."""
    from mitrailleuse.simulator.process import SimulatorProcess
    from mitrailleuse.testing import RedisServer

    with tempfile.TemporaryDirectory(prefix="mitrailleuse-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        redis_server = RedisServer(scratch / "redis").start()
        try:
            simulator = SimulatorProcess("--no-record-log", *simulator_args).start()
        except BaseException:  # a simulator that cannot start must not leave Redis running
            redis_server.stop()
            raise
        env = {
            "REDIS_URL": redis_server.url,
            "OPENAI_BASE_URL": f"{simulator.url}/v1",
            "OPENAI_API_KEY": BENCH_KEY,
            "DEEPL_SERVER_URL": simulator.url,
            "DEEPL_AUTH_KEY": BENCH_KEY,
            "ANTHROPIC_BASE_URL": simulator.url,
            "ANTHROPIC_API_KEY": BENCH_KEY,
            "GEMINI_BASE_URL": simulator.url,
            "GEMINI_API_KEY": BENCH_KEY,
            "MITRAILLEUSE_TASKS_DIR": str(scratch / "tasks"),
            "PYTHONPATH": str(REPO),
        }
        saved = dict(os.environ)
        os.environ.update(env)
        point_app_at(redis_server.url)
        bench = Bench(scratch, redis_server, simulator, env)
        try:
            yield bench
        finally:
            for process in reversed(bench.started):
                process.stop()
            simulator.stop()
            redis_server.stop()
            os.environ.clear()
            os.environ.update(saved)


def point_app_at(url: str) -> None:
    """Point this process's Celery app at ``url``, dropping the pools an earlier bench left.

    A bench may start several Redis servers one after the other: the app's connection and
    producer pools (and its result backend) would otherwise still talk to the first one.
    """
    from mitrailleuse.pipeline.app import app

    app.conf.update(broker_url=url, result_backend=url)
    app._after_fork()  # Celery's own reset of its pools in a new process
    app._backend_cache = None
    app._local = threading.local()


def write_questions(path: Path, count: int) -> Path:
    """``count`` JSONL items, each with a prompt of its own in the whole bench.

    The file's name is in every prompt: no run is answered from an earlier run's response
    cache, whatever its settings.
    """
    tag = path.stem
    with path.open("wb", buffering=1 << 20) as handle:
        for n in range(count):
            handle.write(orjson.dumps({"input_text": f"{tag} q{n}: what is {n} squared?"}) + b"\n")
    return path


# -- the Batch API by hand: the baseline of the native batch figures ------------------------

BATCH_ENDPOINT = "/v1/chat/completions"
#: What ``combine_batches`` packs from 1000-item chunks under the API's 50,000-request cap.
PLAIN_PER_BATCH = 50_000


def plain_batch_files(source: Path, out_dir: Path, per_batch: int = PLAIN_PER_BATCH) -> list[Path]:
    """The request lines a hand-written script would send, ``per_batch`` lines a file."""
    files: list[Path] = []
    handle = None
    with source.open("rb") as lines:
        for n, raw in enumerate(lines, start=1):
            if (n - 1) % per_batch == 0:
                if handle is not None:
                    handle.close()
                files.append(out_dir / f"batch-{len(files):05d}-input.jsonl")
                handle = files[-1].open("wb")
            content = orjson.loads(raw)["input_text"]
            body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": content}]}
            line = {"custom_id": f"{source.name}:{n}", "method": "POST", "url": BATCH_ENDPOINT}
            handle.write(orjson.dumps({**line, "body": body}) + b"\n")
    if handle is not None:
        handle.close()
    return files


def plain_create_batch(client: Any, path: Path) -> str:
    """Upload a batch file and create its batch with the openai SDK; the batch's id."""
    with path.open("rb") as handle:
        uploaded = client.files.create(file=(path.name, handle), purpose="batch")
    created = client.batches.create(
        input_file_id=uploaded.id, endpoint=BATCH_ENDPOINT, completion_window="24h"
    )
    return created.id


# -- /proc ----------------------------------------------------------------------------------


def proc_mb(pid: int | str, field_name: str) -> float | None:
    """A ``/proc/<pid>/status`` memory field (``VmRSS``, ``VmHWM``: the peak RSS) in MB."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith(field_name + ":"):
                return int(line.split()[1]) * 1024 / MB
    except (OSError, ValueError):
        return None
    return None


def own_peak_rss_mb() -> float:
    """This process's peak RSS."""
    return proc_mb("self", "VmHWM") or 0.0


class RssSampler:
    """Samples the RSS of named processes from /proc every ``interval_s``, in a thread.

    The sampled maximum is what the issue asks for; the kernel's own high-water mark (VmHWM,
    read at :meth:`stop` while the process lives) is the exact peak, between samples too.
    """

    def __init__(self, interval_s: float = 0.2) -> None:
        self.interval_s = interval_s
        self.pids: dict[str, int] = {}
        self.first: dict[str, float] = {}
        self.peak: dict[str, float] = {}
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="rss-sampler", daemon=True)

    def add(self, name: str, pid: int) -> None:
        """Start following a process."""
        self.pids[name] = pid

    def start(self) -> RssSampler:
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            for name, pid in list(self.pids.items()):
                rss = proc_mb(pid, "VmRSS")
                if rss is not None:
                    self.first.setdefault(name, rss)
                    self.peak[name] = max(self.peak.get(name, 0.0), rss)
            self.samples += 1
            self._stop.wait(self.interval_s)

    def stop(self) -> dict[str, dict[str, float | None]]:
        """Stop sampling; per process: first and peak sampled RSS, VmHWM if alive, the peak."""
        self._stop.set()
        self._thread.join()
        seen = {}
        for name, pid in self.pids.items():
            hwm, sampled = proc_mb(pid, "VmHWM"), self.peak.get(name)
            seen[name] = {
                "first_rss_mb": _round(self.first.get(name)),
                "sampled_peak_rss_mb": _round(sampled),
                "hwm_mb": _round(hwm),
                "peak_rss_mb": _round(max((v for v in (hwm, sampled) if v), default=None)),
            }
        return seen


def _round(value: float | None, digits: int = 1) -> float | None:
    return None if value is None else round(value, digits)


# -- report ---------------------------------------------------------------------------------


@dataclass
class Row:
    """One line of the report: a figure beside its baseline and its target."""

    name: str
    figure: str
    baseline: str = ""
    target: str = ""
    met: bool | None = None


def print_table(title: str, rows: list[dict[str, Any]]) -> None:
    """Columns as wide as their widest cell."""
    print(f"\n{title}")
    if not rows:
        return
    columns = list(dict.fromkeys(c for row in rows for c in row))
    cells = [{c: _cell(row.get(c)) for c in columns} for row in rows]
    widths = {c: max(len(c), *(len(r[c]) for r in cells)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns).rstrip())
    for row in cells:
        print("  ".join(row[c].ljust(widths[c]) for c in columns).rstrip())


def _cell(value: Any) -> str:
    if value is True:
        return "yes"
    if value is False:
        return "NO"
    return "" if value is None else str(value)


def report(bench: str, title: str, rows: list[Row], raw: dict[str, Any]) -> None:
    """Print the bench's table, then its machine-readable line (the last line of stdout)."""
    table = [
        {
            "name": r.name,
            "figure": r.figure,
            "baseline": r.baseline,
            "target": r.target,
            "met?": r.met,
        }
        for r in rows
    ]
    print_table(title, table)
    payload = {"bench": bench, "title": title, "rows": [asdict(r) for r in rows], "raw": raw}
    print(RESULTS_PREFIX + json.dumps(payload, default=str), flush=True)


def parse_results(stdout: str) -> dict[str, Any] | None:
    """The ``RESULTS-JSON`` line a bench printed last, if any."""
    for line in reversed(stdout.splitlines()):
        if line.startswith(RESULTS_PREFIX):
            return json.loads(line[len(RESULTS_PREFIX) :])
    return None


def machine() -> dict[str, Any]:
    """What the figures were measured on: they mean little without it."""

    def first(path: str, key: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(key):
                    return line.split(":", 1)[1].strip()
        except OSError:
            return None
        return None

    try:
        commit = subprocess.run(
            ["git", "describe", "--always", "--dirty"],
            cwd=REPO,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    memory = first("/proc/meminfo", "MemTotal")
    return {
        "cores": os.cpu_count(),
        "cpu_model": first("/proc/cpuinfo", "model name"),
        "memory_gb": round(int(memory.split()[0]) * 1024 / 1e9, 1) if memory else None,
        "python": platform.python_version(),
        "platform": platform.platform(),
        "load_average_at_start": [round(x, 2) for x in os.getloadavg()],
        "commit": commit,
        "date": datetime.now(UTC).isoformat(timespec="seconds"),
    }


def plural(count: int, noun: str) -> str:
    """``1 batch``, ``2 batches``."""
    return f"{count:,} {noun}" + ("" if count == 1 else "es" if noun.endswith("ch") else "s")


def ratio(value: float, baseline: float) -> str:
    """``value / baseline`` for a table cell."""
    return f"{value / baseline:.2f}" if baseline else "-"

"""What every benchmark needs: a real Redis, the simulator, worker processes, a table."""

from __future__ import annotations

import os
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import orjson

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from mitrailleuse.simulator.process import SimulatorProcess  # noqa: E402
from mitrailleuse.testing import RedisServer, WorkerProcess  # noqa: E402

BENCH_KEY = "sk-bench-not-a-real-key"


@dataclass
class Bench:
    """A scratch dir, a Redis and a simulator, with the fleet's environment set."""

    scratch: Path
    redis: RedisServer
    simulator: SimulatorProcess
    env: dict[str, str]

    def worker(
        self,
        concurrency: int | None = None,
        queues: tuple[str, ...] = ("openai", "mitrailleuse"),
        name: str = "bench",
        extra: tuple[str, ...] = (),
    ) -> WorkerProcess:
        return WorkerProcess(
            self.env, queues, concurrency, f"{name}-{time.monotonic_ns()}", cwd=REPO, extra=extra
        ).wait_ready()


@contextmanager
def bench_env(*simulator_args: str) -> Iterator[Bench]:
    with tempfile.TemporaryDirectory(prefix="mitrailleuse-bench-") as scratch_dir:
        scratch = Path(scratch_dir)
        redis = RedisServer(scratch / "redis").start()
        simulator = SimulatorProcess("--no-record-log", *simulator_args).start()
        env = {
            "REDIS_URL": redis.url,
            "OPENAI_BASE_URL": f"{simulator.url}/v1",
            "OPENAI_API_KEY": BENCH_KEY,
            "DEEPL_SERVER_URL": simulator.url,
            "DEEPL_AUTH_KEY": BENCH_KEY,
            "MITRAILLEUSE_TASKS_DIR": str(scratch / "tasks"),
            "PYTHONPATH": str(REPO),
        }
        saved = dict(os.environ)
        os.environ.update(env)
        from mitrailleuse.pipeline.app import app

        app.conf.update(broker_url=redis.url, result_backend=redis.url)
        try:
            yield Bench(scratch, redis, simulator, env)
        finally:
            simulator.stop()
            redis.stop()
            os.environ.clear()
            os.environ.update(saved)


def write_questions(path: Path, count: int) -> Path:
    with path.open("wb") as handle:
        for n in range(count):
            handle.write(orjson.dumps({"input_text": f"q{n}: what is {n} squared?"}) + b"\n")
    return path


def print_table(title: str, rows: list[dict]) -> None:
    print(f"\n{title}")
    if not rows:
        return
    columns = list(rows[0])
    widths = {c: max(len(c), *(len(str(r.get(c, ""))) for r in rows)) for c in columns}
    print("  ".join(c.ljust(widths[c]) for c in columns))
    for row in rows:
        print("  ".join(str(row.get(c, "")).ljust(widths[c]) for c in columns))

"""Fixtures that start real things: redis-server, Celery worker processes, the simulator.

Nothing here is a stub: a worker is ``celery -A mitrailleuse worker`` in a child process, Redis
is the ``redis-server`` binary, and the simulator answers the real ``openai`` and ``deepl``
SDKs over HTTP on loopback.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from mitrailleuse.broker import redis_server_binary
from mitrailleuse.pipeline.queues import CONTROL_QUEUE, provider_queues
from mitrailleuse.simulator.process import SimulatorProcess
from mitrailleuse.simulator.settings import SimulatorSettings
from mitrailleuse.testing import BeatProcess, RedisServer, WorkerProcess

REPO = Path(__file__).resolve().parent.parent
#: A key the secrets tests search for everywhere; recognisable, and never a real one.
TEST_KEY = "canary-MITRAILLEUSE-test-key-0123456789"


#: ``REDIS_URL`` until a test asks for Redis: nothing listens there, so a test that needs Redis
#: without saying so fails at once, and loading ``mitrailleuse.celeryconfig`` never starts the
#: embedded Redis in the working directory. ``pytest tests/unit`` runs with no redis-server at all.
NO_REDIS = "redis://127.0.0.1:9/0"


def pytest_configure(config: pytest.Config) -> None:
    os.environ["REDIS_URL"] = NO_REDIS


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    """The session's redis-server, started by the first test that needs it."""
    home = Path(tempfile.mkdtemp(prefix="mitrailleuse-test-redis-"))
    server = RedisServer(home).start()
    os.environ["REDIS_URL"] = server.url
    yield server
    os.environ["REDIS_URL"] = NO_REDIS
    server.stop()
    shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def simulator() -> Iterator[SimulatorProcess]:
    with SimulatorProcess() as sim:
        yield sim


@pytest.fixture
def sim(simulator: SimulatorProcess) -> SimulatorProcess:
    """The session's simulator, with counters cleared and default settings."""
    simulator.configure(**SimulatorSettings().model_dump())
    simulator.reset()
    return simulator


@pytest.fixture(scope="session")
def fleet_env(redis_server: RedisServer, simulator: SimulatorProcess) -> dict[str, str]:
    """The environment of every process of the fleet under test."""
    env = {
        "REDIS_URL": redis_server.url,
        "OPENAI_BASE_URL": f"{simulator.url}/v1",
        "OPENAI_API_KEY": TEST_KEY,
        "DEEPSEEK_BASE_URL": f"{simulator.url}/v1",
        "DEEPSEEK_API_KEY": TEST_KEY + "-deepseek",
        "DEEPL_SERVER_URL": simulator.url,
        "DEEPL_AUTH_KEY": TEST_KEY + "-deepl",
        "ANTHROPIC_BASE_URL": simulator.url,
        "ANTHROPIC_API_KEY": TEST_KEY + "-anthropic",
        "GEMINI_BASE_URL": simulator.url,
        "GEMINI_API_KEY": TEST_KEY + "-gemini",
        "PYTHONPATH": str(REPO),
        # the simulator is not rate limited unless a test says so: the tests that are about
        # limits clear these (the worker then takes the task's rate_limit block)
        **{
            f"MITRAILLEUSE_{provider}_{limit}": "1000000000"
            for provider in ("OPENAI", "DEEPSEEK", "DEEPL", "ANTHROPIC", "GEMINI")
            for limit in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "MAX_IN_FLIGHT")
        },
    }
    saved = {name: os.environ.get(name) for name in env}
    os.environ.update(env)
    from mitrailleuse.pipeline.app import app

    app.conf.update(broker_url=redis_server.url, result_backend=redis_server.url)
    yield env
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def start_worker(fleet_env: dict[str, str]) -> Iterator[Callable[..., WorkerProcess]]:
    """Start worker processes for a test; all are stopped afterwards."""
    started: list[WorkerProcess] = []

    def start(
        queues: list[str] | None = None,
        concurrency: int = 16,
        name: str | None = None,
        env: dict[str, str] | None = None,
        extra: tuple[str, ...] = (),
    ) -> WorkerProcess:
        worker = WorkerProcess(
            {**fleet_env, **(env or {})},
            queues or [*provider_queues(), CONTROL_QUEUE],
            concurrency,
            name or f"w{len(started)}-{os.getpid()}-{time.monotonic_ns()}",
            cwd=REPO,
            extra=extra,
        )
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture
def tasks_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "tasks"
    path.mkdir()
    monkeypatch.setenv("MITRAILLEUSE_TASKS_DIR", str(path))
    return path


def pytest_report_header() -> str:
    return f"python {sys.version.split()[0]}; redis-server {redis_server_binary()}"


@pytest.fixture
def start_beat(fleet_env: dict[str, str], tmp_path: Path) -> Iterator[Callable[..., BeatProcess]]:
    """Start beat processes polling native batches every half second; stopped afterwards."""
    started: list[BeatProcess] = []

    def start() -> BeatProcess:
        env = {**fleet_env, "MITRAILLEUSE_BATCH_POLL_S": "0.5"}
        beat = BeatProcess(env, tmp_path, cwd=REPO)
        started.append(beat)
        return beat

    yield start
    for beat in started:
        beat.stop()

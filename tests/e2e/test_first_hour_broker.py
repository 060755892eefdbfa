"""A newcomer's first hour with the broker: where it lives, who starts it, an unreachable Redis.

Every command runs as users run it (a subprocess) against real redis-server processes.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import redis
from celery.exceptions import DuplicateNodenameWarning

from mitrailleuse.broker import EmbeddedRedis, default_home, url_for_display
from mitrailleuse.testing import free_port
from tests.e2e.helpers import questions, write_jsonl
from tests.e2e.test_broker import alive, servers_in, wait_gone

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str], timeout: float = 120):
    return subprocess.run(
        [sys.executable, "-m", "mitrailleuse", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **env},
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def fields(output: str) -> dict[str, str]:
    """``broker status``'s lines (a label in 10 columns, a space, the value) as a mapping."""
    return {line[:10].strip(): line[11:] for line in output.splitlines() if line.strip()}


@dataclass
class Shared:
    """Two working folders sharing one tasks dir, with no REDIS_URL: the embedded broker."""

    a: Path
    b: Path
    tasks: Path
    env: dict[str, str]

    @property
    def home(self) -> Path:
        return default_home(self.tasks)

    def create(self, *inputs: str) -> str:
        args = ["--user-id", "ann", "--api-name", "openai", "--task-name", "t"]
        made = cli("create", *args, *(f"--input={i}" for i in inputs), cwd=self.a, env=self.env)
        assert made.returncode == 0, made.stderr
        return made.stdout.strip().splitlines()[-1]


@pytest.fixture
def shared(tmp_path: Path) -> Iterator[Shared]:
    a, b = tmp_path / "a", tmp_path / "b"
    a.mkdir()
    b.mkdir()
    write_jsonl(a / "q.jsonl", questions(5))
    tasks = tmp_path / "tasks"
    env = {"REDIS_URL": "", "MITRAILLEUSE_TASKS_DIR": str(tasks)}
    made = Shared(a, b, tasks, env)
    yield made
    with contextlib.suppress(Exception):
        EmbeddedRedis(made.home).stop(timeout_s=5)
    if made.home.exists():
        for pid in servers_in(made.home):  # leftovers of a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid)


def test_broker_status_and_stop_from_another_folder(shared: Shared) -> None:
    before = cli("broker", "status", cwd=shared.b, env=shared.env)
    assert before.returncode == 0, before.stderr
    assert fields(before.stdout) == {
        "tasks dir": str(shared.tasks.resolve()),
        "home": str(shared.home),
        "state": "not running",
    }
    assert not shared.tasks.exists(), "broker status created files"

    started = subprocess.run(
        [sys.executable, "-c", "import mitrailleuse; mitrailleuse.Mitrailleuse().redis.ping()"],
        cwd=shared.a,
        env={**os.environ, "PYTHONPATH": str(REPO), **shared.env},
        capture_output=True,
        timeout=30,
    )
    assert started.returncode == 0, started.stderr.decode()
    server = EmbeddedRedis(shared.home)
    url, pid = server.url, server.pid
    assert url is not None and pid is not None
    redis.Redis.from_url(url).set("kept", "across a stop")

    shown = cli("broker", "status", cwd=shared.b, env=shared.env)
    assert shown.returncode == 0, shown.stderr
    status = fields(shown.stdout)
    assert status["state"] == "running" and status["pid"] == str(pid)
    assert status["port"] == str(urlsplit(url).port)
    assert status["url"] == url_for_display(url) and urlsplit(url).password not in shown.stdout
    assert status["keys"] == "1" and status["memory"][-1] in "BKMG"
    assert not (shared.a / ".mitrailleuse").exists() and not (shared.b / ".mitrailleuse").exists()

    stopped = cli("broker", "stop", cwd=shared.b, env=shared.env)
    assert stopped.returncode == 0, stopped.stderr
    assert "stopped" in stopped.stdout and str(pid) in stopped.stdout
    wait_gone(pid)
    assert not alive(pid) and servers_in(shared.home) == []
    assert fields(cli("broker", "status", cwd=shared.a, env=shared.env).stdout)["state"] == (
        "not running"
    )
    again = cli("broker", "stop", cwd=shared.a, env=shared.env)
    assert again.returncode == 0 and again.stdout.startswith("not running"), again.stdout

    # the AOF was kept: the next start has the data back
    restarted = EmbeddedRedis(shared.home).ensure_running()
    assert redis.Redis.from_url(restarted).get("kept") == b"across a stop"


def test_read_only_commands_start_no_broker(shared: Shared) -> None:
    path = shared.create("q.jsonl")
    for command in (
        ["list", "--user-id", "all"],
        ["get", "--task-path", path],
        ["status", path],
        ["broker", "status"],
    ):
        done = cli(*command, cwd=shared.b, env=shared.env)
        assert "Traceback" not in done.stderr, done.stderr
        assert len(done.stderr.strip().splitlines()) <= 1, done.stderr
    assert not (shared.tasks / ".mitrailleuse").exists(), "a read-only command started Redis"
    assert fields(cli("broker", "status", cwd=shared.a, env=shared.env).stdout)["state"] == (
        "not running"
    )


def test_a_worker_and_an_execute_from_two_folders_share_one_broker(shared: Shared, sim) -> None:
    env = {**shared.env, "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-two"}
    log = shared.b / "worker.log"
    with log.open("wb") as output:
        worker = subprocess.Popen(
            [sys.executable, "-m", "mitrailleuse", "worker", "-c", "4"],
            cwd=shared.b,
            env={**os.environ, "PYTHONPATH": str(REPO), **env},
            stdout=output,
            stderr=subprocess.STDOUT,
        )
    try:
        path = shared.create("q.jsonl")
        done = cli("execute", "--task-path", path, cwd=shared.a, env=env, timeout=90)
        assert done.returncode == 0, done.stderr[-2000:] + log.read_text()[-2000:]
        assert "5/5 done" in done.stdout
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(30)
    assert len(servers_in(shared.home)) == 1
    assert not (shared.a / ".mitrailleuse").exists() and not (shared.b / ".mitrailleuse").exists()


@pytest.fixture
def closed_port_env(tmp_path: Path) -> dict[str, str]:
    """A REDIS_URL (with a password) at a port nobody listens on."""
    return {
        "REDIS_URL": f"redis://:hunter2@127.0.0.1:{free_port()}/0",
        "MITRAILLEUSE_TASKS_DIR": str(tmp_path / "tasks"),
        "OPENAI_API_KEY": "sk-test-closed",
    }


@pytest.mark.parametrize("command", ["execute", "status", "cancel", "run"])
def test_an_unreachable_redis_is_one_line_and_exit_2(
    tmp_path: Path, closed_port_env: dict[str, str], command: str
) -> None:
    write_jsonl(tmp_path / "q.jsonl", questions(2))
    made = cli(
        *("create", "--user-id", "u", "--api-name", "openai", "--task-name", "t"),
        "--input=q.jsonl",
        cwd=tmp_path,
        env=closed_port_env,
    )
    assert made.returncode == 0, made.stderr  # create needs no Redis
    path = made.stdout.strip().splitlines()[-1]
    args = {
        "execute": ["execute", "--task-path", path],
        "status": ["status", path],
        "cancel": ["cancel", path],
        "run": ["run", "--api-name", "openai", "--input", "q.jsonl"],
    }[command]

    done = cli(*args, cwd=tmp_path, env=closed_port_env, timeout=20)

    shown = url_for_display(closed_port_env["REDIS_URL"])
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip().splitlines() == [
        f"error: cannot reach Redis at {shown} (REDIS_URL): Connection refused"
    ]
    assert "hunter2" not in done.stdout + done.stderr
    assert len(list((tmp_path / "tasks").glob("*/*/status.json"))) == 1, "run created a task"


def test_broker_commands_with_redis_url_set(
    tmp_path: Path, redis_server, closed_port_env: dict[str, str]
) -> None:
    given = {**closed_port_env, "REDIS_URL": redis_server.url}
    reachable = cli("broker", "status", cwd=tmp_path, env=given)
    assert reachable.returncode == 0, reachable.stderr
    assert reachable.stdout.strip() == f"REDIS_URL is set: {redis_server.url}, reachable"

    closed = closed_port_env["REDIS_URL"]
    unreachable = cli("broker", "status", cwd=tmp_path, env=closed_port_env)
    assert unreachable.stdout.strip() == (
        f"REDIS_URL is set: {url_for_display(closed)}, unreachable (Connection refused)"
    )

    refused = cli("broker", "stop", cwd=tmp_path, env=given)
    assert refused.returncode == 2
    assert len(refused.stderr.strip().splitlines()) == 1 and "REDIS_URL is set" in refused.stderr
    assert redis.Redis.from_url(redis_server.url).ping()
    assert "hunter2" not in unreachable.stdout + unreachable.stderr
    assert not (tmp_path / "tasks").exists()


def test_two_workers_on_one_host_have_names_of_their_own(
    tmp_path: Path, fleet_env: dict[str, str], sim
) -> None:
    from mitrailleuse.pipeline.app import app

    env = {**fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tmp_path / "tasks")}
    logs = [tmp_path / f"worker{n}.log" for n in range(2)]
    workers = []
    for log in logs:
        with log.open("wb") as output:
            workers.append(
                subprocess.Popen(
                    [sys.executable, "-m", "mitrailleuse", "worker", "-c", "2"],
                    cwd=tmp_path,
                    env={**os.environ, **env},
                    stdout=output,
                    stderr=subprocess.STDOUT,
                )
            )
    try:
        deadline = time.monotonic() + 60
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                replies = app.control.inspect(timeout=1.0).ping() or {}  # warns of duplicates
            names = {name for name in replies if name.startswith("mitrailleuse-")}
            duplicates = [w for w in caught if issubclass(w.category, DuplicateNodenameWarning)]
            assert not duplicates, duplicates[0].message
            if len(names) == 2:
                break
            assert time.monotonic() < deadline, (names, [log.read_text()[-1000:] for log in logs])

        write_jsonl(tmp_path / "q.jsonl", questions(4))
        made = cli(
            *("create", "--user-id", "u", "--api-name", "openai", "--task-name", "t"),
            "--input=q.jsonl",
            cwd=tmp_path,
            env=env,
        )
        path = made.stdout.strip().splitlines()[-1]
        for args in (["execute", "--task-path", path], ["status", path]):
            done = cli(*args, cwd=tmp_path, env=env)
            assert done.returncode == 0, done.stderr[-2000:]
            assert "DuplicateNodenameWarning" not in done.stdout + done.stderr
    finally:
        for worker in workers:
            worker.send_signal(signal.SIGTERM)
        for worker in workers:
            worker.wait(30)
    for log in logs:
        assert "DuplicateNodenameWarning" not in log.read_text()

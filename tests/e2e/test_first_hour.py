"""What a newcomer meets in the first hour, end to end: the CLI as a subprocess, real workers.

The failure digest, the stalled status, the key check, plain progress without a terminal, the
progress line on an 80-column terminal, and Ctrl-C during ``run``.
"""

from __future__ import annotations

import json
import os
import pty
import re
import signal
import struct
import subprocess
import sys
import termios
import time
from fcntl import ioctl
from pathlib import Path

import pytest

from mitrailleuse.api import Mitrailleuse
from tests.e2e.helpers import questions, write_jsonl
from tests.e2e.test_cli import REPO, cli

pytestmark = pytest.mark.e2e

ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]|\x1b\][^\x07]*\x07|\r")


@pytest.fixture
def local_env(sim, tmp_path: Path) -> dict[str, str]:
    """`run` on this machine: the embedded broker (no REDIS_URL), the simulator as OpenAI."""
    return {
        "REDIS_URL": "",
        "MITRAILLEUSE_TASKS_DIR": str(tmp_path / "tasks"),
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": "sk-test-first-hour",
        # the task's rate_limit block, not the fleet fixture's limit overrides
        **{
            f"MITRAILLEUSE_OPENAI_{limit}": ""
            for limit in ("REQUESTS_PER_MINUTE", "TOKENS_PER_MINUTE", "MAX_IN_FLIGHT")
        },
    }


def run_here(workdir: Path, env: dict[str, str], *extra: str):
    """`mitrailleuse run` of the openai items in ``workdir/q.jsonl``."""
    return cli("run", "--api-name", "openai", "--input", "q.jsonl", *extra, cwd=workdir, env=env)


def create_here(workdir: Path, env: dict[str, str], user: str, name: str) -> str:
    """`mitrailleuse create` of an openai task of ``workdir/q.jsonl``; its folder."""
    args = ["--user-id", user, "--api-name", "openai", "--task-name", name, "--input", "q.jsonl"]
    made = cli("create", *args, cwd=workdir, env=env)
    assert made.returncode == 0, made.stderr
    return made.stdout.strip().splitlines()[-1]


def test_failures_are_digested_by_type_with_a_hint(tmp_path, local_env):
    rows = [
        {"input_text": "fine"},
        {"input_text": "[[status:400]] refused"},
        {"input_text": "[[status:400]] refused again"},
        {"input_text": "[[status:404]] no such model"},
        {"no_prompt": 1},
    ]
    write_jsonl(tmp_path / "q.jsonl", rows)
    done = run_here(tmp_path, local_env)
    assert done.returncode == 1, done.stderr[-2000:]
    lines = done.stdout.splitlines()
    assert "2 × http_400: the provider refused the request" in done.stdout, done.stdout
    assert any(line.strip().startswith("1 × http_404: unknown model") for line in lines)
    assert any(
        line.strip().startswith("1 × invalid_input: fix those input lines") for line in lines
    )
    results = Path(lines[-1])
    summary = json.loads((results.parent / "summary.json").read_text())
    failures = summary["failures"]
    assert {kind: found["count"] for kind, found in failures.items()} == {
        "http_400": 2,
        "http_404": 1,
        "invalid_input": 1,
    }
    assert list(failures) == ["http_400", "http_404", "invalid_input"], "most frequent first"
    assert failures["http_400"]["first_id"] == "q.jsonl:2"
    assert failures["http_400"]["hint"]


def test_a_run_no_worker_serves_is_stalled_not_running(
    tmp_path, tasks_dir, redis_server, fleet_env
):
    api = Mitrailleuse()
    _wait_until_no_worker_lives(api)
    write_jsonl(tmp_path / "q.jsonl", questions(5))
    path = create_here(tmp_path, fleet_env, "nobody", "waits")
    sent = cli("execute", path, "--detach", cwd=tmp_path, env=fleet_env)
    assert sent.returncode == 0, sent.stderr
    assert "no worker serves mitrailleuse, openai" in sent.stderr
    shown = cli("status", path, cwd=tmp_path, env=fleet_env)
    assert shown.stdout.startswith("stalled (no worker serves mitrailleuse, openai): 0/5 done")
    listed = cli("list", cwd=tmp_path, env=fleet_env)
    assert re.search(r"\bnobody\b.*\bstalled\b", listed.stdout), listed.stdout
    assert "no worker serves mitrailleuse, openai" in listed.stderr
    api.get_run(path).cancel()


def _wait_until_no_worker_lives(api: Mitrailleuse, timeout_s: float = 30) -> None:
    """Workers an earlier test killed stay alive in Redis for a heartbeat TTL: outwait them."""
    from mitrailleuse.pipeline import liveness

    deadline = time.monotonic() + timeout_s
    while any(liveness.serving(api.redis, ["openai", "mitrailleuse"]).values()):
        assert time.monotonic() < deadline, "a worker of an earlier test is still alive"
        time.sleep(0.5)


def test_run_without_a_key_is_refused_before_anything_is_made(tmp_path, local_env):
    write_jsonl(tmp_path / "q.jsonl", questions(3))
    env = {**local_env, "OPENAI_API_KEY": ""}
    done = run_here(tmp_path, env)
    assert done.returncode == 2, done.stderr
    assert done.stderr.strip() == (
        "error: OPENAI_API_KEY is not set in this shell: export it, then run again"
    )
    assert not list((tmp_path / "tasks").glob("[!.]*/*")), "a task folder was made"


def test_execute_refuses_when_the_serving_worker_has_no_key(
    tmp_path, tasks_dir, start_worker, fleet_env
):
    start_worker(env={"OPENAI_API_KEY": ""})
    write_jsonl(tmp_path / "q.jsonl", questions(3))
    path = create_here(tmp_path, fleet_env, "k", "nokey")
    sent = cli("execute", path, cwd=tmp_path, env=fleet_env)
    assert sent.returncode == 2, sent.stderr
    assert sent.stderr.strip() == (
        "error: OPENAI_API_KEY is not set where the 1 worker(s) serving openai run: "
        "set it there and restart them"
    )
    assert json.loads((Path(path) / "status.json").read_text())["state"] == "created"


def test_plain_progress_without_a_terminal_and_the_pace_hint(tmp_path, local_env):
    """No terminal: a progress line every few seconds; a rate-bound run says so at the end."""
    write_jsonl(tmp_path / "q.jsonl", questions(40))
    config = {"openai": {"rate_limit": {"requests_per_minute": 180}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    done = run_here(tmp_path, local_env, "--config", "config.json")
    assert done.returncode == 0, done.stderr[-2000:]
    progress = [line for line in done.stderr.splitlines() if re.search(r"\d+/40 \d+/s ETA", line)]
    assert len(progress) >= 2, done.stderr
    assert progress[-1].startswith("completed 40/40")
    assert "hint: the rate budget set the pace" in done.stdout, done.stdout
    assert "openai.rate_limit.requests_per_minute 180" in done.stdout


def test_progress_none_prints_only_the_end(tmp_path, local_env):
    write_jsonl(tmp_path / "q.jsonl", questions(5))
    done = run_here(tmp_path, local_env, "--progress", "none")
    assert done.returncode == 0, done.stderr[-2000:]
    assert "ETA" not in done.stderr
    assert done.stdout.startswith("completed: 5/5 done")


def _run_on_a_terminal(args: list[str], cwd: Path, env: dict[str, str], columns: int):
    """Start the CLI on a pseudo-terminal of ``columns`` columns; return it and the pty's end."""
    leader, follower = pty.openpty()
    ioctl(follower, termios.TIOCSWINSZ, struct.pack("HHHH", 24, columns, 0, 0))
    process = subprocess.Popen(
        [sys.executable, "-m", "mitrailleuse", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), "TERM": "xterm", **env},
        stdin=follower,
        stdout=follower,
        stderr=follower,
        start_new_session=True,
    )
    os.close(follower)
    return process, leader


def _read_all(leader: int, process: subprocess.Popen, timeout_s: float = 120) -> str:
    chunks = []
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        try:
            data = os.read(leader, 65536)
        except OSError:  # the terminal closed: the process has exited
            break
        if not data:
            break
        chunks.append(data)
    process.wait(timeout=max(deadline - time.monotonic(), 1))
    os.close(leader)
    return b"".join(chunks).decode(errors="replace")


def test_the_progress_line_fits_80_columns_whole(tmp_path, local_env):
    write_jsonl(tmp_path / "q.jsonl", questions(300))
    config = {"openai": {"rate_limit": {"requests_per_minute": 1200}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    process, leader = _run_on_a_terminal(
        ["run", "--api-name", "openai", "--input", "q.jsonl", "--config", "config.json"],
        tmp_path,
        local_env,
        80,
    )
    shown = _read_all(leader, process)
    assert process.returncode == 0, shown[-2000:]
    frames = [ANSI.sub("", frame) for frame in re.split(r"\r|\n|\x1b\[2K", shown)]
    lines = [line for line in frames if "ETA" in line]
    assert lines, shown[-2000:]
    for line in lines:
        assert len(line) <= 80, line
        assert re.search(r" \d+/300 \d+/s ETA (\d+:\d\d:\d\d|-:--:--)", line), line
    assert any("rpm" in line for line in lines), "secondary figures shown when they fit"


def test_ctrl_c_during_run_says_how_to_resume(tmp_path, local_env):
    write_jsonl(tmp_path / "q.jsonl", questions(200))
    config = {"openai": {"rate_limit": {"requests_per_minute": 60}, "batch": {"batch_size": 5}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "mitrailleuse",
            "run",
            "--api-name",
            "openai",
            "--input",
            "q.jsonl",
            "--config",
            "config.json",
        ],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(REPO), **local_env},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as from a terminal's shell: a suite started in the background (`make test &`) ignores
        # SIGINT, and an ignored SIGINT is inherited (Python then never raises KeyboardInterrupt)
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 60
    while not re.search(r"running: [1-9]\d*/200", _status_of_local_run(tmp_path, local_env)):
        assert time.monotonic() < deadline and process.poll() is None, "no item done"
        time.sleep(0.5)
    os.killpg(process.pid, signal.SIGINT)  # a terminal's Ctrl-C reaches the whole group
    _, stderr = process.communicate(timeout=90)
    assert process.returncode == 130, stderr[-2000:]
    (folder,) = (tmp_path / "tasks" / "local").iterdir()
    assert f"resume with `mitrailleuse execute {folder}`" in stderr, stderr[-2000:]
    assert "Traceback" not in stderr


def _status_of_local_run(tmp_path: Path, env: dict[str, str]) -> str:
    if not list((tmp_path / "tasks").glob("local/*/status.json")):
        return ""
    return cli("status", "--user-id", "local", "--task-name", "run", cwd=tmp_path, env=env).stdout

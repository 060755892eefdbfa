"""The CLI as users run it: a subprocess, its output and its exit codes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from tests.e2e.helpers import questions, write_jsonl

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]


def cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "mitrailleuse", *args],
        cwd=cwd,
        env={**os.environ, "PYTHONPATH": str(REPO), **(env or {})},
        capture_output=True,
        text=True,
        timeout=120,
    )


def create(workdir: Path, user: str, name: str, *extra: str, env=None):
    """``mitrailleuse create`` for an openai task."""
    args = ["--user-id", user, "--api-name", "openai", "--task-name", name, *extra]
    return cli("create", *args, cwd=workdir, env=env)


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    (tmp_path / "q.jsonl").write_text('{"input_text": "hello"}\n')
    return tmp_path


def test_create_list_get(workdir):
    made = create(workdir, "alice", "faq", "--input", "q.jsonl")
    assert made.returncode == 0, made.stderr
    path = Path(made.stdout.strip().splitlines()[-1])
    assert path.is_dir() and path.parent == workdir / "tasks" / "alice"
    assert (path / "inputs" / "q.jsonl").read_text() == '{"input_text": "hello"}\n'

    listed = cli("list", "--user-id", "all", cwd=workdir)
    assert listed.returncode == 0 and path.name in listed.stdout and "created" in listed.stdout

    got = cli("get", "--task-path", str(path), cwd=workdir)
    assert got.returncode == 0 and '"state": "created"' in got.stdout


@pytest.mark.parametrize(
    ("config", "field"),
    [
        ({"openai": {"batch": {"batch_size": -1}}}, "openai.batch.batch_size"),
        ({"general": {"sampling": {"sample_size": "ten"}}}, "general.sampling.sample_size"),
        ({"openai": {"retry": {"max_backoff_s": "soon"}}}, "openai.retry.max_backoff_s"),
    ],
)
def test_bad_config_exits_2_with_one_line(workdir, config, field):
    (workdir / "config.json").write_text(json.dumps(config))
    made = create(workdir, "u", "t", "--config", "config.json", "--input", "q.jsonl")
    assert made.returncode == 2
    assert len(made.stderr.strip().splitlines()) == 1, made.stderr
    assert field in made.stderr and "Traceback" not in made.stderr
    assert not (workdir / "tasks").exists() or not any((workdir / "tasks").rglob("status.json"))


@pytest.mark.parametrize(
    "args",
    [
        ["--user-id", "..", "--task-name", "t"],
        ["--user-id", "u", "--task-name", "../../etc"],
        ["--user-id", "/tmp", "--task-name", "t"],
        ["--user-id", "u", "--task-name", "a\\b"],
    ],
)
def test_traversal_is_refused_and_leaves_nothing(workdir, args):
    made = cli("create", "--api-name", "openai", *args, "--input", "q.jsonl", cwd=workdir)
    assert made.returncode == 2 and "Traceback" not in made.stderr
    assert len(made.stderr.strip().splitlines()) == 1
    assert not any((workdir / "tasks").rglob("*")) if (workdir / "tasks").exists() else True


def test_bad_usage_and_bad_paths_exit_2(workdir):
    assert cli("create", "--user-id", "u", cwd=workdir).returncode == 2
    assert cli("nonsense", cwd=workdir).returncode == 2
    missing = create(workdir, "u", "t", "--input", "missing.jsonl")
    assert missing.returncode == 2 and "missing.jsonl" in missing.stderr


@pytest.mark.parametrize("path", ["/etc", "tasks/../..", "../../.."])
@pytest.mark.parametrize(
    "command", [("get", "--task-path"), ("execute", "--task-path"), ("status",), ("cancel",)]
)
def test_task_paths_outside_the_tasks_dir_are_refused(workdir, command, path):
    (workdir / "tasks").mkdir(exist_ok=True)
    outside = cli(*command, path, cwd=workdir, env={"REDIS_URL": "redis://127.0.0.1:1/0"})
    assert outside.returncode == 2, outside.stderr
    assert "outside" in outside.stderr or "not a task" in outside.stderr, outside.stderr
    assert len(outside.stderr.strip().splitlines()) == 1 and "Traceback" not in outside.stderr


def test_run_executes_on_the_embedded_broker(workdir, sim):
    """`run` with no REDIS_URL: starts the embedded Redis and a child worker, stops both."""
    write_jsonl(workdir / "many.jsonl", questions(40))
    env = {
        "REDIS_URL": "",
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": "sk-test-run",
    }
    done = cli("run", "--api-name", "openai", "--input", "many.jsonl", cwd=workdir, env=env)
    assert done.returncode == 0, done.stderr[-2000:]
    results = Path(done.stdout.strip().splitlines()[-1])
    lines = results.read_text().splitlines()
    assert len(lines) == 40 and all('"succeeded"' in line for line in lines)
    home = workdir / "tasks" / ".mitrailleuse" / "redis"
    assert (home / "redis.conf").exists() and not (home / "url").exists(), "Redis left running"


def test_run_exits_1_when_items_fail(workdir, sim):
    write_jsonl(workdir / "bad.jsonl", [{"input_text": "fine"}, {"no_prompt": 1}])
    env = {"REDIS_URL": "", "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-run"}
    done = cli("run", "--api-name", "openai", "--input", "bad.jsonl", cwd=workdir, env=env)
    assert done.returncode == 1, done.stderr[-2000:]


def test_execute_detach_then_status(workdir, start_worker, sim, fleet_env):
    start_worker()
    write_jsonl(workdir / "d.jsonl", questions(30))
    made = create(workdir, "eve", "detached", "--input", "d.jsonl", env=fleet_env)
    path = made.stdout.strip().splitlines()[-1]
    sent = cli("execute", "--task-path", path, "--detach", cwd=workdir, env=fleet_env)
    assert sent.returncode == 0 and "submitted run" in sent.stdout
    deadline = time.monotonic() + 60
    while "completed" not in (shown := cli("status", path, cwd=workdir, env=fleet_env)).stdout:
        assert time.monotonic() < deadline, shown.stdout
        time.sleep(0.5)
    assert "30/30 done" in shown.stdout
    again = cli(
        "execute", "--user-id", "eve", "--task-name", "detached", cwd=workdir, env=fleet_env
    )
    assert again.returncode == 0, again.stderr[-2000:]

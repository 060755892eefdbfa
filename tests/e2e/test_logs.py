"""What a worker's log says: one line per retry and per failed item, as text or JSON.

A real worker writes its log to a file (``--logfile``, at INFO as ``mitrailleuse worker``
runs); ``mitrailleuse run`` keeps its child worker's output out of the terminal.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import orjson
import pytest

from tests.conftest import TEST_KEY
from tests.e2e.helpers import new_task, questions, write_jsonl
from tests.e2e.test_cli import cli
from tests.e2e.test_spend import PRICED

pytestmark = pytest.mark.e2e

#: An item the simulator fails once with a 503, and one it always refuses with a 400.
ROWS = [{"input_text": "flaky [[fail-first:503]]"}, {"input_text": "refused [[status:400]]"}]
FAST_RETRY = {"openai": {"retry": {"initial_backoff_s": 0.1, "max_backoff_s": 0.2}}}


def run_logged(tmp_path: Path, start_worker: Any, env: dict[str, str]) -> tuple[str, str]:
    """Run ROWS on a worker logging to a file; the run's id and the log's text."""
    log = tmp_path / "worker.log"
    start_worker(env=env, extra=("--loglevel", "INFO", "--logfile", str(log)))
    m, task = new_task(tmp_path, ROWS, FAST_RETRY)
    run = m.submit(task)
    progress = run.wait(timeout=60)
    assert (progress.succeeded, progress.failed) == (1, 1), progress
    return run.run_id, log.read_text()


def test_one_line_per_retry_and_per_failed_item(tmp_path, tasks_dir, sim, start_worker):
    run_id, text = run_logged(tmp_path, start_worker, {})

    retries = [line for line in text.splitlines() if "retry run=" in line]
    assert len(retries) == 1, text
    assert f"run={run_id}" in retries[0] and "items=t.jsonl:1 " in retries[0]
    assert "attempt 2/6" in retries[0] and "503" in retries[0]
    assert "Retry in" not in text  # Celery's own retry line, which says nothing of why
    failures = [line for line in text.splitlines() if "WARNING" in line and "failed run=" in line]
    assert len(failures) == 1, text
    assert f"run={run_id}" in failures[0] and "item=t.jsonl:2 " in failures[0]
    assert "http_400" in failures[0]
    assert "HTTP Request:" not in text  # httpx's line per request
    assert "flaky" not in text and "refused" not in text and TEST_KEY not in text


def test_json_lines_carry_the_ids(tmp_path, tasks_dir, sim, start_worker):
    run_id, text = run_logged(tmp_path, start_worker, {"MITRAILLEUSE_LOG_FORMAT": "json"})

    lines = [line for line in text.splitlines() if line.strip()]
    entries = [orjson.loads(line) for line in lines]
    assert all({"ts", "level", "logger", "message"} <= entry.keys() for entry in entries)
    retries = [entry for entry in entries if entry["message"].startswith("retry ")]
    assert len(retries) == 1, text
    assert retries[0]["run"] == run_id and retries[0]["items"] == ["t.jsonl:1"]
    assert (retries[0]["attempt"], retries[0]["status_code"]) == (2, 503)
    failures = [entry for entry in entries if entry["level"] == "WARNING" and "item" in entry]
    assert [(f["run"], f["item"], f["error_type"]) for f in failures] == [
        (run_id, "t.jsonl:2", "http_400")
    ]


def test_run_keeps_the_worker_output_in_its_log_file(tmp_path, sim):
    write_jsonl(tmp_path / "q.jsonl", [*questions(5), ROWS[0]])
    env = {"REDIS_URL": "", "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-logs"}
    done = cli("run", "--api-name", "openai", "--input", "q.jsonl", cwd=tmp_path, env=env)
    assert done.returncode == 0, done.stderr[-2000:]

    shown = done.stdout + done.stderr
    for leak in ("SecurityWarning", "Warm shutdown", "-------------- celery@", "retry run="):
        assert leak not in shown, shown[-2000:]
    [log] = (tmp_path / "tasks").rglob("logs/worker.log")
    assert "retry run=" in log.read_text()  # the worker's INFO lines are in the file instead


def test_run_that_does_not_complete_names_the_worker_log(tmp_path, sim):
    config = {**PRICED, "general": {**PRICED["general"], "cost_limit_usd": 0.001}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    write_jsonl(tmp_path / "q.jsonl", questions(5))
    env = {"REDIS_URL": "", "OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-logs"}
    args = ("--api-name", "openai", "--input", "q.jsonl", "--config", "config.json")
    done = cli("run", *args, cwd=tmp_path, env=env)

    named = [line for line in done.stderr.splitlines() if line.startswith("worker log: ")]
    assert len(named) == 1, done.stderr[-2000:]
    assert (tmp_path / named[0].removeprefix("worker log: ")).is_file()

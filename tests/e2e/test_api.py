"""The Python API end to end, with celery.contrib.pytest's in-process worker on the real Redis.

Create (config as a dict, a path or a model; inputs as paths or dicts), submit, callbacks for
every item and once for completion, results, cancel and resume, re-attach from a second process.
"""

from __future__ import annotations

import asyncio
import json
import logging
import os
import subprocess
import sys
import threading
import time

import pytest
from celery.result import denied_join_result

from mitrailleuse import Mitrailleuse, TaskConfig
from mitrailleuse.pipeline.queues import all_queues
from tests.conftest import REPO
from tests.e2e.helpers import questions, wait_done, write_jsonl

pytestmark = pytest.mark.e2e


@pytest.fixture
def celery_app(fleet_env):
    """celery.contrib.pytest's worker runs the real Mitrailleuse app, on the session's Redis."""
    from mitrailleuse.pipeline.app import app

    return app


@pytest.fixture
def celery_worker_pool() -> str:
    return "threads"


@pytest.fixture
def celery_worker_parameters() -> dict:
    return {"queues": all_queues(), "concurrency": 8, "perform_ping_check": False}


@pytest.fixture
def root_level() -> int:
    return logging.getLogger().level


@pytest.fixture
def worker(root_level, celery_worker):
    """The in-process worker, with this process treated as a worker is: it never joins a
    result, so the chords its feeder sends do not subscribe to their results."""
    with denied_join_result():
        yield celery_worker
    # celery.contrib.testing sets the root logger's level for its worker: later tests capture
    # warnings again
    logging.getLogger().setLevel(root_level)


def test_round_trip_with_callbacks(tmp_path, tasks_dir, sim, worker, caplog):
    m = Mitrailleuse()
    rows = questions(30)
    task = m.create_task("api", "openai", "dicts", {"openai": {"batch": {"batch_size": 7}}}, rows)
    items: list[dict] = []
    progress_seen: list = []
    completed = threading.Event()
    completions: list = []

    def on_progress(run, progress):
        progress_seen.append(progress)
        if len(progress_seen) == 1:
            raise RuntimeError("a broken progress callback")  # logged, the run goes on

    def on_complete(run):
        completions.append(run.run_id)
        completed.set()

    run = m.submit(
        task,
        on_progress=on_progress,
        on_item=lambda r, rec: items.append(rec),
        on_complete=on_complete,
    )
    assert run.wait(timeout=60).succeeded == 30
    assert completed.wait(10), "on_complete never came"
    assert completions == [run.run_id], "on_complete must come once"
    assert {rec["id"] for rec in items} == {f"items.jsonl:{n}" for n in range(1, 31)}
    assert progress_seen and progress_seen[-1].done == 30
    assert "a broken progress callback" in caplog.text

    records = list(run.results())
    assert [r["index"] for r in records] == list(range(1, 31))
    assert records[4]["output"] and "q-5" in records[4]["output"]
    assert asyncio.run(run.wait_async(timeout=5)).state == "completed"

    async def collect():
        return [record async for record in run.aresults()]

    assert asyncio.run(collect()) == records


def test_config_as_path_or_model_and_reattach_from_another_process(
    tmp_path, tasks_dir, sim, worker, fleet_env
):
    m = Mitrailleuse()
    config_file = tmp_path / "config.json"
    config_file.write_text(json.dumps({"openai": {"batch": {"batch_size": 5}}}))
    source = write_jsonl(tmp_path / "q.jsonl", questions(12))
    from_path = m.create_task("api", "openai", "path", config_file, [source])
    model = TaskConfig.model_validate({"openai": {"api_information": {"model": "gpt-4o"}}})
    from_model = m.create_task("api", "openai", "model", model, [str(source)])
    assert from_path.config().openai.batch.batch_size == 5
    assert from_model.config().openai.api_information.model == "gpt-4o"

    m.submit(from_path)
    script = (
        "import sys; from mitrailleuse import Mitrailleuse\n"
        "run = Mitrailleuse().get_run(sys.argv[1])\n"
        "print(run.wait(timeout=60).state, sum(1 for _ in run.results()))\n"
    )
    env = {**os.environ, **fleet_env, "PYTHONPATH": str(REPO)}
    other = subprocess.run(
        [sys.executable, "-c", script, str(from_path.path)],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert other.returncode == 0, other.stderr
    assert other.stdout.split() == ["completed", "12"]


def test_cancel_then_submit_again_resumes(tmp_path, tasks_dir, sim, worker):
    sim.configure(latency_ms=100)
    m = Mitrailleuse()
    task = m.create_task(
        "api", "openai", "cancel", {"openai": {"batch": {"batch_size": 5}}}, questions(120)
    )
    run = m.submit(task)
    wait_done(run, 10)
    run.cancel()
    stopped = run.wait(timeout=60)
    assert stopped.state == "cancelled" and 10 <= stopped.done < 120
    assert len(list(run.results())) == stopped.done

    again = m.submit(task).wait(timeout=120)
    assert again.state == "completed" and again.succeeded == 120
    assert sim.stats()["chat_requests"] == 120, "an item was sent twice"


def test_a_raising_item_callback_does_not_break_the_run(tmp_path, tasks_dir, sim, worker, caplog):
    caplog.set_level(logging.ERROR)
    m = Mitrailleuse()
    task = m.create_task("api", "openai", "raising", None, questions(10))

    seen: list[str] = []
    completed = threading.Event()

    def boom(run, record):
        seen.append(record["id"])
        raise ValueError("callback bug")

    run = m.submit(task, on_item=boom, on_complete=lambda run: completed.set())
    assert run.wait(timeout=60).succeeded == 10
    assert completed.wait(10), "the listener stopped at the first raising callback"
    assert sorted(seen) == sorted(f"items.jsonl:{n}" for n in range(1, 11))
    assert caplog.text.count("callback bug") >= 10  # each one logged, with its traceback


def test_the_readme_example_runs(tmp_path, tasks_dir, sim, worker, capsys):
    readme = (REPO / "README.md").read_text()
    section = readme.split("### From Python", 1)[1]
    example = section.split("```python\n", 1)[1].split("```", 1)[0]
    exec(compile(example, "README.md", "exec"), {})
    printed = capsys.readouterr().out
    deadline = time.monotonic() + 10
    while "done " not in printed and time.monotonic() < deadline:  # callbacks come from a thread
        time.sleep(0.1)
        printed += capsys.readouterr().out
    assert "1 / 1" in printed and "items.jsonl:1 succeeded" in printed and "done " in printed
    assert "What is the capital of France?" in printed  # the simulator's echo: the output

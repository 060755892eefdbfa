"""`mitrailleuse flower`: the dashboard on the fleet's broker, behind basic auth (issues 7, 8)."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator

import httpx
import pytest

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.testing import free_port
from tests.conftest import REPO, TEST_KEY
from tests.e2e.helpers import write_jsonl

pytestmark = pytest.mark.e2e

AUTH = ("watcher", "flower-test-password")


@pytest.fixture
def flower(fleet_env) -> Iterator[str]:
    """A Flower process on a free loopback port; its URL."""
    port = free_port()
    env = {**os.environ, **fleet_env, "FLOWER_BASIC_AUTH": ":".join(AUTH)}
    command = [sys.executable, "-m", "mitrailleuse", "flower", "--port", str(port)]
    process = subprocess.Popen(command, env=env, cwd=REPO, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 30
    while True:
        assert process.poll() is None, "flower exited"
        try:
            httpx.get(f"{url}/healthcheck", timeout=1)
            break
        except httpx.TransportError:
            assert time.monotonic() < deadline, "flower did not answer"
            time.sleep(0.2)
    yield url
    process.terminate()
    process.wait(15)


def flower_tasks(url: str) -> dict[str, dict]:
    return httpx.get(f"{url}/api/tasks", auth=AUTH, timeout=5).json()


def test_flower_lists_the_run_with_ids_and_no_key_or_prompt(
    flower, tmp_path, tasks_dir, sim, start_worker
):
    assert httpx.get(f"{flower}/api/tasks", timeout=5).status_code == 401
    start_worker()
    m = Mitrailleuse()
    config = {"openai": {"api_key": TEST_KEY, "batch": {"batch_size": 5}}}
    # Flower switches task events on in the workers every few seconds: warm up until it sees one
    deadline = time.monotonic() + 30
    while not flower_tasks(flower):
        assert time.monotonic() < deadline, "Flower saw no task"
        source = write_jsonl(tmp_path / "warm.jsonl", [{"input_text": "warm up"}])
        m.submit(m.create_task("sec", "openai", "warm", config, [source])).wait(timeout=30)

    secret_prompt = "PRIVATE-PROMPT-TEXT"
    rows = [{"input_text": f"{secret_prompt} {n}"} for n in range(20)]
    task = m.create_task(
        "sec", "openai", "watched", config, [write_jsonl(tmp_path / "w.jsonl", rows)]
    )
    run = m.submit(task)
    assert run.wait(timeout=60).succeeded == 20
    time.sleep(1)  # the last task events reach Flower

    tasks = flower_tasks(flower)
    calls = [
        t
        for t in tasks.values()
        if t["name"] == "mitrailleuse.call" and run.run_id in (t["args"] or "")
    ]
    # a chunk of 5 items is one message (up to general.calls_per_message provider calls)
    assert len(calls) == 4, [t["args"] for t in tasks.values()]
    assert sorted(t["args"].split("items=[")[1] for t in calls)[0].startswith("w.jsonl:1, ")
    assert all("provider=openai" in t["args"] and "w.jsonl:" in t["args"] for t in calls)
    names = {t["name"] for t in tasks.values()}
    assert {"mitrailleuse.feed", "mitrailleuse.assemble_chunk"} <= names
    dump = httpx.get(f"{flower}/api/tasks", auth=AUTH, timeout=5).text
    dump += httpx.get(f"{flower}/api/workers", auth=AUTH, timeout=10).text
    for task_id in list(tasks)[:5]:
        dump += httpx.get(f"{flower}/api/task/info/{task_id}", auth=AUTH, timeout=5).text
    assert TEST_KEY not in dump, "the key is in what Flower shows"
    assert secret_prompt not in dump, "a prompt is in what Flower shows"


def test_flower_refuses_a_public_address_without_auth(tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "FLOWER_BASIC_AUTH"}
    command = [sys.executable, "-m", "mitrailleuse", "flower", "--address", "0.0.0.0"]
    done = subprocess.run(
        command, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 2 and "FLOWER_BASIC_AUTH" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1

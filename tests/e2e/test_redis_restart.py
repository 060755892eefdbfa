"""Redis stopped and started again (AOF on) in the middle of a run (issue 7)."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import redis

from mitrailleuse.broker import EmbeddedRedis
from mitrailleuse.records import read_records
from tests.e2e.helpers import (
    calls_per_slot,
    new_task,
    questions,
    results,
    sent_twice,
    wait_done,
    write_jsonl,
)

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
CONCURRENCY = 8


@pytest.mark.parametrize("how", [signal.SIGTERM, signal.SIGKILL], ids=["stopped", "killed"])
def test_redis_restarted_mid_run(how, tmp_path, tasks_dir, sim, start_worker, redis_server):
    sim.configure(latency_ms=30)
    start_worker(concurrency=CONCURRENCY)
    m, task = new_task(tmp_path, questions(400), {"openai": {"batch": {"batch_size": 20}}})
    run = m.submit(task)
    wait_done(run, 80)
    redis_server.stop(how)
    time.sleep(2)
    redis_server.start()

    progress = run.wait(timeout=240)
    assert progress.state == "completed" and progress.succeeded == 400, progress
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, 401)), "an item is missing or doubled"
    assert all(r["status"] == "succeeded" for r in records)
    # with appendfsync always nothing acknowledged is lost; a message whose channel dropped comes
    # back and finds its record, or the claim of the call still running: no worker died, so no
    # item is sent twice (README "Guarantees")
    assert sent_twice(sim) == {}
    assert sim.stats()["chat_requests"] == 400


def test_embedded_redis_killed_under_run(tmp_path, sim):
    """`run` owns its embedded Redis: killed with SIGKILL, it is started again and the run ends."""
    write_jsonl(tmp_path / "q.jsonl", questions(300))
    sim.configure(latency_ms=100)
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "REDIS_URL": "",
        "OPENAI_BASE_URL": f"{sim.url}/v1",
        "OPENAI_API_KEY": "sk-test-run",
        "MITRAILLEUSE_CONCURRENCY": "4",
    }
    command = [sys.executable, "-m", "mitrailleuse", "run", "--api-name", "openai"]
    run = subprocess.Popen(
        [*command, "--input", "q.jsonl"], cwd=tmp_path, env=env, stdout=subprocess.PIPE, text=True
    )
    embedded = EmbeddedRedis(tmp_path / "tasks" / ".mitrailleuse" / "redis")
    deadline = time.monotonic() + 60
    while sim.stats()["chat_requests"] < 60:
        assert time.monotonic() < deadline and run.poll() is None, "the run did not get going"
        time.sleep(0.05)
    first_pid = embedded.pid
    os.kill(first_pid, signal.SIGKILL)

    out, _ = run.communicate(timeout=240)
    assert run.returncode == 0, out
    records = list(read_records(Path(out.strip().splitlines()[-1])))
    assert [r["index"] for r in records] == list(range(1, 301)), "an item is missing or doubled"
    assert sent_twice(sim) == {}, "an item was sent again: no worker died"
    assert not embedded.is_running(), "run left its embedded Redis running"


def test_a_message_lost_as_redis_died_handing_it_over_is_sent_again(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """Redis killed between a worker's BRPOP taking a message and its reply: the message is
    gone from every list. The feed watch finds its chunk with no message and sends it again.
    """
    client = redis.Redis.from_url(redis_server.url)
    start_worker(queues=["mitrailleuse"])
    m, task = new_task(tmp_path, questions(40), {"openai": {"batch": {"batch_size": 20}}})
    run = m.submit(task)
    messages = 2 * math.ceil(20 / calls_per_slot(20))  # of the two chunks
    deadline = time.monotonic() + 30
    while client.llen("openai") < messages:  # they wait: nobody serves the openai queue yet
        assert time.monotonic() < deadline, "the chunks were not sent"
        time.sleep(0.02)
    assert client.rpop("openai") is not None  # what BRPOP takes, and nobody ever receives

    start_worker(queues=["openai"])
    progress = run.wait(timeout=120)
    assert progress.state == "completed" and progress.succeeded == 40, progress
    assert [r["index"] for r in results(task)] == list(range(1, 41))
    assert sent_twice(sim) == {}
    assert "sent again, its messages were lost" in task.log_path.read_text()

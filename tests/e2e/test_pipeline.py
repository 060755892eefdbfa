"""The live pipeline end to end: real Redis, real worker processes, the simulator, the SDK."""

from __future__ import annotations

import time

import pytest

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.simulator import chat_answer
from tests.e2e.helpers import NO_OVERRIDES, new_task, questions, results, wait_done, write_jsonl

pytestmark = pytest.mark.e2e


def test_every_item_once_in_order_with_its_own_answer(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    rows = questions(300)
    source = write_jsonl(tmp_path / "questions.jsonl", rows)
    config = {
        "openai": {
            "batch": {"batch_size": 20},
            "system_instruction": {"is_dynamic": False, "system_prompt": "Be brief."},
        }
    }
    m = Mitrailleuse()
    task = m.create_task("alice", "openai", "squares", config, [source])
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed"
    records = results(task)
    assert [r["id"] for r in records] == [f"questions.jsonl:{n}" for n in range(1, 301)]
    for row, record in zip(rows, records, strict=True):
        expected = chat_answer(
            [
                {"role": "system", "content": "Be brief."},
                {"role": "user", "content": row["input_text"]},
            ]
        )
        assert record["status"] == "succeeded"
        assert record["output"] == expected
        assert record["attempts"] == 1
        assert record["usage"]["prompt_tokens"] > 0
    assert sim.stats()["chat_requests"] == 300
    assert task.status().counts.succeeded == 300
    assert len(list(task.parts_dir.glob("part-*.jsonl"))) == 15
    assert task.errors_path.read_bytes() == b""


def test_the_calls_of_a_message_go_out_at_once(tmp_path, tasks_dir, sim, start_worker):
    """One worker slot, one message of 8 calls at 500 ms each: the 8 are in flight together."""
    sim.configure(latency_ms=500)
    start_worker(concurrency=1)
    m, task = new_task(tmp_path, questions(8), {"openai": {"batch": {"batch_size": 8}}})
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed" and progress.succeeded == 8
    assert sim.stats()["max_in_flight"] == 8
    assert [r["latency_ms"] >= 500 for r in results(task)] == [True] * 8


def test_a_slow_call_holds_only_its_own_in_flight_slot(tmp_path, tasks_dir, sim, start_worker):
    """One message of 8 calls through 2 in-flight slots; the first call hangs for 5 s.

    Answers are taken as they land: the other 7 calls go through the second slot meanwhile,
    none waits for the slow one to come back.
    """
    hang_s = 5
    sim.configure(latency_ms=50, hang_s=hang_s)
    start_worker(concurrency=1, env=NO_OVERRIDES)
    rows = questions(8)
    rows[0]["input_text"] += " [[hang]]"
    limits = {"max_in_flight": 2, "requests_per_minute": 60_000, "tokens_per_minute": 0}
    config = {"openai": {"batch": {"batch_size": 8}, "rate_limit": limits}}
    m, task = new_task(tmp_path, rows, config)
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed" and progress.succeeded == 8
    sent = {entry["texts"][0]: entry["t"] for entry in sim.log()}
    slow_sent = sent.pop(rows[0]["input_text"])
    assert len(sent) == 7
    assert max(sent.values()) < slow_sent + hang_s, "a call waited for the slow one's answer"


def test_two_workers_share_the_queue(tmp_path, tasks_dir, sim, start_worker):
    from mitrailleuse.pipeline.app import app

    sim.configure(latency_ms=30)
    workers = [start_worker(concurrency=4), start_worker(concurrency=4)]
    source = write_jsonl(tmp_path / "q.jsonl", questions(200))
    m = Mitrailleuse()
    task = m.create_task(
        "carol", "openai", "shared", {"openai": {"batch": {"batch_size": 10}}}, [source]
    )
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.succeeded == 200
    assert [r["index"] for r in results(task)] == list(range(1, 201))
    stats = app.control.inspect(destination=[w.name for w in workers], timeout=2).stats()
    calls = {name: s["total"].get("mitrailleuse.call", 0) for name, s in stats.items()}
    assert len(calls) == 2 and all(count > 0 for count in calls.values()), calls
    assert sim.stats()["chat_requests"] == 200


def test_cancel_stops_calls_and_execute_resumes(tmp_path, tasks_dir, sim, start_worker):
    sim.configure(latency_ms=100)
    start_worker(concurrency=4)
    m, task = new_task(tmp_path, questions(300), {"openai": {"batch": {"batch_size": 10}}})
    run = m.submit(task)
    wait_done(run, 20)
    run.cancel()
    cancelled_at = time.time()
    progress = run.wait(timeout=60)

    assert progress.state == "cancelled"
    assert task.status().state == "cancelled"
    log = sim.log()
    late = [entry for entry in log if entry["t"] > cancelled_at + 0.05]
    assert late == [], f"{len(late)} calls started after cancel returned"
    assert len(log) < 300
    kept = results(task)  # the records written so far stay, in results.jsonl
    assert len(kept) == progress.done > 0

    resumed = m.submit(task).wait(timeout=120)
    assert resumed.state == "completed"
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, 301))
    assert all(r["status"] == "succeeded" for r in records)
    assert sim.stats()["chat_requests"] == 300, "an item was sent twice"
    assert all(record in records for record in kept), "a record written before cancel changed"

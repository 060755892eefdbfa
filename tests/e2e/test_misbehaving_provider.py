"""A provider that hangs, refuses connections, or answers 200s that are not JSON (issue 7).

Each fault ends as a retried success or as a failed record that says what went wrong; the
worker never crashes and no item is lost or doubled.
"""

from __future__ import annotations

import pytest

from mitrailleuse.testing import free_port
from tests.e2e.helpers import new_task, results

pytestmark = pytest.mark.e2e

FAULTS = ["hang", "garbage", "truncated", "html", "empty"]
#: A short client timeout and quick retries, so that hung calls cost seconds.
IMPATIENT = {
    "openai": {
        "timeout_s": 1.0,
        "retry": {"max_attempts": 3, "initial_backoff_s": 0.1, "max_backoff_s": 0.3},
        "batch": {"batch_size": 10},
    }
}
#: What a failed record's error says, per fault: (type, words in its message).
EXPECTED = {
    "hang": ("timeout", "timed out"),
    "garbage": ("invalid_response", "this is not JSON"),
    "truncated": ("invalid_response", "unreadable 200 response"),
    "html": ("http_502", "502"),
    "empty": ("invalid_response", "unreadable 200 response"),
}


def test_each_fault_is_retried_or_fails_with_a_clear_error(tmp_path, tasks_dir, sim, start_worker):
    sim.configure(hang_s=5)
    worker = start_worker(concurrency=16)
    rows = [{"input_text": f"[[{fault}-once]] then fine"} for fault in FAULTS]
    rows += [{"input_text": f"[[{fault}]] always"} for fault in FAULTS]
    rows += [{"input_text": f"plain question {n}"} for n in range(20)]
    m, task = new_task(tmp_path, rows, IMPATIENT)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.done == len(rows)
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, len(rows) + 1))
    once, always, plain = records[:5], records[5:10], records[10:]
    for fault, record in zip(FAULTS, once, strict=True):
        assert record["status"] == "succeeded", (fault, record["error"])
        assert record["attempts"] == 2, (fault, record["attempts"])
    for fault, record in zip(FAULTS, always, strict=True):
        kind, words = EXPECTED[fault]
        error = record["error"]
        assert record["status"] == "failed" and record["attempts"] == 3, (fault, record)
        assert error["type"] == kind and words in error["message"], (fault, error)
        assert "\n" not in error["message"] and len(error["message"]) < 300, (fault, error)
    assert all(r["status"] == "succeeded" and r["attempts"] == 1 for r in plain)
    assert worker.process.poll() is None, "the worker died"


def test_connection_refused_fails_items_with_a_clear_error(tmp_path, tasks_dir, sim, start_worker):
    nobody = f"http://127.0.0.1:{free_port()}/v1"
    worker = start_worker(env={"OPENAI_BASE_URL": nobody})
    rows = [{"input_text": f"question {n}"} for n in range(5)]
    m, task = new_task(tmp_path, rows, IMPATIENT)
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed" and progress.failed == 5
    for record in results(task):
        assert record["attempts"] == 3
        assert record["error"]["type"] == "connection_error", record["error"]
        assert "connection" in record["error"]["message"].lower(), record["error"]
    assert worker.process.poll() is None, "the worker died"

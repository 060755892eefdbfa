"""Native batches end to end on OpenAI's Batch API: real beat, real worker, the simulator's
/v1/batches (Anthropic's and Gemini's: ``test_anthropic_gemini.py``)."""

from __future__ import annotations

import signal
import threading
import time

import pytest
import redis

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.batch.create import BatchWriter
from mitrailleuse.batch.poll import poll_all
from mitrailleuse.batch.state import all_states
from mitrailleuse.pipeline.feeder import Slice, feed_slice
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.tasks import create_native_batch, run_state
from mitrailleuse.simulator import chat_answer
from tests.e2e.helpers import results, write_jsonl

pytestmark = pytest.mark.e2e

BATCH = {"is_batch_active": True, "batch_size": 20, "batch_check_time": 0.5}


def batch_config(**extra):
    return {"openai": {"batch": {**BATCH, **extra}}}


def expected(row):
    return chat_answer([{"role": "user", "content": row["input_text"]}])


@pytest.fixture
def batch_task(tmp_path, tasks_dir, sim, start_worker, start_beat):
    """A batch-mode task of ``rows``, with a control worker and beat running."""

    def make(name, rows, duration_s, **batch):
        sim.configure(batch_duration_s=duration_s)
        worker, beat = start_worker(queues=["mitrailleuse"]), start_beat()
        source = write_jsonl(tmp_path / f"{name}.jsonl", rows)
        m = Mitrailleuse()
        task = m.create_task("nb", "openai", name, batch_config(**batch), [source])
        return m, task, worker, beat

    return make


def wait_created(task, count):
    deadline = time.monotonic() + 30
    while not (
        len(all_states(task)) == count and all(s.step == "created" for s in all_states(task))
    ):
        assert time.monotonic() < deadline, "batches were not created in time"
        time.sleep(0.1)


def test_multi_batch_run_maps_every_line_back(sim, batch_task):
    rows = [{"input_text": f"batched {n}"} for n in range(95)]
    rows[13] = {"input_text": "refused [[status:400]]"}
    rows[77] = {"input_text": "refused too [[status:400]]"}
    m, task, _, _ = batch_task("multi", rows, 1.5)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed"
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, 96))
    for row, record in zip(rows, records, strict=True):
        assert record["mode"] == "batch"
        if "[[status:400]]" in row["input_text"]:
            assert record["status"] == "failed" and record["error"]["status_code"] == 400
        else:
            assert record["status"] == "succeeded" and record["output"] == expected(row)
    stats = sim.stats()
    assert stats["batches_created"] == 5 and stats["files_uploaded"] == 5
    assert stats["chat_requests"] == 0
    assert len(list(task.batches_dir.glob("batch-*-output.jsonl"))) == 5
    assert len(list(task.batches_dir.glob("batch-*-errors.jsonl"))) == 2
    assert all(state.step == "collected" for state in all_states(task))
    assert task.status().mode == "batch"


def test_killed_worker_and_beat_resume_without_creating_twice(
    sim, batch_task, start_worker, start_beat
):
    rows = [{"input_text": f"survivor {n}"} for n in range(60)]
    m, task, worker, beat = batch_task("crash", rows, 6)
    run = m.submit(task)
    wait_created(task, 3)
    worker.stop(signal.SIGKILL)
    beat.stop(signal.SIGKILL)

    start_worker(queues=["mitrailleuse"])
    start_beat()
    progress = run.wait(timeout=120)
    assert progress.state == "completed" and progress.succeeded == 60
    records = results(task)
    assert [r["output"] for r in records] == [expected(row) for row in rows]
    assert sim.stats()["batches_created"] == 3


def test_expired_batch_items_are_sent_once_more_then_fail(sim, batch_task):
    rows = [{"input_text": f"item {n}"} for n in range(40)]
    rows[25] = {"input_text": "this batch expires [[batch-expire]]"}
    m, task, _, _ = batch_task("expire", rows, 1)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed"
    records = results(task)
    assert all(r["status"] == "succeeded" for r in records[:20])
    second = records[20:]
    # the expired batch was sent once more with its 20 items; it expired again: they fail
    assert all(r["status"] == "failed" and r["error"]["type"] == "batch_expired" for r in second)
    assert all(r["attempts"] == 2 for r in second)
    states = all_states(task)
    assert [s.retry_of for s in states] == [None, None, 1]
    assert states[2].items == 20
    assert sim.stats()["batches_created"] == 3


def test_combined_batches_pack_chunks_into_one(sim, batch_task):
    rows = [{"input_text": f"combined {n}"} for n in range(95)]
    m, task, _, _ = batch_task("combined", rows, 1, batch_size=10, combine_batches=True)
    progress = m.submit(task).wait(timeout=120)
    assert progress.state == "completed" and progress.succeeded == 95
    assert [r["output"] for r in results(task)] == [expected(row) for row in rows]
    assert sim.stats()["batches_created"] == 1
    (state,) = all_states(task)
    assert state.items == 95 and state.chunks == list(range(10))


def test_cancel_cancels_the_provider_batches_and_execute_resumes(sim, batch_task):
    rows = [{"input_text": f"cancel me {n}"} for n in range(60)]
    m, task, _, _ = batch_task("cancel", rows, 20)
    run = m.submit(task)
    wait_created(task, 3)
    run.cancel()
    progress = run.wait(timeout=60)
    assert progress.state == "cancelled"
    assert sim.stats()["requests"].get("POST /v1/batches/{batch_id}/cancel") == 3
    deadline = time.monotonic() + 30
    while {s.status for s in all_states(task)} != {"cancelled"}:  # beat sees them end
        assert time.monotonic() < deadline, [s.status for s in all_states(task)]
        time.sleep(0.2)

    sim.configure(batch_duration_s=1)
    resumed = m.submit(task).wait(timeout=120)
    assert resumed.state == "completed" and resumed.succeeded == 60
    records = results(task)
    assert [r["output"] for r in records] == [expected(row) for row in rows]


class RecordingDispatcher:
    """The feeder's way out, recording the batches it closed: the test submits them itself."""

    def __init__(self) -> None:
        self.batches: list[int] = []

    def send_chunk(self, run, chunk) -> None:
        raise AssertionError(f"a batch-mode run sent chunk {chunk.number} to the workers")

    def send_batch(self, run, number: int) -> None:
        self.batches.append(number)


def test_beat_and_the_control_task_submitting_one_batch_at_once_create_it_once(
    tmp_path, tasks_dir, sim, start_worker, start_beat, redis_server
):
    """The race CI lost: beat's poll finds a batch ``written`` while its submit task runs.

    The batch is written here, by the feeder called in this process; then the control
    worker's submit task and beat's poll (its body, called here at the same moment) both
    submit it, each upload taking 1.5 s. Only the submission lease stops the second one.
    """
    sim.configure(upload_latency_ms=1500, batch_duration_s=0.5)
    rows = [{"input_text": f"raced {n}"} for n in range(20)]
    m = Mitrailleuse()
    task = m.create_task(
        "nb", "openai", "race", batch_config(), [write_jsonl(tmp_path / "r.jsonl", rows)]
    )
    run = m.submit(task)  # its feed message waits: no control worker runs yet
    state = run_state(run.run_id)
    dispatcher = RecordingDispatcher()
    assert feed_slice(state, dispatcher, state.get("feeder")) is Slice.DONE
    (number,) = dispatcher.batches
    assert all_states(task)[0].step == "written"

    start_worker(queues=["mitrailleuse"])
    poll = threading.Thread(target=poll_all, args=(redis.Redis.from_url(redis_server.url),))
    create_native_batch.apply_async((run.run_id, number), queue=CONTROL_QUEUE)
    poll.start()
    poll.join(timeout=30)
    start_beat()
    progress = run.wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 20
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"]) == (1, 1), stats


def test_back_to_back_batch_runs_create_each_batch_once(sim, batch_task):
    """20 runs one after the other, each of 2 batches: exactly 40 batches, 40 uploads."""
    rows = [{"input_text": f"again {n}"} for n in range(40)]
    m, task, _, _ = batch_task("again", rows, 0.3)
    for _ in range(20):
        sim.reset()
        fresh = m.create_task(
            "nb", "openai", "again", batch_config(), [task.inputs_dir / "again.jsonl"]
        )
        assert m.submit(fresh).wait(timeout=60).state == "completed"
        stats = sim.stats()
        assert (stats["files_uploaded"], stats["batches_created"]) == (2, 2), stats


class FeederKilled(Exception):
    """Stands for the SIGKILL of the control worker in the middle of writing a batch file."""


def test_a_feeder_killed_with_a_batch_file_half_written_loses_no_item(
    tmp_path, tasks_dir, sim, start_worker, start_beat, monkeypatch
):
    """Chunks written into a batch file not yet closed are fed again by the next feeder."""
    rows = [{"input_text": f"half {n}"} for n in range(95)]
    m = Mitrailleuse()
    config = batch_config(batch_size=10, combine_batches=True)
    task = m.create_task("nb", "openai", "half", config, [write_jsonl(tmp_path / "h.jsonl", rows)])
    run = m.submit(task)  # its feed message waits: no control worker runs yet
    state = run_state(run.run_id)
    add = BatchWriter.add
    calls = []

    def dies_at_the_sixth_chunk(self, number, messages, resume):
        calls.append(number)
        if len(calls) == 6:
            raise FeederKilled
        return add(self, number, messages, resume)

    monkeypatch.setattr(BatchWriter, "add", dies_at_the_sixth_chunk)
    with pytest.raises(FeederKilled):
        feed_slice(state, RecordingDispatcher(), state.get("feeder"))
    monkeypatch.setattr(BatchWriter, "add", add)
    assert all_states(task) == [], "a batch was recorded before its file was closed"

    start_worker(queues=["mitrailleuse"])  # runs the waiting feed message: the next feeder
    start_beat()
    progress = run.wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 95, progress
    assert [r["output"] for r in results(task)] == [expected(row) for row in rows]
    assert sim.stats()["batches_created"] == 1

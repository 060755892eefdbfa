"""Crashes mid-run: a worker killed with SIGKILL (what the OOM killer does), at the defaults.

No test here lowers the visibility timeout: a dead worker's messages must come back because
its broker channel died (``pipeline.transport``), not because an hour passed.
"""

from __future__ import annotations

import signal
import time

import pytest

from mitrailleuse.inputs import iter_items
from mitrailleuse.pipeline.chunks import build_chunk
from mitrailleuse.pipeline.tasks import call, run_state
from tests.e2e.helpers import (
    NO_OVERRIDES,
    calls_per_slot,
    new_task,
    questions,
    results,
    sent_twice,
    wait_done,
)

pytestmark = pytest.mark.e2e

#: Far below the visibility timeout (an hour), far above the recovery the README promises.
RECOVERY_BOUND_S = 120


def test_a_killed_worker_items_are_finished_by_the_other_one(
    tmp_path, tasks_dir, sim, start_worker
):
    """Two workers at the defaults; one is SIGKILLed mid-run; the other finishes the run.

    Only the items the dead worker had on the wire may be sent twice: at most a message's
    calls per slot (each slot sends its message's calls at once).
    """
    sim.configure(latency_ms=50)
    doomed = start_worker(concurrency=8)
    start_worker(concurrency=8)
    m, task = new_task(tmp_path, questions(600), {"openai": {"batch": {"batch_size": 20}}})
    run = m.submit(task)
    wait_done(run, 150)
    doomed.stop(signal.SIGKILL)
    killed_at = time.time()
    done_at_kill = run.progress().done
    assert done_at_kill < 600, "the run ended before the worker was killed"

    progress = run.wait(timeout=RECOVERY_BOUND_S)
    recovered_s = time.time() - killed_at
    assert progress.state == "completed" and progress.succeeded == 600, progress
    assert [r["index"] for r in results(task)] == list(range(1, 601)), "missing or doubled"
    twice = sent_twice(sim)
    bound = 8 * calls_per_slot(20)
    assert len(twice) <= bound, f"{len(twice)} items sent twice; the dead worker had {bound} out"
    assert all(times[0] <= killed_at for times in twice.values()), twice
    print(f"completed {recovered_s:.1f}s after the kill ({done_at_kill}/600 done then)")


def test_worker_killed_mid_run_then_restarted(tmp_path, tasks_dir, sim, start_worker):
    sim.configure(latency_ms=50)
    worker = start_worker(concurrency=8)
    m, task = new_task(tmp_path, questions(400), {"openai": {"batch": {"batch_size": 20}}})
    run = m.submit(task)
    wait_done(run, 60)
    worker.stop(signal.SIGKILL)  # its pool is threads: every call it had running dies with it
    done_at_kill = run.progress().done
    time.sleep(0.5)  # requests already on the wire reach the simulator's count
    sent_at_kill = sim.stats()["chat_requests"]

    start_worker(concurrency=8)
    progress = run.wait(timeout=RECOVERY_BOUND_S)
    assert progress.state == "completed" and progress.succeeded == 400
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, 401)), "an item is missing or doubled"
    calls = sim.stats()["chat_requests"]
    # items recorded before the kill were not sent again; only those on the wire may be
    assert calls - 400 <= sent_at_kill - done_at_kill, (calls, sent_at_kill, done_at_kill)


def test_a_killed_workers_calls_free_their_in_flight_slots(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """A worker SIGKILLed with every in-flight slot (64, the default cap) taken by its calls.

    Its leases would hold the slots until they expire (the call timeout and a margin, 150 s
    at the defaults): the fleet would stall. They are freed once its heartbeat stops.
    """
    import redis

    from mitrailleuse import keys
    from mitrailleuse.config import RateLimit

    cap = RateLimit().max_in_flight
    sim.configure(latency_ms=3000)  # the calls are on the wire when the worker dies
    model = f"gpt-killed-{tmp_path.name}"  # a budget of its own
    config = {
        "openai": {
            "api_information": {"model": model},
            # the cap binds, not the token budget (its default, 200,000 a minute, spaces these
            # calls 80 ms apart until their usage refunds the estimates: ~60 out at 3 s)
            "rate_limit": {"requests_per_minute": 60_000, "tokens_per_minute": 0},
        }
    }
    doomed = start_worker(concurrency=8, env=NO_OVERRIDES)
    m, task = new_task(tmp_path, questions(200), config)
    run = m.submit(task)
    deadline = time.monotonic() + 30
    while sim.stats()["in_flight"] < cap:
        assert time.monotonic() < deadline, "the doomed worker never filled the in-flight cap"
        time.sleep(0.05)
    doomed.stop(signal.SIGKILL)
    in_flight = keys.limit(f"openai:{model}", "in-flight")
    assert redis.Redis.from_url(redis_server.url).zcard(in_flight) == cap

    start_worker(concurrency=8, env=NO_OVERRIDES)
    progress = run.wait(timeout=RECOVERY_BOUND_S)  # below the leases' own expiry
    assert progress.state == "completed" and progress.succeeded == 200, progress
    assert [r["index"] for r in results(task)] == list(range(1, 201))


def test_a_message_delivered_after_its_chunk_is_written_calls_nothing(
    tmp_path, tasks_dir, sim, start_worker
):
    """A call message delivered again once its chunk is on disk (its records gone from Redis).

    Kombu restores a message whose worker died unacknowledged; the copy may come after the
    chunk was written, and must find its items recorded, not call them again.
    """
    start_worker(concurrency=4)
    m, task = new_task(tmp_path, questions(10))
    run = m.submit(task)
    assert run.wait(timeout=60).state == "completed"
    calls = sim.stats()["chat_requests"]
    state = run_state(run.run_id)
    items = [item for item, _ in iter_items(task.input_files())]
    chunk = build_chunk(state, 0, items, task.config(), set())

    stored = call.apply_async((run.run_id, 0, chunk.messages[0]), queue="openai").get(timeout=30)
    assert stored == 0
    assert sim.stats()["chat_requests"] == calls, "a written chunk's items were called again"
    assert state.chunk_records(0) == []
    assert run.progress().done == 10


def test_feeder_killed_mid_feed_then_execute_again(tmp_path, tasks_dir, sim, start_worker):
    """The control worker (the feeder) dies mid-feed; `execute` again finishes the run.

    Only items with no record are sent: none twice, including those in flight at the kill.
    """
    sim.configure(latency_ms=40)
    start_worker(queues=["openai"], concurrency=8)
    feeder = start_worker(queues=["mitrailleuse"], concurrency=4)
    window = {"general": {"max_items_in_flight": 40}, "openai": {"batch": {"batch_size": 10}}}
    m, task = new_task(tmp_path, questions(600), window)
    run = m.submit(task)
    wait_done(run, 150)
    feeder.stop(signal.SIGKILL)
    assert run.progress().done < 600, "the run ended before the feeder was killed"

    m.submit(task)  # what `execute` does
    start_worker(queues=["mitrailleuse"], concurrency=4)
    progress = run.wait(timeout=RECOVERY_BOUND_S)
    assert progress.state == "completed" and progress.succeeded == 600, progress
    assert [r["index"] for r in results(task)] == list(range(1, 601))
    assert sim.stats()["chat_requests"] == 600, "an item was sent twice"

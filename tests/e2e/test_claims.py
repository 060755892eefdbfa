"""Per-item claims: taken with the rate grant, held while the call is out, freed when it ends.

A copy of a message that runs while the original is still calling (a chunk fed twice, a message
brought back after a Redis restart) must not send an item again; a claim whose holder died must
not hold its item back.
"""

from __future__ import annotations

import time

import pytest
import redis

from mitrailleuse import keys
from mitrailleuse.inputs import iter_items
from mitrailleuse.pipeline.chunks import build_chunk
from mitrailleuse.pipeline.tasks import call, run_state
from tests.e2e.helpers import new_task, questions, results, sent_twice

pytestmark = pytest.mark.e2e


def claim_keys(client: redis.Redis, run_id: str) -> list[bytes]:
    """The run's claims on its items (another test's killed worker may leave its own)."""
    return list(client.scan_iter(match=keys.item_claim(run_id, "*"), count=1000))


def test_copies_of_messages_running_beside_them_send_no_item_twice(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    sim.configure(latency_ms=500)
    start_worker(concurrency=8)
    m, task = new_task(tmp_path, questions(16))
    run = m.submit(task)
    deadline = time.monotonic() + 30
    while sim.stats()["in_flight"] < 2:  # both messages of the chunk are calling
        assert time.monotonic() < deadline, "the run did not start"
        time.sleep(0.02)
    state = run_state(run.run_id)
    items = [item for item, _ in iter_items(task.input_files())]
    for message in build_chunk(state, 0, items, task.config(), set()).messages:
        call.apply_async((run.run_id, 0, message), queue="openai")  # a copy, running at once

    progress = run.wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 16, progress
    assert [r["index"] for r in results(task)] == list(range(1, 17))
    assert sent_twice(sim) == {}
    assert sim.stats()["chat_requests"] == 16
    client = redis.Redis.from_url(redis_server.url)
    assert claim_keys(client, run.run_id) == [], "a claim outlived its call"


def test_a_claim_holds_its_item_only_while_its_holder_lives(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """Item 1 is claimed by a dead process, item 2 by one alive for 3 more seconds."""
    client = redis.Redis.from_url(redis_server.url)
    start_worker(queues=["mitrailleuse"])
    m, task = new_task(tmp_path, questions(4))
    run = m.submit(task)
    deadline = time.monotonic() + 30
    while not client.llen("openai"):  # the chunk waits on the openai queue: nobody serves it
        assert time.monotonic() < deadline, "the chunk was not sent"
        time.sleep(0.02)
    client.set(keys.item_claim(run.run_id, 0), "gone-owner token", px=600_000)
    client.set(keys.item_claim(run.run_id, 1), "live-owner token", px=600_000)
    client.set(keys.alive("live-owner"), 1, px=60_000)
    start_worker(queues=["openai"])
    # alive 3 more seconds from the moment the worker is ready (its start takes seconds on a
    # busy machine: counted from before it, the window closed before its first call)
    client.pexpire(keys.alive("live-owner"), 3000)
    alive_until = time.time() + 3
    progress = run.wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 4, progress
    sent = {entry["texts"][0].split(":")[0]: entry["t"] for entry in sim.log()}
    assert sorted(sent) == ["q-1", "q-2", "q-3", "q-4"] and sent_twice(sim) == {}
    assert sent["q-1"] < alive_until, "a dead process's claim held its item back"
    assert sent["q-2"] >= alive_until - 0.05, "a live process's claim was not respected"

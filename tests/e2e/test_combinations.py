"""Features users turn on together, left at their defaults.

The cache at temperature 0 (``cache: auto``), a tight rate limit, a worker SIGKILLed mid-run, a
cost limit that stops the run (then raised, and the run executed again), a Redis restart, and
native batches: each alone has its own tests; here they meet. Every case asserts one record per
item, in input order, and the provider calls within the bound the README states: every distinct
request sent once, and only the items a killed worker had on the wire sent twice.
"""

from __future__ import annotations

import signal
import time
import uuid
from dataclasses import dataclass

import pytest
import redis

from mitrailleuse.batch.state import all_states
from mitrailleuse.config import load_config
from mitrailleuse.simulator import chat_answer
from mitrailleuse.taskfolder import write_json
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

#: The stall of a run that leaves claims behind is the claim's expiry (``timeout_s`` + 30 s,
#: 150 s at the defaults): a run that needs this long is stuck.
STALL_S = 120
THREADS = 32
#: How long before the kill a call still on the wire may have been sent (50 ms of latency, on a
#: busy machine).
ON_THE_WIRE_S = 2.0
#: Dear enough that a call costs about a cent: cost limits stay readable.
PRICES = {"openai": {"gpt-4o-mini": {"input_per_mtok": 400, "output_per_mtok": 400}}}


#: Temperature 0 (``cache: auto`` caches it) under a tight limit; all else at its default.
CACHED_AT_600_RPM = {
    "openai": {
        "api_information": {"setting": {"temperature": 0}},
        "rate_limit": {"requests_per_minute": 600},
    }
}


def claims_left(client: redis.Redis) -> list[bytes]:
    return list(client.scan_iter(match="mtr:*claim*", count=1000))


def test_a_cached_run_under_a_tight_rate_limit_finishes(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """200 items at temperature 0 under 600 rpm, everything else at its default: 10 calls/s."""
    start_worker(concurrency=64, env=NO_OVERRIDES)
    m, task = new_task(tmp_path, questions(200, prefix=uuid.uuid4().hex), CACHED_AT_600_RPM)
    started = time.monotonic()
    progress = m.submit(task).wait(timeout=STALL_S)
    print(f"200 items at 600 rpm in {time.monotonic() - started:.1f}s")
    assert progress.state == "completed" and progress.succeeded == 200, progress
    assert sim.stats()["chat_requests"] == 200
    assert claims_left(redis.Redis.from_url(redis_server.url)) == []


def test_claims_of_a_cancelled_cached_run_do_not_stall_the_next_run(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    """A run stopped while the limiter holds its calls back leaves nothing held behind."""
    start_worker(concurrency=64, env=NO_OVERRIDES)
    rows = questions(60, prefix=uuid.uuid4().hex)
    m, first = new_task(tmp_path, rows, CACHED_AT_600_RPM, name="first")
    run = m.submit(first)
    wait_done(run, 10)
    run.cancel()
    assert run.wait(timeout=60).state == "cancelled"
    assert claims_left(redis.Redis.from_url(redis_server.url)) == []

    _, again = new_task(tmp_path, rows, CACHED_AT_600_RPM, name="again")
    progress = m.submit(again).wait(timeout=STALL_S)
    assert progress.state == "completed" and progress.succeeded == 60, progress
    assert progress.cached >= 10, "the first run's answers were not used"
    assert sim.stats()["chat_requests"] == 60, "an answer was paid for twice"


@dataclass(frozen=True)
class Case:
    cache: bool = False
    tight: bool = False
    kill: bool = False
    limit: bool = False
    restart: bool = False


#: Pairwise over the five live features (every pair of them on/off together at least once).
CASES = {
    "plain": Case(),
    "tight+kill+limit+restart": Case(tight=True, kill=True, limit=True, restart=True),
    "cache+kill+limit+restart": Case(cache=True, kill=True, limit=True, restart=True),
    "cache+tight+limit+restart": Case(cache=True, tight=True, limit=True, restart=True),
    "cache+tight+kill+restart": Case(cache=True, tight=True, kill=True, restart=True),
    "cache+tight+kill+limit": Case(cache=True, tight=True, kill=True, limit=True),
}
ITEMS = 200


def case_rows(case: Case) -> tuple[list[dict[str, str]], int]:
    """The items, and how many distinct requests they make (every 5th repeats an earlier one)."""
    rows = questions(ITEMS, prefix=uuid.uuid4().hex)
    if case.cache:
        for n in range(4, ITEMS, 5):
            rows[n] = rows[n - 3]
    return rows, len({row["input_text"] for row in rows})


def call_cost_usd(text: str) -> float:
    """What the simulator bills a call for ``text`` at :data:`PRICES` (its token counts)."""
    answer = chat_answer([{"role": "user", "content": text}])
    return ((len(text) + 3) // 4 + 4 + (len(answer) + 3) // 4) * 400 / 1e6


def case_config(case: Case, rows: list[dict[str, str]]) -> dict:
    setting = {"max_tokens": 20, "temperature": 0 if case.cache else 1}
    config: dict = {
        "openai": {
            "api_information": {"model": "gpt-4o-mini", "setting": setting},
            "rate_limit": {"requests_per_minute": 1200},
        },
        "general": {"prices": PRICES},
    }
    if case.limit:  # about 70% of the distinct requests fit
        distinct = {row["input_text"] for row in rows}
        config["general"]["cost_limit_usd"] = 0.7 * sum(map(call_cost_usd, distinct))
    return config


@pytest.mark.parametrize("case", CASES.values(), ids=CASES.keys())
def test_features_together(case, tmp_path, tasks_dir, sim, start_worker, redis_server):
    sim.configure(latency_ms=50)
    env = NO_OVERRIDES if case.tight else {}
    doomed = start_worker(concurrency=THREADS, env=env)
    start_worker(concurrency=THREADS, env=env)
    rows, distinct = case_rows(case)
    m, task = new_task(tmp_path, rows, case_config(case, rows))
    run = m.submit(task)
    killed_at = None
    if case.kill:
        wait_done(run, ITEMS // 5)
        doomed.stop(signal.SIGKILL)
        killed_at = time.time()
    if case.restart:
        wait_done(run, ITEMS * 2 // 5, timeout_s=STALL_S)
        redis_server.stop(signal.SIGKILL)
        redis_server.start()
    progress = run.wait(timeout=STALL_S)
    if case.limit:
        assert progress.state == "stopped_budget", progress
        raised = load_config(task.config_path)
        raised.general.cost_limit_usd = 100.0
        write_json(task.config_path, raised.model_dump(mode="json"))
        progress = m.submit(task).wait(timeout=STALL_S)

    assert progress.state == "completed" and progress.succeeded == ITEMS, progress
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, ITEMS + 1)), "missing or doubled"
    assert [r["output"] for r in records] == [
        chat_answer([{"role": "user", "content": row["input_text"]}]) for row in rows
    ]
    sent = {text for entry in sim.log() for text in entry["texts"]}
    assert len(sent) == distinct, "a request was never sent, or a cached one was"
    twice = sent_twice(sim)
    # what the killed worker had on the wire: each of its slots sends a message's calls at once
    bound = THREADS * calls_per_slot() if case.kill else 0
    assert len(twice) <= bound, f"{len(twice)} requests sent twice (bound {bound})"
    if twice:  # only calls out when the worker died: sent in the moment before the kill
        assert all(killed_at - ON_THE_WIRE_S <= t[0] <= killed_at for t in twice.values()), twice


BATCH = {"is_batch_active": True, "batch_size": 20, "batch_check_time": 0.5}


@pytest.mark.parametrize("event", ["kill", "restart"])
def test_native_batches_with(
    event, tmp_path, tasks_dir, sim, start_worker, start_beat, redis_server
):
    """A native batch run whose control worker is SIGKILLed, or whose Redis restarts, mid-run."""
    sim.configure(batch_duration_s=3)
    control = start_worker(queues=["mitrailleuse"])
    start_beat()
    rows = questions(100, prefix=uuid.uuid4().hex)
    m, task = new_task(tmp_path, rows, {"openai": {"batch": BATCH}})
    run = m.submit(task)
    deadline = time.monotonic() + 60
    while not (len(all_states(task)) == 5 and all(s.step == "created" for s in all_states(task))):
        assert time.monotonic() < deadline, "the batches were not created"
        time.sleep(0.05)
    if event == "kill":
        control.stop(signal.SIGKILL)
        start_worker(queues=["mitrailleuse"])
    else:
        redis_server.stop(signal.SIGKILL)
        redis_server.start()
    progress = run.wait(timeout=STALL_S)
    assert progress.state == "completed" and progress.succeeded == 100, progress
    assert [r["index"] for r in results(task)] == list(range(1, 101))
    stats = sim.stats()
    assert (stats["files_uploaded"], stats["batches_created"]) == (5, 5), stats
    assert stats["chat_requests"] == 0

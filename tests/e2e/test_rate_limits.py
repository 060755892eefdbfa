"""Fleet-wide rate limits and retries: two worker processes, one budget, the provider's word."""

from __future__ import annotations

import pytest
import redis

from mitrailleuse import keys
from mitrailleuse.api import Mitrailleuse
from tests.e2e.helpers import NO_OVERRIDES, new_task, questions, results, write_jsonl

pytestmark = pytest.mark.e2e


@pytest.fixture(autouse=True)
def forget_announced_limits(redis_server):
    """A provider's announced limits outlive the test that configured the simulator's: drop them."""
    yield
    client = redis.Redis.from_url(redis_server.url)
    for key in client.scan_iter(keys.limit("*", "announced")):
        client.delete(key)


def max_in_window(times: list[float], window_s: float) -> int:
    times = sorted(times)
    best, start = 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def test_two_workers_share_one_limit(tmp_path, tasks_dir, sim, start_worker):
    limit = 1200
    items = 1250  # a little over a minute at the limit
    sim.configure(rpm=limit)
    for _ in range(2):
        start_worker(queues=["openai", "mitrailleuse"], concurrency=16, env=NO_OVERRIDES)
    source = write_jsonl(tmp_path / "q.jsonl", questions(items))
    config = {
        "openai": {
            "rate_limit": {"requests_per_minute": limit, "max_in_flight": 32},
            "batch": {"batch_size": 50},
        }
    }
    m = Mitrailleuse()
    task = m.create_task("rl", "openai", "shared", config, [source])
    progress = m.submit(task).wait(timeout=240)

    assert progress.state == "completed" and progress.succeeded == items
    assert [r["index"] for r in results(task)] == list(range(1, items + 1))
    log = sim.log()
    accepted = [e["t"] for e in log if e["status"] == 200]
    rejected = [e for e in log if e["status"] == 429]
    assert len(accepted) == items
    assert max_in_window(accepted, 60.0) <= limit * 1.05
    # a second's burst at most, then the steady rate: never a storm
    assert max_in_window(accepted, 10.0) <= (limit / 6) * 1.05 + limit / 60
    assert len(rejected) <= limit // 60, f"{len(rejected)} 429s"


def test_limits_announced_by_the_provider_are_adopted(tmp_path, tasks_dir, sim, start_worker):
    """No rate_limit in the task: the fleet runs at the limit the provider's headers announce.

    Everything at its defaults (one worker, 64 threads, 64 in flight): the first response says
    3,000 requests a minute where the task's default budget is 500.
    """
    limit = 3000
    items = 1500  # half a minute at the limit
    sim.configure(rpm=limit)
    start_worker(env=NO_OVERRIDES)
    source = write_jsonl(tmp_path / "q.jsonl", questions(items))
    m = Mitrailleuse()
    task = m.create_task("rl", "openai", "announced", {}, [source])
    progress = m.submit(task).wait(timeout=240)

    assert progress.state == "completed" and progress.succeeded == items
    log = sim.log()
    accepted = [e["t"] for e in log if e["status"] == 200]
    rejected = [e for e in log if e["status"] == 429]
    assert len(rejected) <= 0.01 * len(log), f"{len(rejected)} 429s of {len(log)} requests"
    first = min(accepted)
    ten_s = max_in_window([t for t in accepted if t - first < 60], 10.0)
    assert ten_s >= 0.95 * limit / 6, f"best 10 s in the first minute: {ten_s} requests"
    assert max_in_window(accepted, 10.0) <= (limit / 6) * 1.05 + limit / 60
    summary = task.summary()
    assert summary["rate_limit"]["requests_per_minute"] == limit * 0.98  # a margin for late starts
    assert summary["rate_limit"]["announced_by_provider"] == ["requests"]


def test_a_task_limit_below_the_announced_one_holds(tmp_path, tasks_dir, sim, start_worker):
    """The provider announces 3,000 a minute; the task set 600: 600 it is."""
    sim.configure(rpm=3000)
    start_worker(env=NO_OVERRIDES)
    source = write_jsonl(tmp_path / "q.jsonl", questions(150))
    config = {"openai": {"rate_limit": {"requests_per_minute": 600}}}
    m = Mitrailleuse()
    task = m.create_task("rl", "openai", "ceiling", config, [source])
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.succeeded == 150
    accepted = [e["t"] for e in sim.log() if e["status"] == 200]
    # 600 a minute, not 3,000: the spacing the task's limit sets, late wake-ups aside
    assert max_in_window(accepted, 10.0) <= (600 / 6) * 1.05 + 600 / 60
    assert max(accepted) - min(accepted) >= (150 - 1) / 10 * 0.95
    assert task.summary()["rate_limit"]["requests_per_minute"] == 600


def test_retries_obey_retry_after_and_pause_the_fleet(tmp_path, tasks_dir, sim, start_worker):
    for _ in range(2):
        start_worker(queues=["openai", "mitrailleuse"], concurrency=8)
    rows = [{"input_text": f"plain {n}"} for n in range(40)]
    for n in range(0, 40, 8):
        rows[n] = {"input_text": f"busy {n} [[fail-first:429]]"}
        rows[n + 1] = {"input_text": f"broken {n} [[fail-first:500]]"}
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    config = {"openai": {"retry": {"initial_backoff_s": 0.1, "max_backoff_s": 0.5}}}
    m = Mitrailleuse()
    task = m.create_task("rl", "openai", "retry", config, [source])
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.succeeded == 40
    records = {r["id"]: r for r in results(task)}
    for n, row in enumerate(rows, start=1):
        record = records[f"q.jsonl:{n}"]
        if "[[fail-first" in row["input_text"]:
            assert record["attempts"] >= 2, record
        else:
            assert record["attempts"] == 1
    log = sorted(sim.log(), key=lambda e: e["t"])
    throttled = [e for e in log if e["status"] == 429]
    assert len(throttled) == 5
    for event in throttled:
        # Retry-After: 1 -> nobody in the fleet calls again for a second; calls that had passed
        # the limiter while the 429 travelled back (milliseconds; more on a loaded 2-core CI
        # machine) are let through
        react_s = 0.3
        during = [
            e["t"] - event["t"]
            for e in log
            if event["t"] + react_s < e["t"] < event["t"] + 0.95 and e["status"] != 429
        ]
        assert during == [], f"{len(during)} calls inside a Retry-After pause"
        again = [e for e in log if e["texts"] == event["texts"] and e["t"] > event["t"]]
        assert again and again[0]["t"] - event["t"] >= 0.95


def test_exhausted_attempts_end_as_a_failed_record(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    rows = [{"input_text": "always broken [[status:503]]"}, {"input_text": "fine"}]
    source = write_jsonl(tmp_path / "q.jsonl", rows)
    config = {
        "openai": {"retry": {"max_attempts": 3, "initial_backoff_s": 0.05, "max_backoff_s": 0.1}}
    }
    m = Mitrailleuse()
    task = m.create_task("rl", "openai", "exhaust", config, [source])
    progress = m.submit(task).wait(timeout=60)
    assert progress.state == "completed" and progress.failed == 1
    bad = results(task)[0]
    assert bad["attempts"] == 3 and bad["error"]["status_code"] == 503
    assert sim.stats()["status_counts"]["503"] == 3


def test_each_calls_lease_ends_with_its_records(tmp_path, tasks_dir, sim, start_worker):
    """Two leases for 40 calls: each ends in its records' round trip, its tokens corrected."""
    sim.configure(latency_ms=100)
    start_worker(env=NO_OVERRIDES)
    model = f"gpt-lease-{tmp_path.name}"  # a budget of its own: no other test's counters
    limits = {"max_in_flight": 2, "requests_per_minute": 60_000, "tokens_per_minute": 10**7}
    config = {
        "openai": {
            "batch": {"batch_size": 10},
            "api_information": {"model": model},
            "rate_limit": limits,
        }
    }
    m, task = new_task(tmp_path, questions(40), config)
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed" and progress.succeeded == 40
    assert sim.stats()["max_in_flight"] == 2
    client = redis.Redis.from_url(m.redis_url)
    scope = f"openai:{model}"
    assert client.zcard(keys.limit(scope, "in-flight")) == 0
    counted = 0  # the estimates booked at the grants, plus each lease's correction
    for key in client.scan_iter(match=keys.rate_counters(scope, 0).rsplit(":", 1)[0] + ":*"):
        counted += sum(int(v) for f, v in client.hgetall(key).items() if f.startswith(b"t"))
    assert counted == sum(r["usage"]["total_tokens"] for r in results(task))

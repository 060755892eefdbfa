"""Never pay twice (issue 9): the response cache, the similarity check, costs and the budget."""

from __future__ import annotations

import random
import re
import shutil
import string

import pytest
import redis

from mitrailleuse.config import load_config
from mitrailleuse.taskfolder import write_json
from tests.e2e.helpers import new_task, questions, results
from tests.e2e.test_cli import cli

pytestmark = pytest.mark.e2e

DETERMINISTIC = {
    "openai": {"api_information": {"model": "gpt-4o-mini", "setting": {"temperature": 0}}}
}


def test_a_second_run_is_answered_by_the_cache(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    start_worker()
    rows = questions(20) + questions(20)[:5]  # five items asked twice in the same run
    m, first = new_task(tmp_path, rows, DETERMINISTIC, name="first")
    assert m.submit(first).wait(timeout=60).succeeded == 25
    assert sim.stats()["chat_requests"] == 20, "identical items of one run must be sent once"
    assert sum(r["cached"] for r in results(first)) == 5

    sim.reset()
    _, second = new_task(tmp_path, rows, DETERMINISTIC, name="second")
    progress = m.submit(second).wait(timeout=60)
    assert progress.succeeded == 25 and progress.cached == 25
    assert sim.stats()["chat_requests"] == 0, "a cached request reached the provider"
    records = results(second)
    assert all(r["cached"] and r["cost_usd"] == 0.0 for r in records)
    assert [r["output"] for r in records] == [r["output"] for r in results(first)]

    # the same task re-run where Redis never saw the answers: the task's cache/ file serves them
    client = redis.Redis.from_url(redis_server.url)
    client.delete(*client.keys("mtr:cache:*"))
    shutil.rmtree(second.outputs_dir)
    assert m.submit(second).wait(timeout=60).cached == 25
    assert sim.stats()["chat_requests"] == 0


def test_creative_settings_are_not_cached(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    m, task = new_task(
        tmp_path, questions(5) * 2, {"openai": {"api_information": {"setting": {"temperature": 1}}}}
    )
    assert m.submit(task).wait(timeout=60).cached == 0
    assert sim.stats()["chat_requests"] == 10


SIMILAR = {
    "openai": {"batch": {"batch_size": 10}},
    "general": {"similarity_check": {"enabled": True, "settings": {"similarity_threshold": 0.9}}},
}
FOX = "The quick brown fox jumps over the lazy dog near the river bank"
ROWS = [
    {"input_text": FOX + " at dawn."},
    {"input_text": "Quantum chromodynamics describes the strong interaction of quarks."},
    {"input_text": FOX + " at dusk."},
]


def test_similar_answers_are_flagged_and_different_ones_pass(
    tmp_path, tasks_dir, sim, start_worker
):
    start_worker(concurrency=1)
    m, task = new_task(tmp_path, ROWS, SIMILAR)
    assert m.submit(task).wait(timeout=60).succeeded == 3
    first, other, near = results(task)
    assert "similar_to" not in first and "similar_to" not in other
    assert near["similar_to"] == first["id"] and 0.9 <= near["similarity"] < 1.0


def test_similar_answers_are_asked_again_when_configured(tmp_path, tasks_dir, sim, start_worker):
    start_worker(concurrency=1)
    config = {
        **SIMILAR,
        "general": {
            "similarity_check": {
                "enabled": True,
                "settings": {
                    "similarity_threshold": 0.9,
                    "reask_attempts": 1,
                    "cooldown_period": 0.2,
                },
            }
        },
    }
    m, task = new_task(tmp_path, ROWS, config)
    assert m.submit(task).wait(timeout=60).succeeded == 3
    assert sim.stats()["chat_requests"] == 4, "the near-copy is asked once more, then kept"
    near = results(task)[2]
    assert near["attempts"] == 2 and near["similar_to"] == "t.jsonl:1"


def test_near_copies_answered_at_the_same_moment_are_flagged(
    tmp_path, tasks_dir, sim, start_worker
):
    """64 pairs of adjacent near-copies (ratio 0.986), one call per message, two workers.

    The two answers of a pair are scored at about the same moment on two threads: one of them
    must see the other, whichever is first.
    """
    sim.configure(latency_ms=50)
    start_worker(concurrency=16)
    start_worker(concurrency=16)
    rng = random.Random(14)
    rows = []
    for _ in range(64):
        text = "".join(rng.choice(string.ascii_lowercase) for _ in range(70))
        rows += [{"input_text": text}, {"input_text": text[:35] + "#" + text[36:]}]
    # every answer is compared with every earlier one (the window holds them all): a miss can
    # only be two answers that did not see each other
    window = {"similarity_threshold": 0.9, "max_recent_responses": 200}
    config = {
        **SIMILAR,
        "general": {
            "calls_per_message": 1,
            "similarity_check": {"enabled": True, "settings": window},
        },
    }
    m, task = new_task(tmp_path, rows, config)
    assert m.submit(task).wait(timeout=60).succeeded == 128
    records = results(task)
    flagged = {r["id"]: r["similar_to"] for r in records if "similar_to" in r}
    missed = []
    for first, second in zip(records[::2], records[1::2], strict=True):
        pair = {first["id"], second["id"]}
        if flagged.get(first["id"]) not in pair and flagged.get(second["id"]) not in pair:
            missed.append(first["id"])
    assert missed == [], f"{len(missed)} of 64 pairs not flagged"
    assert len(flagged) == 64, "a pair flagged twice, or an answer flagged against a stranger"


PRICED = {
    "openai": {
        "batch": {"batch_size": 5},
        "api_information": {"model": "gpt-4o-mini", "setting": {"max_tokens": 20}},
    },
    # dear enough that each item costs about a cent: the test's limits stay readable
    "general": {
        "prices": {"openai": {"gpt-4o-mini": {"input_per_mtok": 400, "output_per_mtok": 400}}}
    },
}


def test_the_budget_stops_the_run_and_a_higher_limit_resumes_it(
    tmp_path, tasks_dir, sim, start_worker
):
    start_worker(concurrency=4)
    rows = questions(40)
    config = {**PRICED, "general": {**PRICED["general"], "cost_limit_usd": 0.1}}
    m, task = new_task(tmp_path, rows, config)
    stopped = m.submit(task).wait(timeout=60)
    assert stopped.state == "stopped_budget", stopped
    kept = results(task)
    spent = sum(r["cost_usd"] for r in kept)
    # one call's worst case: its prompt and the whole max_tokens budget, at 400 $/M tokens
    worst = max(r["usage"]["prompt_tokens"] + 20 for r in kept) * 400 / 1e6
    assert 0 < len(kept) < 40 and all(r["status"] == "succeeded" for r in kept)
    assert 0.1 - worst <= spent <= 0.1, (spent, worst)  # within one call of the limit
    assert "cost limit $0.1 reached" in (task.status().message or "")
    assert sim.stats()["chat_requests"] == len(kept)

    raised = load_config(task.config_path)
    raised.general.cost_limit_usd = 10.0
    write_json(task.config_path, raised.model_dump(mode="json"))
    done = m.submit(task).wait(timeout=60)
    assert done.state == "completed" and done.succeeded == 40
    assert sim.stats()["chat_requests"] == 40, "an item paid for before the stop was sent again"
    summary = task.summary()
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in results(task)))


def test_estimate_is_within_ten_percent_and_calls_nothing(
    tmp_path, tasks_dir, sim, start_worker, fleet_env
):
    rows = [
        {"input_text": f"Question {n}: " + "explain this in detail " * (n % 7 + 1)}
        for n in range(60)
    ]
    m, task = new_task(tmp_path, rows, PRICED)
    shown = cli("execute", "--task-path", str(task.path), "--estimate", cwd=tmp_path, env=fleet_env)
    assert shown.returncode == 0, shown.stderr
    assert sim.stats()["chat_requests"] == 0 and task.status().state == "created"
    estimated = int(
        re.search(r"prompt tokens\s*│\s*([\d,]+)", shown.stdout).group(1).replace(",", "")
    )

    start_worker()
    m.submit(task).wait(timeout=60)
    actual = sum(r["usage"]["prompt_tokens"] for r in results(task))
    assert abs(estimated - actual) <= 0.1 * actual, (estimated, actual)
    low = float(re.search(r"prompt only\s*│\s*\$([\d.]+)", shown.stdout).group(1))
    assert low <= sum(r["cost_usd"] for r in results(task))

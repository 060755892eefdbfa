"""Anthropic and Gemini end to end: real workers and beat, the real SDKs, the simulator's APIs.

Live calls with dynamic system prompts, a mix of faults ending in the right records and
attempts, the halts only money ends (a spend limit, a daily quota), native batches with a
crash between creating a batch and recording it, and ``mode: auto`` choosing per provider.
"""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest
import redis

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.batch.create import upload_and_create
from mitrailleuse.batch.poll import STALE_SUBMISSION_S, poll_all
from mitrailleuse.batch.state import all_states, state_path
from mitrailleuse.config import load_config
from mitrailleuse.pipeline.feeder import Slice, feed_slice
from mitrailleuse.pipeline.tasks import run_state
from mitrailleuse.providers import provider_class
from mitrailleuse.simulator import chat_answer
from mitrailleuse.taskfolder import write_json
from tests.e2e.helpers import new_task, questions, results, write_jsonl
from tests.e2e.test_cli import cli

pytestmark = pytest.mark.e2e

#: What each provider's simulator answers an overloaded call with, and the marker of a refusal
#: that only money ends.
FAULTS = {
    "anthropic": {"overloaded": 529, "halt": "[[spend-limit]]"},
    "gemini": {"overloaded": 503, "halt": "[[quota-day]]"},
}
PROVIDERS = list(FAULTS)


def calls(sim, provider):
    """Live calls the simulator answered for ``provider``."""
    requests = sim.stats()["requests"]
    return sum(n for route, n in requests.items() if route.endswith(LIVE_ROUTES[provider]))


#: The end of each provider's live route (Gemini's is served under each API version).
LIVE_ROUTES = {"anthropic": "POST /v1/messages", "gemini": "/models/{model}:generateContent"}


def batches_created(sim, provider):
    return sim.stats()[f"{provider}_batches_created"]


def expected(row):
    messages = [{"role": "user", "content": row["input_text"]}]
    if "instructions" in row:
        messages.insert(0, {"role": "system", "content": row["instructions"]})
    return chat_answer(messages)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_live_with_dynamic_system_prompts(provider, tmp_path, tasks_dir, sim, start_worker):
    start_worker(queues=[provider, "mitrailleuse"])
    rows = [{"input_text": f"question {n}", "instructions": f"style {n % 3}"} for n in range(30)]
    config = {
        provider: {"system_instruction": {"is_dynamic": True, "system_prompt": "instructions"}}
    }
    m, task = new_task(tmp_path, rows, config, provider)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.succeeded == 30
    model = provider_class(provider).model_name(task.config().provider(provider))
    for row, record in zip(rows, results(task), strict=True):
        assert record["output"] == expected(row)
        assert (record["provider"], record["model"], record["mode"]) == (
            provider,
            model,
            "realtime",
        )
        usage = record["usage"]
        assert usage["prompt_tokens"] > 0 and usage["completion_tokens"] > 0
        assert record["cost_usd"] > 0
    assert calls(sim, provider) == 30
    summary = task.summary()
    assert summary["mode"] == "realtime" and summary["mode_reason"] == "live, the default mode"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_fault_mix_ends_in_the_right_records_and_attempts(
    provider, tmp_path, tasks_dir, sim, start_worker
):
    start_worker(queues=[provider, "mitrailleuse"])
    overloaded = FAULTS[provider]["overloaded"]
    texts = {
        "plain": 1,
        "[[fail-first:500]] a server error, then fine": 2,
        "[[fail-first:429]] rate limited once": 2,
        f"[[fail-first:{overloaded}]] overloaded once": 2,
        "[[garbage-once]] an unreadable 200 once": 2,
        "[[status:400]] refused for good": 1,
    }
    rows = [{"input_text": text} for text in texts]
    m, task = new_task(tmp_path, rows, None, provider)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and (progress.succeeded, progress.failed) == (5, 1)
    for (text, attempts), record in zip(texts.items(), results(task), strict=True):
        assert record["attempts"] == attempts, (text, record)
        if "[[status:400]]" in text:
            assert record["error"]["type"] == "http_400"
            assert record["error"]["status_code"] == 400
        else:
            assert record["output"] == expected({"input_text": text})


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_refusal_only_money_ends_halts_the_run(provider, tmp_path, tasks_dir, sim, start_worker):
    """Anthropic's spend limit (429, no retry-after) and Gemini's daily quota stop the calls."""
    start_worker(queues=[provider, "mitrailleuse"], concurrency=2)
    halt = FAULTS[provider]["halt"]
    rows = [{"input_text": f"{halt} item {n}"} for n in range(200)]
    m, task = new_task(tmp_path, rows, {provider: {"batch": {"batch_size": 5}}}, provider)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.failed == 200
    assert {r["error"]["type"] for r in results(task)} == {"quota_exceeded"}
    assert calls(sim, provider) <= 10  # the calls in flight when the first refusal came back


def test_anthropic_rate_limit_headers_set_the_fleets_budget(tmp_path, tasks_dir, sim, start_worker):
    """With no rate_limit in the task, the fleet adopts what anthropic-ratelimit-* announce."""
    env = {f"MITRAILLEUSE_ANTHROPIC_{limit}": "" for limit in ("REQUESTS_PER_MINUTE",)}
    start_worker(queues=["anthropic", "mitrailleuse"], env=env)
    sim.configure(rpm=6000)
    rows = [{"input_text": f"limited {n}"} for n in range(20)]
    m, task = new_task(tmp_path, rows, None, "anthropic")
    progress = m.submit(task).wait(timeout=120)

    assert progress.succeeded == 20
    limits = task.summary()["rate_limit"]
    assert "requests" in limits["announced_by_provider"]
    assert limits["requests_per_minute"] == 5880  # 98 % of the announced 6000


@pytest.fixture
def batch_fleet(sim, start_worker, start_beat):
    """A control worker and beat for native batches that take ``duration_s`` to end."""

    def start(duration_s):
        sim.configure(batch_duration_s=duration_s)
        start_worker(queues=["mitrailleuse"])
        start_beat()

    return start


def batch_config(provider, **batch):
    return {
        provider: {
            "mode": "batch",
            "batch": {"batch_size": 20, "batch_check_time": 0.5, **batch},
        }
    }


@pytest.mark.parametrize("provider", PROVIDERS)
def test_native_batches_map_every_line_back(provider, tmp_path, tasks_dir, sim, batch_fleet):
    batch_fleet(1.0)
    rows = [{"input_text": f"batched {n}", "instructions": f"sys {n % 2}"} for n in range(45)]
    rows[13] = {"input_text": "refused [[status:400]]"}
    config = batch_config(provider)
    config[provider]["system_instruction"] = {"is_dynamic": True, "system_prompt": "instructions"}
    rows[13]["instructions"] = "sys"
    m, task = new_task(tmp_path, rows, config, provider)
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and (progress.succeeded, progress.failed) == (44, 1)
    for row, record in zip(rows, results(task), strict=True):
        assert record["mode"] == "batch"
        if "[[status:400]]" in row["input_text"]:
            assert record["status"] == "failed" and record["attempts"] == 1
            assert record["error"]["status_code"] == (400 if provider == "gemini" else None)
        else:
            assert record["output"] == expected(row) and record["cost_usd"] > 0
    assert batches_created(sim, provider) == 3 and calls(sim, provider) == 0
    assert task.summary()["mode"] == "batch"


@pytest.mark.parametrize("provider", PROVIDERS)
def test_expired_batches_are_sent_once_more_then_fail(
    provider, tmp_path, tasks_dir, sim, batch_fleet
):
    batch_fleet(0.5)
    rows = [{"input_text": f"item {n}"} for n in range(40)]
    rows[25] = {"input_text": "this batch expires [[batch-expire]]"}
    m, task = new_task(tmp_path, rows, batch_config(provider), provider)
    progress = m.submit(task).wait(timeout=120)

    records = results(task)
    assert progress.state == "completed"
    assert all(r["status"] == "succeeded" for r in records[:20])
    assert all(r["status"] == "failed" and r["attempts"] == 2 for r in records[20:])
    assert [s.retry_of for s in all_states(task)] == [None, None, 1]
    assert batches_created(sim, provider) == 3


class CrashAfterCreate:
    """A provider's batch API whose process dies once the batch is created, before recording."""

    def __init__(self, api):
        self.api = api

    def __getattr__(self, name):
        return getattr(self.api, name)

    def create(self, batch, completion_window):
        self.api.create(batch, completion_window)
        raise SystemExit("killed between creating the batch and recording it")


class FeedOnly:
    """The feeder's dispatcher, here only collecting the batches it closes."""

    def __init__(self):
        self.batches = []

    def send_chunk(self, run, chunk):
        raise AssertionError("a batch-mode run sent a chunk to the workers")

    def send_batch(self, run, number):
        self.batches.append(number)


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_crash_between_creating_a_batch_and_recording_it_creates_no_second_one(
    provider, tmp_path, tasks_dir, sim, start_worker, start_beat, redis_server
):
    sim.configure(batch_duration_s=1.0)
    rows = [{"input_text": f"only once {n}"} for n in range(20)]
    m = Mitrailleuse()
    source = write_jsonl(tmp_path / "once.jsonl", rows)
    task = m.create_task("nb", provider, "once", batch_config(provider), [source])
    run = m.submit(task)  # its feed message waits: no control worker runs yet
    state = run_state(run.run_id)
    feeder = FeedOnly()
    assert feed_slice(state, feeder, state.get("feeder")) is Slice.DONE
    (number,) = feeder.batches

    client = redis.Redis.from_url(redis_server.url)
    section = task.config().provider(provider)
    api = provider_class(provider)(section, os.environ[f"{provider.upper()}_API_KEY"])
    with pytest.raises(SystemExit):
        upload_and_create(client, task, number, CrashAfterCreate(api.native_batches()), "24h", 0.5)
    (crashed,) = all_states(task)
    assert crashed.step == "creating" and crashed.batch_id is None
    assert batches_created(sim, provider) == 1

    # beat re-drives a submission left this long without a step (nobody holds it now)
    stale = time.time() - STALE_SUBMISSION_S - 1
    os.utime(state_path(task, number), (stale, stale))
    poll_all(client)
    (found,) = all_states(task)
    assert found.step == "created" and found.batch_id
    start_worker(queues=["mitrailleuse"])
    start_beat()
    progress = run.wait(timeout=120)
    assert progress.state == "completed" and progress.succeeded == 20
    assert [r["output"] for r in results(task)] == [expected(row) for row in rows]
    assert batches_created(sim, provider) == 1


def test_mode_auto_chooses_per_provider(tmp_path, tasks_dir, sim, start_worker, start_beat):
    """Native batches where the provider has them (Anthropic, Gemini), live where not."""
    sim.configure(batch_duration_s=0.5)
    start_worker()
    start_beat()
    rows = [{"input_text": f"auto {n}"} for n in range(10)]
    for provider, mode in (("anthropic", "batch"), ("gemini", "batch"), ("deepseek", "realtime")):
        config = {provider: {"mode": "auto", "batch": {"batch_check_time": 0.5}}}
        m, task = new_task(tmp_path, rows, config, provider, name=provider)
        progress = m.submit(task).wait(timeout=120)
        assert progress.succeeded == 10
        summary = task.summary()
        assert summary["mode"] == mode and summary["mode_reason"].startswith("mode auto: ")
        assert {r["mode"] for r in results(task)} == {mode}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_the_run_command_sends_native_batches(provider, tmp_path, sim):
    """``mitrailleuse run --api-name anthropic|gemini`` in batch mode, on the embedded broker."""
    sim.configure(batch_duration_s=0.5)
    write_jsonl(tmp_path / "q.jsonl", [{"input_text": f"by the CLI {n}"} for n in range(30)])
    config = {provider: {"mode": "batch", "batch": {"batch_check_time": 1}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    env = {
        "REDIS_URL": "",
        f"{provider.upper()}_BASE_URL": sim.url,
        f"{provider.upper()}_API_KEY": "test-cli",
    }
    done = cli(
        "run",
        *("--api-name", provider, "--input", "q.jsonl", "--config", "config.json"),
        cwd=tmp_path,
        env=env,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert f"batch mode: mode batch: {provider}'s native batches" in done.stderr
    records = [json.loads(line) for line in Path(done.stdout.split()[-1]).read_text().splitlines()]
    assert [r["output"] for r in records] == [
        expected(json.loads(line)) for line in (tmp_path / "q.jsonl").read_text().splitlines()
    ]
    assert {r["mode"] for r in records} == {"batch"}
    assert batches_created(sim, provider) == 2 and calls(sim, provider) == 0


def test_a_batch_refused_for_good_fails_its_items_at_once(
    tmp_path, tasks_dir, sim, start_worker, start_beat
):
    """A bad key: the provider refuses the batch; its items fail with why, the run ends."""
    start_worker(queues=["mitrailleuse"], env={"GEMINI_API_KEY": "invalid-key"})
    start_beat()
    rows = [{"input_text": f"refused {n}"} for n in range(30)]
    m, task = new_task(tmp_path, rows, batch_config("gemini"), "gemini")
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed" and progress.failed == 30
    errors = {(r["error"]["type"], r["attempts"]) for r in results(task)}
    assert errors == {("batch_refused", 1)}
    assert "API key not valid" in results(task)[0]["error"]["message"]
    assert batches_created(sim, "gemini") == 0
    assert {s.step for s in all_states(task)} == {"collected"}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_cache_and_cost_limit_together(provider, tmp_path, tasks_dir, sim, start_worker):
    """At temperature 0 a repeated request is answered once; a cost limit stops the run, a
    higher one finishes it; a second run is answered from the cache, with no call."""
    start_worker(queues=[provider, "mitrailleuse"])
    rows = questions(60, prefix=f"{provider}-{time.time_ns()}")
    for n in range(2, 60, 3):
        rows[n] = rows[n - 2]  # every third item repeats an earlier one
    distinct = len({row["input_text"] for row in rows})
    setting = {"temperature": 0, "max_tokens": 20}
    config: dict = {provider: {"api_information": {"setting": setting}}, "general": {}}
    probe, probe_task = new_task(tmp_path, rows[:1], config, provider, name="probe")
    probe.submit(probe_task).wait(timeout=60)
    one_call = results(probe_task)[0]["cost_usd"]
    sim.reset()
    config["general"]["cost_limit_usd"] = 0.5 * distinct * one_call

    m, task = new_task(tmp_path, rows, config, provider)
    stopped = m.submit(task).wait(timeout=120)
    assert stopped.state == "stopped_budget", stopped
    assert stopped.spent_usd <= config["general"]["cost_limit_usd"]
    raised = load_config(task.config_path)
    raised.general.cost_limit_usd = 100.0
    write_json(task.config_path, raised.model_dump(mode="json"))
    progress = m.submit(task).wait(timeout=120)
    assert progress.state == "completed" and progress.succeeded == 60, progress
    assert [r["output"] for r in results(task)] == [expected(row) for row in rows]
    assert calls(sim, provider) == distinct - 1  # the probe's answer came from the cache

    again, again_task = new_task(tmp_path, rows, config, provider, name="again")
    repeat = again.submit(again_task).wait(timeout=120)
    assert repeat.state == "completed" and repeat.cached == 60
    assert calls(sim, provider) == distinct - 1


def test_a_large_gemini_batch_goes_as_an_uploaded_file(tmp_path, tasks_dir, sim, batch_fleet):
    """Gemini takes inline requests up to 20 MB (8 MB of request file, allowing for JSON's
    escapes): a larger batch is uploaded as a JSONL file."""
    batch_fleet(0.5)
    padding = "x" * 9_000
    rows = [{"input_text": f"long {n} {padding}"} for n in range(1000)]
    m, task = new_task(tmp_path, rows, batch_config("gemini", batch_size=1000), "gemini")
    progress = m.submit(task).wait(timeout=120)

    assert progress.state == "completed" and progress.succeeded == 1000
    (state,) = all_states(task)
    assert state.file_id and state.file_id.startswith("files/")
    assert sim.stats()["files_uploaded"] == 1 and batches_created(sim, "gemini") == 1
    assert [r["output"] for r in results(task)[:3]] == [expected(row) for row in rows[:3]]

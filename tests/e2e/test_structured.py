"""Structured outputs end to end: real workers and beat, the real SDKs, the simulator's APIs.

Per provider family (OpenAI and DeepSeek's ``json_schema``, Anthropic's forced tool, Gemini's
``responseJsonSchema``): a nested schema given as a pydantic model, every record validated; an
answer invalid at first, valid after one re-ask, its calls and cost counted; refusals and
truncation failing with their own types; the same in native batches, the re-ask in the next
batch; a schema refused at ``create``; typed results; a 1,000-item run exported as CSV.
"""

from __future__ import annotations

import csv
import json
from typing import Literal

import pytest
from jsonschema import Draft202012Validator
from pydantic import BaseModel

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.batch.state import all_states
from mitrailleuse.errors import ConfigError
from tests.e2e.helpers import results, write_jsonl
from tests.e2e.test_cli import cli

pytestmark = pytest.mark.e2e

#: The end of each provider's live route at the simulator (Gemini's under each API version).
LIVE_ROUTES = {
    "openai": "/v1/chat/completions",
    "deepseek": "/v1/chat/completions",
    "anthropic": "POST /v1/messages",
    "gemini": "/models/{model}:generateContent",
}
PROVIDERS = list(LIVE_ROUTES)
BATCH_PROVIDERS = ["openai", "anthropic", "gemini"]


class Address(BaseModel):
    street: str
    city: str
    postcode: str | None = None


class Person(BaseModel):
    name: str
    age: int
    role: Literal["author", "editor", "reader"]
    address: Address
    tags: list[str]
    homes: list[Address] = []


def calls(sim, provider):
    """Live calls the simulator answered for ``provider``."""
    requests = sim.stats()["requests"]
    return sum(n for route, n in requests.items() if route.endswith(LIVE_ROUTES[provider]))


def sent_schema(task, provider):
    """The schema the provider's requests carry, as the records are validated against."""
    from mitrailleuse.providers import provider_class

    section = task.config().provider(provider)
    return provider_class(provider).sent_schema(section.api_information.response_schema.json_schema)


#: Rows of a structured run, and what each must end as: (status, error type, re-asks, calls).
ROWS = {
    "Alice Martin writes novels in Lyon": ("succeeded", None, 0, 1),
    "Bruno Diaz edits a paper in Porto": ("succeeded", None, 0, 1),
    "[[schema-invalid-once]] Chloe Park reads in Seoul": ("succeeded", None, 1, 2),
    "[[schema-invalid]] never valid": ("failed", "invalid_output", 2, 3),
    "[[refusal]] a question the model declines": ("failed", "refusal", 0, 1),
    "[[length]] an answer cut short": ("failed", "truncated", 0, 1),
}


@pytest.mark.parametrize("provider", PROVIDERS)
def test_a_nested_schema_run_validates_every_record_and_reasks_the_invalid(
    provider, tmp_path, tasks_dir, sim, start_worker
):
    start_worker(queues=[provider, "mitrailleuse"])
    m = Mitrailleuse()
    source = write_jsonl(tmp_path / "people.jsonl", [{"input_text": t} for t in ROWS])
    task = m.create_task("s", provider, "people", {}, [source], response_model=Person)
    run = m.submit(task)
    progress = run.wait(timeout=120)

    assert progress.state == "completed" and (progress.succeeded, progress.failed) == (3, 3)
    validator = Draft202012Validator(sent_schema(task, provider))
    records = results(task)
    for (text, (status, error, reasks, answered)), record in zip(
        ROWS.items(), records, strict=True
    ):
        assert record["status"] == status, (text, record)
        assert record["attempts"] == answered, (text, record)
        if status == "succeeded":
            assert validator.is_valid(record["parsed"]), record["parsed"]
            assert json.loads(record["output"]) == record["parsed"]
            assert Person.model_validate(record["parsed"])
        else:
            assert record["error"]["type"] == error and record.get("parsed") is None
        # every answer was paid for, a refused or invalid one too
        assert record["reasks"] == reasks
        costs = record["attempt_costs_usd"]
        assert len(costs) == answered and all(c > 0 for c in costs)
        assert record["cost_usd"] == pytest.approx(sum(costs))
    assert calls(sim, provider) == sum(answered for *_, answered in ROWS.values())
    # every answer is paid for, re-asks and failed answers too, and counted once
    summary = task.summary()
    assert summary["cost_usd"] == pytest.approx(sum(r["cost_usd"] for r in records), rel=1e-6)
    assert progress.spent_usd == pytest.approx(summary["cost_usd"], rel=1e-6)

    typed = list(run.results(model=Person))
    assert [type(p).__name__ if p else None for p in typed] == ["Person"] * 3 + [None] * 3
    assert typed[0].address.city
    assert set(run.results_dict()) == {r["id"] for r in records}


@pytest.mark.parametrize("provider", BATCH_PROVIDERS)
def test_native_batches_reask_invalid_answers_in_the_next_batch(
    provider, tmp_path, tasks_dir, sim, start_worker, start_beat
):
    sim.configure(batch_duration_s=0.5)
    start_worker(queues=["mitrailleuse"])
    start_beat()
    rows = [{"input_text": f"person {n} of the batch"} for n in range(30)]
    rows[7] = {"input_text": "[[schema-invalid-once]] person 7, valid when asked again"}
    rows[21] = {"input_text": "[[schema-invalid]] never valid"}
    config = {provider: {"mode": "batch", "batch": {"batch_size": 20, "batch_check_time": 0.5}}}
    m = Mitrailleuse()
    source = write_jsonl(tmp_path / "batch.jsonl", rows)
    task = m.create_task("s", provider, "batch", config, [source], response_model=Person)
    progress = m.submit(task).wait(timeout=180)

    assert progress.state == "completed" and (progress.succeeded, progress.failed) == (29, 1)
    validator = Draft202012Validator(sent_schema(task, provider))
    records = results(task)
    assert {r["mode"] for r in records} == {"batch"}
    for n, record in enumerate(records):
        if n == 21:
            assert record["error"]["type"] == "invalid_output"
            assert (record["reasks"], record["attempts"]) == (2, 3)
            continue
        assert validator.is_valid(record["parsed"]), record
        assert record["reasks"] == (1 if n == 7 else 0)
        assert len(record["attempt_costs_usd"]) == record["reasks"] + 1
    # the run's two batches, a re-ask batch for each (items 7 and 21), and 21's second re-ask
    states = all_states(task)
    assert sorted((s.items, s.retry_of is None) for s in states) == [
        (1, False),
        (1, False),
        (1, False),
        (10, True),
        (20, True),
    ]
    assert calls(sim, provider) == 0


def test_a_schema_the_provider_cannot_take_is_refused_at_create(tmp_path, tasks_dir):
    write_jsonl(tmp_path / "q.jsonl", [{"input_text": "x"}])
    either = {"oneOf": [{"type": "string"}, {"type": "integer"}]}
    schema = {"type": "object", "properties": {"value": either}}
    config = {"openai": {"api_information": {"response_schema": {"name": "v", "schema": schema}}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    args = ("--user-id", "u", "--task-name", "t", "--config", "config.json", "--input", "q.jsonl")

    refused = cli("create", "--api-name", "openai", *args, cwd=tmp_path)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: openai.api_information.response_schema: 'oneOf' at /properties/value, "
        "which openai's structured outputs do not take"
    ]
    # Anthropic's tools take it
    config = {"anthropic": config["openai"]}
    (tmp_path / "config.json").write_text(json.dumps(config))
    taken = cli("create", "--api-name", "anthropic", *args, cwd=tmp_path)
    assert taken.returncode == 0, taken.stderr

    not_a_schema = {"type": "object", "properties": {"a": {"type": "text"}}}
    given = {"name": "v", "schema": not_a_schema}
    config = {"gemini": {"api_information": {"response_schema": given}}}
    (tmp_path / "config.json").write_text(json.dumps(config))
    refused = cli("create", "--api-name", "gemini", *args, cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "not a valid JSON Schema at properties/a/type" in refused.stderr

    # a setting structured outputs set themselves, given too: refused, naming it
    given = {"name": "v", "schema": {"type": "object"}}
    information = {"response_schema": given, "setting": {"response_format": {"type": "text"}}}
    (tmp_path / "config.json").write_text(
        json.dumps({"deepseek": {"api_information": information}})
    )
    refused = cli("create", "--api-name", "deepseek", *args, cwd=tmp_path)
    assert (
        refused.returncode == 2 and "setting.response_format and response_schema" in refused.stderr
    )

    with pytest.raises(ConfigError, match="'additionalProperties'"):

        class Open(BaseModel):
            counts: dict[str, int]

        Mitrailleuse().create_task("u", "openai", "t", {}, [], response_model=Open)


def test_a_thousand_item_run_exports_its_parsed_fields_as_csv(
    tmp_path, tasks_dir, sim, start_worker
):
    start_worker(queues=["openai", "mitrailleuse"])
    rows = [{"input_text": f"person number {n}"} for n in range(1000)]
    rows[500] = {"input_text": "[[refusal]] declined"}
    m = Mitrailleuse()
    source = write_jsonl(tmp_path / "many.jsonl", rows)
    task = m.create_task("s", "openai", "many", {}, [source], response_model=Person)
    progress = m.submit(task).wait(timeout=300)
    assert (progress.succeeded, progress.failed) == (999, 1)

    done = cli("export", "--task-path", str(task.path), "--format", "csv", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    with open(done.stdout.split()[-1], newline="") as handle:
        table = list(csv.DictReader(handle))
    assert len(table) == 1000
    assert [row["id"] for row in table] == [r["id"] for r in results(task)]
    for column in ("parsed.name", "parsed.age", "parsed.address.city", "parsed.tags", "reasks"):
        assert column in table[0]
    first = results(task)[0]["parsed"]
    assert table[0]["parsed.address.city"] == first["address"]["city"]
    assert json.loads(table[0]["parsed.tags"]) == first["tags"]
    assert table[500]["status"] == "failed" and table[500]["error_type"] == "refusal"


def test_with_the_cache_at_temperature_0_and_a_cost_limit(tmp_path, tasks_dir, sim, start_worker):
    """Features together, at their defaults: the cache keeps valid answers only, the second
    run asks nothing (a re-asked item's valid answer answers its first question too), and
    every paid answer is counted once in the spend the cost limit watches."""
    start_worker(queues=["openai", "mitrailleuse"])
    rows = [{"input_text": f"cached person {n}"} for n in range(20)]
    for n in (4, 13):
        rows[n] = {"input_text": f"[[schema-invalid-once]] cached person {n}"}
    config = {
        "openai": {"api_information": {"setting": {"temperature": 0}}},
        "general": {"cost_limit_usd": 5.0},
    }
    m = Mitrailleuse()
    source = write_jsonl(tmp_path / "cached.jsonl", rows)
    first = m.create_task("s", "openai", "first", config, [source], response_model=Person)
    progress = m.submit(first).wait(timeout=120)

    assert (progress.succeeded, progress.cached) == (20, 0)
    assert calls(sim, "openai") == 22
    records = results(first)
    assert [r["reasks"] for r in records] == [1 if n in (4, 13) else 0 for n in range(20)]
    assert progress.spent_usd == pytest.approx(sum(r["cost_usd"] for r in records), rel=1e-6)

    second = m.create_task("s", "openai", "second", config, [source], response_model=Person)
    again = m.submit(second).wait(timeout=120)
    assert (again.succeeded, again.cached) == (20, 20)
    assert calls(sim, "openai") == 22  # nothing asked twice, the invalid-once items neither
    assert [r["parsed"] for r in results(second)] == [r["parsed"] for r in records]
    assert again.spent_usd == 0

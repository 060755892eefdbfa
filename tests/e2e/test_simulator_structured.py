"""End-to-end tests of the simulator's structured outputs (JSON Schema answers), live and in
native batches, driven through the real openai, anthropic and google-genai SDKs."""

from __future__ import annotations

import enum
import json
import re
import time
from collections.abc import Callable
from datetime import date
from typing import Any, Literal

import anthropic
import httpx
import jsonschema
import openai
import orjson
import pytest
from google import genai
from google.genai import errors, types
from pydantic import BaseModel, Field

from mitrailleuse.simulator import SimulatorSettings, SimulatorThread
from mitrailleuse.simulator.schema_answers import REFUSAL, answer_object, invalid_object
from tests.e2e.helpers import simulator_fixtures

pytestmark = pytest.mark.e2e

SETTINGS = SimulatorSettings(batch_duration_s=0.2)
PROMPT = "Describe the order of Ada Lovelace"
FIX = "That answer does not follow the schema ('customer' is required). Answer again."


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


class Address(BaseModel):
    city: str
    postcode: str | None = Field(None, min_length=5, max_length=5)


class LineItem(BaseModel):
    sku: str = Field(min_length=3, max_length=12)
    quantity: int = Field(ge=1, le=10)
    size: Size
    note: str | None = None


class Order(BaseModel):
    customer: str
    status: Literal["new", "paid", "shipped"]
    items: list[LineItem] = Field(min_length=2, max_length=5)
    shipping: Address
    billing: Address | None = None
    placed_on: date
    total: float = Field(gt=0, lt=1000)
    gift: bool


class Tree(BaseModel):
    label: str
    children: list[Tree] = []
    parent: Tree | None = None


ORDER = Order.model_json_schema()
STRICT = {
    "type": "object",
    "additionalProperties": False,
    "required": ["title", "summary", "steps"],
    "properties": {
        "title": {"type": "string"},
        "summary": {"type": ["string", "null"]},
        "steps": {
            "type": "array",
            "items": {
                "type": "object",
                "additionalProperties": False,
                "required": ["n", "done", "kind"],
                "properties": {
                    "n": {"type": "integer", "minimum": 1},
                    "done": {"type": "boolean"},
                    "kind": {"type": ["string", "null"], "enum": ["a", "b", None]},
                },
            },
        },
    },
}
OTHERS = {
    "tree": Tree.model_json_schema(),
    "no-required": {"type": "object", "properties": {"n": {"type": "integer"}}},
    "no-properties": {"type": "object"},
    "all-of": {
        "allOf": [
            {"$ref": "#/definitions/Base"},
            {"properties": {"x": {"type": "number", "exclusiveMinimum": 5}}, "required": ["x"]},
        ],
        "definitions": {"Base": {"type": "object", "properties": {"v": {"const": 2}}}},
    },
    "formats": {
        "type": "object",
        "required": ["when", "at", "mail", "home", "id"],
        "properties": {
            "when": {"type": "string", "format": "date"},
            "at": {"type": "string", "format": "date-time"},
            "mail": {"type": "string", "format": "email"},
            "home": {"type": "string", "format": "uri"},
            "id": {"type": "string", "format": "uuid"},
        },
    },
}


def validator(schema: dict[str, Any]) -> jsonschema.Draft202012Validator:
    checker = jsonschema.Draft202012Validator.FORMAT_CHECKER
    return jsonschema.Draft202012Validator(schema, format_checker=checker)


sim, _clean = simulator_fixtures(SETTINGS)


# -- the generator -------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["order", "strict", *OTHERS])
def test_generated_answers_follow_the_schema(name: str) -> None:
    schema = {"order": ORDER, "strict": STRICT, **OTHERS}[name]
    check = validator(schema)
    for prompt in (PROMPT, "Bonjour [[schema-invalid]] le monde", ""):
        value = answer_object(schema, prompt)
        check.validate(value)
        assert value == answer_object(schema, prompt)  # deterministic
        assert not check.is_valid(invalid_object(schema, prompt)), name
    if name == "order":
        order = Order.model_validate(answer_object(ORDER, PROMPT))
        assert len(order.items) == 2 and order.billing is not None
        assert order.customer == "Describe the order of"  # the prompt's words
        assert answer_object(ORDER, "another item") != answer_object(ORDER, PROMPT)
        assert "customer" not in invalid_object(ORDER, PROMPT)  # the first required dropped
    if name == "no-required":
        assert invalid_object(schema, PROMPT) == {"n": "not the expected type"}
    if name == "no-properties":
        assert isinstance(invalid_object(schema, PROMPT), list)


# -- one driver per API --------------------------------------------------------------------


def conversation(turns: list[str], model_role: str) -> list[tuple[str, str]]:
    """(role, text) of alternate user and model turns, the user first."""
    return [("user" if index % 2 == 0 else model_role, text) for index, text in enumerate(turns)]


@pytest.fixture
def oai(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def claude(sim: SimulatorThread) -> anthropic.Anthropic:
    return anthropic.Anthropic(api_key="sk-ant", base_url=sim.url, max_retries=0, timeout=10)


@pytest.fixture
def gemini(sim: SimulatorThread) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=1)
    return genai.Client(
        api_key="k", http_options=types.HttpOptions(base_url=sim.url, retry_options=retry)
    )


def ask_openai(client: openai.OpenAI, turns: list[str]):
    return client.chat.completions.create(
        model="gpt-sim",
        messages=[{"role": r, "content": t} for r, t in conversation(turns, "assistant")],
        response_format={
            "type": "json_schema",
            "json_schema": {"name": "order", "schema": ORDER, "strict": True},
        },
    )


def ask_anthropic(client: anthropic.Anthropic, turns: list[str]):
    return client.messages.create(
        model="claude-sim",
        max_tokens=512,
        messages=[{"role": r, "content": t} for r, t in conversation(turns, "assistant")],
        tools=[{"name": "order", "description": "Record the order.", "input_schema": ORDER}],
        tool_choice={"type": "tool", "name": "order"},
    )


def ask_gemini(client: genai.Client, turns: list[str]):
    return client.models.generate_content(
        model="gemini-sim",
        contents=[{"role": r, "parts": [{"text": t}]} for r, t in conversation(turns, "model")],
        config={"response_mime_type": "application/json", "response_json_schema": ORDER},
    )


def openai_value(reply) -> Any:
    choice = reply.choices[0]
    assert (choice.finish_reason, choice.message.refusal) == ("stop", None)
    return json.loads(choice.message.content)


def anthropic_value(reply) -> Any:
    assert reply.stop_reason == "tool_use"
    (block,) = reply.content
    assert (block.type, block.name) == ("tool_use", "order")
    assert re.fullmatch(r"toolu_[0-9a-f]+", block.id), block.id
    return block.input


def gemini_value(reply) -> Any:
    assert reply.candidates[0].finish_reason == types.FinishReason.STOP
    return json.loads(reply.text)


#: Per API: its client fixture, how to send it a conversation, how to read the answer's object.
DRIVERS: dict[str, tuple[str, Callable[[Any, list[str]], Any], Callable[[Any], Any]]] = {
    "openai": ("oai", ask_openai, openai_value),
    "anthropic": ("claude", ask_anthropic, anthropic_value),
    "gemini": ("gemini", ask_gemini, gemini_value),
}


@pytest.fixture(params=list(DRIVERS))
def ask(request: pytest.FixtureRequest) -> Callable[[list[str]], Any]:
    """Send a conversation to one API with the ORDER schema; return the answer's object."""
    fixture, send, value = DRIVERS[request.param]
    client = request.getfixturevalue(fixture)
    return lambda turns: value(send(client, turns))


# -- live ----------------------------------------------------------------------------------


def test_answer_follows_a_nested_pydantic_schema(sim: SimulatorThread, ask) -> None:
    value = ask([PROMPT])
    validator(ORDER).validate(value)
    Order.model_validate(value)
    assert value == answer_object(ORDER, PROMPT)
    other = ask(["Describe the order of Charles Babbage"])
    validator(ORDER).validate(other)
    assert other != value
    assert sim.stats()["structured_requests"] == 2


def test_schema_invalid_marker_always_breaks_the_schema(sim: SimulatorThread, ask) -> None:
    prompt = f"{PROMPT} [[schema-invalid]]"
    first = ask([prompt])
    assert not validator(ORDER).is_valid(first)
    assert "customer" not in first
    again = ask([prompt, json.dumps(first), FIX])
    assert not validator(ORDER).is_valid(again)
    assert sim.stats()["structured_requests"] == 2


def test_schema_invalid_once_is_valid_when_reasked(sim: SimulatorThread, ask) -> None:
    prompt = f"{PROMPT} [[schema-invalid-once]]"
    first = ask([prompt])
    assert not validator(ORDER).is_valid(first)
    assert not validator(ORDER).is_valid(ask([prompt]))  # stateless: not a re-ask
    fixed = ask([prompt, json.dumps(first), FIX])
    validator(ORDER).validate(fixed)
    assert fixed == answer_object(ORDER, prompt)
    assert sim.stats()["structured_requests"] == 3


def test_openai_refusal_and_length(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    refused = ask_openai(oai, [f"{PROMPT} [[refusal]]"]).choices[0]
    assert refused.finish_reason == "stop"
    assert (refused.message.content, refused.message.refusal) == (None, REFUSAL)
    cut = ask_openai(oai, [f"{PROMPT} [[length]]"]).choices[0]
    assert cut.finish_reason == "length"
    full = orjson.dumps(answer_object(ORDER, f"{PROMPT} [[length]]")).decode()
    assert cut.message.content == full[: len(full) // 2]
    with pytest.raises(json.JSONDecodeError):
        json.loads(cut.message.content)
    for text, content, finish in (("hi", "echo: hi", "stop"), ("[[length]]", "echo: [[", "length")):
        plain = oai.chat.completions.create(
            model="gpt-sim", messages=[{"role": "user", "content": text}]
        ).choices[0]
        assert (plain.message.content, plain.finish_reason) == (content, finish)
    assert sim.stats()["structured_requests"] == 2


def test_anthropic_refusal_and_length(claude: anthropic.Anthropic) -> None:
    refused = ask_anthropic(claude, [f"{PROMPT} [[refusal]]"])
    assert refused.stop_reason == "refusal"
    assert [(b.type, b.text) for b in refused.content] == [("text", REFUSAL)]
    cut = ask_anthropic(claude, [f"{PROMPT} [[length]]"])
    assert cut.stop_reason == "max_tokens"
    (block,) = cut.content
    assert (block.type, block.name, block.input) == ("tool_use", "order", {})


def test_anthropic_tool_choice_must_name_a_tool(claude: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.BadRequestError, match="tool_choice"):
        claude.messages.create(
            model="claude-sim",
            max_tokens=64,
            messages=[{"role": "user", "content": "x"}],
            tools=[{"name": "order", "input_schema": ORDER}],
            tool_choice={"type": "tool", "name": "other"},
        )


def test_gemini_refusal_and_length(gemini: genai.Client) -> None:
    refused = ask_gemini(gemini, [f"{PROMPT} [[refusal]]"]).candidates[0]
    assert refused.finish_reason == types.FinishReason.SAFETY
    assert refused.content is None
    cut = ask_gemini(gemini, [f"{PROMPT} [[length]]"])
    assert cut.candidates[0].finish_reason == types.FinishReason.MAX_TOKENS
    full = orjson.dumps(answer_object(ORDER, f"{PROMPT} [[length]]")).decode()
    assert cut.text == full[: len(full) // 2]


def test_gemini_reads_response_schema_too(sim: SimulatorThread, gemini: genai.Client) -> None:
    config = {"responseMimeType": "application/json", "responseSchema": ORDER}
    body = {"contents": [{"parts": [{"text": PROMPT}]}], "generationConfig": config}
    reply = httpx.post(
        f"{sim.url}/v1beta/models/gemini-sim:generateContent",
        json=body,
        headers={"x-goog-api-key": "k"},
        trust_env=False,
    )
    text = reply.json()["candidates"][0]["content"]["parts"][0]["text"]
    assert json.loads(text) == answer_object(ORDER, PROMPT)
    with pytest.raises(errors.ClientError, match="response_mime_type"):
        gemini.models.generate_content(
            model="gemini-sim", contents="x", config={"response_json_schema": ORDER}
        )


# -- native batches ------------------------------------------------------------------------


def wait_until(done: Callable[[], Any], timeout: float = 5.0) -> Any:
    """Poll ``done`` until it returns something true, and return that."""
    deadline = time.monotonic() + timeout
    while not (result := done()):
        assert time.monotonic() < deadline, "batch not done in time"
        time.sleep(0.02)
    return result


def test_openai_batch_answers_structured(sim: SimulatorThread, oai: openai.OpenAI) -> None:
    response_format = {
        "type": "json_schema",
        "json_schema": {"name": "order", "schema": ORDER, "strict": True},
    }
    texts = {"ok": PROMPT, "bad": f"{PROMPT} [[schema-invalid]]", "plain": "hello"}
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {
                "model": "gpt-batch",
                "messages": [{"role": "user", "content": text}],
                **({} if custom_id == "plain" else {"response_format": response_format}),
            },
        }
        for custom_id, text in texts.items()
    ]
    data = b"".join(orjson.dumps(line) + b"\n" for line in lines)
    uploaded = oai.files.create(file=("in.jsonl", data), purpose="batch")
    batch = oai.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final = wait_until(lambda: (b := oai.batches.retrieve(batch.id)).status == "completed" and b)
    output = map(orjson.loads, oai.files.content(final.output_file_id).content.splitlines())
    messages = {line["custom_id"]: line["response"]["body"]["choices"][0] for line in output}
    assert messages["ok"]["finish_reason"] == "stop"
    assert json.loads(messages["ok"]["message"]["content"]) == answer_object(ORDER, PROMPT)
    assert not validator(ORDER).is_valid(json.loads(messages["bad"]["message"]["content"]))
    assert messages["plain"]["message"]["content"] == "echo: hello"
    assert sim.stats()["structured_requests"] == 0  # live calls only


def test_anthropic_batch_answers_structured(claude: anthropic.Anthropic) -> None:
    texts = {"ok": PROMPT, "refused": f"{PROMPT} [[refusal]]"}
    tool = {"name": "order", "description": "Record the order.", "input_schema": ORDER}
    requests = [
        {
            "custom_id": custom_id,
            "params": {
                "model": "claude-batch",
                "max_tokens": 512,
                "messages": [{"role": "user", "content": text}],
                "tools": [tool],
                "tool_choice": {"type": "tool", "name": "order"},
            },
        }
        for custom_id, text in texts.items()
    ]
    batch = claude.messages.batches.create(requests=requests)
    wait_until(lambda: claude.messages.batches.retrieve(batch.id).processing_status == "ended")
    results = {line.custom_id: line.result for line in claude.messages.batches.results(batch.id)}
    assert results["ok"].type == results["refused"].type == "succeeded"
    assert anthropic_value(results["ok"].message) == answer_object(ORDER, PROMPT)
    assert results["refused"].message.stop_reason == "refusal"


def test_gemini_batch_answers_structured(gemini: genai.Client) -> None:
    config = {"response_mime_type": "application/json", "response_json_schema": ORDER}
    texts = {"ok": PROMPT, "bad": f"{PROMPT} [[schema-invalid]]"}
    src = [
        {
            "contents": [{"role": "user", "parts": [{"text": text}]}],
            "metadata": {"key": key},
            "config": config,
        }
        for key, text in texts.items()
    ]
    job = gemini.batches.create(model="gemini-sim", src=src)
    final = wait_until(lambda: (j := gemini.batches.get(name=job.name)).done and j)
    assert final.state == types.JobState.JOB_STATE_SUCCEEDED
    answers = {item.metadata["key"]: item.response for item in final.dest.inlined_responses}
    assert gemini_value(answers["ok"]) == answer_object(ORDER, PROMPT)
    assert not validator(ORDER).is_valid(gemini_value(answers["bad"]))

"""The simulator's streamed chat completions (``stream: true``), read through the real openai SDK.

The answer streamed must be the one a plain request gets, so a client relaying tokens can be
checked against the non-streaming path; the mid-stream faults must look, to the SDK, like the
real API's broken streams.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Iterator
from typing import Any

import httpx
import openai
import orjson
import pytest
from openai.types.chat import ChatCompletionChunk

from mitrailleuse.simulator import SimulatorSettings, SimulatorThread, chat_answer
from tests.e2e.helpers import simulator_fixtures

pytestmark = pytest.mark.e2e

SETTINGS = SimulatorSettings(batch_duration_s=0.2)
LONG = "stream me these eleven words one at a time please, thanks"

sim, _clean = simulator_fixtures(SETTINGS)


@pytest.fixture
def client(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def raw(sim: SimulatorThread) -> Iterator[httpx.Client]:
    headers = {"Authorization": "Bearer sk-test"}
    with httpx.Client(base_url=sim.url, headers=headers, trust_env=False, timeout=10) as http:
        yield http


def user(text: str) -> list[dict[str, Any]]:
    return [{"role": "user", "content": text}]


def read(stream: Any, got: list[ChatCompletionChunk]) -> None:
    """Iterate ``stream`` into ``got``, which keeps what came before an exception."""
    got.extend(stream)


def joined(chunks: list[ChatCompletionChunk], key: str = "content") -> str:
    return "".join(getattr(c.choices[0].delta, key) or "" for c in chunks if c.choices)


def finish_reasons(chunks: list[ChatCompletionChunk]) -> list[str]:
    return [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]


SCHEMA = {
    "type": "json_schema",
    "json_schema": {
        "name": "pair",
        "schema": {
            "type": "object",
            "properties": {"word": {"type": "string"}, "n": {"type": "integer"}},
            "required": ["word", "n"],
            "additionalProperties": False,
        },
    },
}


@pytest.mark.parametrize(
    ("messages", "extra", "finish_reason"),
    [
        ([{"role": "system", "content": "be brief"}, *user(LONG)], {}, "stop"),
        (user(f"{LONG} [[length]]"), {}, "length"),
        (user("no [[refusal]]"), {}, "stop"),
        (user("a structured answer"), {"response_format": SCHEMA}, "stop"),
    ],
    ids=["plain", "length", "refusal", "json_schema"],
)
def test_stream_is_the_plain_answer(
    client: openai.OpenAI, messages: list[dict[str, Any]], extra: dict[str, Any], finish_reason: str
) -> None:
    whole = client.chat.completions.create(model="gpt-sim", messages=messages, **extra)
    chunks = list(
        client.chat.completions.create(model="gpt-sim", messages=messages, stream=True, **extra)
    )
    message = whole.choices[0].message
    assert joined(chunks) == (message.content or "")
    assert joined(chunks, "refusal") == (message.refusal or "")
    assert finish_reasons(chunks) == [finish_reason] == [whole.choices[0].finish_reason]
    assert chunks[-1].choices[0].finish_reason is not None  # The finish chunk is the last.
    first = chunks[0].choices[0].delta
    assert first.role == "assistant"
    assert "" in (first.content, first.refusal)
    assert len(chunks) > 3  # The text comes in pieces.
    assert {(c.id, c.object, c.model, c.created) for c in chunks} == {
        (chunks[0].id, "chat.completion.chunk", "gpt-sim", chunks[0].created)
    }
    assert all(c.usage is None for c in chunks)


def test_stream_of_the_echo(client: openai.OpenAI) -> None:
    """What the comparison above rests on: the echo, cut in half by ``[[length]]``."""
    messages = [{"role": "system", "content": "be brief"}, *user(LONG)]
    stream = client.chat.completions.create(model="m", messages=messages, stream=True)
    assert joined(list(stream)) == chat_answer(messages) == f"(be brief) echo: {LONG}"
    prompt = f"{LONG} [[length]]"
    cut = client.chat.completions.create(model="m", messages=user(prompt), stream=True)
    echo = f"echo: {prompt}"
    assert joined(list(cut)) == echo[: len(echo) // 2]


def test_async_stream_with_usage(sim: SimulatorThread) -> None:
    async def both() -> tuple[Any, list[ChatCompletionChunk]]:
        async with openai.AsyncOpenAI(
            base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
        ) as aclient:
            whole = await aclient.chat.completions.create(model="m", messages=user(LONG))
            stream = await aclient.chat.completions.create(
                model="m",
                messages=user(LONG),
                stream=True,
                stream_options={"include_usage": True},
            )
            return whole, [chunk async for chunk in stream]

    whole, chunks = asyncio.run(both())
    *answer, last = chunks
    assert joined(answer) == whole.choices[0].message.content == f"echo: {LONG}"
    assert finish_reasons(answer) == ["stop"]
    assert last.choices == []
    assert last.usage == whole.usage
    assert all(chunk.usage is None for chunk in answer)
    stats = sim.stats()
    assert (stats["chat_streams"], stats["chat_streams_completed"]) == (1, 1)


def test_wire_format(raw: httpx.Client) -> None:
    body = {
        "model": "m",
        "messages": user("on the wire"),
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    response = raw.post("/v1/chat/completions", json=body)
    assert response.status_code == 200
    assert response.headers["content-type"] == "text/event-stream; charset=utf-8"
    events = response.text.split("\n\n")
    assert events[-2:] == ["data: [DONE]", ""]
    assert all(event.startswith("data: ") for event in events[:-1])
    chunks = [orjson.loads(event.removeprefix("data: ")) for event in events[:-2]]
    for chunk in chunks[:-1]:
        assert list(chunk) == ["id", "object", "created", "model", "usage", "choices"]
        assert chunk["usage"] is None
        assert list(chunk["choices"][0]) == ["index", "delta", "logprobs", "finish_reason"]
    assert chunks[0]["choices"][0]["delta"] == {"role": "assistant", "content": ""}
    assert [c["choices"][0]["delta"].get("content") for c in chunks[1:-2]] == [
        "echo: ",
        "on ",
        "the ",
        "wire",
    ]
    assert chunks[-2]["choices"][0]["delta"] == {}
    assert chunks[-1]["choices"] == []
    assert chunks[-1]["usage"]["total_tokens"] > 0


def test_stream_options_need_stream(raw: httpx.Client) -> None:
    body = {"model": "m", "messages": user("x"), "stream_options": {"include_usage": True}}
    refused = raw.post("/v1/chat/completions", json=body)
    assert refused.status_code == 400
    assert refused.json()["error"]["param"] == "stream_options"
    body = {"model": "m", "messages": user("x"), "stream": "yes"}
    assert raw.post("/v1/chat/completions", json=body).json()["error"]["param"] == "stream"


def test_cut_stream(sim: SimulatorThread, client: openai.OpenAI) -> None:
    got: list[ChatCompletionChunk] = []
    stream = client.chat.completions.create(
        model="m", messages=user(f"{LONG} [[cut-stream]]"), stream=True
    )
    with pytest.raises(openai.APIConnectionError) as cut:
        read(stream, got)
    assert "incomplete chunked read" in str(cut.value.__cause__)  # The SDK's HTTP client's.
    assert len(got) >= 3  # About half the chunks came, then none: no finish_reason.
    assert finish_reasons(got) == []
    assert f"echo: {LONG}".startswith(joined(got))
    stats = sim.stats()
    assert (stats["chat_streams"], stats["chat_streams_cut"]) == (1, 1)
    assert stats["chat_streams_completed"] == 0


def test_cut_stream_once_then_whole(sim: SimulatorThread) -> None:
    text = f"{LONG} [[cut-stream-once]]"

    async def twice() -> tuple[BaseException | None, list[ChatCompletionChunk]]:
        async with openai.AsyncOpenAI(
            base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
        ) as aclient:
            first = await aclient.chat.completions.create(
                model="m", messages=user(text), stream=True
            )
            try:
                [chunk async for chunk in first]
            except openai.APIConnectionError as exc:
                error: BaseException | None = exc
            else:
                error = None
            second = await aclient.chat.completions.create(
                model="m", messages=user(text), stream=True
            )
            return error, [chunk async for chunk in second]

    error, chunks = asyncio.run(twice())
    assert isinstance(error, openai.APIConnectionError)
    assert joined(chunks) == f"echo: {text}"
    assert finish_reasons(chunks) == ["stop"]
    stats = sim.stats()
    assert (stats["chat_streams_cut"], stats["chat_streams_completed"]) == (1, 1)


def test_stream_error_event(sim: SimulatorThread, client: openai.OpenAI) -> None:
    got: list[ChatCompletionChunk] = []
    stream = client.chat.completions.create(
        model="m", messages=user(f"{LONG} [[stream-error]]"), stream=True
    )
    with pytest.raises(openai.APIError) as failed:
        read(stream, got)
    error = failed.value
    assert not isinstance(error, (openai.APIStatusError, openai.APIConnectionError))
    assert isinstance(error.body, dict)
    assert error.body["type"] == "server_error"
    assert error.message == error.body["message"]
    assert len(got) >= 3
    assert finish_reasons(got) == []
    stats = sim.stats()
    assert (stats["chat_streams"], stats["chat_streams_errored"]) == (1, 1)


def test_client_leaving_mid_stream(sim: SimulatorThread, client: openai.OpenAI) -> None:
    """A client closing a stream early is no server error (nor a completed stream)."""
    stream = client.chat.completions.create(model="m", messages=user("word " * 5000), stream=True)
    with stream:
        assert next(stream).choices[0].delta.role == "assistant"
    deadline = time.monotonic() + 5
    while (stats := sim.stats())["in_flight"]:
        assert time.monotonic() < deadline
        time.sleep(0.01)
    assert stats["chat_streams"] == 1
    assert stats["chat_streams_completed"] == 0
    assert "500" not in stats["status_counts"]


def test_chunk_pacing(sim: SimulatorThread, client: openai.OpenAI) -> None:
    pause_ms = 20
    sim.configure(stream_chunk_ms=pause_ms)
    started = time.monotonic()
    chunks = list(client.chat.completions.create(model="m", messages=user(LONG), stream=True))
    elapsed = time.monotonic() - started
    assert len(chunks) >= 10
    assert elapsed >= len(chunks) * pause_ms / 1000


def test_faults_before_the_stream_are_http_errors(
    sim: SimulatorThread, client: openai.OpenAI
) -> None:
    def stream(text: str) -> list[ChatCompletionChunk]:
        return list(client.chat.completions.create(model="m", messages=user(text), stream=True))

    with pytest.raises(openai.InternalServerError) as status:
        client.chat.completions.create(model="m", messages=user("x [[status:503]]"), stream=True)
    assert status.value.status_code == 503
    with pytest.raises(openai.RateLimitError):
        stream("y [[fail-first:429]]")
    assert finish_reasons(stream("y [[fail-first:429]]")) == ["stop"]
    sim.configure(rpm=1)
    stream("counted")
    with pytest.raises(openai.RateLimitError) as limited:
        client.chat.completions.create(model="m", messages=user("one too many"), stream=True)
    assert 1 <= int(limited.value.response.headers["retry-after"]) <= 60
    assert limited.value.response.headers["content-type"] == "application/json"
    stats = sim.stats()
    assert stats["chat_streams"] == stats["chat_streams_completed"] == 2
    assert stats["status_counts"] == {"200": 2, "429": 2, "503": 1}
    assert [(entry["status"], entry["texts"]) for entry in sim.log()] == [
        (503, ["x [[status:503]]"]),
        (429, ["y [[fail-first:429]]"]),
        (200, ["y [[fail-first:429]]"]),
        (200, ["counted"]),
        (429, ["one too many"]),
    ]


def test_batch_line_cannot_stream(client: openai.OpenAI) -> None:
    line = {
        "custom_id": "a",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": user("x"), "stream": True},
    }
    uploaded = client.files.create(file=("s.jsonl", orjson.dumps(line) + b"\n"), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    deadline = time.monotonic() + 5
    while (batch := client.batches.retrieve(batch.id)).status == "validating":
        assert time.monotonic() < deadline
        time.sleep(0.02)
    assert batch.status == "failed"
    assert batch.errors and batch.errors.data
    assert batch.errors.data[0].param == "stream"

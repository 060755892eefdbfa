"""Chat sessions streamed through the fleet, end to end: HTTP API, a real worker, the simulator.

``POST /v1/chat/async`` opens a session and returns; a worker streams the simulator's answer
into Redis; ``GET /v1/stream/<id>`` relays it as OpenAI's Server-Sent Events, resumable with
``Last-Event-ID`` without a second provider call. A status fault before the stream is retried
out of sight; a cut after chunks ends the session with an ``error`` event, never ``[DONE]``.
"""

from __future__ import annotations

import json
from collections.abc import Iterator

import httpx
import pytest

from mitrailleuse.simulator import chat_answer
from tests.e2e.test_http import ALICE, BOB, TOKENS, bearer, problem, serve  # noqa: F401

pytestmark = pytest.mark.e2e

LONG = "tell me a long story about forty little ducks walking in a row to the river"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def sse(response: httpx.Response, count: int | None = None) -> Iterator[dict]:
    """The events of a ``text/event-stream`` (``count``: stop after that many), comments skipped."""
    fields: dict = {}
    seen = 0
    for line in response.iter_lines():
        if line.startswith(":"):
            continue
        if line:
            name, _, value = line.partition(":")
            fields[name] = value.removeprefix(" ")
            continue
        if fields:
            yield fields
            seen += 1
            fields = {}
            if seen == count:
                return


def read_stream(http: httpx.Client, url: str, count: int | None = None, **kwargs) -> list[dict]:
    with http.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(sse(response, count))


def text_of(events: list[dict]) -> str:
    chunks = [json.loads(e["data"]) for e in events if "event" not in e and e["data"] != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture
def http(serve, sim, start_worker) -> httpx.Client:  # noqa: F811
    start_worker(queues=["openai", "mitrailleuse"], concurrency=4)
    return serve().client


def start(http: httpx.Client, messages: list[dict], **extra) -> dict:
    response = http.post("/v1/chat/async", json={"api": "openai", "messages": messages, **extra})
    assert response.status_code == 202, response.text
    return response.json()


def test_a_chat_streamed_through_the_fleet(http, sim):
    sim.configure(stream_chunk_ms=20)
    messages = user(LONG)
    session = start(http, messages, stream_options={"include_usage": True})
    assert session["status"] == "queued"
    assert session["stream_url"] == f"/v1/stream/{session['session_id']}"
    assert sim.stats()["chat_streams_completed"] == 0  # it returned before the stream was done
    events = read_stream(http, session["stream_url"])
    assert events[-1]["data"] == "[DONE]"
    assert text_of(events) == chat_answer(messages)
    ids = [e["id"] for e in events]
    assert len(set(ids)) == len(ids)
    usage_chunk = json.loads(events[-2]["data"])
    assert usage_chunk["choices"] == [] and usage_chunk["usage"]["total_tokens"] > 0
    assert usage_chunk["cost_usd"] > 0
    again = read_stream(http, session["stream_url"])  # a finished session reads again whole
    assert again == events
    assert sim.stats()["chat_streams"] == 1


def test_a_reconnect_with_last_event_id_misses_and_repeats_nothing(http, sim):
    sim.configure(stream_chunk_ms=60)
    messages = user(LONG + " again")
    session = start(http, messages)
    first = read_stream(http, session["stream_url"], count=3)  # then the client goes
    rest = read_stream(http, session["stream_url"], headers={"Last-Event-ID": first[-1]["id"]})
    assert rest[-1]["data"] == "[DONE]"
    assert text_of(first + rest) == chat_answer(messages)
    assert not {e["id"] for e in first} & {e["id"] for e in rest}
    assert all("usage" not in json.loads(e["data"]) for e in rest[:-1])  # none asked for
    assert sim.stats()["chat_streams"] == 1


def test_a_cut_after_chunks_ends_in_an_error_never_done(http, sim):
    messages = user(f"{LONG} [[cut-stream-once]]")
    session = start(http, messages)
    events = read_stream(http, session["stream_url"])
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["error"]["type"] == "stream_cut"
    assert all(e["data"] != "[DONE]" for e in events)
    assert 0 < len(text_of(events)) < len(chat_answer(messages))
    assert sim.stats()["chat_streams"] == 1  # not started again behind the client's back


def test_a_failure_before_the_stream_is_retried_out_of_sight(http, sim):
    messages = user(f"{LONG} [[fail-first:500]]")
    events = read_stream(http, start(http, messages)["stream_url"])
    assert all("event" not in e for e in events) and events[-1]["data"] == "[DONE]"
    assert text_of(events) == chat_answer(messages)
    stats = sim.stats()
    assert stats["chat_requests"] == 2 and stats["chat_streams"] == 1


def test_post_chat_streams_or_answers_whole(http, sim):
    messages = user("a short one")
    body = {"api": "openai", "messages": messages}
    with http.stream("POST", "/v1/chat", json={**body, "stream": True}) as response:
        assert response.status_code == 200
        events = list(sse(response))
    assert events[-1]["data"] == "[DONE]" and text_of(events) == chat_answer(messages)

    response = http.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    completion = response.json()
    assert completion["object"] == "chat.completion"
    assert completion["choices"][0]["message"]["content"] == chat_answer(messages)
    assert completion["choices"][0]["finish_reason"] == "stop"
    assert completion["usage"]["total_tokens"] > 0

    response = http.post("/v1/chat", json={**body, "messages": user(f"x [[cut-stream]] {LONG}")})
    assert "stream_cut" in problem(response, 502)["detail"]


def test_unknown_and_other_users_sessions_are_404(serve, sim, start_worker):  # noqa: F811
    start_worker(queues=["openai", "mitrailleuse"], concurrency=2)
    http = serve({"MITRAILLEUSE_API_TOKENS": TOKENS}).client
    problem(http.get("/v1/stream/nosuchsession", headers=bearer(ALICE)), 404)
    body = {"api": "openai", "messages": user("mine only")}
    response = http.post("/v1/chat/async", json=body, headers=bearer(ALICE))
    assert response.status_code == 202, response.text
    url = response.json()["stream_url"]
    problem(http.get(url, headers=bearer(BOB)), 404)
    problem(http.get(url), 401)
    events = read_stream(http, url, headers=bearer(ALICE))
    assert events[-1]["data"] == "[DONE]"
    forged = {**body, "user_id": "bob"}
    problem(http.post("/v1/chat/async", json=forged, headers=bearer(ALICE)), 403)
    problem(http.get(url, headers={**bearer(ALICE), "Last-Event-ID": "nope"}), 400)

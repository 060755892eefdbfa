"""Chat sessions streamed through the fleet, end to end: HTTP API, a real worker, the simulator.

``POST /v1/chat/async`` opens a session and returns; a worker streams the simulator's answer
into Redis; ``GET /v1/stream/<id>`` relays it as OpenAI's Server-Sent Events, resumable with
``Last-Event-ID`` without a second provider call. A status fault before the stream is retried
out of sight; a cut after chunks, an error event, or a stream that closes cleanly before its
``finish_reason`` ends the session with an ``error`` event, never ``[DONE]``. The reconnect is
read with a real SSE client (httpx-sse).
"""

from __future__ import annotations

import asyncio
import json
import uuid

import httpx
import pytest

from mitrailleuse import keys
from mitrailleuse.cost.pricing import price_of, worst_case_usd
from mitrailleuse.pipeline import chat_stream
from mitrailleuse.pipeline.chat_stream import KEY_REFUSED
from mitrailleuse.pipeline.liveness import Lease
from mitrailleuse.pipeline.run_state import redis_client
from mitrailleuse.providers.openai import OpenAIProvider
from mitrailleuse.simulator import chat_answer
from tests.e2e.test_http import (  # noqa: F401
    ALICE,
    BOB,
    TOKENS,
    bearer,
    problem,
    serve,
    sse_events,
)

pytestmark = pytest.mark.e2e

LONG = "tell me a long story about forty little ducks walking in a row to the river"


def user(text: str) -> list[dict]:
    return [{"role": "user", "content": text}]


def read_stream(http: httpx.Client, url: str, count: int | None = None, **kwargs) -> list[dict]:
    with http.stream("GET", url, **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        return sse_events(response, count)


def text_of(events: list[dict]) -> str:
    chunks = [json.loads(e["data"]) for e in events if "event" not in e and e["data"] != "[DONE]"]
    return "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])


@pytest.fixture
def http(serve, sim, start_worker) -> httpx.Client:  # noqa: F811
    start_worker(queues=["openai", "mitrailleuse"], concurrency=4)
    return serve().client


def start(http: httpx.Client, messages: list[dict] | None = None, **extra) -> dict:
    body = {"api": "openai", **({"messages": messages} if messages else {}), **extra}
    response = http.post("/v1/chat/async", json=body)
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
    assert sim.stats()["chat_streams_completed"] == 0  # it went mid-stream
    rest = read_stream(http, session["stream_url"], headers={"Last-Event-ID": first[-1]["id"]})
    assert rest[-1]["data"] == "[DONE]"
    assert text_of(first + rest) == chat_answer(messages)
    assert not {e["id"] for e in first} & {e["id"] for e in rest}
    assert all("usage" not in json.loads(e["data"]) for e in rest[:-1])  # none asked for
    assert sim.stats()["chat_streams"] == 1


def test_stats_show_a_streaming_chats_call_in_flight(http, sim):
    sim.configure(stream_chunk_ms=100)
    session = start(http, user(LONG + " counted"), model="gpt-4o-mini")
    first = read_stream(http, session["stream_url"], count=1)  # the worker streams now
    rates = http.get("/stats").json()["rates"]["openai:gpt-4o-mini"]
    assert rates["in_flight"] >= 1 and rates["requests_per_minute"] > 0
    rest = read_stream(http, session["stream_url"], headers={"Last-Event-ID": first[-1]["id"]})
    assert rest[-1]["data"] == "[DONE]"


def test_a_hundred_and_fifty_readers_of_one_session_each_get_it_whole(http, sim):
    """More readers than a redis-py 8 pool's default 100 connections: each waits in XREAD."""
    sim.configure(stream_chunk_ms=100)
    messages = user(LONG + " for many")
    url = start(http, messages)["stream_url"]

    async def read_all() -> list[str]:
        limits = httpx.Limits(max_connections=200)
        async with httpx.AsyncClient(
            base_url=str(http.base_url), limits=limits, timeout=60
        ) as client:

            async def one() -> str:
                async with client.stream("GET", url) as response:
                    assert response.status_code == 200
                    lines = [line async for line in response.aiter_lines()]
                datas = [line.removeprefix("data: ") for line in lines if line.startswith("data")]
                assert datas[-1] == "[DONE]", datas[-1]
                return text_of([{"data": d} for d in datas])

            return await asyncio.gather(*(one() for _ in range(150)))

    assert asyncio.run(read_all()) == [chat_answer(messages)] * 150
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


@pytest.mark.parametrize("fault", ["[[stream-error]]", "[[end-stream-early]]"])
def test_an_error_event_or_an_early_clean_end_is_a_cut_never_done(http, sim, fault):
    messages = user(f"{LONG} {fault}")
    events = read_stream(http, start(http, messages)["stream_url"])
    assert events[-1]["event"] == "error"
    assert json.loads(events[-1]["data"])["error"]["type"] == "stream_cut"
    assert all(e["data"] != "[DONE]" for e in events)
    assert 0 < len(text_of(events)) < len(chat_answer(messages))
    assert sim.stats()["chat_streams"] == 1  # after chunks: not started again


def test_a_rate_limit_before_the_stream_is_waited_out(http, sim):
    messages = user(f"{LONG} [[fail-first:429]]")
    events = read_stream(http, start(http, messages)["stream_url"])
    assert events[-1]["data"] == "[DONE]" and text_of(events) == chat_answer(messages)
    stats = sim.stats()
    assert stats["chat_requests"] == 2 and stats["chat_streams"] == 1


def test_a_refused_key_is_said_without_the_providers_text(http, sim):
    events = read_stream(http, start(http, user("who am i [[status:401]]"))["stream_url"])
    assert events[-1]["event"] == "error"
    error = json.loads(events[-1]["data"])["error"]
    assert error == {"type": "http_401", "message": KEY_REFUSED.format(status=401)}
    assert sim.stats()["chat_requests"] == 1  # a refused key is not retried


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
        events = sse_events(response)
    assert events[-1]["data"] == "[DONE]" and text_of(events) == chat_answer(messages)

    response = http.post("/v1/chat", json=body)
    assert response.status_code == 200, response.text
    again = read_stream(http, f"/v1/stream/{response.headers['X-Session-Id']}")
    assert text_of(again) == chat_answer(messages)  # its session, readable again
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
    detail = problem(http.get(f"/v1/stream/{'f' * 500}", headers=bearer(ALICE)), 404)["detail"]
    assert len(detail) < 100


def test_one_answer_a_session(http, sim):
    refused = problem(http.post("/v1/chat/async", json={"messages": user("two"), "n": 2}), 422)
    assert refused["field"] == "n"


def test_a_chat_body_over_a_megabyte_is_refused(http, sim):
    big = {"api": "openai", "messages": user("x" * (1 << 20))}
    for path in ("/v1/chat/async", "/v1/chat"):
        assert "1 MB" in problem(http.post(path, json=big), 413)["detail"]
    assert sim.stats()["chat_requests"] == 0


def test_a_users_chat_budget_stops_their_sessions_not_others(serve, sim, start_worker):  # noqa: F811
    """``MITRAILLEUSE_CHAT_BUDGET_USD`` room for one session's worst case: a second is refused."""
    messages = user("how much is this one")
    body = {"api": "openai", "model": "gpt-4o-mini", "messages": messages, "max_tokens": 100}
    provider = OpenAIProvider(OpenAIProvider.config_model(), "unused")
    prompt, _ = provider.cost_units([body])
    worst = worst_case_usd(price_of("openai", "gpt-4o-mini"), prompt, body["max_tokens"])
    budget = {"MITRAILLEUSE_CHAT_BUDGET_USD": repr(worst * 1.01)}
    start_worker(queues=["openai", "mitrailleuse"], concurrency=2, env=budget)
    http = serve().client
    payer, other = f"payer-{uuid.uuid4().hex}", f"other-{uuid.uuid4().hex}"

    def ending(user_id: str) -> dict:
        return read_stream(http, start(http, **body, user_id=user_id)["stream_url"])[-1]

    assert ending(payer)["data"] == "[DONE]"  # its worst case fitted; it cost less, but some
    refused = ending(payer)
    assert refused["event"] == "error"
    error = json.loads(refused["data"])["error"]
    assert error["type"] == "budget" and "is spent for today" in error["message"]
    assert ending(other)["data"] == "[DONE]"  # another user's budget is their own
    assert sim.stats()["chat_requests"] == 2


def test_a_redelivered_session_is_streamed_once_and_a_begun_one_ends_cut(fleet_env, sim):
    """The worker's side: a copy of the message while a live worker holds the session does
    nothing; a copy after a worker died mid-stream ends the session cut, without a call."""
    client = redis_client(fleet_env["REDIS_URL"])
    request = {"model": None, "messages": user("once only"), "settings": {}}

    def session() -> str:
        return chat_stream.open_session(client, "", "openai", {**request, "include_usage": False})

    def kinds(session_id: str) -> list[bytes]:
        return [fields[b"kind"] for _, fields in client.xrange(keys.chat_stream(session_id))]

    streamed = session()
    elsewhere = Lease(client, f"chat:{streamed}", 60)  # a live worker streams it
    assert elsewhere.acquire()
    assert chat_stream.stream_session(client, streamed, attempt=1) is None
    assert kinds(streamed) == [] and sim.stats()["chat_requests"] == 0
    elsewhere.release()
    assert chat_stream.stream_session(client, streamed, attempt=1) is None
    assert kinds(streamed)[-1] == b"done" and sim.stats()["chat_requests"] == 1

    begun = session()  # a worker appended a chunk, then died: its lease is free
    client.xadd(keys.chat_stream(begun), {"kind": "chunk", "data": b"{}"})
    assert chat_stream.stream_session(client, begun, attempt=1) is None
    assert kinds(begun) == [b"chunk", b"error"] and sim.stats()["chat_requests"] == 1
    error = json.loads(client.xrange(keys.chat_stream(begun))[-1][1][b"data"])["error"]
    assert error["type"] == "stream_cut"

"""End-to-end tests of the simulator's Anthropic API, driven through the real anthropic SDK."""

from __future__ import annotations

import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import anthropic
import httpx
import orjson
import pytest

from mitrailleuse.simulator import SimulatorSettings, SimulatorThread, chat_answer
from tests.e2e.helpers import check_broken_bodies, simulator_fixtures

pytestmark = pytest.mark.e2e

BATCH_DURATION_S = 0.4
SETTINGS = SimulatorSettings(batch_duration_s=BATCH_DURATION_S, hang_s=0.3)
MODEL = "claude-sim"


sim, _clean = simulator_fixtures(SETTINGS)


@pytest.fixture
def client(sim: SimulatorThread) -> anthropic.Anthropic:
    # An explicit timeout skips the SDK's max_tokens-based one (so max_tokens can be omitted).
    return anthropic.Anthropic(api_key="sk-ant-test", base_url=sim.url, max_retries=0, timeout=10)


@pytest.fixture
def raw(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, trust_env=False, timeout=10) as http:
        yield http


def ask(client: anthropic.Anthropic, text: str, **kwargs):
    messages = [{"role": "user", "content": text}]
    return client.messages.create(model=MODEL, max_tokens=64, messages=messages, **kwargs)


def reset_time(value: str) -> datetime:
    assert value.endswith("Z")
    return datetime.fromisoformat(value)


# -- messages ------------------------------------------------------------------------------


def test_message_answers_like_the_openai_simulator(
    sim: SimulatorThread, client: anthropic.Anthropic
) -> None:
    messages = [
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    raw_reply = client.messages.with_raw_response.create(
        model=MODEL,
        max_tokens=64,
        system="be brief",
        messages=messages,
        extra_body={"temperature": 0.2, "top_p": 0.9, "top_k": 5},
    )
    assert raw_reply.http_request.headers["authorization"] == "Bearer sk-ant-test"
    assert raw_reply.http_request.headers["anthropic-version"]
    assert raw_reply.headers["request-id"].startswith("req_")
    reply = raw_reply.parse()
    assert reply.id.startswith("msg_")
    assert (reply.type, reply.role, reply.model) == ("message", "assistant", MODEL)
    assert reply.stop_reason == "end_turn" and reply.stop_sequence is None
    openai_messages = [{"role": "system", "content": "be brief"}, *messages]
    assert reply.content[0].type == "text"
    assert reply.content[0].text == "(be brief) echo: second" == chat_answer(openai_messages)
    # Each text is ceil(len / 4) + 4 tokens, the system prompt included, as for OpenAI.
    assert reply.usage.input_tokens == (2 + 4) + (2 + 4) + (1 + 4) + (2 + 4)
    assert reply.usage.output_tokens == 6  # ceil(len("(be brief) echo: second") / 4)
    assert sim.stats()["requests"] == {"POST /v1/messages": 1}
    assert [(e["endpoint"], e["status"], e["texts"]) for e in sim.log()] == [
        ("/v1/messages", 200, ["second"])
    ]

    blocks = [{"type": "text", "text": "be "}, {"type": "text", "text": "brief"}]
    assert ask(client, "hi", system=blocks).content[0].text == "(be brief) echo: hi"
    assert ask(client, "hi").content[0].text == "echo: hi"


def test_x_api_key_and_validation(raw: httpx.Client, client: anthropic.Anthropic) -> None:
    body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": "x"}]}
    refused = raw.post("/v1/messages", json=body)
    assert refused.status_code == 401
    assert refused.json()["type"] == "error"
    assert refused.json()["error"]["type"] == "authentication_error"
    assert refused.json()["request_id"] == refused.headers["request-id"]
    assert raw.post("/v1/messages", json=body, headers={"x-api-key": "k"}).status_code == 200

    with pytest.raises(anthropic.BadRequestError) as missing:
        client.messages.create(
            model=MODEL, max_tokens=anthropic.omit, messages=[{"role": "user", "content": "x"}]
        )
    assert missing.value.type == "invalid_request_error"
    assert missing.value.api_message == "max_tokens: Field required"
    for bad in (
        {**body, "max_tokens": 0},
        {**body, "messages": [{"role": "system", "content": "x"}]},
        {**body, "messages": [{"role": "user", "content": [{"type": "text"}]}]},
        {**body, "system": 3},
        {key: value for key, value in body.items() if key != "model"},
    ):
        response = raw.post("/v1/messages", json=bad, headers={"x-api-key": "k"})
        assert response.status_code == 400, bad
        assert response.json()["error"]["type"] == "invalid_request_error"


def test_rate_limit_headers_and_429(sim: SimulatorThread, client: anthropic.Anthropic) -> None:
    sim.configure(rpm=2, tpm=1000)
    for index in range(2):
        raw_reply = client.messages.with_raw_response.create(
            model=MODEL, max_tokens=8, messages=[{"role": "user", "content": f"r{index}"}]
        )
        headers = raw_reply.headers
        assert headers["anthropic-ratelimit-requests-limit"] == "2"
        assert headers["anthropic-ratelimit-requests-remaining"] == str(1 - index)
        assert headers["anthropic-ratelimit-tokens-limit"] == "1000"
        used = 7 * (index + 1)  # (ceil(2 / 4) + 4) input + ceil(8 / 4) output tokens each
        assert headers["anthropic-ratelimit-tokens-remaining"] == str(1000 - used)
        for family in ("requests", "tokens"):
            reset = reset_time(headers[f"anthropic-ratelimit-{family}-reset"])
            assert 0 < (reset - datetime.now(UTC)).total_seconds() <= 61
        assert not [name for name in headers if name.startswith("x-ratelimit")]
        assert raw_reply.parse().content[0].text == f"echo: r{index}"
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(client, "one too many")
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert "retry-after-ms" not in headers
    assert headers["anthropic-ratelimit-requests-remaining"] == "0"
    assert limited.value.type == "rate_limit_error"
    assert "2 requests per minute" in (limited.value.api_message or "")

    sim.configure(rpm=None, tpm=10)
    with pytest.raises(anthropic.RateLimitError) as too_big:
        ask(client, "a prompt far longer than ten tokens in all")
    assert "10 tokens per minute" in (too_big.value.api_message or "")


def test_status_markers(client: anthropic.Anthropic) -> None:
    expected = {
        400: (anthropic.BadRequestError, "invalid_request_error"),
        401: (anthropic.AuthenticationError, "authentication_error"),
        403: (anthropic.PermissionDeniedError, "permission_error"),
        404: (anthropic.NotFoundError, "not_found_error"),
        413: (anthropic.ContentTooLargeError, "request_too_large"),
        500: (anthropic.InternalServerError, "api_error"),
        529: (anthropic.OverloadedError, "overloaded_error"),
    }
    for code, (error_class, error_type) in expected.items():
        with pytest.raises(error_class) as failed:
            ask(client, f"boom [[status:{code}]]")
        assert failed.value.status_code == code
        assert failed.value.type == error_type
        assert failed.value.body["type"] == "error"
    with pytest.raises(anthropic.InternalServerError) as overloaded:
        ask(client, "busy [[status:529]]")
    assert overloaded.value.api_message == "Overloaded"
    with pytest.raises(anthropic.RateLimitError) as limited:
        ask(client, "slow down [[status:429]]")
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.type == "rate_limit_error"


def test_fail_first_and_once_markers(sim: SimulatorThread, client: anthropic.Anthropic) -> None:
    text = "flaky [[fail-first:529]]"
    with pytest.raises(anthropic.OverloadedError):
        ask(client, text)
    assert ask(client, text).content[0].text == f"echo: {text}"
    once = "once [[status-once:500]]"
    with pytest.raises(anthropic.InternalServerError):
        ask(client, once)
    assert ask(client, once).content[0].text == f"echo: {once}"

    retrying = anthropic.Anthropic(api_key="k", base_url=sim.url, max_retries=2, timeout=10)
    text = "retried by the SDK [[fail-first:529]]"
    reply = retrying.messages.create(
        model=MODEL, max_tokens=8, messages=[{"role": "user", "content": text}]
    )
    assert reply.content[0].text == f"echo: {text}"


def test_spend_limit_marker(client: anthropic.Anthropic) -> None:
    with pytest.raises(anthropic.RateLimitError) as spent:
        ask(client, "big spender [[spend-limit]]")
    error = spent.value
    assert isinstance(error, anthropic.EnforcedSpendLimitReachedError)
    assert error.error_code == "enforced_spend_limit_reached"
    assert error.type == "rate_limit_error"
    assert "retry-after" not in error.response.headers
    assert "retry-after-ms" not in error.response.headers
    assert "You will regain access on " in (error.api_message or "")
    assert "at 00:00 UTC." in (error.api_message or "")
    with pytest.raises(anthropic.RateLimitError):
        ask(client, "once [[spend-limit-once]]")
    assert ask(client, "once [[spend-limit-once]]").content[0].text.startswith("echo: ")


def test_broken_body_markers(raw: httpx.Client) -> None:
    def post(marker: str) -> httpx.Response:
        body = {"model": MODEL, "max_tokens": 8, "messages": [{"role": "user", "content": marker}]}
        return raw.post("/v1/messages", json=body, headers={"x-api-key": "k"})

    check_broken_bodies(post)


def test_hang_marker_and_random_errors(sim: SimulatorThread, client: anthropic.Anthropic) -> None:
    started = time.monotonic()
    assert ask(client, "wait [[hang]]").content[0].text == "echo: wait [[hang]]"
    assert time.monotonic() - started >= 0.3
    sim.configure(hang_s=5)
    with pytest.raises(anthropic.APITimeoutError):
        ask(client, "never [[hang]]", timeout=0.2)
    sim.configure(error_rate=1)
    with pytest.raises(anthropic.InternalServerError) as failed:
        ask(client, "unlucky")
    assert (failed.value.status_code, failed.value.type) == (500, "api_error")


# -- batches -------------------------------------------------------------------------------


def batch_requests(texts: dict[str, str]) -> list[dict]:
    return [
        {
            "custom_id": custom_id,
            "params": {
                "model": "claude-batch",
                "max_tokens": 32,
                "messages": [{"role": "user", "content": text}],
            },
        }
        for custom_id, text in texts.items()
    ]


def wait_ended(client: anthropic.Anthropic, batch_id: str, timeout: float = 3.0):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        batch = client.messages.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.processing_status:
            seen.append(batch.processing_status)
        if batch.processing_status == "ended":
            return batch, seen
        assert time.monotonic() < deadline, f"batch stuck in {batch.processing_status}"
        time.sleep(0.02)


def results_of(client: anthropic.Anthropic, batch_id: str) -> dict[str, Any]:
    return {line.custom_id: line.result for line in client.messages.batches.results(batch_id)}


def test_batch_lifecycle(
    sim: SimulatorThread, client: anthropic.Anthropic, raw: httpx.Client
) -> None:
    texts = {f"req-{index}": f"question {index}" for index in range(5)}
    texts["req_bad"] = "broken [[status:400]]"
    texts["req-busy"] = "busy [[status:529]]"
    requests = batch_requests(texts)
    requests.append({"custom_id": "no-max-tokens", "params": {"model": "m", "messages": []}})
    batch = client.messages.batches.create(requests=requests)
    assert batch.id.startswith("msgbatch_")
    assert (batch.type, batch.processing_status) == ("message_batch", "in_progress")
    assert batch.request_counts.processing == 8 and batch.request_counts.succeeded == 0
    assert batch.results_url is None and batch.ended_at is None
    assert (batch.expires_at - batch.created_at).total_seconds() == 24 * 3600
    with pytest.raises(anthropic.AnthropicError, match="No `results_url`"):
        client.messages.batches.results(batch.id)
    early = raw.get(f"/v1/messages/batches/{batch.id}/results", headers={"x-api-key": "k"})
    assert early.status_code == 400
    assert early.json()["error"]["type"] == "invalid_request_error"

    final, seen = wait_ended(client, batch.id)
    assert seen == ["in_progress", "ended"]
    assert final.ended_at is not None and final.cancel_initiated_at is None
    counts = final.request_counts
    assert (counts.processing, counts.succeeded, counts.errored) == (0, 5, 3)
    assert (counts.canceled, counts.expired) == (0, 0)
    assert final.results_url == f"{sim.url}/v1/messages/batches/{batch.id}/results"

    lines = client.messages.batches.results(batch.id)
    order = [line.custom_id for line in lines]
    assert sorted(order) == sorted([*texts, "no-max-tokens"])
    assert order != [*texts, "no-max-tokens"]  # results come unordered
    results = results_of(client, batch.id)
    for index in range(5):
        result = results[f"req-{index}"]
        assert result.type == "succeeded"
        assert result.message.content[0].text == f"echo: question {index}"
        assert result.message.model == "claude-batch"
        assert result.message.usage.service_tier == "batch"
    errors = {
        custom_id: (result.error.error.type, result.error.error.message)
        for custom_id, result in results.items()
        if result.type == "errored"
    }
    assert errors["req_bad"][0] == "invalid_request_error"
    assert errors["req-busy"] == ("overloaded_error", "Overloaded")
    assert errors["no-max-tokens"] == ("invalid_request_error", "max_tokens: Field required")

    body = raw.get(final.results_url, headers={"x-api-key": "k"})
    assert body.headers["content-type"] == "application/x-jsonl"
    assert [orjson.loads(line)["custom_id"] for line in body.content.splitlines()] == order
    stats = sim.stats()
    assert (stats["batches_created"], stats["anthropic_batches_created"]) == (1, 1)


def test_batch_cancel(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(
        requests=batch_requests({f"c{index}": "x" for index in range(3)})
    )
    canceling = client.messages.batches.cancel(batch.id)
    assert canceling.processing_status == "canceling"
    assert client.messages.batches.cancel(batch.id).processing_status == "canceling"
    final, _ = wait_ended(client, batch.id)
    counts = final.request_counts
    assert counts.canceled >= 1 and counts.canceled + counts.succeeded == 3
    assert final.ended_at is not None and canceling.cancel_initiated_at is not None
    assert final.ended_at > canceling.cancel_initiated_at
    types = {result.type for result in results_of(client, batch.id).values()}
    assert "canceled" in types and types <= {"canceled", "succeeded"}
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.cancel(batch.id)


def test_batch_expire_marker(client: anthropic.Anthropic) -> None:
    texts = {"a": "fine", "b": "too slow [[batch-expire]]", "c": "bad [[status:400]]"}
    batch = client.messages.batches.create(requests=batch_requests(texts))
    final, seen = wait_ended(client, batch.id)
    assert seen == ["in_progress", "ended"]
    assert final.request_counts.expired == 3
    assert final.request_counts.succeeded == final.request_counts.errored == 0
    assert {result.type for result in results_of(client, batch.id).values()} == {"expired"}


def test_batch_missing_marker(client: anthropic.Anthropic) -> None:
    texts = {"kept": "x", "lost": "y [[batch-missing]]"}
    batch = client.messages.batches.create(requests=batch_requests(texts))
    final, _ = wait_ended(client, batch.id)
    assert final.request_counts.succeeded == 2
    assert list(results_of(client, batch.id)) == ["kept"]


def test_batch_refuses_bad_requests(raw: httpx.Client, client: anthropic.Anthropic) -> None:
    for custom_id in ("bad id!", "x" * 65, "", "new\nline"):
        with pytest.raises(anthropic.BadRequestError) as refused:
            client.messages.batches.create(requests=batch_requests({custom_id: "x"}))
        assert "custom_id" in (refused.value.api_message or "")
    twice = batch_requests({"same": "x"}) * 2
    with pytest.raises(anthropic.BadRequestError, match="unique"):
        client.messages.batches.create(requests=twice)
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[])
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.create(requests=[{"custom_id": "no-params"}])
    response = raw.post("/v1/messages/batches", json={"requests": []})
    assert response.status_code == 401
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve("msgbatch_does_not_exist")


def test_batch_list_pagination(client: anthropic.Anthropic) -> None:
    created = [
        client.messages.batches.create(requests=batch_requests({"a": "x"})).id for _ in range(3)
    ]
    newest_first = created[::-1]
    page = client.messages.batches.list(limit=2)
    assert [item.id for item in page.data] == newest_first[:2]
    assert page.has_more is True
    assert (page.first_id, page.last_id) == (newest_first[0], newest_first[1])
    assert [item.id for item in client.messages.batches.list(limit=2)][:3] == newest_first
    after = client.messages.batches.list(limit=1, after_id=newest_first[1])
    assert [item.id for item in after.data] == newest_first[2:]
    before = client.messages.batches.list(limit=1, before_id=newest_first[2])
    assert [item.id for item in before.data] == [newest_first[1]] and before.has_more is True
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.list(limit=0)


def test_batch_delete(client: anthropic.Anthropic) -> None:
    batch = client.messages.batches.create(requests=batch_requests({"a": "x"}))
    with pytest.raises(anthropic.BadRequestError):
        client.messages.batches.delete(batch.id)
    wait_ended(client, batch.id)
    deleted = client.messages.batches.delete(batch.id)
    assert (deleted.id, deleted.type) == (batch.id, "message_batch_deleted")
    with pytest.raises(anthropic.NotFoundError):
        client.messages.batches.retrieve(batch.id)

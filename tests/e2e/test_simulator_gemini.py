"""End-to-end tests of the simulator's Gemini API, driven through the real google-genai SDK."""

from __future__ import annotations

import asyncio
import io
import re
import time
from collections.abc import Iterator

import httpx
import httpx2
import openai
import orjson
import pytest
from google import genai
from google.genai import errors, types

from mitrailleuse.simulator import SimulatorSettings, SimulatorThread, chat_answer
from tests.e2e.helpers import check_broken_bodies, simulator_fixtures

pytestmark = pytest.mark.e2e

SETTINGS = SimulatorSettings(batch_duration_s=0.4, hang_s=0.3)
MODEL = "gemini-sim"
QUOTA_FAILURE = "type.googleapis.com/google.rpc.QuotaFailure"
RETRY_INFO = "type.googleapis.com/google.rpc.RetryInfo"


sim, _clean = simulator_fixtures(SETTINGS)


def make_client(sim: SimulatorThread, **options) -> genai.Client:
    retry = types.HttpRetryOptions(attempts=1)
    http_options = types.HttpOptions(base_url=sim.url, retry_options=retry, **options)
    return genai.Client(api_key="k", http_options=http_options)


@pytest.fixture
def client(sim: SimulatorThread) -> genai.Client:
    return make_client(sim)


@pytest.fixture
def raw(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, trust_env=False, timeout=10) as http:
        yield http


def ask(client: genai.Client, text: str, **config):
    return client.models.generate_content(model=MODEL, contents=text, config=config or None)


def details(exc: errors.APIError, kind: str) -> list[dict]:
    return [item for item in exc.details["error"].get("details", []) if item["@type"] == kind]


def retry_delay_s(exc: errors.APIError) -> int:
    (info,) = details(exc, RETRY_INFO)
    match = re.fullmatch(r"(\d+)s", info["retryDelay"])
    assert match, info
    return int(match.group(1))


def quota_id(exc: errors.APIError) -> str:
    (failure,) = details(exc, QUOTA_FAILURE)
    return failure["violations"][0]["quotaId"]


# -- generateContent -----------------------------------------------------------------------


def test_generate_content_answers_with_usage(sim: SimulatorThread, client: genai.Client) -> None:
    reply = ask(client, "hello", system_instruction="be brief", temperature=0.2, top_p=0.9)
    assert reply.text == "(be brief) echo: hello"
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "hello"}]
    assert reply.text == chat_answer(messages)  # the same answer as the OpenAI simulator's
    assert reply.candidates and reply.candidates[0].finish_reason == types.FinishReason.STOP
    assert reply.candidates[0].content and reply.candidates[0].content.role == "model"
    usage = reply.usage_metadata
    assert usage is not None
    assert usage.prompt_token_count == 2 + 2  # ceil(len("hello") / 4) + ceil(len("be brief") / 4)
    assert usage.candidates_token_count == 6  # ceil(22 / 4)
    assert usage.total_token_count == 10
    assert reply.model_version == MODEL
    assert reply.response_id
    turns = [
        types.Content(role="user", parts=[types.Part(text="first")]),
        types.Content(role="model", parts=[types.Part(text="ok")]),
        types.Content(role="user", parts=[types.Part(text="second")]),
    ]
    config = types.GenerateContentConfig(max_output_tokens=50)
    reply = client.models.generate_content(model=MODEL, contents=turns, config=config)
    assert reply.text == "echo: second"
    stats = sim.stats()
    assert stats["gemini_requests"] == 2
    assert stats["requests"] == {"POST /v1/models/{model}:generateContent": 2}
    assert [entry["texts"] for entry in sim.log()] == [["hello"], ["second"]]


def test_v1beta_is_served_too(sim: SimulatorThread) -> None:
    beta = make_client(sim, api_version="v1beta")
    assert ask(beta, "beta").text == "echo: beta"
    assert sim.stats()["requests"] == {"POST /v1beta/models/{model}:generateContent": 1}


def test_auth_and_bad_requests(raw: httpx.Client) -> None:
    path = f"/v1beta/models/{MODEL}:generateContent"
    body = {"contents": [{"role": "user", "parts": [{"text": "x"}]}]}
    missing = raw.post(path, json=body)
    assert missing.status_code == 403
    assert missing.json()["error"]["status"] == "PERMISSION_DENIED"
    wrong = raw.post(path, json=body, headers={"x-goog-api-key": "invalid-key"})
    assert wrong.status_code == 400
    assert wrong.json()["error"]["details"][0]["reason"] == "API_KEY_INVALID"
    bearer = raw.post(path, json=body, headers={"Authorization": "Bearer t"})
    assert bearer.status_code == 401
    assert bearer.json()["error"]["status"] == "UNAUTHENTICATED"
    assert raw.post(path, json=body, params={"key": "k"}).status_code == 200
    key = {"x-goog-api-key": "k"}
    empty = raw.post(path, json={"contents": []}, headers=key)
    assert empty.status_code == 400
    assert set(empty.json()["error"]) == {"code", "message", "status"}
    assert empty.json()["error"]["status"] == "INVALID_ARGUMENT"
    role = {"contents": [{"role": "assistant", "parts": [{"text": "x"}]}]}
    assert raw.post(path, json=role, headers=key).status_code == 400
    assert raw.post(path, content=b"{nope", headers=key).status_code == 400


def test_rpm_limit_gives_retry_delay(sim: SimulatorThread, client: genai.Client) -> None:
    sim.configure(rpm=2)
    assert ask(client, "a").text == "echo: a"
    assert ask(client, "b").text == "echo: b"
    with pytest.raises(errors.ClientError) as limited:
        ask(client, "c")
    exc = limited.value
    assert (exc.code, exc.status) == (429, "RESOURCE_EXHAUSTED")
    assert "You exceeded your current quota" in (exc.message or "")
    assert quota_id(exc) == "GenerateRequestsPerMinutePerProjectPerModel-FreeTier"
    assert details(exc, QUOTA_FAILURE)[0]["violations"][0]["quotaValue"] == "2"
    assert 1 <= retry_delay_s(exc) <= 60
    assert exc.response is not None and "retry-after" not in exc.response.headers
    sim.configure(rpm=None)
    assert ask(client, "free again").text == "echo: free again"


def test_tpm_limit_names_the_token_quota(sim: SimulatorThread, client: genai.Client) -> None:
    sim.configure(tpm=5)
    ask(client, "x" * 16)  # 4 input tokens
    with pytest.raises(errors.ClientError) as limited:
        ask(client, "y" * 8)  # 2 more: over 5
    assert quota_id(limited.value) == "GenerateContentInputTokensPerModelPerMinute-FreeTier"


def test_quota_day_marker(client: genai.Client) -> None:
    with pytest.raises(errors.ClientError) as limited:
        ask(client, "too much today [[quota-day]]")
    exc = limited.value
    assert (exc.code, exc.status) == (429, "RESOURCE_EXHAUSTED")
    assert quota_id(exc) == "GenerateRequestsPerDayPerProjectPerModel-FreeTier"
    assert retry_delay_s(exc) > 0  # Real per-day errors carry one; the client halts anyway.


def test_server_error_markers(client: genai.Client) -> None:
    with pytest.raises(errors.ServerError) as overloaded:
        ask(client, "busy [[overloaded]]")
    assert (overloaded.value.code, overloaded.value.status) == (503, "UNAVAILABLE")
    assert overloaded.value.message == "The model is overloaded. Please try again later."
    with pytest.raises(errors.ServerError) as deadline:
        ask(client, "slow [[status:504]]")
    assert deadline.value.status == "DEADLINE_EXCEEDED"
    with pytest.raises(errors.ClientError) as limited:
        ask(client, "limited [[status:429]]")
    assert retry_delay_s(limited.value) == 1
    with pytest.raises(errors.ClientError) as bad:
        ask(client, "bad [[status:400]]")
    assert bad.value.status == "INVALID_ARGUMENT"


def test_fail_first_and_once_markers(client: genai.Client) -> None:
    text = "flaky [[fail-first:500]]"
    with pytest.raises(errors.ServerError) as failed:
        ask(client, text)
    assert failed.value.status == "INTERNAL"
    assert ask(client, text).text == f"echo: {text}"
    text = "busy once [[overloaded-once]]"
    with pytest.raises(errors.ServerError):
        ask(client, text)
    assert ask(client, text).text == f"echo: {text}"


def test_random_errors_are_internal(sim: SimulatorThread, client: genai.Client) -> None:
    sim.configure(error_rate=1.0)
    with pytest.raises(errors.ServerError) as failed:
        ask(client, "x")
    assert (failed.value.code, failed.value.status) == (500, "INTERNAL")


def test_broken_body_markers(raw: httpx.Client) -> None:
    def post(marker: str) -> httpx.Response:
        body = {"contents": [{"parts": [{"text": f"x {marker}"}]}]}
        path = f"/v1/models/{MODEL}:generateContent"
        return raw.post(path, json=body, headers={"x-goog-api-key": "k"})

    check_broken_bodies(post, truncated_start=b'{"candidates"')


def test_hang_and_timeout_in_milliseconds(sim: SimulatorThread, client: genai.Client) -> None:
    started = time.monotonic()
    assert ask(client, "wait [[hang]]").text == "echo: wait [[hang]]"
    assert time.monotonic() - started >= 0.3
    impatient = make_client(sim, timeout=100)  # HttpOptions.timeout is in milliseconds
    with pytest.raises(httpx2.TimeoutException):  # the sync SDK's transport is httpx2
        ask(impatient, "never [[hang]]")


def test_async_client(sim: SimulatorThread, client: genai.Client) -> None:
    async def run() -> list[str]:
        replies = await asyncio.gather(
            *(client.aio.models.generate_content(model=MODEL, contents=f"p{i}") for i in range(5))
        )
        await client.aio.aclose()
        return [reply.text or "" for reply in replies]

    sim.configure(latency_ms=100)
    assert asyncio.run(run()) == [f"echo: p{i}" for i in range(5)]
    assert sim.stats()["max_in_flight"] >= 2


# -- files and batches ---------------------------------------------------------------------


def inline_requests(texts: dict[str, str]) -> list[dict]:
    return [
        {"contents": [{"role": "user", "parts": [{"text": text}]}], "metadata": {"key": key}}
        for key, text in texts.items()
    ]


def jsonl(texts: dict[str, str]) -> bytes:
    lines = [
        {"key": key, "request": {"contents": [{"role": "user", "parts": [{"text": text}]}]}}
        for key, text in texts.items()
    ]
    return b"".join(orjson.dumps(line) + b"\n" for line in lines)


def upload(client: genai.Client, data: bytes, name: str = "input") -> types.File:
    config = {"mime_type": "application/jsonl", "display_name": name}
    return client.files.upload(file=io.BytesIO(data), config=config)


def wait_for_job(client: genai.Client, name: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    seen: list[str] = []
    while True:
        job = client.batches.get(name=name)
        state = job.state.value if job.state else ""
        if not seen or seen[-1] != state:
            seen.append(state)
        if job.done:
            return job, seen
        assert time.monotonic() < deadline, f"job stuck in {state}"
        time.sleep(0.02)


def test_inline_batch(sim: SimulatorThread, client: genai.Client) -> None:
    texts = {f"k{index}": f"question {index}" for index in range(4)}
    texts["bad"] = "broken [[status:400]]"
    texts["lost"] = "dropped [[batch-missing]]"
    job = client.batches.create(
        model=MODEL, src=inline_requests(texts), config={"display_name": "inline"}
    )
    assert job.name and job.name.startswith("batches/")
    assert job.state == types.JobState.JOB_STATE_PENDING
    assert (job.display_name, job.model) == ("inline", f"models/{MODEL}")
    final, seen = wait_for_job(client, job.name)
    assert seen[0] == "JOB_STATE_PENDING"
    assert "JOB_STATE_RUNNING" in seen
    assert seen[-1] == "JOB_STATE_SUCCEEDED"
    assert final.end_time is not None
    assert final.dest and final.dest.inlined_responses is not None
    by_key = {item.metadata["key"]: item for item in final.dest.inlined_responses if item.metadata}
    assert set(by_key) == {"k0", "k1", "k2", "k3", "bad"}
    for key in ("k0", "k1", "k2", "k3"):
        response = by_key[key].response
        assert response and response.text == f"echo: {texts[key]}"
    error = by_key["bad"].error
    assert error and error.code == 3  # google.rpc.Code INVALID_ARGUMENT
    assert by_key["bad"].response is None
    stats = sim.stats()
    assert (stats["batches_created"], stats["gemini_batches_created"]) == (1, 1)
    assert stats["gemini_requests"] == 0


def test_file_batch(sim: SimulatorThread, client: genai.Client) -> None:
    texts = {"a": "alpha", "b": "beta", "bad": "nope [[status:500]]"}
    data = jsonl(texts)
    uploaded = upload(client, data)
    assert uploaded.name and uploaded.name.startswith("files/")
    assert (uploaded.size_bytes, uploaded.state) == (len(data), types.FileState.ACTIVE)
    assert uploaded.display_name == "input"
    assert client.files.get(name=uploaded.name).mime_type == "application/jsonl"
    with pytest.raises(errors.ClientError):
        client.files.download(file=uploaded.name)  # uploaded files cannot be downloaded

    job = client.batches.create(model=MODEL, src=uploaded.name, config={"display_name": "f"})
    assert job.name
    final, _ = wait_for_job(client, job.name)
    assert final.state == types.JobState.JOB_STATE_SUCCEEDED
    assert final.dest and final.dest.file_name and final.dest.inlined_responses is None
    result = client.files.get(name=final.dest.file_name)
    assert result.source == types.FileSource.GENERATED and result.download_uri
    lines = [orjson.loads(line) for line in client.files.download(file=result).splitlines()]
    by_key = {line["key"]: line for line in lines}
    assert set(by_key) == set(texts)
    for key in ("a", "b"):
        parts = by_key[key]["response"]["candidates"][0]["content"]["parts"]
        assert parts[0]["text"] == f"echo: {texts[key]}"
    assert by_key["bad"]["error"]["code"] == 13  # google.rpc.Code INTERNAL
    assert sim.stats()["files_uploaded"] == 1
    client.files.delete(name=uploaded.name)
    with pytest.raises(errors.ClientError) as gone:
        client.files.get(name=uploaded.name)
    assert gone.value.code == 403


def test_file_batch_with_a_broken_line_fails(client: genai.Client) -> None:
    uploaded = upload(client, jsonl({"a": "x"}) + b"{not json\n")
    assert uploaded.name
    job = client.batches.create(model=MODEL, src=uploaded.name)
    assert job.name
    final, _ = wait_for_job(client, job.name)
    assert final.state == types.JobState.JOB_STATE_FAILED
    assert final.dest is None


def test_batch_cancel(client: genai.Client) -> None:
    job = client.batches.create(model=MODEL, src=inline_requests({"a": "x"}))
    assert job.name
    client.batches.cancel(name=job.name)
    cancelled = client.batches.get(name=job.name)
    assert cancelled.state == types.JobState.JOB_STATE_CANCELLED
    assert cancelled.done and cancelled.dest is None
    with pytest.raises(errors.ClientError) as again:
        client.batches.cancel(name=job.name)
    assert again.value.status == "FAILED_PRECONDITION"


def test_batch_expire_marker(client: genai.Client) -> None:
    texts = {"a": "fine", "b": "too slow [[batch-expire]]"}
    job = client.batches.create(model=MODEL, src=inline_requests(texts))
    assert job.name
    final, seen = wait_for_job(client, job.name)
    assert seen[-2:] == ["JOB_STATE_RUNNING", "JOB_STATE_EXPIRED"]
    assert final.dest is None


def test_batch_list_pages_and_delete(client: genai.Client) -> None:
    created = [
        client.batches.create(model=MODEL, src=inline_requests({"a": f"x{index}"})).name
        for index in range(3)
    ]
    pager = client.batches.list(config={"page_size": 2})
    assert [job.name for job in pager.page] == created[::-1][:2]
    assert [job.name for job in pager][:3] == created[::-1]  # older jobs of other tests follow
    name = created[0]
    assert name
    client.batches.delete(name=name)
    with pytest.raises(errors.ClientError) as gone:
        client.batches.get(name=name)
    assert gone.value.code == 404


def test_openai_keeps_its_shared_paths(sim: SimulatorThread, client: genai.Client) -> None:
    """/v1/files/{id} and /v1/batches belong to both APIs; each gets its own answers."""
    gemini_job = client.batches.create(model=MODEL, src=inline_requests({"a": "x"}))
    oai = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)
    line = {
        "custom_id": "c",
        "method": "POST",
        "url": "/v1/chat/completions",
        "body": {"model": "m", "messages": [{"role": "user", "content": "x"}]},
    }
    oai_file = oai.files.create(file=("in.jsonl", orjson.dumps(line)), purpose="batch")
    assert oai.files.retrieve(oai_file.id).filename == "in.jsonl"
    oai_batch = oai.batches.create(
        input_file_id=oai_file.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert oai.batches.list().data[0].id == oai_batch.id
    assert all(batch.id.startswith("batch_") for batch in oai.batches.list())
    names = [job.name for job in client.batches.list()]
    assert names[0] == gemini_job.name
    assert all(name and name.startswith("batches/") for name in names)

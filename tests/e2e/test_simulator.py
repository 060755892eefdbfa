"""End-to-end tests of the provider simulator, driven through the real openai and deepl SDKs."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import deepl
import httpx
import openai
import orjson
import pytest

from mitrailleuse.simulator import SimulatorSettings, SimulatorThread, chat_answer, translation_of
from tests.e2e.helpers import check_broken_bodies, simulator_fixtures

pytestmark = pytest.mark.e2e

BATCH_DURATION_S = 0.4
SETTINGS = SimulatorSettings(batch_duration_s=BATCH_DURATION_S, hang_s=0.3)
ROOT = Path(__file__).resolve().parents[2]


sim, _clean = simulator_fixtures(SETTINGS)


@pytest.fixture
def client(sim: SimulatorThread) -> openai.OpenAI:
    return openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=0)


@pytest.fixture
def raw(sim: SimulatorThread) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=sim.url, trust_env=False, timeout=10) as http:
        yield http


@pytest.fixture
def translator(sim: SimulatorThread) -> deepl.Translator:
    return deepl.Translator("test-key:fx", server_url=sim.url)


def ask(client: openai.OpenAI, text: str, **kwargs):
    messages = [{"role": "user", "content": text}]
    return client.chat.completions.create(model="gpt-sim", messages=messages, **kwargs)


# -- chat ----------------------------------------------------------------------------------


def test_chat_answers_echo_with_usage(client: openai.OpenAI) -> None:
    reply = ask(client, "hello")
    assert reply.object == "chat.completion"
    assert reply.model == "gpt-sim"
    assert reply.choices[0].message.role == "assistant"
    assert reply.choices[0].message.content == "echo: hello"
    assert reply.choices[0].finish_reason == "stop"
    assert reply.usage is not None
    assert reply.usage.prompt_tokens == 2 + 4  # ceil(5 / 4) + 4
    assert reply.usage.completion_tokens == 3  # ceil(len("echo: hello") / 4)
    assert reply.usage.total_tokens == 9


def test_chat_system_prompt_and_text_parts(client: openai.OpenAI) -> None:
    messages = [
        {"role": "system", "content": "be brief"},
        {"role": "user", "content": "first"},
        {"role": "assistant", "content": "ok"},
        {"role": "user", "content": [{"type": "text", "text": "second"}]},
    ]
    reply = client.chat.completions.create(model="m", messages=messages)
    assert reply.choices[0].message.content == "(be brief) echo: second"
    assert reply.choices[0].message.content == chat_answer(messages)


def test_chat_rejects_missing_key_and_bad_messages(raw: httpx.Client) -> None:
    body = {"model": "m", "messages": [{"role": "user", "content": "x"}]}
    assert raw.post("/v1/chat/completions", json=body).status_code == 401
    headers = {"Authorization": "Bearer sk-test"}
    response = raw.post("/v1/chat/completions", json={"model": "m"}, headers=headers)
    assert response.status_code == 400
    assert set(response.json()["error"]) == {"message", "type", "param", "code"}
    response = raw.post(
        "/v1/chat/completions", json={"model": "m", "messages": "nope"}, headers=headers
    )
    assert response.status_code == 400


def test_status_marker(client: openai.OpenAI) -> None:
    with pytest.raises(openai.InternalServerError) as server_error:
        ask(client, "boom [[status:503]]")
    assert server_error.value.status_code == 503
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "slow down [[status:429]]")
    assert limited.value.response.headers["retry-after"] == "1"
    assert limited.value.response.headers["retry-after-ms"] == "1000"
    with pytest.raises(openai.BadRequestError):
        ask(client, "bad [[status:400]]")


def test_fail_first_then_success(client: openai.OpenAI) -> None:
    text = "flaky [[fail-first:429]]"
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, text)
    assert limited.value.response.headers["retry-after"] == "1"
    assert ask(client, text).choices[0].message.content == f"echo: {text}"
    assert ask(client, text).choices[0].message.content == f"echo: {text}"
    with pytest.raises(openai.InternalServerError):
        ask(client, "other [[fail-first:500]]")


def test_fail_first_retried_by_sdk(sim: SimulatorThread) -> None:
    retrying = openai.OpenAI(base_url=sim.url + "/v1", api_key="sk-test", max_retries=2)
    text = "retry me [[fail-first:503]]"
    messages = [{"role": "user", "content": text}]
    reply = retrying.chat.completions.create(model="m", messages=messages)
    assert reply.choices[0].message.content == f"echo: {text}"
    statuses = [entry["status"] for entry in sim.log()]
    assert statuses == [503, 200]


def test_rate_limit_rpm(sim: SimulatorThread, client: openai.OpenAI) -> None:
    sim.configure(rpm=3)
    for index in range(3):
        raw_reply = client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": f"r{index}"}]
        )
        assert raw_reply.headers["x-ratelimit-limit-requests"] == "3"
        assert raw_reply.headers["x-ratelimit-remaining-requests"] == str(2 - index)
        assert raw_reply.headers["x-ratelimit-reset-requests"].endswith("s")
        assert raw_reply.parse().choices[0].message.content == f"echo: r{index}"
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "one too many")
    headers = limited.value.response.headers
    assert 1 <= int(headers["retry-after"]) <= 60
    assert 0 < int(headers["retry-after-ms"]) <= 60_000
    assert headers["x-ratelimit-remaining-requests"] == "0"
    error = limited.value.body
    assert error["message"] == "Rate limit reached for requests"
    assert error["type"] == "requests"
    assert error["code"] == "rate_limit_exceeded"
    sim.configure(rpm=None)
    assert ask(client, "free again").choices[0].message.content == "echo: free again"


def test_rate_limit_tpm(sim: SimulatorThread, client: openai.OpenAI) -> None:
    sim.configure(tpm=20)
    raw_reply = client.chat.completions.with_raw_response.create(
        model="m", messages=[{"role": "user", "content": "hello"}]
    )
    assert raw_reply.headers["x-ratelimit-remaining-tokens"] == "11"  # 20 - (6 + 3)
    ask(client, "hello")
    with pytest.raises(openai.RateLimitError) as limited:
        ask(client, "hello")
    assert limited.value.body["type"] == "tokens"


def test_random_errors_are_seeded(sim: SimulatorThread, client: openai.OpenAI) -> None:
    def run() -> list[int]:
        statuses = []
        for index in range(30):
            try:
                ask(client, f"e{index}")
                statuses.append(200)
            except openai.InternalServerError as exc:
                statuses.append(exc.status_code)
        return statuses

    sim.configure(error_rate=0.5, seed=7)
    first = run()
    sim.configure(seed=7)
    assert run() == first
    assert set(first) == {200, 500}


def test_broken_body_markers(raw: httpx.Client) -> None:
    headers = {"Authorization": "Bearer sk-test"}

    def post(marker: str) -> httpx.Response:
        body = {"model": "m", "messages": [{"role": "user", "content": f"x {marker}"}]}
        return raw.post("/v1/chat/completions", json=body, headers=headers)

    check_broken_bodies(post)


def test_hang_marker_and_client_timeout(sim: SimulatorThread, client: openai.OpenAI) -> None:
    started = time.monotonic()
    assert ask(client, "wait [[hang]]").choices[0].message.content == "echo: wait [[hang]]"
    assert time.monotonic() - started >= 0.3
    sim.configure(hang_s=5)
    with pytest.raises(openai.APITimeoutError):
        ask(client, "never [[hang]]", timeout=0.2)


def test_latency_is_concurrent(sim: SimulatorThread) -> None:
    sim.configure(latency_ms=200, latency_jitter_ms=20)

    async def burst() -> list[str]:
        async with openai.AsyncOpenAI(
            base_url=sim.url + "/v1", api_key="sk-test", max_retries=0
        ) as aclient:
            replies = await asyncio.gather(
                *(
                    aclient.chat.completions.create(
                        model="m", messages=[{"role": "user", "content": f"p{index}"}]
                    )
                    for index in range(20)
                )
            )
        return [reply.choices[0].message.content or "" for reply in replies]

    started = time.monotonic()
    answers = asyncio.run(burst())
    elapsed = time.monotonic() - started
    assert answers == [f"echo: p{index}" for index in range(20)]
    assert 0.17 <= elapsed < 1.5
    assert sim.stats()["max_in_flight"] >= 10


# -- files and batches ---------------------------------------------------------------------


def batch_lines(texts: dict[str, str]) -> bytes:
    lines = [
        {
            "custom_id": custom_id,
            "method": "POST",
            "url": "/v1/chat/completions",
            "body": {"model": "gpt-batch", "messages": [{"role": "user", "content": text}]},
        }
        for custom_id, text in texts.items()
    ]
    return b"\n".join(orjson.dumps(line) for line in lines) + b"\n"


def wait_for_batch(client: openai.OpenAI, batch_id: str, timeout: float = 5.0):
    deadline = time.monotonic() + timeout
    seen = []
    while True:
        batch = client.batches.retrieve(batch_id)
        if not seen or seen[-1] != batch.status:
            seen.append(batch.status)
        if batch.status in ("completed", "failed", "expired", "cancelled"):
            return batch, seen
        assert time.monotonic() < deadline, f"batch stuck in {batch.status}"
        time.sleep(0.02)


def read_jsonl(client: openai.OpenAI, file_id: str) -> list[dict]:
    return [orjson.loads(line) for line in client.files.content(file_id).content.splitlines()]


def test_batch_lifecycle(sim: SimulatorThread, client: openai.OpenAI) -> None:
    texts = {f"req-{index}": f"question {index}" for index in range(6)}
    texts["req-bad"] = "broken [[status:400]]"
    texts["req-lost"] = "lost [[batch-missing]]"
    uploaded = client.files.create(file=("in.jsonl", batch_lines(texts)), purpose="batch")
    assert uploaded.purpose == "batch"
    assert uploaded.bytes == len(batch_lines(texts))
    assert client.files.retrieve(uploaded.id).filename == "in.jsonl"

    batch = client.batches.create(
        input_file_id=uploaded.id,
        endpoint="/v1/chat/completions",
        completion_window="24h",
        metadata={"task": "t1"},
    )
    assert batch.status == "validating"
    assert batch.metadata == {"task": "t1"}
    final, seen = wait_for_batch(client, batch.id)
    assert seen[0] == "validating"
    assert seen[-1] == "completed"
    assert "in_progress" in seen
    assert final.request_counts is not None
    assert final.request_counts.total == 8
    assert final.request_counts.failed == 1
    assert final.output_file_id and final.error_file_id

    output = read_jsonl(client, final.output_file_id)
    answers = {line["custom_id"]: line["response"]["body"] for line in output}
    assert set(answers) == {f"req-{index}" for index in range(6)}
    for custom_id, body in answers.items():
        assert body["choices"][0]["message"]["content"] == f"echo: {texts[custom_id]}"
        assert body["model"] == "gpt-batch"
    assert all(line["response"]["status_code"] == 200 for line in output)
    assert all(line["id"].startswith("batch_req_") for line in output)

    errors = read_jsonl(client, final.error_file_id)
    assert [line["custom_id"] for line in errors] == ["req-bad"]
    assert errors[0]["response"]["status_code"] == 400
    assert "error" in errors[0]["response"]["body"]

    listed = client.batches.list(limit=10)
    assert batch.id in [item.id for item in listed.data]
    assert sim.stats()["batches_created"] == 1


def test_batch_list_pagination(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("p.jsonl", batch_lines({"a": "x"})), purpose="batch")
    created = [
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
        ).id
        for _ in range(3)
    ]
    page = client.batches.list(limit=2)
    assert [item.id for item in page.data] == created[::-1][:2]
    assert page.has_more is True
    ids = [item.id for item in client.batches.list(limit=2)]  # auto-paginates
    assert ids[:3] == created[::-1]


def test_batch_expire_marker(client: openai.OpenAI) -> None:
    texts = {"a": "fine", "b": "too slow [[batch-expire]]"}
    uploaded = client.files.create(file=("e.jsonl", batch_lines(texts)), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final, _ = wait_for_batch(client, batch.id)
    assert final.status == "expired"
    assert final.expired_at is not None
    assert final.output_file_id is None
    assert final.error_file_id is None


def test_batch_cancel(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("c.jsonl", batch_lines({"a": "x"})), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    assert client.batches.cancel(batch.id).status == "cancelling"
    final, _ = wait_for_batch(client, batch.id)
    assert final.status == "cancelled"
    assert final.cancelled_at is not None


def test_batch_invalid_input_fails(client: openai.OpenAI) -> None:
    data = batch_lines({"a": "x"}) + b"{not json\n"
    uploaded = client.files.create(file=("bad.jsonl", data), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final, _ = wait_for_batch(client, batch.id)
    assert final.status == "failed"
    assert final.errors and final.errors.data
    assert final.errors.data[0].line == 2

    too_many = batch_lines({f"id{index}": "x" for index in range(50_001)})
    uploaded = client.files.create(file=("big.jsonl", too_many), purpose="batch")
    batch = client.batches.create(
        input_file_id=uploaded.id, endpoint="/v1/chat/completions", completion_window="24h"
    )
    final, _ = wait_for_batch(client, batch.id)
    assert final.status == "failed"
    assert final.errors and final.errors.data


def test_batch_rejects_other_endpoints(client: openai.OpenAI) -> None:
    uploaded = client.files.create(file=("x.jsonl", batch_lines({"a": "x"})), purpose="batch")
    with pytest.raises(openai.BadRequestError):
        client.batches.create(
            input_file_id=uploaded.id, endpoint="/v1/embeddings", completion_window="24h"
        )
    with pytest.raises(openai.NotFoundError):
        client.batches.retrieve("batch_does_not_exist")


# -- DeepL ---------------------------------------------------------------------------------


def test_deepl_translate_list_keeps_order(sim: SimulatorThread, translator) -> None:
    texts = ["one", "two [[batch-missing]]", "three", "quatre"]
    results = translator.translate_text(texts, target_lang="de")
    assert [result.text for result in results] == [translation_of(t, "de") for t in texts]
    assert results[0].text == "[DE] one"
    assert results[0].detected_source_lang == "EN"
    assert [result.billed_characters for result in results] == [len(t) for t in texts]
    single = translator.translate_text("solo", source_lang="FR", target_lang="EN-GB")
    assert single.text == "[EN-GB] solo"
    assert single.detected_source_lang == "FR"
    usage = translator.get_usage()
    assert usage.character.count == sum(map(len, texts)) + 4
    assert usage.character.limit == 1_000_000_000
    stats = sim.stats()
    assert stats["translate_requests"] == 2
    assert stats["translated_texts"] == 5
    log = sim.log()
    assert [entry["texts"] for entry in log] == [texts, ["solo"]]
    assert all(entry["endpoint"] == "/v2/translate" for entry in log)


def test_deepl_quota(sim: SimulatorThread, translator) -> None:
    sim.configure(deepl_character_limit=10)
    translator.translate_text(["12345", "678"], target_lang="DE")
    with pytest.raises(deepl.QuotaExceededException):
        translator.translate_text("abc", target_lang="DE")
    translator.translate_text("ab", target_lang="DE")
    usage = translator.get_usage()
    assert (usage.character.count, usage.character.limit) == (10, 10)
    assert usage.character.limit_reached
    sim.configure(deepl_character_limit=None)
    with pytest.raises(deepl.QuotaExceededException):
        translator.translate_text(["fine", "out [[status:456]]"], target_lang="DE")


def test_deepl_fail_first(translator) -> None:
    with pytest.raises(deepl.QuotaExceededException):
        translator.translate_text(["x", "y [[fail-first:456]]"], target_lang="DE")
    results = translator.translate_text(["x", "y [[fail-first:456]]"], target_lang="DE")
    assert [result.text for result in results] == ["[DE] x", "[DE] y [[fail-first:456]]"]


def test_deepl_limits_and_forms(raw: httpx.Client, translator) -> None:
    with pytest.raises(deepl.DeepLException, match="Bad request"):
        translator.translate_text([f"t{index}" for index in range(51)], target_lang="DE")
    auth = {"Authorization": "DeepL-Auth-Key test-key:fx"}
    payload = {"text": ["a"], "target_lang": "DE"}
    assert raw.post("/v2/translate", json=payload).status_code == 403
    big = {"text": ["x" * (130 * 1024)], "target_lang": "DE"}
    assert raw.post("/v2/translate", json=big, headers=auth).status_code == 413
    form = raw.post(
        "/v2/translate",
        content=b"text=hello&text=world&target_lang=fr",
        headers={**auth, "Content-Type": "application/x-www-form-urlencoded"},
    )
    assert form.status_code == 200
    assert [item["text"] for item in form.json()["translations"]] == ["[FR] hello", "[FR] world"]
    assert raw.post("/v2/usage", headers=auth).json()["character_count"] == 10


def test_deepl_shares_rpm_with_chat(sim: SimulatorThread, client: openai.OpenAI, raw) -> None:
    sim.configure(rpm=2)
    ask(client, "one")
    auth = {"Authorization": "DeepL-Auth-Key k"}
    assert raw.post("/v2/translate", json={"text": ["a"], "target_lang": "DE"}, headers=auth)
    limited = raw.post("/v2/translate", json={"text": ["b"], "target_lang": "DE"}, headers=auth)
    assert limited.status_code == 429
    assert int(limited.headers["Retry-After"]) >= 1


# -- control endpoints and CLI -------------------------------------------------------------


def test_stats_log_and_reset(sim: SimulatorThread, client: openai.OpenAI) -> None:
    ask(client, "a")
    with pytest.raises(openai.RateLimitError):
        ask(client, "b [[status:429]]")
    stats = sim.stats()
    assert stats["requests"] == {"POST /v1/chat/completions": 2}
    assert stats["status_counts"] == {"200": 1, "429": 1}
    assert stats["chat_requests"] == 2
    assert stats["in_flight"] == 0
    log = sim.log()
    assert [(entry["status"], entry["texts"]) for entry in log] == [
        (200, ["a"]),
        (429, ["b [[status:429]]"]),
    ]
    assert abs(log[0]["t"] - time.time()) < 60
    sim.reset()
    assert sim.stats()["requests"] == {}
    assert sim.log() == []
    with pytest.raises(openai.BadRequestError):
        ask(client, "again [[fail-first:400]]")
    sim.reset()
    with pytest.raises(openai.BadRequestError):
        ask(client, "again [[fail-first:400]]")


def test_config_endpoint_validates(raw: httpx.Client) -> None:
    assert raw.post("/_sim/config", json={"rpm": 0}).status_code == 400
    assert raw.post("/_sim/config", json={"nope": 1}).status_code == 400
    assert raw.post("/_sim/config", json={"latency_ms": 1}).json()["latency_ms"] == 1
    assert raw.get("/_sim/config").json()["latency_ms"] == 1


def test_cli_prints_url_and_serves() -> None:
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [sys.executable, "-m", "mitrailleuse.simulator", "--port", "0", "--rpm", "100"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
        cwd=ROOT,
    )
    try:
        assert process.stdout is not None
        line = process.stdout.readline().strip()
        assert line.startswith("SIMULATOR_URL=http://127.0.0.1:")
        url = line.removeprefix("SIMULATOR_URL=")
        cli_client = openai.OpenAI(base_url=url + "/v1", api_key="sk-test", max_retries=0)
        raw_reply = cli_client.chat.completions.with_raw_response.create(
            model="m", messages=[{"role": "user", "content": "cli"}]
        )
        assert raw_reply.parse().choices[0].message.content == "echo: cli"
        assert raw_reply.headers["x-ratelimit-limit-requests"] == "100"
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=10) == 0
        assert process.stdout.read() == ""
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()

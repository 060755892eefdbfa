"""Each provider end to end: real worker, the simulator over HTTP, the real SDKs."""

from __future__ import annotations

import pytest

from mitrailleuse.simulator import chat_answer, translation_of
from tests.e2e.helpers import new_task, results

pytestmark = pytest.mark.e2e


def run_task(api, rows, config=None, tmp_path=None, name="in", timeout=120):
    m, task = new_task(tmp_path, rows, config, api, name)
    progress = m.submit(task).wait(timeout=timeout)
    return task, progress, results(task)


def test_openai_dynamic_system_prompt(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    rows = [{"input_text": f"question {n}", "instructions": f"style {n % 3}"} for n in range(30)]
    config = {
        "openai": {"system_instruction": {"is_dynamic": True, "system_prompt": "instructions"}}
    }
    _, progress, records = run_task("openai", rows, config, tmp_path)
    assert progress.succeeded == 30
    for row, record in zip(rows, records, strict=True):
        messages = [
            {"role": "system", "content": row["instructions"]},
            {"role": "user", "content": row["input_text"]},
        ]
        assert record["output"] == chat_answer(messages)


def test_openai_messages_items_and_settings(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    rows = [
        {
            "messages": [
                {"role": "system", "content": f"sys {n}"},
                {"role": "user", "content": f"u {n}"},
            ]
        }
        for n in range(20)
    ]
    config = {
        "openai": {
            "api_information": {"model": "gpt-4o-mini", "setting": {"temperature": 0, "seed": 7}}
        }
    }
    _, progress, records = run_task("openai", rows, config, tmp_path)
    assert progress.succeeded == 20
    for row, record in zip(rows, records, strict=True):
        assert record["output"] == chat_answer(row["messages"])
        assert record["model"] == "gpt-4o-mini" and record["response"]["model"] == "gpt-4o-mini"


def test_deepseek_uses_its_own_model_never_gpt(tmp_path, tasks_dir, sim, start_worker):
    start_worker(queues=["deepseek", "mitrailleuse"])
    rows = [{"input_text": f"deep {n}"} for n in range(25)]
    # the seed's template sends gpt-4o to DeepSeek: Mitrailleuse must not; and DeepSeek has no
    # batch API: is_batch_active runs the live path
    config = {
        "deepseek": {
            "api_information": {"model": "gpt-4o", "setting": {}},
            "batch": {"batch_size": 10, "is_batch_active": True},
        }
    }
    task, progress, records = run_task("deepseek", rows, config, tmp_path)
    assert progress.succeeded == 25
    assert task.status().mode == "realtime" and sim.stats()["batches_created"] == 0
    for row, record in zip(rows, records, strict=True):
        assert record["provider"] == "deepseek"
        assert record["model"] == "deepseek-chat" and record["response"]["model"] == "deepseek-chat"
        assert record["output"] == chat_answer([{"role": "user", "content": row["input_text"]}])


def test_deepl_groups_texts_and_maps_each_back(tmp_path, tasks_dir, sim, start_worker):
    start_worker(queues=["deepl", "mitrailleuse"])
    langs = ["DE", "FR"]
    rows = [{"text": f"line number {n}", "target_lang": langs[n % 2]} for n in range(520)]
    rows[7] = {"text": "no language field here"}  # falls back to the literal code "ES"
    config = {"deepl": {"target_lang": "target_lang", "text": "text", "batch": {"batch_size": 100}}}
    # an item without the field uses the configured value itself as a code
    config_literal = {"deepl": {"target_lang": "ES", "text": "text"}}
    _, progress, records = run_task("deepl", rows, config, tmp_path)
    assert progress.succeeded == 519 and progress.failed == 1
    for row, record in zip(rows, records, strict=True):
        if "target_lang" in row:
            assert record["output"] == translation_of(row["text"], row["target_lang"])
    assert records[7]["error"]["type"] == "invalid_input"
    calls = sim.stats()["translate_requests"]
    assert calls <= 520 / 25, calls

    _, progress, records = run_task("deepl", [{"text": "hola"}], config_literal, tmp_path, "lit")
    assert records[0]["output"] == translation_of("hola", "ES")


def test_permanent_error_fails_at_once(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    rows = [
        {"input_text": "fine"},
        {"input_text": "refused [[status:400]]"},
        {"input_text": "also fine"},
    ]
    _, progress, records = run_task("openai", rows, None, tmp_path)
    assert progress.state == "completed" and progress.failed == 1
    bad = records[1]
    assert bad["status"] == "failed" and bad["attempts"] == 1
    assert bad["error"]["status_code"] == 400 and bad["error"]["type"] == "http_400"
    assert sim.stats()["chat_requests"] == 3


def test_deepl_quota_exceeded_stops_hammering(tmp_path, tasks_dir, sim, start_worker):
    start_worker(queues=["deepl", "mitrailleuse"], concurrency=2)
    sim.configure(deepl_character_limit=200)
    rows = [{"text": f"text {n:03d} " + "x" * 30, "target_lang": "DE"} for n in range(200)]
    config = {"deepl": {"batch": {"batch_size": 5}}}
    _, progress, records = run_task("deepl", rows, config, tmp_path)
    assert progress.state == "completed"
    failed = [r for r in records if r["status"] == "failed"]
    assert failed and all(r["error"]["type"] == "quota_exceeded" for r in failed)
    # after the first 456 the remaining items fail without a call
    assert sim.stats()["status_counts"].get("456", 0) <= 2
    assert sim.stats()["translate_requests"] < 10

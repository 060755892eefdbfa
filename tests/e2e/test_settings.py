"""Settings are used or refused, never silently ignored: proxies, the log file, request
settings, and seed settings that have no effect here.
"""

from __future__ import annotations

import json

import pytest

from tests.e2e.helpers import new_task, questions, results
from tests.e2e.proxy import ForwardProxy
from tests.e2e.test_cli import cli, create

pytestmark = pytest.mark.e2e


@pytest.fixture
def proxy():
    with ForwardProxy() as running:
        yield running


def proxied(enabled: bool = True) -> dict:
    return {
        "general": {"proxies": {"proxies_enabled": enabled, "http": "${TEST_PROXY}", "https": None}}
    }


def test_every_call_goes_through_the_configured_proxy(
    tmp_path, tasks_dir, sim, start_worker, proxy
):
    """OpenAI (httpx) and DeepL (requests) calls both pass through it; the URL is a reference."""
    start_worker(env={"TEST_PROXY": proxy.url})
    m, chat = new_task(tmp_path, questions(10), proxied())
    assert m.submit(chat).wait(timeout=60).succeeded == 10
    texts = [{"text": f"Hello {n}", "target_lang": "DE"} for n in range(5)]
    _, translate = new_task(tmp_path, texts, proxied(), api="deepl", name="d")
    assert m.submit(translate).wait(timeout=60).succeeded == 5

    assert proxy.seen["POST /v1/chat/completions"] == 10
    assert proxy.seen["POST /v2/translate"] == sim.stats()["translate_requests"] >= 1
    assert all(r["output"] for r in results(chat) + results(translate))
    saved = json.loads(chat.config_path.read_text())["general"]["proxies"]
    assert saved["http"] == "${TEST_PROXY}", "the proxy URL was written into the task folder"


def test_a_disabled_proxy_is_not_used(tmp_path, tasks_dir, sim, start_worker, proxy):
    start_worker(env={"TEST_PROXY": proxy.url})
    m, task = new_task(tmp_path, questions(3), proxied(enabled=False))
    assert m.submit(task).wait(timeout=60).succeeded == 3
    assert sum(proxy.seen.values()) == 0


def test_the_run_log_goes_where_general_logs_says(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    logs = {"general": {"logs": {"log_file": "night.log"}}}
    m, task = new_task(tmp_path, questions(3), logs)
    assert m.submit(task).wait(timeout=60).state == "completed"
    lines = (task.logs_dir / "night.log").read_text().splitlines()
    assert "submitted" in lines[0] and "completed" in lines[-1], lines

    quiet = {"general": {"logs": {"log_to_file": False}}}
    _, silent = new_task(tmp_path, questions(3), quiet, name="q")
    assert m.submit(silent).wait(timeout=60).state == "completed"
    assert not silent.logs_dir.exists() or not any(silent.logs_dir.iterdir())


@pytest.mark.parametrize(
    ("setting", "shown"),
    [
        ({"temperature": "hot"}, "setting.temperature: Input should be a valid number"),
        ({"temperature": 2.5}, "setting.temperature: Input should be less than or equal to 2"),
        ({"top_p": -0.1}, "setting.top_p: Input should be greater than or equal to 0"),
        ({"max_tokens": 0}, "setting.max_tokens: Input should be greater than or equal to 1"),
        ({"n": 0}, "setting.n: Input should be greater than or equal to 1"),
        ({"frequency_penalty": 3}, "setting.frequency_penalty: Input should be less than"),
        ({"stop": 5}, "setting.stop"),
        ({"seed": 1.5}, "setting.seed: Input should be a valid integer"),
        ({"stream": True}, "setting.stream: Input should be False"),
    ],
)
def test_a_bad_request_setting_is_refused_at_create(tmp_path, setting, shown):
    (tmp_path / "c.json").write_text(
        json.dumps({"openai": {"api_information": {"setting": setting}}})
    )
    (tmp_path / "q.jsonl").write_text('{"input_text": "hello"}\n')
    made = create(tmp_path, "u", "bad", "--config", "c.json", "--input", "q.jsonl")
    assert made.returncode == 2, made.stdout
    assert shown in made.stderr and "openai.api_information" in made.stderr, made.stderr
    assert len(made.stderr.strip().splitlines()) == 1, made.stderr
    assert not (tmp_path / "tasks" / "u").exists()


def test_unknown_request_settings_pass_through(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    setting = {"temperature": 0.3, "reasoning_effort": "low", "top_p": 1}
    m, task = new_task(
        tmp_path, questions(1), {"openai": {"api_information": {"setting": setting}}}
    )
    assert m.submit(task).wait(timeout=60).succeeded == 1
    saved = json.loads(task.config_path.read_text())["openai"]["api_information"]["setting"]
    assert saved == setting, "a setting was dropped, converted or added"


#: The seed template's settings that change nothing here, as the seed gives them.
SEED_EXTRAS = {
    "openai": {"bulk_save": 10, "sleep_time": 0},
    "general": {
        "verbose": True,
        "logs": {"log_file": "log.log", "log_to_file": True, "log_to_db": False},
        "multiprocessing_enabled": True,
        "num_processes": 10,
        "db": {"postgres": {"host": "localhost", "port": "5432"}},
    },
}


def test_seed_settings_without_effect_are_named_at_create(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"input_text": "hello"}\n')
    (tmp_path / "c.json").write_text(json.dumps(SEED_EXTRAS))
    made = create(tmp_path, "u", "seed", "--config", "c.json", "--input", "q.jsonl")
    assert made.returncode == 0, made.stderr
    for name in (
        "general.verbose",
        "general.logs.log_to_db",
        "general.db",
        "general.multiprocessing_enabled",
        "general.num_processes",
        "openai.sleep_time",
        "openai.bulk_save",
    ):
        assert name in made.stderr, (name, made.stderr)
    assert "log_file" not in made.stderr and "log_to_file" not in made.stderr


def test_given_settings_without_effect_are_named_and_defaults_are_not(tmp_path):
    (tmp_path / "q.jsonl").write_text('{"input_text": "hello"}\n')
    (tmp_path / "c.json").write_text(json.dumps({"general": {"num_processes": 4}}))
    made = create(tmp_path, "u", "np", "--config", "c.json", "--input", "q.jsonl")
    assert made.returncode == 0 and "general.num_processes" in made.stderr, made.stderr
    plain = create(tmp_path, "u", "plain", "--input", "q.jsonl")
    assert "no effect" not in plain.stderr, plain.stderr
    assert cli("list", "--user-id", "u", cwd=tmp_path).returncode == 0

"""A newcomer's first config: ``config init``'s example runs plain items; ``config check`` and
``execute --estimate`` say what is wrong, in words that lead to the fix."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tests.e2e.helpers import questions, write_jsonl
from tests.e2e.test_cli import cli

pytestmark = pytest.mark.e2e

#: The unknown key a newcomer typed, and the one warning line it must give.
TYPO = {"openai": {"batchsize": 5}}
DID_YOU_MEAN = "unknown key openai.batchsize (did you mean openai.batch.batch_size?)"


@pytest.mark.parametrize(
    ("api", "items", "env"),
    [
        (
            "openai",
            questions(12),
            lambda sim: {"OPENAI_BASE_URL": f"{sim.url}/v1", "OPENAI_API_KEY": "sk-test-init"},
        ),
        (
            "deepl",
            [{"text": f"Where is station {n}?", "target_lang": "DE"} for n in range(12)],
            lambda sim: {"DEEPL_SERVER_URL": sim.url, "DEEPL_AUTH_KEY": "test-init-deepl"},
        ),
        (
            "anthropic",
            questions(12),
            lambda sim: {"ANTHROPIC_BASE_URL": sim.url, "ANTHROPIC_API_KEY": "test-init"},
        ),
        (
            "gemini",
            questions(12),
            lambda sim: {"GEMINI_BASE_URL": sim.url, "GEMINI_API_KEY": "test-init"},
        ),
    ],
)
def test_the_init_example_runs_plain_items(tmp_path, sim, api, items, env):
    made = cli("config", "init", "--api-name", api, "--output", "config.json", cwd=tmp_path)
    assert made.returncode == 0, made.stderr
    write_jsonl(tmp_path / "q.jsonl", items)
    done = cli(
        "run",
        *("--api-name", api, "--input", "q.jsonl", "--config", "config.json"),
        cwd=tmp_path,
        env={"REDIS_URL": "", **env(sim)},
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert "unknown key" not in done.stderr
    records = [json.loads(line) for line in Path(done.stdout.split()[-1]).read_text().splitlines()]
    assert len(records) == len(items)
    assert {record["status"] for record in records} == {"succeeded"}


def test_init_prints_what_it_writes_and_never_overwrites_unasked(tmp_path):
    init = ("config", "init", "--api-name", "deepseek")
    printed = cli(*init, cwd=tmp_path)
    assert printed.returncode == 0, printed.stderr
    assert json.loads(printed.stdout)["deepseek"]["api_information"]["model"] == "deepseek-chat"
    target = tmp_path / "config.json"
    target.write_text("{}\n")

    refused = cli(*init, "--output", "config.json", cwd=tmp_path)
    assert refused.returncode == 2 and len(refused.stderr.strip().splitlines()) == 1
    assert "--force" in refused.stderr and target.read_text() == "{}\n"

    forced = cli(*init, "--output", "config.json", "--force", cwd=tmp_path)
    assert forced.returncode == 0, forced.stderr
    assert target.read_text() == printed.stdout


def test_check_warns_of_a_typo_and_strict_refuses_it(tmp_path):
    (tmp_path / "typo.json").write_text(json.dumps(TYPO))
    warned = cli("config", "check", "typo.json", cwd=tmp_path)
    assert warned.returncode == 0 and warned.stdout.strip() == "ok", warned.stderr
    assert f"typo.json: {DID_YOU_MEAN}" in warned.stderr

    (tmp_path / "strict.json").write_text(json.dumps({**TYPO, "general": {"strict": True}}))
    for refused in (
        cli("config", "check", "typo.json", "--strict", cwd=tmp_path),
        cli("config", "check", "strict.json", cwd=tmp_path),
    ):
        assert refused.returncode == 2 and "ok" not in refused.stdout
        assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
        assert DID_YOU_MEAN in refused.stderr and "Traceback" not in refused.stderr

    (tmp_path / "bad.json").write_text(json.dumps({"openai": {"batch": {"batch_size": 0}}}))
    bad = cli("config", "check", "bad.json", cwd=tmp_path)
    assert bad.returncode == 2 and "openai.batch.batch_size" in bad.stderr


def test_estimate_says_why_items_are_invalid(tmp_path, fleet_env):
    """The config the example task shipped with, and items without its dynamic prompt field."""
    dynamic = {
        "openai": {"system_instruction": {"is_dynamic": True, "system_prompt": "instructions"}}
    }
    (tmp_path / "config.json").write_text(json.dumps(dynamic))
    lines = [json.dumps(item) for item in questions(5)] + ["{not json", "[1]"]
    (tmp_path / "q.jsonl").write_text("\n".join(lines) + "\n")
    env = {**fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tmp_path / "tasks"), "COLUMNS": "250"}
    made = cli(
        "create",
        *("--user-id", "new", "--api-name", "openai", "--task-name", "first"),
        *("--config", "config.json", "--input", "q.jsonl"),
        cwd=tmp_path,
        env=env,
    )
    assert made.returncode == 0, made.stderr
    task = made.stdout.strip().splitlines()[-1]
    shown = cli("execute", "--task-path", task, "--estimate", cwd=tmp_path, env=env)
    assert shown.returncode == 0, shown.stderr
    assert (
        "0 (7 invalid: 5 × missing system prompt field 'instructions', 1 × invalid JSON"
        in shown.stdout
    ), shown.stdout
    assert "1 × not a JSON object (got array)" in shown.stdout

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitrailleuse.config import TaskConfig, load_config, parse_config
from mitrailleuse.errors import ConfigError

#: The config template users bring from the tool Mitrailleuse replaces, as they have it.
SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed-config.json"
EXAMPLE = Path(__file__).resolve().parents[2] / "tasks" / "example"


def seed() -> dict:
    return json.loads(SEED.read_text())


def test_the_seed_template_loads_unchanged():
    config = load_config(SEED)
    assert config.openai.batch.batch_size == 20
    assert config.openai.api_information.setting.request_fields() == {
        "temperature": 1.0,
        "max_tokens": 16000,
    }
    assert config.deepl.target_lang == "target_lang"
    assert config.general.similarity_check.settings.similarity_threshold == 0.8
    assert config.general.db.postgres.port == 5432
    assert config.general.proxies.https == "http://corporate-proxy:8080/"
    assert config.openai.rate_limit.requests_per_minute == 500
    assert config.openai.retry.max_attempts == 6
    assert config.openai.base_url is None


def test_the_example_task_config_loads():
    (config_path,) = EXAMPLE.glob("*/config/config.json")
    assert load_config(config_path).openai.prompt == "input_text"


def test_defaults_need_nothing():
    config = parse_config({})
    assert config.deepseek.api_information.model == "deepseek-chat"
    assert config.deepl.batch.batch_size == 50


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"openai": {"batch": {"batch_size": 0}}}, "openai.batch.batch_size"),
        ({"openai": {"batch": {"batch_size": "many"}}}, "openai.batch.batch_size"),
        (
            {"openai": {"rate_limit": {"requests_per_minute": -5}}},
            "openai.rate_limit.requests_per_minute",
        ),
        ({"openai": {"retry": {"max_attempts": 0}}}, "openai.retry.max_attempts"),
        (
            {"general": {"sampling": {"enable_sampling": "perhaps"}}},
            "general.sampling.enable_sampling",
        ),
        ({"general": {"sampling": {"sample_size": 0}}}, "general.sampling.sample_size"),
        ({"general": {"process_cap_percentage": 250}}, "general.process_cap_percentage"),
        ({"general": {"logs": {"log_file": "../../escape.log"}}}, "general.logs.log_file"),
        ({"openai": {"prompt": " "}}, "openai.prompt"),
        ({"deepl": "not an object"}, "deepl"),
    ],
)
def test_a_bad_value_is_refused_naming_its_field(patch, field):
    with pytest.raises(ConfigError) as refused:
        parse_config(patch, "config.json")
    message = str(refused.value)
    assert "\n" not in message
    assert message.startswith(f"config.json: {field}:")


def test_not_an_object_and_not_json(tmp_path):
    with pytest.raises(ConfigError, match="must be a JSON object"):
        parse_config([1, 2])
    bad = tmp_path / "config.json"
    bad.write_text("{nope")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_config(bad)
    with pytest.raises(ConfigError, match="cannot read config"):
        load_config(tmp_path / "missing.json")


def test_unknown_keys_are_kept_with_a_warning(caplog):
    config = parse_config({"openai": {"shiny_new_option": 3}, "future": True})
    assert config.openai.model_extra == {"shiny_new_option": 3}
    assert config.model_dump()["future"] is True
    assert "openai.shiny_new_option" in caplog.text and "future" in caplog.text


def test_round_trip_keeps_everything():
    data = seed() if SEED.exists() else {}
    config = parse_config(data)
    assert TaskConfig.model_validate(config.model_dump(mode="json")) == config

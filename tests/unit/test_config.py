from __future__ import annotations

import json
import re
from collections.abc import Iterator
from fnmatch import fnmatch
from pathlib import Path
from typing import Any, get_args, get_origin

import jsonschema
import pytest
from pydantic import BaseModel

from mitrailleuse.cli.config import ExampleApi, example_config
from mitrailleuse.config import (
    WITHOUT_EFFECT,
    TaskConfig,
    json_schema,
    load_config,
    parse_config,
)
from mitrailleuse.errors import ConfigError
from mitrailleuse.inputs import iter_items
from mitrailleuse.providers import provider_class

#: The config template users bring from the tool Mitrailleuse replaces, as they have it.
SEED = Path(__file__).resolve().parents[1] / "fixtures" / "seed-config.json"
REPO = Path(__file__).resolve().parents[2]
EXAMPLE = REPO / "tasks" / "example"
SHIPPED_SCHEMA = REPO / "mitrailleuse" / "config.schema.json"
REFERENCE = REPO / "docs" / "configuration.md"


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
    assert config.openai.rate_limit.requests_per_minute is None  # the provider's word, else 500
    assert config.openai.retry.max_attempts == 6
    assert config.openai.base_url is None


def test_the_example_task_sends_every_item_of_its_inputs_and_plain_ones():
    """The example is what newcomers copy: it must work with items holding only a prompt."""
    (task,) = EXAMPLE.glob("*/")
    section = load_config(task / "config" / "config.json", strict=True).openai
    items = [item.data for item, _ in iter_items(sorted((task / "inputs").glob("*.jsonl")))]
    assert len(items) == 10
    for item in [*items, {"input_text": "What is 2 + 2?"}]:
        system, user = provider_class("openai").build_request(item, section)["messages"]
        assert system == {"role": "system", "content": "Provide a brief answer"}
        assert user["content"] == item["input_text"]


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


@pytest.mark.parametrize(
    ("data", "warning"),
    [
        (  # the same section's field is too far (batch), a nested one is close
            {"openai": {"batchsize": 5}},
            "unknown key openai.batchsize (did you mean openai.batch.batch_size?)",
        ),
        (
            {"general": {"cach": {"enabled": True}}},
            "unknown key general.cach (did you mean general.cache?)",
        ),
        (  # two sections down
            {"deepseek": {"temprature": 0}},
            "unknown key deepseek.temprature (did you mean"
            " deepseek.api_information.setting.temperature?)",
        ),
        (
            {"openai": {"model": "gpt-4o"}},
            "unknown key openai.model (did you mean openai.api_information.model?)",
        ),
        (
            {"deepl": {"target_language": "DE"}},
            "unknown key deepl.target_language (did you mean deepl.target_lang?)",
        ),
        ({"general": {"xyzzy": 1}}, "unknown key general.xyzzy"),
    ],
)
def test_an_unknown_key_names_the_field_it_was_probably_meant_to_be(caplog, data, warning):
    parse_config(data, "config.json")
    assert caplog.messages == [f"config.json: {warning}"]


def test_strict_refuses_unknown_keys_in_one_line(caplog):
    data = {"openai": {"batchsize": 5}, "general": {"sampling": {"samplesize": 3}}}
    for strict, given in (
        (True, data),
        (False, {**data, "general": {**data["general"], "strict": True}}),
    ):
        with pytest.raises(ConfigError) as refused:
            parse_config(given, "config.json", strict=strict)
        message = str(refused.value)
        assert "\n" not in message and message.startswith("config.json: unknown key openai.")
        assert "did you mean openai.batch.batch_size?" in message
        assert "general.sampling.samplesize (did you mean general.sampling.sample_size?)" in message
    assert "unknown key" not in caplog.text
    assert parse_config({"openai": {"batch": {"batch_size": 5}}}, strict=True)


def test_a_registered_plugin_section_is_not_an_unknown_key(tmp_path, monkeypatch, caplog):
    """A plug-in's section is validated by its own model, not reported as a typo."""
    dist = tmp_path / "echo_provider-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-provider\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mitrailleuse.providers]\necho = echo_provider:EchoProvider\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path))
    parse_config({"echo": {"prefix": ">> "}, "ecko": {}}, "config.json", strict=False)
    assert "unknown key ecko" in caplog.text and "unknown key echo" not in caplog.text
    assert parse_config({"echo": {"prefix": ">> "}}, strict=True)


def test_the_shipped_schema_is_the_models_schema():
    """Regenerate it with ``mitrailleuse config schema > mitrailleuse/config.schema.json``."""
    assert json.loads(SHIPPED_SCHEMA.read_text()) == json_schema()


def test_the_schema_checks_values_and_keeps_unknown_keys():
    validator = jsonschema.Draft202012Validator(json_schema())
    assert validator.is_valid({"openai": {"future_option": 1, "batch": {"batch_size": 3}}})
    assert not validator.is_valid({"openai": {"batch": {"batch_size": 0}}})
    assert not validator.is_valid({"general": {"prices": {"openai": {"m": {"typo": 1.0}}}}})


@pytest.mark.parametrize("api", list(ExampleApi))
def test_the_init_example_is_valid_holds_no_key_and_sends_plain_items(api):
    example = example_config(api)
    jsonschema.Draft202012Validator(json_schema()).validate(example)
    assert "api_key" not in json.dumps(example)
    section = parse_config(example, strict=True).provider(api.value)
    plain = {"text": "Where is the station?", "target_lang": "DE"}
    if api is not ExampleApi.deepl:
        plain = {"input_text": "What is the capital of France?"}
    request = provider_class(api.value).build_request(plain, section)
    assert plain.get("text", plain.get("input_text")) in json.dumps(request)


def test_round_trip_keeps_everything():
    data = seed() if SEED.exists() else {}
    config = parse_config(data)
    assert TaskConfig.model_validate(config.model_dump(mode="json")) == config


def _sections(model: type[BaseModel], path: str = "") -> Iterator[tuple[str, type[BaseModel]]]:
    """Every model reachable from ``model``, with its dotted path (``*`` for a mapping's keys)."""
    yield path, model
    for name, field in model.model_fields.items():
        yield from _nested(field.annotation, f"{path}.{name}" if path else name)


def _nested(annotation: Any, path: str) -> Iterator[tuple[str, type[BaseModel]]]:
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield from _sections(annotation, path)
    elif get_origin(annotation) is dict:
        yield from _nested(get_args(annotation)[1], f"{path}.*")
    else:
        for argument in get_args(annotation):
            yield from _nested(argument, path)


def _reference_rows() -> dict[str, dict[str, list[str]]]:
    """The reference's tables: the rows of each heading's table, by each path it names."""
    tables: dict[str, dict[str, list[str]]] = {}
    rows: dict[str, list[str]] = {}
    for line in REFERENCE.read_text().splitlines():
        if line.startswith("#"):
            rows = {}
            for path in re.findall(r"`([^`]+)`", line):
                tables[path] = rows
        elif line.startswith("| `"):
            cells = [cell.strip() for cell in line.strip().strip("|").split("|")]
            rows[cells[0].strip("`")] = cells
    return tables


def _documented_defaults(default: Any) -> set[str]:
    shown = {f"`{json.dumps(default)}`"}
    if isinstance(default, float) and default.is_integer():
        shown.add(f"`{int(default)}`")
    if isinstance(default, int) and not isinstance(default, bool):
        shown.add(f"`{float(default)}`")
    return shown


def test_the_reference_documents_every_field_with_its_default():
    """docs/configuration.md has a row for every field of every section, default included."""
    tables = _reference_rows()
    for path, model in _sections(TaskConfig):
        rows = tables.get(path or "config.json")
        assert rows is not None, f"docs/configuration.md: no heading names `{path}`"
        for field_name, field in model.model_fields.items():
            name = field.alias or field_name  # the key users write
            assert name in rows, f"docs/configuration.md: `{path}` lacks a row for `{name}`"
            if field.is_required():
                assert rows[name][1] == "(required)", (path, name, rows[name])
            elif field.default_factory is None:
                shown = _documented_defaults(field.default)
                assert any(text in rows[name][1] for text in shown), (path, name, rows[name])


def test_the_reference_marks_exactly_the_settings_without_effect():
    tables = _reference_rows()
    for path, model in _sections(TaskConfig):
        rows = tables[path or "config.json"]
        for field_name, field in model.model_fields.items():
            name = field.alias or field_name
            dotted = f"{path}.{name}" if path else name
            ancestry = [dotted[: i.start()] for i in re.finditer(r"\.|$", dotted)]
            expected = any(fnmatch(part, key) for part in ancestry for key in WITHOUT_EFFECT)
            assert ("**No effect**" in rows[name][2]) == expected, dotted


@pytest.mark.parametrize(
    ("provider", "model"), [("anthropic", "claude-haiku-4-5"), ("gemini", "gemini-2.5-flash")]
)
def test_a_section_giving_only_settings_keeps_its_providers_default_model(provider, model):
    config = parse_config({provider: {"api_information": {"setting": {"temperature": 0}}}})
    assert config.provider(provider).api_information.model == model

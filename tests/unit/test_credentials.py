from __future__ import annotations

from mitrailleuse.config import parse_config
from mitrailleuse.credentials import redact, resolve_api_key, scrub_config


def test_placeholders_mean_the_environment():
    env = {"OPENAI_API_KEY": "from-env", "DEEPL_API_KEY": "deepl-env"}
    assert resolve_api_key("openai", "YOUR_OPENAI_KEY", env) == "from-env"
    assert resolve_api_key("openai", "", env) == "from-env"
    assert resolve_api_key("deepl", "", env) == "deepl-env"
    assert resolve_api_key("deepseek", "", env) is None


def test_references_and_literals():
    env = {"MY_KEY": "referenced"}
    assert resolve_api_key("openai", "${MY_KEY}", env) == "referenced"
    assert resolve_api_key("openai", "${MISSING}", env) is None
    assert resolve_api_key("openai", "sk-literal", env) == "sk-literal"


def test_scrub_replaces_literal_keys_and_returns_them(caplog):
    config = parse_config(
        {"openai": {"api_key": "sk-secret-literal"}, "deepl": {"api_key": "${D}"}}
    )
    literals = scrub_config(config)
    assert literals == {"OPENAI_API_KEY": "sk-secret-literal"}
    assert config.openai.api_key == "${OPENAI_API_KEY}"
    assert config.deepl.api_key == "${D}"
    assert "sk-secret-literal" not in caplog.text
    assert "${OPENAI_API_KEY}" in caplog.text


def test_redact():
    assert redact("bad key sk-abc given", "sk-abc") == "bad key *** given"
    assert redact("nothing", None) == "nothing"

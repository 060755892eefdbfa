from __future__ import annotations

import subprocess
import sys

import pytest

from mitrailleuse.config import TaskConfig, parse_config
from mitrailleuse.errors import ConfigError
from mitrailleuse.providers import InvalidItem, provider_class
from mitrailleuse.providers.chat import retry_after_s
from mitrailleuse.providers.deepl import DeepLProvider
from mitrailleuse.providers.deepseek import DeepSeekProvider
from mitrailleuse.providers.openai import OpenAIProvider


def test_registry_is_lazy_and_suggests():
    assert provider_class("openai") is OpenAIProvider
    assert provider_class("deepl") is DeepLProvider
    with pytest.raises(ConfigError, match="did you mean 'openai'"):
        provider_class("opnai")


def test_openai_static_dynamic_and_none():
    config = parse_config({"openai": {"system_instruction": {"system_prompt": "Be brief."}}}).openai
    assert OpenAIProvider.build_request({"input_text": "hi"}, config) == {
        "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "hi"}]
    }
    dynamic = parse_config(
        {
            "openai": {
                "prompt": "q.text",
                "system_instruction": {"is_dynamic": True, "system_prompt": "sys"},
            }
        }
    ).openai
    assert OpenAIProvider.build_request({"q": {"text": "hi"}, "sys": "S"}, dynamic)["messages"][
        0
    ] == {
        "role": "system",
        "content": "S",
    }
    plain = TaskConfig().openai
    assert OpenAIProvider.build_request({"input_text": 42}, plain) == {
        "messages": [{"role": "user", "content": "42"}]
    }


@pytest.mark.parametrize(
    ("item", "reason"),
    [
        ({"other": 1}, "missing prompt field"),
        ({"input_text": {"nested": 1}}, "prompt must be text"),
        ({"messages": "not a list"}, "'messages' must be a list"),
    ],
)
def test_openai_invalid_items(item, reason):
    with pytest.raises(InvalidItem, match=reason):
        OpenAIProvider.build_request(item, TaskConfig().openai)


def test_deepseek_never_sends_an_openai_model():
    config = parse_config({"deepseek": {"api_information": {"model": "gpt-4o"}}}).deepseek
    assert DeepSeekProvider(config, "k").model == "deepseek-chat"
    config.api_information.model = "deepseek-reasoner"
    assert DeepSeekProvider(config, "k").model == "deepseek-reasoner"


def test_deepl_languages_from_fields_or_literals():
    config = TaskConfig().deepl
    assert (
        DeepLProvider.build_request({"text": "a", "target_lang": "de"}, config)["target_lang"]
        == "DE"
    )
    literal = parse_config({"deepl": {"target_lang": "EN-US", "source_lang": "FR"}}).deepl
    assert DeepLProvider.build_request({"text": "a"}, literal) == {
        "text": "a",
        "target_lang": "EN-US",
        "source_lang": "FR",
    }
    with pytest.raises(InvalidItem, match="no 'target_lang' field"):
        DeepLProvider.build_request({"text": "a"}, config)
    with pytest.raises(InvalidItem, match="missing text field"):
        DeepLProvider.build_request({"target_lang": "DE"}, config)


def test_retry_after_parsing():
    assert retry_after_s({"retry-after-ms": "1500"}) == 1.5
    assert retry_after_s({"retry-after": "3"}) == 3.0
    assert retry_after_s({}) is None


@pytest.mark.parametrize(
    ("provider", "module"),
    [("anthropic", "anthropic"), ("gemini", "google.genai"), ("deepl", "deepl")],
)
def test_a_provider_whose_sdk_is_not_installed_names_its_extra(provider, module):
    """Without the extra, loading the provider is a one-line ConfigError, not a traceback."""
    code = (
        f"import sys; sys.modules[{module!r}] = None\n"
        "from mitrailleuse.providers import provider_class\n"
        f"try:\n    provider_class({provider!r})\n"
        "except Exception as error:\n    print(type(error).__name__, error)\n"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    extra = f"pip install 'mitrailleuse[{provider}]'"
    assert (
        done.stdout.strip()
        == f"ConfigError the {provider} provider needs its SDK ({module}): {extra}"
    )

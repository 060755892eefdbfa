"""What the response cache treats as the same request, and when it is on."""

from __future__ import annotations

from mitrailleuse.config import CacheSettings, TaskConfig
from mitrailleuse.pipeline.cache import cache_enabled, request_hash
from mitrailleuse.providers import provider_class

PAYLOAD = {"messages": [{"role": "user", "content": "What is the capital of France?"}]}


def openai(setting: dict, model: str = "gpt-4o-mini"):
    config = TaskConfig.model_validate(
        {"openai": {"api_information": {"model": model, "setting": setting}}}
    )
    return provider_class("openai")(config.openai, None)


def deepl(**options):
    config = TaskConfig.model_validate({"deepl": options})
    return provider_class("deepl")(config.deepl, None)


def test_every_setting_and_the_model_change_the_key():
    base = request_hash(openai({"temperature": 0}), PAYLOAD)
    assert base == request_hash(openai({"temperature": 0}), dict(PAYLOAD))
    assert base != request_hash(openai({"temperature": 0, "max_tokens": 5}), PAYLOAD)
    assert base != request_hash(openai({"temperature": 0}, model="gpt-4o"), PAYLOAD)
    other = {"messages": [{"role": "user", "content": "What is the capital of Peru?"}]}
    assert base != request_hash(openai({"temperature": 0}), other)


def test_deepl_options_change_the_key():
    text = {"text": "Hello", "target_lang": "DE", "source_lang": None}
    assert request_hash(deepl(), text) != request_hash(deepl(formality="more"), text)
    assert request_hash(deepl(), text) != request_hash(deepl(), {**text, "target_lang": "FR"})


def test_auto_caches_deterministic_calls_only():
    auto = CacheSettings()
    assert cache_enabled(auto, openai({"temperature": 0}))
    assert not cache_enabled(auto, openai({"temperature": 1.0}))
    assert not cache_enabled(auto, openai({}))
    assert cache_enabled(auto, deepl())
    assert cache_enabled(CacheSettings(enabled=True), openai({"temperature": 1.0}))
    assert not cache_enabled(CacheSettings(enabled=False), deepl())

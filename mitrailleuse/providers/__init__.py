"""The provider registry: short names mapped lazily to provider classes.

Like kombu's transport table, each name maps to a ``"module:Class"`` string imported on first
use; other packages add providers through the ``mitrailleuse.providers`` entry-point group, so a
new provider is one module and needs no change here.
"""

from __future__ import annotations

import difflib
from functools import cache
from importlib import import_module
from importlib.metadata import entry_points

from mitrailleuse.errors import ConfigError
from mitrailleuse.providers.base import (
    Answer,
    BatchFile,
    BatchResult,
    CallResult,
    ErrorKind,
    InvalidItem,
    NativeBatch,
    NativeBatchAPI,
    Provider,
    ProviderError,
    QuotaExceeded,
    RateLimitReport,
)

__all__ = [
    "BUILTIN_PROVIDERS",
    "Answer",
    "BatchFile",
    "BatchResult",
    "CallResult",
    "ErrorKind",
    "InvalidItem",
    "NativeBatch",
    "NativeBatchAPI",
    "Provider",
    "ProviderError",
    "QuotaExceeded",
    "RateLimitReport",
    "available_providers",
    "provider_class",
]

#: The providers shipped with Mitrailleuse.
BUILTIN_PROVIDERS: dict[str, str] = {
    "openai": "mitrailleuse.providers.openai:OpenAIProvider",
    "deepseek": "mitrailleuse.providers.deepseek:DeepSeekProvider",
    "deepl": "mitrailleuse.providers.deepl:DeepLProvider",
    "anthropic": "mitrailleuse.providers.anthropic:AnthropicProvider",
    "gemini": "mitrailleuse.providers.gemini:GeminiProvider",
}


def available_providers() -> dict[str, str]:
    """Built-in providers merged with those installed through entry points."""
    table = dict(BUILTIN_PROVIDERS)
    for entry in entry_points(group="mitrailleuse.providers"):
        table.setdefault(entry.name, entry.value)
    return table


@cache
def provider_class(name: str) -> type[Provider]:
    """The provider class registered under ``name``; an unknown name suggests the closest."""
    table = available_providers()
    if name not in table:
        close = difflib.get_close_matches(name, table, n=1)
        hint = f" (did you mean {close[0]!r}?)" if close else ""
        raise ConfigError(f"unknown provider {name!r}{hint}; known: {', '.join(sorted(table))}")
    module_name, _, class_name = table[name].partition(":")
    return getattr(import_module(module_name), class_name)

"""API keys: where they come from, and how they are kept out of everything written down.

``create`` calls :func:`scrub_config` so that a saved config never holds a literal key; the
worker calls :func:`resolve_api_key` at call time, from its own environment. Nothing here ever
formats a key into a message.
"""

from __future__ import annotations

import logging
import os
import re
from collections.abc import Iterable, Mapping

from mitrailleuse.config import ProviderName, Proxies, TaskConfig
from mitrailleuse.errors import ConfigError
from mitrailleuse.providers import available_providers, provider_class

log = logging.getLogger(__name__)

_REFERENCE = re.compile(r"^\$\{([A-Za-z_][A-Za-z0-9_]*)\}$")
_PLACEHOLDER = re.compile(r"^(|YOUR_[A-Z0-9_]*|<[^>]*>|\s+)$")


def is_placeholder(value: str) -> bool:
    """The seed's ``"YOUR_OPENAI_KEY"`` and ``""`` mean: take the key from the environment."""
    return bool(_PLACEHOLDER.match(value))


def is_reference(value: str) -> bool:
    """A ``"${VAR}"`` reference to an environment variable."""
    return bool(_REFERENCE.match(value))


def is_literal_key(value: str) -> bool:
    """A key written out in the config itself."""
    return not is_placeholder(value) and not is_reference(value)


def resolve_api_key(
    provider: ProviderName, configured: str, environ: Mapping[str, str] | None = None
) -> str | None:
    """The key to call ``provider`` with, or None when none is set."""
    environ = os.environ if environ is None else environ
    reference = _REFERENCE.match(configured)
    if reference:
        return environ.get(reference.group(1)) or None
    if is_literal_key(configured):
        return configured
    for variable in provider_class(provider).key_variables:
        if environ.get(variable):
            return environ[variable]
    return None


def resolve_proxies(
    proxies: Proxies, environ: Mapping[str, str] | None = None
) -> dict[str, str] | None:
    """The proxy URLs calls go through, ``${VAR}`` references read from the environment."""
    urls = proxies.urls()
    if urls is None:
        return None
    environ = os.environ if environ is None else environ
    resolved = {}
    for scheme, url in urls.items():
        reference = _REFERENCE.match(url)
        value = environ.get(reference.group(1)) if reference else url
        if value:
            resolved[scheme] = value
    return resolved or None


def scrub_config(config: TaskConfig) -> dict[str, str]:
    """Replace literal keys by ``${VAR}`` references in place; return the literals by variable.

    The caller may hand the literals to a worker it starts itself (through that process's
    environment), and must never write them anywhere.
    """
    literals: dict[str, str] = {}
    present = set(type(config).model_fields) | set(config.model_extra or {})
    for provider in available_providers().keys() & present:
        section = config.provider(provider)
        if is_literal_key(getattr(section, "api_key", "")):
            variables = provider_class(provider).key_variables
            literals[variables[0]] = section.api_key
            section.api_key = f"${{{variables[0]}}}"
            log.warning(
                "%s.api_key: a literal key was given; the saved config refers to ${%s} "
                "instead: set that variable where the workers run",
                provider,
                variables[0],
            )
    return literals


def redact(text: str, secret: str | None) -> str:
    """``text`` with every occurrence of ``secret`` masked, for error messages."""
    if not secret:
        return text
    return text.replace(secret, "***")


def key_variables_set(
    providers: Iterable[str], environ: Mapping[str, str] | None = None
) -> list[str]:
    """Which of these providers' key variables are set here: names only, never a value."""
    environ = os.environ if environ is None else environ
    known = available_providers()
    names: set[str] = set()
    for provider in (p for p in providers if p in known):
        try:
            names.update(provider_class(provider).key_variables)
        except ConfigError:  # its SDK is not installed here (an extra): it has no key to say
            continue
    return sorted(name for name in names if environ.get(name))


def missing_key(
    provider: ProviderName, configured: str, workers_keys: list[set[str]]
) -> str | None:
    """The key variable(s) no worker serving ``provider`` has, or None if one can call it.

    ``workers_keys`` are the key variables each live worker of the provider's queue has set;
    with no worker known nothing can be said. ``create`` replaced a literal key by a reference.
    """
    reference = _REFERENCE.match(configured)
    wanted = (reference.group(1),) if reference else provider_class(provider).key_variables
    if not workers_keys or any(set(wanted) & have for have in workers_keys):
        return None
    return " or ".join(wanted)

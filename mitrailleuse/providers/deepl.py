"""DeepL text translation, through the official ``deepl`` SDK.

Features:
    - online (``/v2/translate``): yes, up to 50 texts (and under 128 KiB) per call
    - native batch: no

Endpoint: ``base_url`` from the config, else ``DEEPL_SERVER_URL``, else the SDK's own rule
(keys ending in ``:fx`` go to the free endpoint). Key: ``DEEPL_AUTH_KEY`` or ``DEEPL_API_KEY``.
Options read: ``text`` and ``target_lang`` / ``source_lang`` (item fields, or literal language
codes when the item has no such field), ``formality``, ``glossary_id``, ``context``,
``preserve_formatting``, ``tag_handling``, ``timeout_s``, ``general.proxies``.

Items of one call share their target and source language; each text's translation goes back to
its own item. The SDK's own retries are off: the pipeline owns retries.
"""

from __future__ import annotations

import re
from collections.abc import Hashable, Mapping, Sequence
from typing import Any

from mitrailleuse.config import DeepLConfig, Environment
from mitrailleuse.credentials import redact
from mitrailleuse.inputs import get_field
from mitrailleuse.providers.base import (
    PERMANENT_STATUS,
    Answer,
    CallResult,
    ErrorKind,
    InvalidItem,
    Provider,
    ProviderError,
    QuotaExceeded,
    extra_needed,
)

try:  # an extra: loading this provider is what needs it
    import deepl
except ModuleNotFoundError as error:
    raise extra_needed(error, "deepl", "deepl") from error

# The pipeline retries with backoff and a fleet-wide view; the SDK's retries would stack on it.
deepl.http_client.max_network_retries = 0

#: DeepL's own limits on one request.
MAX_TEXTS_PER_CALL = 50
MAX_REQUEST_BYTES = 128 * 1024


#: What a language code looks like: ``DE``, ``EN-US``, ``ZH-HANS``.
_LANGUAGE_CODE = re.compile(r"^[A-Za-z]{2,3}(-[A-Za-z]{2,4})?$")


def _language(item: Mapping[str, Any], configured: str | None, what: str) -> str | None:
    """The item's field named ``configured``, or ``configured`` itself as a language code."""
    if not configured:
        return None
    value = item.get(configured, configured)
    if not isinstance(value, str) or not _LANGUAGE_CODE.match(value.strip()):
        if configured not in item:
            raise InvalidItem(f"no {configured!r} field, and {configured!r} is no language code")
        raise InvalidItem(f"{what} must be a language code, got {value!r}")
    return value.strip().upper()


class DeepLProvider(Provider):
    """DeepL's text translation API."""

    name = "deepl"
    config_model = DeepLConfig
    key_variables = ("DEEPL_AUTH_KEY", "DEEPL_API_KEY")
    max_items_per_call = MAX_TEXTS_PER_CALL
    # Room is kept for the JSON around the texts and the other parameters.
    max_bytes_per_call = MAX_REQUEST_BYTES - 4 * 1024

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        server_url = config.base_url or Environment().deepl_server_url
        self.translator = (
            deepl.Translator(
                api_key,
                server_url=server_url,
                send_platform_info=False,
                proxy=dict(proxies) if proxies else None,
            )
            if api_key
            else None
        )

    @classmethod
    def model_name(cls, config: Any) -> str:
        """DeepL has no model choice: records say ``deepl``."""
        return "deepl"

    @classmethod
    def build_request(cls, item: Mapping[str, Any], config: Any) -> dict[str, Any]:
        """``{"text", "target_lang", "source_lang"}`` from the item and the config."""
        try:
            text = get_field(item, config.text)
        except KeyError:
            raise InvalidItem(f"missing text field {config.text!r}") from None
        if not isinstance(text, str):
            raise InvalidItem(f"text must be a string, got {type(text).__name__}")
        target = _language(item, config.target_lang, "target_lang")
        if target is None:
            raise InvalidItem("no target language: set deepl.target_lang")
        return {
            "text": text,
            "target_lang": target,
            "source_lang": _language(item, config.source_lang, "source_lang"),
        }

    def cost_units(self, payloads: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """DeepL bills the characters of the source texts."""
        return sum(len(payload["text"]) for payload in payloads), 0

    def deterministic(self) -> bool:
        """A translation of the same text with the same options is the same."""
        return True

    def request_identity(self, payload: Mapping[str, Any]) -> Any:
        """The text, its languages, and every option that changes the translation."""
        options = ("formality", "glossary_id", "context", "preserve_formatting", "tag_handling")
        return {**payload, **{name: getattr(self.config, name) for name in options}}

    @classmethod
    def group_key(cls, payload: Mapping[str, Any]) -> Hashable:
        """One request takes one target and one source language."""
        return (payload["target_lang"], payload["source_lang"])

    @classmethod
    def payload_size(cls, payload: Mapping[str, Any]) -> int:
        """Bytes of the text in the JSON body (escaping may add a little: the cap keeps room)."""
        return len(payload["text"].encode()) + 8

    def send(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """Translate the texts of ``payloads`` in one request."""
        if self.translator is None:
            raise ProviderError(
                ErrorKind.FATAL,
                "missing_api_key",
                f"no API key for deepl: set {self.key_variables[0]} where the workers run",
            )
        first = payloads[0]
        try:
            results = self.translator.translate_text(
                [p["text"] for p in payloads],
                target_lang=first["target_lang"],
                source_lang=first["source_lang"],
                **self._options(),
            )
        except deepl.DeepLException as error:
            raise self.classify(error) from None
        except (ValueError, KeyError, TypeError) as error:
            raise ProviderError(
                ErrorKind.RETRY, "invalid_response", f"unreadable response: {error}"
            ) from None
        if len(results) != len(payloads):
            raise ProviderError(
                ErrorKind.RETRY,
                "invalid_response",
                f"{len(results)} translations for {len(payloads)} texts",
            )
        return CallResult(
            [_answer(result, payload) for result, payload in zip(results, payloads, strict=True)]
        )

    def _options(self) -> dict[str, Any]:
        """The configured translation options the SDK is given (those that are set)."""
        options = {
            "formality": self.config.formality,
            "glossary": self.config.glossary_id,
            "context": self.config.context,
            "preserve_formatting": self.config.preserve_formatting,
            "tag_handling": self.config.tag_handling,
        }
        return {name: value for name, value in options.items() if value is not None}

    def classify(self, error: deepl.DeepLException) -> ProviderError:
        """Sort an SDK error: 456 stops the run's DeepL items, 429/5xx/network retry."""
        message = redact(str(error), self.api_key)
        status = error.http_status_code
        if isinstance(error, deepl.QuotaExceededException) or status == 456:
            return QuotaExceeded(f"DeepL quota exceeded: {message}", status)
        if isinstance(error, deepl.TooManyRequestsException) or status == 429:
            return ProviderError(ErrorKind.RATE_LIMITED, "rate_limited", message, status)
        if isinstance(error, deepl.ConnectionException):
            return ProviderError(ErrorKind.RETRY, "connection_error", message)
        if status is not None and status in PERMANENT_STATUS:
            return ProviderError(ErrorKind.FATAL, f"http_{status}", message, status)
        return ProviderError(
            ErrorKind.RETRY, f"http_{status}" if status else "error", message, status
        )

    def close(self) -> None:
        """Close the SDK's session."""
        if self.translator is not None:
            self.translator.close()


def _answer(result: deepl.TextResult, payload: Mapping[str, Any]) -> Answer:
    """One text's translation; characters billed (the text's length when DeepL does not say)."""
    return Answer(
        output=result.text,
        response={
            "text": result.text,
            "detected_source_language": result.detected_source_lang,
            "billed_characters": result.billed_characters,
        },
        usage={"characters": result.billed_characters or len(payload["text"])},
    )

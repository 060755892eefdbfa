"""DeepSeek chat completions: OpenAI's wire format at another endpoint, with its own key.

Features:
    - online (``/chat/completions``): yes, one item per call
    - native batch: no (``is_batch_active`` runs the live path, and says so once)

Endpoint: ``base_url`` from the config, else ``DEEPSEEK_BASE_URL``, else
``https://api.deepseek.com``. Key: ``DEEPSEEK_API_KEY``. Options: as for OpenAI; the model
defaults to ``deepseek-chat`` (never an OpenAI model name).

Structured outputs: DeepSeek's JSON mode (``response_format: json_object``) takes no schema,
so the schema goes in a system message; every answer is validated (and re-asked) as for the
others.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from typing import Any

import orjson

from mitrailleuse.providers.openai import OpenAIProvider

log = logging.getLogger(__name__)

#: Model names that belong to OpenAI: the seed's template sends ``gpt-4o`` to DeepSeek.
_OPENAI_MODEL = re.compile(r"^(gpt-|chatgpt-|o\d)")
#: The model used when the configured one is an OpenAI model.
DEFAULT_MODEL = "deepseek-chat"
#: How the system message of a structured request introduces the schema (JSON mode also
#: needs the word "json" in the prompt).
SCHEMA_LEAD = "Answer with a JSON object, and nothing else, that matches this JSON Schema:\n"


class DeepSeekProvider(OpenAIProvider):
    """DeepSeek, a configured OpenAI-compatible variant."""

    name = "deepseek"
    key_variables = ("DEEPSEEK_API_KEY",)
    supports_native_batch = False
    base_url_variable = "DEEPSEEK_BASE_URL"
    default_base_url = "https://api.deepseek.com"

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        configured = config.api_information.model
        if self.model != configured:
            log.warning(
                "deepseek.api_information.model %r is an OpenAI model; using %r",
                configured,
                self.model,
            )

    @classmethod
    def model_name(cls, config: Any) -> str:
        """The configured model, unless it is an OpenAI model DeepSeek does not serve."""
        configured = config.api_information.model
        return DEFAULT_MODEL if _OPENAI_MODEL.match(configured) else configured

    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """OpenAI's body; a structured one in JSON mode, its schema in a system message."""
        body = super().request_body(payload)
        if self.structured is not None:
            schema = orjson.dumps(self.structured.schema).decode()
            instruction = {"role": "system", "content": SCHEMA_LEAD + schema}
            body["response_format"] = {"type": "json_object"}
            body["messages"] = [instruction, *body["messages"]]
        return body

    @classmethod
    def schema_refusal(cls, schema: dict[str, Any]) -> str | None:
        """None: the schema is read by the model, not enforced by the API."""
        return None

    @classmethod
    def sent_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema as given: no strict mode to shape it for."""
        return schema

"""What every chat provider shares: an item's messages, their token estimate, HTTP waits.

OpenAI, DeepSeek, Anthropic and Gemini read the same config block (``prompt``,
``system_instruction``, ``api_information``) and build the same payload from an item,
``{"messages": [...]}`` with the system instruction first; each provider's
:meth:`ChatProvider.request_body` turns it into its own API's body. The cache identity, the
token estimate and the cost budget are computed here, the same way for all of them.
"""

from __future__ import annotations

import email.utils
import importlib
import os
import time
from abc import abstractmethod
from collections.abc import Mapping, Sequence
from types import ModuleType
from typing import Any, ClassVar

import aiohttp
import orjson

from mitrailleuse.errors import ConfigError
from mitrailleuse.inputs import get_field
from mitrailleuse.providers.base import (
    Answer,
    CallResult,
    ErrorKind,
    InvalidItem,
    Provider,
    ProviderError,
    RateLimitReport,
)
from mitrailleuse.structured import Structured, refused_keyword

_JSON = {"Content-Type": "application/json"}


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """The wait a response asks for: ``retry-after-ms``, else ``retry-after`` (seconds or date)."""
    if value := headers.get("retry-after-ms"):
        try:
            return max(float(value) / 1000, 0.0)
        except ValueError:
            pass
    if value := headers.get("retry-after"):
        try:
            return max(float(value), 0.0)
        except ValueError:
            parsed = email.utils.parsedate_to_datetime(value)
            return max(parsed.timestamp() - time.time(), 0.0) if parsed else None
    return None


def connect_failure(error: BaseException) -> aiohttp.ClientConnectorError | None:
    """The connection that could not be made, when a "timeout" is one.

    The SDKs' aiohttp transports map every ``aiohttp.ClientConnectorError`` (a refused
    connection, an unknown host) to a connect *timeout*; the cause they chain says which.
    """
    cause = error.__cause__ or error.__context__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return cause
        cause = cause.__cause__ or cause.__context__
    return None


def http_module(client_class: type) -> ModuleType:
    """The HTTP library an SDK's default client is built on (``httpx``, or its ``httpx2`` fork)."""
    return importlib.import_module(client_class.__mro__[1].__module__.partition(".")[0])


def proxied_client(client_class: type, proxies: Mapping[str, str]) -> Any:
    """An SDK's own blocking HTTP client, sending each scheme through its proxy."""
    http = http_module(client_class)
    mounts = {f"{scheme}://": http.HTTPTransport(proxy=url) for scheme, url in proxies.items()}
    return client_class(mounts=mounts)


def _text(value: Any, what: str) -> str:
    if isinstance(value, str):
        return value
    if isinstance(value, int | float) and not isinstance(value, bool):
        return str(value)
    raise InvalidItem(f"{what} must be text, got {type(value).__name__}")


def _field(item: Mapping[str, Any], path: str, what: str) -> str:
    try:
        return _text(get_field(item, path), what)
    except KeyError:
        raise InvalidItem(f"missing {what} field {path!r}") from None


def split_system(messages: Sequence[Mapping[str, Any]]) -> tuple[str, list[Mapping[str, Any]]]:
    """The system messages' text (joined), and the other messages, for APIs that separate them."""
    system = [m for m in messages if m.get("role") == "system"]
    text = "\n\n".join(
        c if isinstance(c := m.get("content"), str) else orjson.dumps(c).decode() for m in system
    )
    return text, [m for m in messages if m.get("role") != "system"]


class ChatProvider(Provider):
    """A chat API: one item per call, its messages built from the prompt and system fields."""

    #: Environment variable for the endpoint, and the endpoint when it is unset.
    base_url_variable: ClassVar[str]
    default_base_url: ClassVar[str | None] = None
    #: The completion budget of a call whose settings give none.
    default_completion_tokens: ClassVar[int] = 256
    #: JSON Schema keywords the provider's structured outputs do not take.
    refused_schema_keywords: ClassVar[frozenset[str]] = frozenset()
    #: Settings the response schema is sent as: given with one, they are refused.
    schema_settings: ClassVar[frozenset[str]] = frozenset()

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        given = config.api_information.response_schema
        #: The schema every answer must follow, as this provider sends it (None: text answers).
        self.structured = (
            None
            if given is None
            else Structured(
                given.name, self.sent_schema(given.json_schema), config.structured.max_reasks
            )
        )

    @classmethod
    def check_section(cls, config: Any) -> None:
        """A response schema the provider's structured outputs cannot take is refused."""
        given = config.api_information.response_schema
        if given is None:
            return
        settings = config.api_information.setting.request_fields()
        clash = sorted(cls.schema_settings & settings.keys())
        if clash:
            raise ConfigError(
                f"{cls.name}.api_information: setting.{clash[0]} and response_schema cannot go "
                f"together (structured outputs set {clash[0]} themselves): remove one"
            )
        refusal = cls.schema_refusal(given.json_schema)
        if refusal:
            raise ConfigError(
                f"{cls.name}.api_information.response_schema: {refusal}, which {cls.name}'s "
                "structured outputs do not take"
            )

    @classmethod
    def schema_refusal(cls, schema: dict[str, Any]) -> str | None:
        """What in the schema the provider does not take (None: it takes it all)."""
        return refused_keyword(schema, cls.refused_schema_keywords)

    @classmethod
    def sent_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """The schema as the provider's request carries it."""
        return schema

    def extend_body(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """A request body with ``messages`` added to its conversation (a re-ask)."""
        return {**body, "messages": [*body["messages"], *messages]}

    @classmethod
    def base_url(cls, config: Any) -> str | None:
        """The endpoint: config, then environment, then the provider's default."""
        return config.base_url or os.environ.get(cls.base_url_variable) or cls.default_base_url

    @classmethod
    def build_request(cls, item: Mapping[str, Any], config: Any) -> dict[str, Any]:
        """``{"messages": [...]}`` from the item's prompt and the system instruction."""
        messages = item.get("messages")
        if messages is not None:
            if not isinstance(messages, list) or not all(isinstance(m, dict) for m in messages):
                raise InvalidItem("'messages' must be a list of message objects")
            return {"messages": messages}
        user = _field(item, config.prompt, "prompt")
        instruction = config.system_instruction
        if instruction.is_dynamic:
            system = _field(item, instruction.system_prompt, "system prompt")
        else:
            system = instruction.system_prompt
        head = [{"role": "system", "content": system}] if system else []
        return {"messages": [*head, {"role": "user", "content": user}]}

    @abstractmethod
    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The API's JSON body for a payload, as the live call and a batch line send it."""

    def completion_tokens(self) -> int:
        """The most tokens one answer may use, from the settings (the provider's own name first)."""
        setting = self.config.api_information.setting
        given = setting.max_completion_tokens or setting.max_tokens
        return int(given or self.default_completion_tokens)

    def estimate_tokens(self, payloads: Sequence[dict[str, Any]]) -> int:
        """Prompt characters / 4 (no tokenizer files here) plus the completion budget.

        Like the provider's own limiter, the completion counts as its maximum until the
        response's usage corrects it.
        """
        return sum(self.cost_units(payloads))

    def cost_units(self, payloads: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Prompt tokens (characters / 4, plus 4 per message) and the completion budget."""
        prompt = 0
        for payload in payloads:
            for message in payload["messages"]:
                content = message.get("content")
                text = content if isinstance(content, str) else orjson.dumps(content).decode()
                prompt += len(text) // 4 + 4
        return prompt, self.completion_tokens() * len(payloads)

    def deterministic(self) -> bool:
        """At temperature 0 the same request gets the same answer (as near as models allow)."""
        return self.config.api_information.setting.temperature == 0

    def request_identity(self, payload: Mapping[str, Any]) -> Any:
        """The whole body: model, every setting, the messages."""
        return self.request_body(payload)

    def require_key(self) -> None:
        """A call without a key fails at once, naming the variable to set."""
        if not self.api_key:
            raise ProviderError(
                ErrorKind.FATAL,
                "missing_api_key",
                f"no API key for {self.name}: set {self.key_variables[0]} where the workers run",
            )


class PostingChatProvider(ChatProvider):
    """A chat API called through its SDK's raw ``post``: OpenAI's and Anthropic's SDKs.

    ``post`` is the SDK's documented way to a raw endpoint: its key, base URL, headers and
    errors, without the typed ``create``'s walk through its parameters (the costliest part of
    a call, about 0.7 ms of CPU each) for a body that is already plain JSON, serialized here by
    orjson. The raw response keeps the rate-limit headers. The SDK's retries are off
    (``max_retries=0``): the pipeline owns retries and rate limits.
    """

    #: The SDK's blocking and async clients, their default HTTP clients, and its base error.
    client_class: ClassVar[type]
    async_client_class: ClassVar[type]
    http_client_class: ClassVar[type]
    aiohttp_client_class: ClassVar[type]
    sdk_error: ClassVar[type[Exception]]
    #: The request path of a call, under the client's base URL.
    path: ClassVar[str]

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        self.client = self.client_class(
            api_key=api_key or "missing",
            base_url=self.base_url(config),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=proxied_client(self.http_client_class, proxies) if proxies else None,
        )
        self._response = http_module(self.http_client_class).Response
        #: Made on the call loop at its first call (an aiohttp session belongs to its loop).
        self._async_client: Any = None
        self.async_calls = not proxies  # proxies are mounted on the blocking client only

    @staticmethod
    @abstractmethod
    def parse(content: bytes, status_code: int = 200) -> Answer:
        """Read the answer out of a response body; a malformed 200 is retryable."""

    @abstractmethod
    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitReport:
        """What the response's headers said of the rate limits."""

    @abstractmethod
    def classify(self, error: Any) -> ProviderError:
        """Sort an SDK error into retry, rate-limited, fatal or quota."""

    def send(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """One call per payload: ``payloads`` holds exactly one."""
        arguments = self._post_arguments(payloads, timeout_s)
        try:
            raw = self.client.post(self.path, **arguments)
        except self.sdk_error as error:
            raise self.classify(error) from None
        return CallResult([self.parse(raw.content, raw.status_code)], self.rate_limits(raw.headers))

    async def send_async(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """:meth:`send` through the SDK's async client on aiohttp, its cheapest transport."""
        arguments = self._post_arguments(payloads, timeout_s)
        if self._async_client is None:
            self._async_client = self.async_client_class(
                api_key=self.api_key,
                base_url=self.base_url(self.config),
                max_retries=0,
                timeout=self.config.timeout_s,
                http_client=self.aiohttp_client_class(),
            )
        try:
            raw = await self._async_client.post(self.path, **arguments)
        except self.sdk_error as error:
            raise self.classify(error) from None
        return CallResult([self.parse(raw.content, raw.status_code)], self.rate_limits(raw.headers))

    def _post_arguments(
        self, payloads: Sequence[dict[str, Any]], timeout_s: float
    ) -> dict[str, Any]:
        """What the client's ``post`` is given for the one payload of a call."""
        self.require_key()
        (payload,) = payloads
        return {
            "cast_to": self._response,
            "content": orjson.dumps(self.request_body(payload)),
            "options": {"timeout": timeout_s, "headers": _JSON},
        }

    def close(self) -> None:
        """Close the SDK's connection pool."""
        self.client.close()

    async def aclose(self) -> None:
        """Close the async client's aiohttp session."""
        if self._async_client is not None:
            await self._async_client.close()

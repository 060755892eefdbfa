"""OpenAI chat completions, through the official ``openai`` SDK.

Features:
    - online (``/v1/chat/completions``): yes, one item per call
    - native batch (``/v1/batches``, half price): yes

Endpoint: ``base_url`` from the config, else ``OPENAI_BASE_URL``, else the SDK's default.
Key: ``OPENAI_API_KEY`` (or a ``${VAR}`` reference in ``api_key``).
Options read: ``prompt``, ``system_instruction``, ``api_information.model`` and every key of
``api_information.setting`` (sent as they are), ``timeout_s``, ``general.proxies``.

The SDK's own retries are off (``max_retries=0``): the pipeline owns retries and rate limits.
Responses are read raw (headers kept for the rate limiter) and parsed with orjson.
"""

from __future__ import annotations

import email.utils
import importlib
import os
import time
from collections.abc import Mapping, Sequence
from typing import Any, BinaryIO, ClassVar

import aiohttp
import openai
import orjson

from mitrailleuse.config import ChatProviderConfig
from mitrailleuse.credentials import redact
from mitrailleuse.inputs import get_field
from mitrailleuse.providers.base import (
    PERMANENT_STATUS,
    Answer,
    BatchResult,
    CallResult,
    ErrorKind,
    InvalidItem,
    NativeBatch,
    NativeBatchAPI,
    Provider,
    ProviderError,
)


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


#: The HTTP library the SDK is built on: ``httpx``, or its ``httpx2`` fork from openai 3 on.
_http = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])
#: The request path of a chat completion, under the client's base URL.
CHAT_PATH = "/chat/completions"
_JSON = {"Content-Type": "application/json"}


def _proxied_client(proxies: Mapping[str, str]) -> Any:
    """The SDK's own HTTP client, sending each scheme through its proxy."""
    mounts = {f"{scheme}://": _http.HTTPTransport(proxy=url) for scheme, url in proxies.items()}
    return openai.DefaultHttpxClient(mounts=mounts)


def _refused(error: BaseException) -> aiohttp.ClientConnectorError | None:
    """The connection that could not be made, when a "timeout" is one.

    The SDK's aiohttp transport maps every ``aiohttp.ClientConnectorError`` (a refused
    connection, an unknown host) to a connect *timeout*; the cause it chains says which.
    """
    cause = error.__cause__
    while cause is not None:
        if isinstance(cause, aiohttp.ClientConnectorError):
            return cause
        cause = cause.__cause__
    return None


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


class OpenAIProvider(Provider):
    """OpenAI's chat completions API."""

    name = "openai"
    config_model = ChatProviderConfig
    key_variables = ("OPENAI_API_KEY",)
    supports_native_batch = True
    #: Environment variable for the endpoint, and the endpoint when it is unset.
    base_url_variable: ClassVar[str] = "OPENAI_BASE_URL"
    default_base_url: ClassVar[str | None] = None

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        self.settings = config.api_information.setting.request_fields()
        self.client = openai.OpenAI(
            api_key=api_key or "missing",
            base_url=self.base_url(config),
            max_retries=0,
            timeout=config.timeout_s,
            http_client=_proxied_client(proxies) if proxies else None,
        )
        #: Made on the call loop at its first call (an aiohttp session belongs to its loop).
        self._async_client: openai.AsyncOpenAI | None = None
        self.async_calls = not proxies  # proxies are mounted on the blocking client only

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

    def estimate_tokens(self, payloads: Sequence[dict[str, Any]]) -> int:
        """Prompt characters / 4 (no tokenizer files here) plus the completion budget.

        Like the provider's own limiter, the completion counts as ``max_tokens`` until the
        response's usage corrects it.
        """
        return sum(self.cost_units(payloads))

    def cost_units(self, payloads: Sequence[dict[str, Any]]) -> tuple[int, int]:
        """Prompt tokens (characters / 4, plus 4 per message) and ``max_tokens`` per call."""
        setting = self.config.api_information.setting
        completion = setting.max_completion_tokens or setting.max_tokens or 256
        prompt = 0
        for payload in payloads:
            for message in payload["messages"]:
                content = message.get("content")
                text = content if isinstance(content, str) else orjson.dumps(content).decode()
                prompt += len(text) // 4 + 4
        return prompt, int(completion) * len(payloads)

    def deterministic(self) -> bool:
        """At temperature 0 the same request gets the same answer (as near as models allow)."""
        return self.config.api_information.setting.temperature == 0

    def request_identity(self, payload: Mapping[str, Any]) -> Any:
        """The whole body: model, every setting, the messages."""
        return self.request_body(payload)

    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The full JSON body for a payload, as the live call and a batch line send it."""
        return {
            "model": self.model,
            **self.settings,
            "messages": payload["messages"],
        }

    def send(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """One chat completion per call: ``payloads`` holds exactly one payload."""
        arguments = self._post_arguments(payloads, timeout_s)
        try:
            raw = self.client.post(CHAT_PATH, **arguments)
        except openai.APIError as error:
            raise self.classify(error) from None
        return CallResult([self.parse(raw.content, raw.status_code)], raw.headers)

    async def send_async(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """:meth:`send` through ``AsyncOpenAI`` on aiohttp, the SDK's cheapest transport."""
        arguments = self._post_arguments(payloads, timeout_s)
        if self._async_client is None:
            self._async_client = openai.AsyncOpenAI(
                api_key=self.api_key,
                base_url=self.base_url(self.config),
                max_retries=0,
                timeout=self.config.timeout_s,
                http_client=openai.DefaultAioHttpClient(),
            )
        try:
            raw = await self._async_client.post(CHAT_PATH, **arguments)
        except openai.APIError as error:
            raise self.classify(error) from None
        return CallResult([self.parse(raw.content, raw.status_code)], raw.headers)

    def _post_arguments(
        self, payloads: Sequence[dict[str, Any]], timeout_s: float
    ) -> dict[str, Any]:
        """What the client's ``post`` is given for the one payload of a call.

        ``post`` is the SDK's documented way to a raw endpoint: its key, base URL, headers and
        errors, without ``chat.completions.create``'s walk through its typed parameters (the
        costliest part of a call, about 0.7 ms of CPU each) for a body that is already plain
        JSON, serialized here by orjson. The raw response keeps the rate-limit headers.
        """
        if not self.api_key:
            raise ProviderError(
                ErrorKind.FATAL,
                "missing_api_key",
                f"no API key for {self.name}: set {self.key_variables[0]} where the workers run",
            )
        (payload,) = payloads
        return {
            "cast_to": _http.Response,
            "content": orjson.dumps(self.request_body(payload)),
            "options": {"timeout": timeout_s, "headers": _JSON},
        }

    @staticmethod
    def parse(content: bytes, status_code: int = 200) -> Answer:
        """Read the answer out of a chat completion body; a malformed 200 is retryable."""
        try:
            body = orjson.loads(content)
            message = body["choices"][0]["message"]
            output = message.get("content")
            if output is None and not message.get("tool_calls"):
                raise ValueError("no content")
        except (orjson.JSONDecodeError, KeyError, IndexError, TypeError, ValueError):
            shown = content[:120].decode("utf-8", "replace")
            raise ProviderError(
                ErrorKind.RETRY,
                "invalid_response",
                f"unreadable {status_code} response body: {shown!r}",
                status_code,
            ) from None
        usage = body.get("usage") or {}
        counts = {k: v for k, v in usage.items() if isinstance(v, int)}
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if cached:
            counts["cached_tokens"] = cached  # billed at the cached-input price
        return Answer(output=output or "", response=body, usage=counts)

    def classify(self, error: openai.APIError) -> ProviderError:
        """Sort an SDK error into retry, rate-limited or fatal."""
        message = redact(str(getattr(error, "message", error)), self.api_key)
        refused = _refused(error)
        if refused is not None:
            return ProviderError(
                ErrorKind.RETRY, "connection_error", f"connection error: {refused}"
            )
        if isinstance(error, openai.APITimeoutError):
            return ProviderError(ErrorKind.RETRY, "timeout", "the request timed out")
        if isinstance(error, openai.APIConnectionError):
            return ProviderError(ErrorKind.RETRY, "connection_error", message)
        if isinstance(error, openai.APIStatusError):
            status = error.status_code
            headers = error.response.headers
            if status == 429:
                return ProviderError(
                    ErrorKind.RATE_LIMITED,
                    "rate_limited",
                    message,
                    status,
                    retry_after_s(headers),
                )
            kind = ErrorKind.FATAL if status in PERMANENT_STATUS else ErrorKind.RETRY
            return ProviderError(kind, f"http_{status}", message, status, retry_after_s(headers))
        return ProviderError(ErrorKind.RETRY, "invalid_response", message)

    def native_batches(self) -> OpenAIBatchAPI:
        """The Batch API, through the same client."""
        return OpenAIBatchAPI(self)

    def close(self) -> None:
        """Close the SDK's connection pool."""
        self.client.close()

    async def aclose(self) -> None:
        """Close the async client's aiohttp session."""
        if self._async_client is not None:
            await self._async_client.close()


class OpenAIBatchAPI(NativeBatchAPI):
    """OpenAI's Batch API (``/v1/files``, ``/v1/batches``): chat completions at half price."""

    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024
    #: The endpoint every request line targets.
    endpoint = "/v1/chat/completions"
    #: How many of the account's batches are searched for one created before a crash.
    lookup_limit = 1000

    def __init__(self, provider: OpenAIProvider) -> None:
        self.provider = provider
        self.client = provider.client

    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """``{"custom_id", "method", "url", "body"}``: the body a live call would send."""
        body = self.provider.request_body(payload)
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return orjson.dumps(line) + b"\n"

    def upload(self, name: str, handle: BinaryIO) -> str:
        """Upload with ``purpose="batch"``."""
        return self.client.files.create(file=(name, handle), purpose="batch").id

    def create(self, file_id: str, completion_window: str, metadata: dict[str, str]) -> NativeBatch:
        """Create the batch, its metadata naming the run and batch number."""
        return _native(
            self.client.batches.create(
                input_file_id=file_id,
                endpoint=self.endpoint,  # type: ignore[arg-type]
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=metadata,
            )
        )

    def created_for(self, file_id: str) -> NativeBatch | None:
        """Search the account's latest batches for one made from ``file_id``."""
        for seen, batch in enumerate(self.client.batches.list(limit=100)):
            if batch.input_file_id == file_id:
                return _native(batch)
            if seen >= self.lookup_limit:
                break
        return None

    def retrieve(self, batch_id: str) -> NativeBatch:
        """The batch's status, counts and result files."""
        return _native(self.client.batches.retrieve(batch_id))

    def download(self, file_id: str) -> bytes:
        """A results file's bytes."""
        return self.client.files.content(file_id).content

    def result(self, entry: dict[str, Any]) -> BatchResult:
        """An output line's chat completion, or the error an output or error line holds."""
        response = entry.get("response") or {}
        status = response.get("status_code")
        body = response.get("body") or {}
        custom_id = entry.get("custom_id")
        if status == 200 and not entry.get("error"):
            try:
                return BatchResult(custom_id, self.provider.parse(orjson.dumps(body)))
            except ProviderError as error:
                return BatchResult(custom_id, error)
        detail = (body.get("error") or {}) if isinstance(body, dict) else {}
        message = detail.get("message") or (entry.get("error") or {}).get("message")
        kind = f"http_{status}" if status else "batch_error"
        error = ProviderError(ErrorKind.FATAL, kind, message or f"status {status}", status)
        return BatchResult(custom_id, error)

    def cancel(self, batch_id: str) -> None:
        """Ask OpenAI to cancel the batch."""
        self.client.batches.cancel(batch_id)


def _native(batch: Any) -> NativeBatch:
    counts = batch.request_counts
    return NativeBatch(
        batch_id=batch.id,
        raw_status=batch.status,
        request_counts=counts.model_dump() if counts is not None else {},
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
    )

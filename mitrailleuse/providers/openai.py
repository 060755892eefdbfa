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

import re
from collections.abc import Mapping
from typing import Any

import openai
import orjson

from mitrailleuse.config import ChatProviderConfig
from mitrailleuse.credentials import redact
from mitrailleuse.providers.base import (
    CLOCK_SKEW_S,
    PERMANENT_STATUS,
    Answer,
    BatchFile,
    BatchResult,
    BatchStatus,
    Budget,
    ErrorKind,
    NativeBatch,
    NativeBatchAPI,
    ProviderError,
    RateLimitReport,
    header_int,
)
from mitrailleuse.providers.chat import (
    PostingChatProvider,
    connect_failure,
    retry_after_s,
)
from mitrailleuse.structured import strict_schema, subschemas

_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ms|h|m|s)")


def parse_duration_s(value: str | None) -> float | None:
    """OpenAI's reset durations: ``"1s"``, ``"6m0s"``, ``"120ms"``, ``"1h2m3.5s"``, or seconds."""
    if not value:
        return None
    try:
        return float(value)
    except ValueError:
        pass
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001}
    parts = _DURATION.findall(value)
    return sum(float(number) * units[unit] for number, unit in parts) if parts else None


def rate_limits(headers: Mapping[str, str]) -> RateLimitReport:
    """``x-ratelimit-{limit,remaining,reset}-{requests,tokens}`` (DeepSeek's too, when sent)."""

    def budget(name: str) -> Budget:
        return Budget(
            header_int(headers.get(f"x-ratelimit-limit-{name}")),
            header_int(headers.get(f"x-ratelimit-remaining-{name}")),
            parse_duration_s(headers.get(f"x-ratelimit-reset-{name}")),
        )

    return RateLimitReport(budget("requests"), budget("tokens"))


#: The request path of a chat completion, under the client's base URL.
CHAT_PATH = "/chat/completions"


class OpenAIProvider(PostingChatProvider):
    """OpenAI's chat completions API."""

    name = "openai"
    config_model = ChatProviderConfig
    key_variables = ("OPENAI_API_KEY",)
    supports_native_batch = True
    base_url_variable = "OPENAI_BASE_URL"
    client_class = openai.OpenAI
    async_client_class = openai.AsyncOpenAI
    http_client_class = openai.DefaultHttpxClient
    aiohttp_client_class = openai.DefaultAioHttpClient
    sdk_error = openai.APIError
    path = CHAT_PATH
    schema_settings = frozenset({"response_format"})  # fmt: skip
    refused_schema_keywords = frozenset(
        {
            "allOf", "oneOf", "not", "if", "then", "else", "dependentRequired",
            "dependentSchemas", "patternProperties", "unevaluatedProperties", "propertyNames",
            "minProperties", "maxProperties", "unevaluatedItems", "contains", "uniqueItems",
        }
    )  # fmt: skip

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        self.settings = config.api_information.setting.request_fields()

    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """The full JSON body for a payload, as the live call and a batch line send it."""
        body = {"model": self.model, **self.settings, "messages": payload["messages"]}
        if self.structured is not None:
            schema = {"name": self.structured.name, "schema": self.structured.schema}
            body["response_format"] = {
                "type": "json_schema",
                "json_schema": {**schema, "strict": True},
            }
        return body

    @classmethod
    def schema_refusal(cls, schema: dict[str, Any]) -> str | None:
        """Strict mode's limits: no open objects, and only the keywords it lists."""
        for path, node in subschemas(schema):
            if node.get("additionalProperties", False) is not False:
                return f"an open object ('additionalProperties') at {path}"
        return super().schema_refusal(schema)

    @classmethod
    def sent_schema(cls, schema: dict[str, Any]) -> dict[str, Any]:
        """Strict mode's shape: every object closed, every property required (or nullable)."""
        return strict_schema(schema)

    @staticmethod
    def parse(content: bytes, status_code: int = 200) -> Answer:
        """Read the answer out of a chat completion body; a malformed 200 is retryable."""
        try:
            body = orjson.loads(content)
            choice = body["choices"][0]
            message = choice["message"]
            refusal = message.get("refusal")
            output = message.get("content")
            if output is None and refusal is None and not message.get("tool_calls"):
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
        truncated = choice.get("finish_reason") == "length"
        return Answer(output or "", body, counts, truncated=truncated, refusal=refusal)

    def classify(self, error: openai.APIError) -> ProviderError:
        """Sort an SDK error into retry, rate-limited or fatal."""
        message = redact(str(getattr(error, "message", error)), self.api_key)
        cause = connect_failure(error)
        if cause is not None:
            return ProviderError(ErrorKind.RETRY, "connection_error", f"connection error: {cause}")
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

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitReport:
        """OpenAI's ``x-ratelimit-*`` headers."""
        return rate_limits(headers)

    def native_batches(self) -> OpenAIBatchAPI:
        """The Batch API, through the same client."""
        return OpenAIBatchAPI(self)


class OpenAIBatchAPI(NativeBatchAPI):
    """OpenAI's Batch API (``/v1/files``, ``/v1/batches``): chat completions at half price."""

    sdk_errors = (openai.APIError,)
    max_requests = 50_000
    body_key = "body"
    max_bytes = 200 * 1024 * 1024
    #: The endpoint every request line targets.
    endpoint = "/v1/chat/completions"

    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """``{"custom_id", "method", "url", "body"}``: the body a live call would send."""
        body = self.provider.request_body(payload)
        line = {"custom_id": custom_id, "method": "POST", "url": self.endpoint, "body": body}
        return orjson.dumps(line) + b"\n"

    def upload(self, batch: BatchFile) -> str:
        """Upload with ``purpose="batch"``."""
        with batch.path.open("rb") as handle:
            return self.client.files.create(file=(batch.path.name, handle), purpose="batch").id

    def create(self, batch: BatchFile, completion_window: str) -> NativeBatch:
        """Create the batch, its metadata naming the run and batch number."""
        return _native(
            self.client.batches.create(
                input_file_id=batch.file_id or "",
                endpoint=self.endpoint,  # type: ignore[arg-type]
                completion_window=completion_window,  # type: ignore[arg-type]
                metadata=batch.metadata,
            )
        )

    def created_for(self, batch: BatchFile, since: float) -> list[NativeBatch]:
        """The account's latest batch made from the uploaded file, if any."""
        for seen, found in enumerate(self.client.batches.list(limit=100)):
            if found.input_file_id == batch.file_id:
                return [_native(found)]
            if seen >= self.lookup_limit or found.created_at < since - CLOCK_SKEW_S:
                break
        return []

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


#: OpenAI's batch statuses in the words every provider's maps to.
_STATUSES: dict[str, BatchStatus] = {
    "validating": "in_progress",
    "in_progress": "in_progress",
    "finalizing": "in_progress",
    "cancelling": "canceling",
    "completed": "completed",
    "failed": "failed",
    "expired": "expired",
    "cancelled": "cancelled",
}


def _native(batch: Any) -> NativeBatch:
    counts = batch.request_counts
    return NativeBatch(
        batch_id=batch.id,
        status=_STATUSES.get(batch.status, "in_progress"),
        raw_status=batch.status,
        request_counts=counts.model_dump() if counts is not None else {},
        output_file_id=batch.output_file_id,
        error_file_id=batch.error_file_id,
    )

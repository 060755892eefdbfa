"""Anthropic's Messages API, through the official ``anthropic`` SDK.

Features:
    - online (``/v1/messages``): yes, one item per call
    - native batch (Message Batches, ``/v1/messages/batches``, half price): yes

Endpoint: ``base_url`` from the config, else ``ANTHROPIC_BASE_URL``, else the SDK's default.
Key: ``ANTHROPIC_API_KEY``. Options read: ``prompt``, ``system_instruction`` (sent as
``system``), ``api_information.model`` and every key of ``api_information.setting`` (OpenAI's
``stop`` and ``max_completion_tokens`` under Anthropic's names; ``max_tokens`` is required
and defaults to 1024), ``timeout_s``, ``general.proxies``.

The SDK's own retries are off (``max_retries=0``). Its ``anthropic-ratelimit-*`` headers feed
the limiter; a 429 with ``retry-after`` pauses the fleet, 529 (overloaded) and 5xx retry, and
a 429 without ``retry-after`` that says a spend limit is reached (or a 400 saying the credit
is too low) halts the run's Anthropic items: asking again cannot help until someone pays.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urljoin

import orjson

from mitrailleuse.config import AnthropicConfig
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
    QuotaExceeded,
    RateLimitReport,
    extra_needed,
    header_int,
)
from mitrailleuse.providers.chat import (
    PostingChatProvider,
    connect_failure,
    http_module,
    retry_after_s,
    split_system,
)

try:  # an extra: loading this provider is what needs it
    import anthropic
except ModuleNotFoundError as error:
    raise extra_needed(error, "anthropic", "anthropic", "httpx2") from error

_http = http_module(anthropic.DefaultHttpxClient)
#: The request path of a message, under the client's base URL.
MESSAGES_PATH = "/v1/messages"
#: OpenAI's names of settings Anthropic calls otherwise.
_RENAMED = {"stop": "stop_sequences", "max_completion_tokens": "max_tokens"}
#: Words of a refusal that only money ends: a spend limit reached, a credit balance too low.
_SPEND_WORDS = ("usage limit", "spend limit", "credit balance")


def _seconds_until(stamp: str | None) -> float | None:
    """Seconds from now to an RFC 3339 reset time (``2026-12-04T20:00:01Z``)."""
    if not stamp:
        return None
    try:
        moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    except ValueError:
        return None
    return max(moment.timestamp() - datetime.now(moment.tzinfo).timestamp(), 0.0)


def rate_limits(headers: Mapping[str, str]) -> RateLimitReport:
    """``anthropic-ratelimit-{requests,tokens}-{limit,remaining,reset}``.

    Input tokens stand for tokens when the combined budget is not sent.
    """

    def budget(*names: str) -> Budget:
        for name in names:
            prefix = f"anthropic-ratelimit-{name}-"
            limit = header_int(headers.get(prefix + "limit"))
            remaining = header_int(headers.get(prefix + "remaining"))
            if limit is not None or remaining is not None:
                return Budget(limit, remaining, _seconds_until(headers.get(prefix + "reset")))
        return Budget()

    return RateLimitReport(budget("requests"), budget("tokens", "input-tokens"))


#: What the forced tool of a structured request says it is for.
TOOL_DESCRIPTION = "Give the answer as this tool's input, which must match its schema."


class AnthropicProvider(PostingChatProvider):
    """Anthropic's Messages API."""

    name = "anthropic"
    config_model = AnthropicConfig
    key_variables = ("ANTHROPIC_API_KEY",)
    supports_native_batch = True
    base_url_variable = "ANTHROPIC_BASE_URL"
    #: ``max_tokens`` is required by the API: sent as this when the settings give none.
    default_completion_tokens = 1024
    client_class = anthropic.Anthropic
    async_client_class = anthropic.AsyncAnthropic
    http_client_class = anthropic.DefaultHttpxClient
    aiohttp_client_class = anthropic.DefaultAioHttpClient
    sdk_error = anthropic.APIError
    path = MESSAGES_PATH
    #: A forced tool and extended thinking do not go together.
    schema_settings = frozenset({"tools", "tool_choice", "thinking"})  # fmt: skip

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        settings = config.api_information.setting.request_fields()
        if isinstance(settings.get("stop"), str):
            settings["stop"] = [settings["stop"]]  # stop_sequences is a list
        self.settings = {_RENAMED.get(key, key): value for key, value in settings.items()}
        self.settings.setdefault("max_tokens", self.completion_tokens())

    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """``model``, the settings, ``system`` (when there is one) and the other messages."""
        system, messages = split_system(payload["messages"])
        body = {"model": self.model, **self.settings, "messages": messages}
        if system:
            body["system"] = system
        if self.structured is not None:
            name = self.structured.name
            tool = {
                "name": name,
                "description": TOOL_DESCRIPTION,
                "input_schema": self.structured.schema,
            }
            body["tools"] = [tool]
            body["tool_choice"] = {"type": "tool", "name": name}
        return body

    @staticmethod
    def parse(content: bytes, status_code: int = 200) -> Answer:
        """The text blocks of a message (or its forced tool's input), and its usage.

        A structured answer is the input of the tool the request forced, as JSON text.
        """
        try:
            body = orjson.loads(content)
            blocks = body["content"]
            tools = [b["input"] for b in blocks if b.get("type") == "tool_use"]
            if tools:
                output = orjson.dumps(tools[0]).decode()
            else:
                output = "".join(b["text"] for b in blocks if b.get("type") == "text")
            usage = body["usage"]
        except (orjson.JSONDecodeError, KeyError, TypeError):
            shown = content[:120].decode("utf-8", "replace")
            raise ProviderError(
                ErrorKind.RETRY,
                "invalid_response",
                f"unreadable {status_code} response body: {shown!r}",
                status_code,
            ) from None
        stop = body.get("stop_reason")
        refusal = output if stop == "refusal" else None
        return Answer(output, body, _usage(usage), truncated=stop == "max_tokens", refusal=refusal)

    def classify(self, error: anthropic.APIError) -> ProviderError:
        """Sort an SDK error: spend limits halt, 429 pauses, 529 and 5xx retry."""
        message = redact(str(getattr(error, "message", error)), self.api_key)
        cause = connect_failure(error)
        if cause is not None:
            return ProviderError(ErrorKind.RETRY, "connection_error", f"connection error: {cause}")
        if isinstance(error, anthropic.APITimeoutError):
            return ProviderError(ErrorKind.RETRY, "timeout", "the request timed out")
        if isinstance(error, anthropic.APIConnectionError):
            return ProviderError(ErrorKind.RETRY, "connection_error", message)
        if not isinstance(error, anthropic.APIStatusError):
            return ProviderError(ErrorKind.RETRY, "invalid_response", message)
        status = error.status_code
        wait = retry_after_s(error.response.headers)
        spent = any(words in message.lower() for words in _SPEND_WORDS)
        if spent and (status == 400 or (status == 429 and wait is None)):
            return QuotaExceeded(f"Anthropic spend limit reached: {message}", status)
        if status == 429:
            return ProviderError(ErrorKind.RATE_LIMITED, "rate_limited", message, status, wait)
        if status == 529:
            return ProviderError(ErrorKind.RETRY, "overloaded", message, status, wait)
        kind = ErrorKind.FATAL if status in PERMANENT_STATUS else ErrorKind.RETRY
        return ProviderError(kind, f"http_{status}", message, status, wait)

    def rate_limits(self, headers: Mapping[str, str]) -> RateLimitReport:
        """Anthropic's ``anthropic-ratelimit-*`` headers."""
        return rate_limits(headers)

    def native_batches(self) -> AnthropicBatchAPI:
        """Message Batches, through the same client."""
        return AnthropicBatchAPI(self)


def _usage(usage: Mapping[str, Any]) -> dict[str, int]:
    """Anthropic's usage in the shared names: cache reads count as (cheaper) prompt tokens."""
    cached = usage.get("cache_read_input_tokens") or 0
    written = usage.get("cache_creation_input_tokens") or 0
    prompt = (usage.get("input_tokens") or 0) + cached + written
    completion = usage.get("output_tokens") or 0
    counts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": prompt + completion,
    }
    if cached:
        counts["cached_tokens"] = cached
    return counts


class AnthropicBatchAPI(NativeBatchAPI):
    """Message Batches: requests sent inline, results read from the batch's ``results_url``.

    A batch carries no label, so the lookup after a crash matches a batch made since the
    ``creating`` step with as many requests; its results are joined on ``custom_id``, which
    must match ``^[a-zA-Z0-9_-]{1,64}$``: an item's is ``<run id>-<ordinal>``. A batch taken
    for ours that was not (another of the same size, made in the same minutes) answers none of
    our ids: its items are sent once more, never given another's answers.
    """

    sdk_errors = (anthropic.APIError,)
    max_requests = 100_000
    body_key = "params"
    max_bytes = 256 * 1024 * 1024

    def custom_id(self, run_id: str, item_id: str, ordinal: int) -> str:
        """``<run id>-<ordinal>``: item ids (``file.jsonl:17``) are not allowed here.

        A batch of another run taken for ours after a crash then answers none of our lines.
        """
        return f"{run_id[:40]}-{ordinal}"

    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """``{"custom_id", "params"}``: the body a live call would send."""
        line = {"custom_id": custom_id, "params": self.provider.request_body(payload)}
        return orjson.dumps(line) + b"\n"

    def upload(self, batch: BatchFile) -> None:
        """Nothing to upload: the requests go inline in :meth:`create`."""
        return None

    def create(self, batch: BatchFile, completion_window: str) -> NativeBatch:
        """Create the batch from the file's lines (Anthropic's window is 24 h, always)."""
        with batch.path.open("rb") as handle:
            requests = [orjson.loads(line) for line in handle]
        raw = self.client.post(
            "/v1/messages/batches", cast_to=_http.Response, body={"requests": requests}
        )
        return _native(orjson.loads(raw.content))

    def created_for(self, batch: BatchFile, since: float) -> list[NativeBatch]:
        """Batches made since ``since`` with as many requests, newest first."""
        found = []
        for seen, made in enumerate(self.client.messages.batches.list(limit=100)):
            if made.created_at.timestamp() < since - CLOCK_SKEW_S or seen >= self.lookup_limit:
                break
            native = _native(made.model_dump(mode="json"))
            if native.request_counts["total"] == batch.requests:
                found.append(native)
        return found

    def retrieve(self, batch_id: str) -> NativeBatch:
        """The batch's status and counts; once ended, its results are read by its id."""
        return _native(self.client.messages.batches.retrieve(batch_id).model_dump(mode="json"))

    def download(self, file_id: str) -> bytes:
        """The ended batch's result lines, from its ``results_url``.

        The API gives an absolute URL; a relative one (``/v1/...``, as some gateways and mocks
        give) is resolved against the endpoint's origin, as a browser would, not appended to
        its path as the SDK's ``results()`` does.
        """
        batch = self.client.messages.batches.retrieve(file_id)
        raw = self.client.get(
            urljoin(str(self.client.base_url), batch.results_url or ""),
            cast_to=_http.Response,
            options={"headers": {"Accept": "application/binary"}},
        )
        return raw.content

    def result(self, entry: dict[str, Any]) -> BatchResult:
        """A ``succeeded`` line's message, an ``errored`` line's error.

        ``canceled`` and ``expired`` lines were never processed: no outcome, so they are sent
        once more.
        """
        custom_id = entry.get("custom_id")
        result = entry.get("result") or {}
        kind = result.get("type")
        if kind == "succeeded":
            try:
                return BatchResult(custom_id, self.provider.parse(orjson.dumps(result["message"])))
            except ProviderError as error:
                return BatchResult(custom_id, error)
        if kind == "errored":
            detail = (result.get("error") or {}).get("error") or {}
            message = detail.get("message") or "the request failed"
            error = ProviderError(ErrorKind.FATAL, detail.get("type") or "batch_error", message)
            return BatchResult(custom_id, error)
        return BatchResult(custom_id, None)

    def cancel(self, batch_id: str) -> None:
        """Ask Anthropic to cancel the batch (it ends with the rest ``canceled``)."""
        self.client.messages.batches.cancel(batch_id)


def _native(batch: Mapping[str, Any]) -> NativeBatch:
    """A Message Batch (JSON) in the shared words.

    An ended batch is ``completed``, unless it was cancelled, or every request in it expired.
    """
    counts = batch.get("request_counts") or {}
    total = sum(value for value in counts.values() if isinstance(value, int))
    failed = sum(counts.get(name, 0) for name in ("errored", "canceled", "expired"))
    raw = batch.get("processing_status") or "in_progress"
    status: BatchStatus = "in_progress"
    if raw == "canceling":
        status = "canceling"
    elif raw == "ended":
        status = "completed"
        if batch.get("cancel_initiated_at"):
            status = "cancelled"
        elif total and counts.get("expired", 0) == total:
            status = "expired"
    ended = raw == "ended"
    return NativeBatch(
        batch_id=batch["id"],
        status=status,
        raw_status=raw,
        request_counts={
            "total": total,
            "completed": counts.get("succeeded", 0),
            "failed": failed,
        },
        output_file_id=batch["id"] if ended else None,
    )

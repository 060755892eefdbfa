"""Gemini's ``generateContent``, through the official ``google-genai`` SDK.

Features:
    - online (``models/{model}:generateContent``): yes, one item per call
    - native batch (Batch Mode, ``models/{model}:batchGenerateContent``, half price): yes;
      requests inline up to 8 MB of request lines, else uploaded as a JSONL file of
      ``{"key", "request"}``

Endpoint: ``base_url`` from the config, else ``GEMINI_BASE_URL``, else the SDK's default.
Key: ``GEMINI_API_KEY`` or ``GOOGLE_API_KEY``. Options read: ``prompt``, ``system_instruction``
(sent as ``systemInstruction``), ``api_information.model``, and ``api_information.setting``
as Gemini's ``generationConfig``: OpenAI's names (``max_tokens``, ``top_p``, ``stop``, ``n``,
...) are translated, Gemini's own (``top_k``, ``thinking_config``, ...) pass as given.

The SDK's retries are off (one attempt). A 429 ``RESOURCE_EXHAUSTED`` carries the wait in its
``google.rpc.RetryInfo``: the fleet pauses that long; one whose quota is per day halts the
run's Gemini items (no wait short of tomorrow helps). Gemini sends no rate-limit headers.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from typing import Any

import aiohttp
import orjson
from pydantic import ValidationError

from mitrailleuse.config import GeminiConfig
from mitrailleuse.credentials import redact
from mitrailleuse.providers.base import (
    CLOCK_SKEW_S,
    PERMANENT_STATUS,
    Answer,
    BatchFile,
    BatchResult,
    BatchStatus,
    CallResult,
    ErrorKind,
    NativeBatch,
    NativeBatchAPI,
    ProviderError,
    QuotaExceeded,
    extra_needed,
)
from mitrailleuse.providers.chat import ChatProvider, split_system

try:  # an extra: loading this provider is what needs it
    import httpx2
    from google import genai
    from google.genai import errors, types
except ModuleNotFoundError as error:
    raise extra_needed(error, "gemini", "google", "google.genai", "httpx2") from error

#: What a call may raise that :meth:`GeminiProvider.classify` sorts.
_CALL_ERRORS = (errors.APIError, httpx2.HTTPError, TimeoutError, ValidationError)

#: OpenAI's names of settings, in Gemini's ``generationConfig``.
_RENAMED = {
    "max_tokens": "maxOutputTokens",
    "max_completion_tokens": "maxOutputTokens",
    "top_p": "topP",
    "stop": "stopSequences",
    "n": "candidateCount",
    "presence_penalty": "presencePenalty",
    "frequency_penalty": "frequencyPenalty",
    "top_logprobs": "logprobs",
    "logprobs": "responseLogprobs",
}
#: A request file up to this size goes inline (the API takes 20 MB so; the SDK's JSON escapes
#: non-ASCII text, which can double it); a larger one is uploaded as a file.
INLINE_BYTES = 8 * 1000 * 1000


def _camel(name: str) -> str:
    head, *rest = name.split("_")
    return head + "".join(part.title() for part in rest)


def generation_config(settings: Mapping[str, Any]) -> dict[str, Any]:
    """``api_information.setting`` as a ``generationConfig`` (camelCase, as the API takes it)."""
    config: dict[str, Any] = {}
    for name, value in settings.items():
        if name == "stop" and isinstance(value, str):
            value = [value]
        config[_RENAMED.get(name) or _camel(name)] = value
    return config


def sdk_config(request: Mapping[str, Any]) -> dict[str, Any]:
    """A request's ``generationConfig`` and ``systemInstruction``, as one SDK config."""
    config = dict(request.get("generationConfig") or {})
    if "systemInstruction" in request:
        config["systemInstruction"] = request["systemInstruction"]
    return config


def _contents(messages: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Chat messages as Gemini ``contents``: the assistant speaks as ``model``."""
    contents = []
    for message in messages:
        content = message.get("content")
        text = content if isinstance(content, str) else orjson.dumps(content).decode()
        role = "model" if message.get("role") == "assistant" else "user"
        contents.append({"role": role, "parts": [{"text": text}]})
    return contents


def _retry_delay_s(details: Any) -> float | None:
    """The ``retryDelay`` (``"13s"``, ``"0.5s"``) of a ``google.rpc.RetryInfo`` detail."""
    for detail in _details(details):
        if str(detail.get("@type", "")).endswith("google.rpc.RetryInfo"):
            try:
                return float(str(detail.get("retryDelay", "")).removesuffix("s"))
            except ValueError:
                return None
    return None


def _per_day(details: Any) -> bool:
    """Whether a ``QuotaFailure`` names a per-day quota (``...PerDay...``)."""
    for detail in _details(details):
        for violation in detail.get("violations") or []:
            if "PerDay" in str(violation.get("quotaId", "")):
                return True
    return False


def _details(details: Any) -> list[dict[str, Any]]:
    error = details.get("error") if isinstance(details, dict) else None
    found = error.get("details") if isinstance(error, dict) else None
    return [d for d in found if isinstance(d, dict)] if isinstance(found, list) else []


#: Finish reasons that mean the model would not answer.
REFUSALS = frozenset(
    {
        types.FinishReason.SAFETY,
        types.FinishReason.RECITATION,
        types.FinishReason.BLOCKLIST,
        types.FinishReason.PROHIBITED_CONTENT,
        types.FinishReason.SPII,
    }
)


class GeminiProvider(ChatProvider):
    """Gemini's ``generateContent``."""

    name = "gemini"
    config_model = GeminiConfig
    key_variables = ("GEMINI_API_KEY", "GOOGLE_API_KEY")
    supports_native_batch = True
    base_url_variable = "GEMINI_BASE_URL"
    schema_settings = frozenset({
            "response_mime_type", "responseMimeType", "response_schema", "responseSchema",
            "response_json_schema", "responseJsonSchema",
        })  # fmt: skip
    #: ``responseJsonSchema`` takes a subset of JSON Schema; these are not in it.
    refused_schema_keywords = frozenset(
        {
            "allOf", "not", "if", "then", "else", "dependentRequired", "dependentSchemas",
            "patternProperties", "unevaluatedProperties", "propertyNames",
        }
    )  # fmt: skip

    def __init__(
        self, config: Any, api_key: str | None, proxies: Mapping[str, str] | None = None
    ) -> None:
        super().__init__(config, api_key, proxies)
        self.generation = generation_config(config.api_information.setting.request_fields())
        proxies = proxies or {}
        mounts = {f"{s}://": httpx2.HTTPTransport(proxy=url) for s, url in proxies.items()}
        options = types.HttpOptions(
            base_url=self.base_url(config),
            timeout=int(config.timeout_s * 1000),
            retry_options=types.HttpRetryOptions(attempts=1),
            client_args={"mounts": mounts} if proxies else None,
        )
        self.client = genai.Client(api_key=api_key or "missing", http_options=options)
        self.async_calls = not proxies  # proxies are mounted on the blocking client only

    def completion_tokens(self) -> int:
        """``maxOutputTokens``, by either name."""
        given = self.generation.get("maxOutputTokens")
        return int(given) if given else super().completion_tokens()

    def request_body(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        """A ``GenerateContentRequest``: contents, ``systemInstruction``, ``generationConfig``."""
        system, messages = split_system(payload["messages"])
        body: dict[str, Any] = {"model": self.model, "contents": _contents(messages)}
        if system:
            body["systemInstruction"] = {"parts": [{"text": system}]}
        generation = self.generation
        if self.structured is not None:
            answer_as = {"responseMimeType": "application/json"}
            generation = {**generation, **answer_as, "responseJsonSchema": self.structured.schema}
        if generation:
            body["generationConfig"] = generation
        return body

    def extend_body(self, body: dict[str, Any], messages: list[dict[str, Any]]) -> dict[str, Any]:
        """A request body with ``messages`` added to its ``contents`` (a re-ask)."""
        return {**body, "contents": [*body["contents"], *_contents(messages)]}

    def _arguments(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> dict[str, Any]:
        """``generate_content``'s arguments: the body's parts in the SDK's config."""
        self.require_key()
        (payload,) = payloads
        body = self.request_body(payload)
        config = {**sdk_config(body), "httpOptions": {"timeout": int(timeout_s * 1000)}}
        return {"model": self.model, "contents": body["contents"], "config": config}

    def send(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """One ``generateContent`` per call: ``payloads`` holds exactly one payload."""
        arguments = self._arguments(payloads, timeout_s)
        try:
            response = self.client.models.generate_content(**arguments)
        except _CALL_ERRORS as error:
            raise self.classify(error) from None
        return CallResult([self.answer(response)])

    async def send_async(self, payloads: Sequence[dict[str, Any]], timeout_s: float) -> CallResult:
        """:meth:`send` through the SDK's async client, on the worker's call loop."""
        arguments = self._arguments(payloads, timeout_s)
        try:
            response = await self.client.aio.models.generate_content(**arguments)
        except (*_CALL_ERRORS, aiohttp.ClientError) as error:
            raise self.classify(error) from None
        return CallResult([self.answer(response)])

    @staticmethod
    def answer(response: types.GenerateContentResponse) -> Answer:
        """The text of the first candidate, and the usage in the shared names."""
        candidates = response.candidates or []
        parts = (candidates[0].content.parts or []) if candidates and candidates[0].content else []
        texts = [part.text for part in parts if part.text and not part.thought]
        reason = candidates[0].finish_reason if candidates else None
        blocked = response.prompt_feedback.block_reason if response.prompt_feedback else None
        refused = not texts and (blocked or reason in REFUSALS)
        if not texts and not refused:
            raise ProviderError(
                ErrorKind.FATAL,
                "no_answer",
                f"no text in the answer (finish reason {reason}, block reason {blocked})",
            )
        return Answer(
            output="".join(texts),
            response=response.model_dump(mode="json", exclude_none=True),
            usage=_usage(response.usage_metadata),
            truncated=reason == types.FinishReason.MAX_TOKENS,
            refusal=f"finish reason {reason}, block reason {blocked}" if refused else None,
        )

    def classify(self, error: BaseException) -> ProviderError:
        """A per-day quota halts, other 429s pause for their ``retryDelay``, 5xx retry."""
        if isinstance(error, ValidationError):  # a setting the SDK's config does not know
            first = error.errors()[0]
            where = ".".join(str(part) for part in first["loc"])
            said = f"api_information.setting: {where}: {first['msg']}"
            return ProviderError(ErrorKind.FATAL, "invalid_setting", redact(said, self.api_key))
        if isinstance(error, httpx2.TimeoutException | asyncio.TimeoutError | TimeoutError):
            return ProviderError(ErrorKind.RETRY, "timeout", "the request timed out")
        if not isinstance(error, errors.APIError):
            message = redact(str(error) or type(error).__name__, self.api_key)
            return ProviderError(ErrorKind.RETRY, "connection_error", f"connection: {message}")
        status = error.code
        message = redact(str(error.message or error.status or status), self.api_key)
        if status == 429:
            if _per_day(error.details):
                return QuotaExceeded(f"Gemini daily quota reached: {message}", status)
            wait = _retry_delay_s(error.details)
            return ProviderError(ErrorKind.RATE_LIMITED, "rate_limited", message, status, wait)
        kind = ErrorKind.FATAL if status in PERMANENT_STATUS else ErrorKind.RETRY
        return ProviderError(kind, f"http_{status}", message, status)

    def native_batches(self) -> GeminiBatchAPI:
        """Batch Mode, through the same client."""
        return GeminiBatchAPI(self)

    def close(self) -> None:
        """Close the SDK's connection pool."""
        self.client.close()

    async def aclose(self) -> None:
        """Close the async client's session."""
        await self.client.aio.aclose()


def _usage(usage: types.GenerateContentResponseUsageMetadata | None) -> dict[str, int]:
    """Gemini's usage in the shared names (thinking is billed as output)."""
    if usage is None:
        return {}
    prompt = usage.prompt_token_count or 0
    completion = (usage.candidates_token_count or 0) + (usage.thoughts_token_count or 0)
    counts = {
        "prompt_tokens": prompt,
        "completion_tokens": completion,
        "total_tokens": usage.total_token_count or prompt + completion,
    }
    if usage.cached_content_token_count:
        counts["cached_tokens"] = usage.cached_content_token_count
    return counts


#: A batch line's error is a ``google.rpc.Status``: its gRPC code, as the HTTP status a live
#: call would have had.
_GRPC_TO_HTTP = {3: 400, 16: 401, 7: 403, 5: 404, 9: 400, 8: 429, 13: 500, 14: 503, 4: 504}

#: Gemini's job states in the shared words.
_STATUSES: dict[str, BatchStatus] = {
    "JOB_STATE_QUEUED": "in_progress",
    "JOB_STATE_PENDING": "in_progress",
    "JOB_STATE_RUNNING": "in_progress",
    "JOB_STATE_CANCELLING": "canceling",
    "JOB_STATE_SUCCEEDED": "completed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "completed",
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_CANCELLED": "cancelled",
    "JOB_STATE_EXPIRED": "expired",
}


class GeminiBatchAPI(NativeBatchAPI):
    """Batch Mode: a job per batch, labelled with its display name (unique to run and batch).

    Creating a job is not idempotent: after a crash between creating and recording it, the
    job is found again by that name. An expired job has no results: its items are re-sent.
    """

    sdk_errors = (errors.APIError, ValidationError)
    max_requests = 100_000
    body_key = "request"
    max_bytes = 2 * 1000 * 1000 * 1000

    def request_line(self, custom_id: str, payload: Mapping[str, Any]) -> bytes:
        """``{"key", "request"}``, the request a live call would send (less the model)."""
        request = self.provider.request_body(payload)
        del request["model"]
        return orjson.dumps({"key": custom_id, "request": request}) + b"\n"

    def upload(self, batch: BatchFile) -> str | None:
        """Upload a file of over :data:`INLINE_BYTES`; a smaller one goes inline."""
        if batch.path.stat().st_size <= INLINE_BYTES:
            return None
        config = {"mime_type": "jsonl", "display_name": batch.display_name}
        uploaded = self.client.files.upload(file=batch.path, config=config)
        return uploaded.name

    def create(self, batch: BatchFile, completion_window: str) -> NativeBatch:
        """Create the job from the uploaded file, or from the lines inline, keyed."""
        src: Any = batch.file_id
        if src is None:
            with batch.path.open("rb") as handle:
                src = [_inlined(orjson.loads(line)) for line in handle]
        job = self.client.batches.create(
            model=self.provider.model, src=src, config={"display_name": batch.display_name}
        )
        return _native(job, batch.requests)

    def created_for(self, batch: BatchFile, since: float) -> list[NativeBatch]:
        """The job with the batch's display name, if one was made since ``since``."""
        for seen, job in enumerate(self.client.batches.list(config={"page_size": 100})):
            if seen >= self.lookup_limit:
                break
            made = job.create_time.timestamp() if job.create_time else since
            if job.display_name == batch.display_name and made >= since - CLOCK_SKEW_S:
                return [_native(job, batch.requests)]  # the list's order is not documented
        return []

    def retrieve(self, batch_id: str) -> NativeBatch:
        """The job's state and counts; once it succeeded, where its results are."""
        return _native(self.client.batches.get(name=batch_id))

    def download(self, file_id: str) -> bytes:
        """A result file's lines, or (for an inline job) its inlined responses as lines."""
        if file_id.startswith("files/"):
            return self.client.files.download(file=file_id)
        job = self.client.batches.get(name=file_id)
        responses = (job.dest.inlined_responses if job.dest else None) or []
        lines = []
        for response in responses:
            line: dict[str, Any] = {"key": (response.metadata or {}).get("key")}
            if response.error is not None:
                line["error"] = response.error.model_dump(mode="json", exclude_none=True)
            if response.response is not None:
                line["response"] = response.response.model_dump(mode="json", exclude_none=True)
            lines.append(orjson.dumps(line) + b"\n")
        return b"".join(lines)

    def result(self, entry: dict[str, Any]) -> BatchResult:
        """A line's response, or its ``google.rpc.Status`` error."""
        key = entry.get("key")
        if entry.get("error"):
            error = entry["error"]
            status = _GRPC_TO_HTTP.get(error.get("code"))
            message = error.get("message") or "the request failed"
            kind = f"http_{status}" if status else "batch_error"
            return BatchResult(key, ProviderError(ErrorKind.FATAL, kind, message, status))
        try:
            response = types.GenerateContentResponse.model_validate(entry.get("response") or {})
            return BatchResult(key, self.provider.answer(response))
        except ProviderError as error:
            return BatchResult(key, error)

    def cancel(self, batch_id: str) -> None:
        """Ask Gemini to cancel the job."""
        self.client.batches.cancel(name=batch_id)


def _inlined(line: Mapping[str, Any]) -> types.InlinedRequest:
    """A request line as the SDK's inlined request: its key travels in the metadata."""
    request = line["request"]
    return types.InlinedRequest.model_validate(
        {
            "contents": request["contents"],
            "config": sdk_config(request),
            "metadata": {"key": line["key"]},
        }
    )


def _native(job: types.BatchJob, requests: int | None = None) -> NativeBatch:
    raw = job.state.value if job.state else "JOB_STATE_PENDING"
    stats = job.completion_stats
    completed = (stats.successful_count or 0) if stats else 0
    failed = (stats.failed_count or 0) if stats else 0
    status = _STATUSES.get(raw, "in_progress")
    output = None
    if status == "completed" and job.dest is not None:
        output = job.dest.file_name or (job.name if job.dest.inlined_responses else None)
    counts = {"completed": completed, "failed": failed}
    if requests is not None:
        counts["total"] = requests
    return NativeBatch(
        batch_id=job.name or "",
        status=status,
        raw_status=raw,
        request_counts=counts,
        output_file_id=output,
    )

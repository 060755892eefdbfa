"""Fake Gemini API (Google AI ``generativelanguage``): generateContent, Batch Mode and Files.

Answers are shaped so that the real ``google-genai`` SDK parses them into its own types.
Every route is served under ``/v1`` (what google-genai 3.x calls by default) and ``/v1beta``
(the version Google documents and older SDKs call).

``/v1/files/{name}`` and ``/v1/batches[/{name}]`` are also OpenAI paths: those Gemini routes
only take requests that carry Google credentials or the SDK's ``x-goog-api-client`` header,
and must be registered before the OpenAI routes so that they are tried first.

An API key is valid unless it starts with ``invalid`` (400 ``API_KEY_INVALID``, as Google
answers a wrong key).

Structured outputs: a ``generationConfig`` with ``responseMimeType`` ``application/json`` and a
``responseJsonSchema`` (or ``responseSchema``, read alike, its type names case-blind) gets as
its text the JSON of an object following the schema (``schema_answers``). The markers of the
first user content: ``[[schema-invalid]]`` / ``[[schema-invalid-once]]`` make that object break
the schema (the second not in a re-ask, which holds a ``model`` content); ``[[refusal]]``
answers a candidate with ``finishReason`` ``SAFETY`` and no content; ``[[length]]`` the first
half of the text with ``finishReason`` ``MAX_TOKENS``. The last two act on plain answers too.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import math
import re
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime
from itertools import accumulate, count
from typing import Any

import orjson
from aiohttp import web

from mitrailleuse.simulator.app import (
    Handler,
    SimState,
    batch_line_markers,
    json_response,
    parse_markers,
)
from mitrailleuse.simulator.openai_api import Scan
from mitrailleuse.simulator.schema_answers import Reply

API_VERSIONS = ("v1", "v1beta")
MAX_REQUEST_BYTES = 20 * 1024 * 1024
"""Largest generateContent / inline batch request Google accepts."""
UPLOAD_CHUNK_BYTES = 8 * 1024 * 1024
FILE_TTL_S = 48 * 3600
DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 1000
RUNNING_AT = 0.1
"""Share of ``batch_duration_s`` a batch spends pending before it runs."""
INVALID_KEY_PREFIX = "invalid"
DAILY_REQUEST_LIMIT = 250
"""Requests per day quoted by ``[[quota-day]]`` (gemini-2.5-flash's free tier)."""
QUOTA_DAY_RETRY_S = 30.0
"""Real per-day quota errors still carry a RetryInfo of some seconds; clients must halt."""

_UPLOAD_STATUS = "X-Goog-Upload-Status"
_BATCH_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatch"
_OUTPUT_TYPE = "type.googleapis.com/google.ai.generativelanguage.v1main.GenerateContentBatchOutput"
_TERMINAL = frozenset(
    {"BATCH_STATE_SUCCEEDED", "BATCH_STATE_FAILED", "BATCH_STATE_CANCELLED", "BATCH_STATE_EXPIRED"}
)
_FILE_NAME_RE = re.compile(r"[a-z0-9-]{1,40}")
_FINISH_REASONS = {"stop": "STOP", "refusal": "SAFETY", "length": "MAX_TOKENS"}
_UNREAD = Scan(None, "", 0, "", False)
"""What :func:`_scan_request` returns with a problem."""

# HTTP status -> (google.rpc.Code name, its number), as Google maps them.
_CODES: dict[int, tuple[str, int]] = {
    400: ("INVALID_ARGUMENT", 3),
    401: ("UNAUTHENTICATED", 16),
    403: ("PERMISSION_DENIED", 7),
    404: ("NOT_FOUND", 5),
    409: ("ABORTED", 10),
    429: ("RESOURCE_EXHAUSTED", 8),
    499: ("CANCELLED", 1),
    500: ("INTERNAL", 13),
    501: ("UNIMPLEMENTED", 12),
    503: ("UNAVAILABLE", 14),
    504: ("DEADLINE_EXCEEDED", 4),
}
_UNKNOWN = ("UNKNOWN", 2)

# (quotaMetric, quotaId) of the free-tier quotas a 429 names.
_REQUESTS_PER_MINUTE = (
    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
    "GenerateRequestsPerMinutePerProjectPerModel-FreeTier",
)
_INPUT_TOKENS_PER_MINUTE = (
    "generativelanguage.googleapis.com/generate_content_free_tier_input_token_count",
    "GenerateContentInputTokensPerModelPerMinute-FreeTier",
)
_REQUESTS_PER_DAY = (
    "generativelanguage.googleapis.com/generate_content_free_tier_requests",
    "GenerateRequestsPerDayPerProjectPerModel-FreeTier",
)
_QUOTA_MESSAGE = (
    "You exceeded your current quota, please check your plan and billing details. For more "
    "information on this error, head to: https://ai.google.dev/gemini-api/docs/rate-limits. "
    "To monitor your current usage, head to: https://ai.dev/usage?tab=rate-limit. "
)
_INTERNAL_MESSAGE = (
    "An internal error has occurred. Please retry or report in "
    "https://developers.generativeai.google/guide/troubleshooting"
)
_HTML_502 = (
    b"<!DOCTYPE html>\n<html lang=en>\n  <meta charset=utf-8>\n"
    b"  <title>Error 502 (Server Error)!!1</title>\n"
    b"  <p><b>502.</b> <ins>That's an error.</ins>\n"
    b"  <p>The server encountered a temporary error and could not complete your request."
    b"<p>Please try again in 30 seconds.  <ins>That's all we know.</ins>\n"
)


def google_error_body(
    code: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    status: str | None = None,
) -> dict[str, Any]:
    """Build Google's JSON error envelope for the HTTP status ``code``."""
    error: dict[str, Any] = {
        "code": code,
        "message": message,
        "status": status or _CODES.get(code, _UNKNOWN)[0],
    }
    if details:
        error["details"] = details
    return {"error": error}


def google_error(
    code: int,
    message: str,
    details: list[dict[str, Any]] | None = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Answer ``code`` with a Google-shaped error body."""
    return json_response(google_error_body(code, message, details), code, headers)


def _rpc_status(code: int, message: str) -> dict[str, Any]:
    """A ``google.rpc.Status`` (batch line errors, a failed operation): gRPC code numbers."""
    return {"code": _CODES.get(code, _UNKNOWN)[1], "message": message}


def _marker_message(code: int) -> str:
    return f"Simulated error {code} ([[status:{code}]] marker)."


def _retry_info(wait_s: float) -> dict[str, Any]:
    """RetryInfo in whole seconds, rounded up so that waiting it is always enough."""
    return {
        "@type": "type.googleapis.com/google.rpc.RetryInfo",
        "retryDelay": f"{max(math.ceil(wait_s), 1)}s",
    }


def _quota_error(quota: tuple[str, str], limit: int, model: str, wait_s: float) -> web.Response:
    """The 429 RESOURCE_EXHAUSTED Google sends when ``quota`` is used up."""
    metric, quota_id = quota
    message = (
        f"{_QUOTA_MESSAGE}\n* Quota exceeded for metric: {metric}, limit: {limit}, "
        f"model: {model}\nPlease retry in {wait_s:.9f}s."
    )
    details = [
        {
            "@type": "type.googleapis.com/google.rpc.QuotaFailure",
            "violations": [
                {
                    "quotaMetric": metric,
                    "quotaId": quota_id,
                    "quotaDimensions": {"location": "global", "model": model},
                    "quotaValue": str(limit),
                }
            ],
        },
        {
            "@type": "type.googleapis.com/google.rpc.Help",
            "links": [
                {
                    "description": "Learn more about Gemini API quotas",
                    "url": "https://ai.google.dev/gemini-api/docs/rate-limits",
                }
            ],
        },
        _retry_info(wait_s),
    ]
    return google_error(429, message, details)


def _denied(request: web.Request) -> web.Response | None:
    """Check the API key (``x-goog-api-key`` header or ``key`` query) as Google does."""
    key = (request.headers.get("x-goog-api-key") or request.query.get("key") or "").strip()
    if not key:
        if "Authorization" in request.headers:
            return google_error(
                401,
                "Request had invalid authentication credentials. Expected OAuth 2 access "
                "token, login cookie or other valid authentication credential.",
            )
        return google_error(
            403,
            "Method doesn't allow unregistered callers (callers without established identity)."
            " Please use API Key or other form of API consumer identity to call this API.",
        )
    if key.lower().startswith(INVALID_KEY_PREFIX):
        message = "API key not valid. Please pass a valid API key."
        details = [
            {
                "@type": "type.googleapis.com/google.rpc.ErrorInfo",
                "reason": "API_KEY_INVALID",
                "domain": "googleapis.com",
                "metadata": {"service": "generativelanguage.googleapis.com"},
            },
            {
                "@type": "type.googleapis.com/google.rpc.LocalizedMessage",
                "locale": "en-US",
                "message": message,
            },
        ]
        return google_error(400, message, details)
    return None


async def _read_json(request: web.Request) -> tuple[Any, web.Response | None]:
    """Return the parsed body, or the 400 Google answers to an oversized or broken one."""
    data = await request.read()
    if len(data) > MAX_REQUEST_BYTES:
        return None, google_error(
            400, f"Request payload size exceeds the limit: {MAX_REQUEST_BYTES} bytes."
        )
    try:
        return orjson.loads(data or b"{}"), None
    except orjson.JSONDecodeError:
        return None, google_error(400, "Invalid JSON payload received. Unexpected token.")


def _field(obj: dict[str, Any], camel: str, snake: str) -> Any:
    """Read a field under its JSON (camelCase) or proto (snake_case) name; Google takes both."""
    value = obj.get(camel)
    return obj.get(snake) if value is None else value


def _tokens(text: str) -> int:
    return (len(text) + 3) // 4


def _content_text(content: dict[str, Any]) -> str:
    parts = content.get("parts")
    if not isinstance(parts, list):
        return ""
    return "".join(
        part["text"]
        for part in parts
        if isinstance(part, dict) and isinstance(part.get("text"), str)
    )


def _response_schema(config: dict[str, Any]) -> Any:
    """The schema a ``generationConfig`` asks the answer to follow (``None``: plain text)."""
    schema = _field(config, "responseJsonSchema", "response_json_schema")
    return _field(config, "responseSchema", "response_schema") if schema is None else schema


def _scan_request(body: Any) -> tuple[str, Scan, dict[str, Any] | None]:
    """Validate and read a GenerateContentRequest.

    Returns ``(problem, conversation, response schema)``; ``problem`` is empty when the
    request is valid.
    """
    if not isinstance(body, dict):
        return "Invalid JSON payload received. Expected an object.", _UNREAD, None
    contents = body.get("contents")
    if not contents:
        return "* GenerateContentRequest.contents: contents is not specified\n", _UNREAD, None
    if not isinstance(contents, list):
        return "Invalid value at 'contents': expected a list.", _UNREAD, None
    user = ""
    first: str | None = None
    reasked = False
    tokens = 0
    for index, content in enumerate(contents):
        if not isinstance(content, dict) or not content.get("parts"):
            problem = (
                f"* GenerateContentRequest.contents[{index}].parts: "
                "contents.parts must not be empty.\n"
            )
            return problem, _UNREAD, None
        role = content.get("role") or "user"
        if role not in ("user", "model"):
            return "Please use a valid role: user, model.", _UNREAD, None
        text = _content_text(content)
        tokens += _tokens(text)
        if role == "user":
            user = text
            if first is None:
                first = text
        else:
            reasked = True
    system: str | None = None
    instruction = _field(body, "systemInstruction", "system_instruction")
    if instruction is not None:
        if not isinstance(instruction, dict):
            return "Invalid value at 'system_instruction': expected a Content.", _UNREAD, None
        system = _content_text(instruction)
        tokens += _tokens(system)
    config = _field(body, "generationConfig", "generation_config")
    if config is not None and not isinstance(config, dict):
        return "Invalid value at 'generation_config': expected an object.", _UNREAD, None
    schema = None if config is None else _response_schema(config)
    if schema is not None and (
        not isinstance(schema, dict)
        or _field(config, "responseMimeType", "response_mime_type") != "application/json"
    ):
        problem = (
            "* GenerateContentRequest.generation_config.response_schema: a schema object needs "
            "response_mime_type application/json.\n"
        )
        return problem, _UNREAD, None
    return "", Scan(system, user, tokens, first or "", reasked), schema


def generate_content_response(
    model: str, answer: Reply, prompt_tokens: int, response_id: str
) -> dict[str, Any]:
    """Build a GenerateContentResponse; a refusal's candidate has no content."""
    candidate: dict[str, Any] = {}
    answer_tokens = 0
    if answer.ending != "refusal":
        candidate["content"] = {"role": "model", "parts": [{"text": answer.text}]}
        answer_tokens = _tokens(answer.text)
    candidate.update(finishReason=_FINISH_REASONS[answer.ending], index=0)
    return {
        "candidates": [candidate],
        "usageMetadata": {
            "promptTokenCount": prompt_tokens,
            "candidatesTokenCount": answer_tokens,
            "totalTokenCount": prompt_tokens + answer_tokens,
            "promptTokensDetails": [{"modality": "TEXT", "tokenCount": prompt_tokens}],
        },
        "modelVersion": model,
        "responseId": response_id,
    }


def _timestamp(t: float) -> str:
    return datetime.fromtimestamp(t, UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def _api_version(request: web.Request) -> str:
    return next(part for part in request.path.split("/") if part in API_VERSIONS)


def _from_google(request: web.Request) -> bool:
    """Whether a request on a path shared with the OpenAI API is meant for Gemini."""
    headers = request.headers
    return "x-goog-api-key" in headers or "x-goog-api-client" in headers or "key" in request.query


class _GoogleOnly:
    """Resource mixin declining requests that are not Google's, so OpenAI's route gets them."""

    async def resolve(self, request: web.Request) -> Any:
        if not _from_google(request):
            return None, set()
        return await super().resolve(request)  # type: ignore[misc]


class _GooglePlainResource(_GoogleOnly, web.PlainResource):
    pass


class _GoogleDynamicResource(_GoogleOnly, web.DynamicResource):
    pass


@dataclass(frozen=True)
class _GoogleRouteDef(web.AbstractRouteDef):
    """A route on a path the OpenAI API also serves (see ``_GoogleOnly``)."""

    method: str
    path: str
    handler: Handler

    def register(self, router: web.UrlDispatcher) -> list[web.AbstractRoute]:
        kind = _GoogleDynamicResource if "{" in self.path else _GooglePlainResource
        resource = kind(self.path)
        router.register_resource(resource)
        return [resource.add_route(self.method, self.handler)]


@dataclass
class _Line:
    """One request of a batch and its scripted outcome (0 ok, >0 error status, -1 missing)."""

    carried: dict[str, Any]  # {"metadata": ...} (inline) or {"key": ...} (file), echoed back
    answer: Reply
    prompt_tokens: int
    outcome: int


@dataclass
class _Upload:
    """A resumable upload between its ``start`` and its ``finalize``."""

    file_id: str
    mime_type: str
    display_name: str | None
    size: int | None
    origin: str
    version: str
    data: bytearray = field(default_factory=bytearray)


@dataclass
class _Batch:
    """One Batch Mode job; its state is derived from its age when it is read."""

    id: str
    seq: int
    model: str
    display_name: str | None
    created: float
    duration: float
    origin: str
    version: str
    from_file: bool
    lines: list[_Line] = field(default_factory=list)
    failed_prefix: list[int] = field(default_factory=lambda: [0])
    error: str | None = None
    expire: bool = False
    cancelled_at: float | None = None
    output: dict[str, Any] | None = None

    def add(self, carried: dict[str, Any], scan: Scan, schema: dict[str, Any] | None) -> None:
        """Append a validated request, reading its batch markers."""
        outcome, expires = batch_line_markers(scan.user)
        self.expire = self.expire or expires
        self.lines.append(_Line(carried, scan.reply(schema), scan.prompt_tokens, outcome))

    def seal(self) -> None:
        """Count the scripted failures once all lines are in."""
        self.failed_prefix = [0, *accumulate(1 if line.outcome > 0 else 0 for line in self.lines)]

    def phase(self, now: float) -> tuple[str, float]:
        """Return the state at ``now`` and when the batch entered it."""
        started = self.created + RUNNING_AT * self.duration
        ends = self.created + self.duration
        if self.cancelled_at is not None:
            return "BATCH_STATE_CANCELLED", self.cancelled_at
        if now < started:
            return "BATCH_STATE_PENDING", self.created
        if self.error is not None:
            return "BATCH_STATE_FAILED", started
        if now < ends:
            return "BATCH_STATE_RUNNING", started
        return ("BATCH_STATE_EXPIRED" if self.expire else "BATCH_STATE_SUCCEEDED"), ends

    def done_at(self, at: float) -> int:
        """How many lines are processed ``at`` a time (none when the job is to expire)."""
        if self.expire or self.error is not None:
            return 0
        running = (at - self.created - RUNNING_AT * self.duration) / (
            (1 - RUNNING_AT) * self.duration
        )
        return int(len(self.lines) * min(max(running, 0.0), 1.0))


class GeminiApi:
    """Handlers of the fake Gemini API, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.batches: dict[str, _Batch] = {}  # Not state.batches: the OpenAI API lists those.
        self.uploads: dict[str, _Upload] = {}
        self._seq = count()

    def routes(self) -> list[web.AbstractRouteDef]:
        """Return the route table of the Gemini endpoints, under every API version."""
        table: list[web.AbstractRouteDef] = []
        for version in API_VERSIONS:
            root = f"/{version}"
            table += [
                web.post(f"{root}/models/{{model}}:generateContent", self.generate_content),
                web.post(f"{root}/models/{{model}}:batchGenerateContent", self.create_batch),
                web.post(f"/upload{root}/files", self.upload_file),
                web.get(f"/download{root}/files/{{file}}:download", self.download_file),
                _GoogleRouteDef("GET", f"{root}/files/{{file}}:download", self.download_file),
                _GoogleRouteDef("GET", f"{root}/files/{{file}}", self.get_file),
                _GoogleRouteDef("DELETE", f"{root}/files/{{file}}", self.delete_file),
                _GoogleRouteDef("GET", f"{root}/batches", self.list_batches),
                _GoogleRouteDef("GET", f"{root}/batches/{{batch}}", self.get_batch),
                _GoogleRouteDef("DELETE", f"{root}/batches/{{batch}}", self.delete_batch),
                web.post(f"{root}/batches/{{batch}}:cancel", self.cancel_batch),
            ]
        return table

    # -- generateContent -------------------------------------------------------------------

    async def generate_content(self, request: web.Request) -> web.Response:
        """Answer ``POST /{version}/models/{model}:generateContent`` and log it."""
        state = self.state
        state.gemini_requests += 1
        started = time.time()
        texts: list[str] = []
        response = await self._generate(request, texts)
        state.record(started, request.path, response.status, texts)
        return response

    async def _generate(self, request: web.Request, texts: list[str]) -> web.Response:
        state = self.state
        denied = _denied(request)
        if denied is not None:
            return denied
        body, broken = await _read_json(request)
        if broken is not None:
            return broken
        problem, scan, schema = _scan_request(body)
        if problem:
            return google_error(400, problem)
        user = scan.user
        texts.append(user)
        if schema is not None:
            state.structured_requests += 1
        model = request.match_info["model"]
        # Gemini's tokens-per-minute quota counts input tokens only.
        admission = state.admit(scan.prompt_tokens)
        if admission.rejected:
            settings = state.settings
            if admission.kind == "requests":
                return _quota_error(
                    _REQUESTS_PER_MINUTE, settings.rpm or 0, model, admission.wait_s
                )
            return _quota_error(
                _INPUT_TOKENS_PER_MINUTE, settings.tpm or 0, model, admission.wait_s
            )
        await state.delay()
        markers = parse_markers(user)
        if markers is not None:
            response = await self._fault(user, markers, model)
            if response is not None:
                return response
        if state.random_failure():
            return google_error(500, _INTERNAL_MESSAGE)
        payload = generate_content_response(
            model, scan.reply(schema), scan.prompt_tokens, state.new_id("")
        )
        return json_response(payload)

    async def _fault(
        self, user: str, markers: dict[str, int | None], model: str
    ) -> web.Response | None:
        """Apply the fault markers of a request; ``None`` means answer normally."""
        state = self.state
        markers = state.active_markers("gemini", user, markers)
        status = state.fault_status("gemini", user, markers)
        if status is not None:
            details = [_retry_info(1.0)] if status == 429 else None
            return google_error(status, _marker_message(status), details)
        if "quota-day" in markers:
            return _quota_error(_REQUESTS_PER_DAY, DAILY_REQUEST_LIMIT, model, QUOTA_DAY_RETRY_S)
        if "overloaded" in markers:
            return google_error(503, "The model is overloaded. Please try again later.")
        full = orjson.dumps(generate_content_response(model, Reply("echo"), 1, "truncated"))
        return await state.body_fault(markers, full, html=_HTML_502)

    # -- files -----------------------------------------------------------------------------

    def _store_file(
        self,
        file_id: str,
        content: bytes,
        mime_type: str,
        display_name: str | None,
        origin: str,
        version: str,
        generated: bool,
    ) -> dict[str, Any]:
        """Keep a file in the simulator's file store and return its File resource."""
        now = time.time()
        digest = hashlib.sha256(content).hexdigest().encode()
        meta: dict[str, Any] = {
            "name": f"files/{file_id}",
            "mimeType": mime_type,
            "sizeBytes": str(len(content)),
            "createTime": _timestamp(now),
            "updateTime": _timestamp(now),
            "expirationTime": _timestamp(now + FILE_TTL_S),
            "sha256Hash": base64.b64encode(digest).decode(),
            "uri": f"{origin}/{version}/files/{file_id}",
            "state": "ACTIVE",
            "source": "GENERATED" if generated else "UPLOADED",
        }
        if display_name:
            meta["displayName"] = display_name
        if generated:
            meta["downloadUri"] = f"{origin}/download/{version}/files/{file_id}:download?alt=media"
        self.state.files[file_id] = meta
        self.state.file_contents[file_id] = content
        return meta

    def _file(self, file_id: str) -> dict[str, Any] | None:
        """A Gemini file of the shared store (OpenAI's files there have no ``name``)."""
        meta = self.state.files.get(file_id)
        return meta if meta is not None and "name" in meta else None

    @staticmethod
    def _no_file(file_id: str) -> web.Response:
        return google_error(
            403, f"You do not have permission to access the File {file_id} or it may not exist."
        )

    async def upload_file(self, request: web.Request) -> web.Response:
        """The resumable upload protocol: ``start``, then ``upload`` chunks and ``finalize``."""
        upload_id = request.query.get("upload_id")
        if upload_id is None:
            return await self._start_upload(request)
        return await self._upload_chunk(request, upload_id)

    async def _start_upload(self, request: web.Request) -> web.Response:
        denied = _denied(request)
        if denied is not None:
            return denied
        headers = request.headers
        if (
            headers.get("X-Goog-Upload-Protocol") != "resumable"
            or headers.get("X-Goog-Upload-Command") != "start"
        ):
            return google_error(400, "The simulator only implements resumable uploads.")
        body, broken = await _read_json(request)
        if broken is not None:
            return broken
        spec = body.get("file") if isinstance(body, dict) else None
        spec = spec if isinstance(spec, dict) else {}
        file_id = str(spec.get("name") or "").removeprefix("files/") or self.state.new_id("")
        if not _FILE_NAME_RE.fullmatch(file_id):
            return google_error(400, f"Invalid file name: files/{file_id}.")
        if file_id in self.state.files or any(u.file_id == file_id for u in self.uploads.values()):
            return google_error(409, f"File files/{file_id} already exists.")
        declared = headers.get("X-Goog-Upload-Header-Content-Length") or _field(
            spec, "sizeBytes", "size_bytes"
        )
        try:
            size = int(declared) if declared is not None else None
        except ValueError:
            return google_error(400, "Invalid X-Goog-Upload-Header-Content-Length.")
        origin, version = str(request.url.origin()), _api_version(request)
        upload_id = self.state.new_id("")
        self.uploads[upload_id] = _Upload(
            file_id=file_id,
            mime_type=headers.get("X-Goog-Upload-Header-Content-Type")
            or _field(spec, "mimeType", "mime_type")
            or "application/octet-stream",
            display_name=_field(spec, "displayName", "display_name"),
            size=size,
            origin=origin,
            version=version,
        )
        url = f"{origin}/upload/{version}/files?upload_id={upload_id}&upload_protocol=resumable"
        return web.Response(
            headers={
                "X-Goog-Upload-URL": url,
                "X-Goog-Upload-Control-URL": url,
                "X-Goog-Upload-Chunk-Granularity": str(UPLOAD_CHUNK_BYTES),
                _UPLOAD_STATUS: "active",
            }
        )

    async def _upload_chunk(self, request: web.Request, upload_id: str) -> web.Response:
        # Errors say "final": the SDK retries (sleeping 1, 2, 4 s) answers without a status.
        final = {_UPLOAD_STATUS: "final"}
        upload = self.uploads.get(upload_id)
        if upload is None:
            return google_error(404, "No such upload session.", headers=final)
        command = request.headers.get("X-Goog-Upload-Command", "")
        offset = request.headers.get("X-Goog-Upload-Offset", str(len(upload.data)))
        if offset != str(len(upload.data)):
            del self.uploads[upload_id]
            return google_error(400, f"Invalid upload offset {offset}.", headers=final)
        upload.data += await request.read()
        if "finalize" not in command:
            return web.Response(headers={_UPLOAD_STATUS: "active"})
        del self.uploads[upload_id]
        if upload.size is not None and upload.size != len(upload.data):
            message = f"Upload size {len(upload.data)} does not match the declared {upload.size}."
            return google_error(400, message, headers=final)
        self.state.files_uploaded += 1
        if self.state.settings.upload_latency_ms:
            await asyncio.sleep(self.state.settings.upload_latency_ms / 1000)
        meta = self._store_file(
            upload.file_id,
            bytes(upload.data),
            upload.mime_type,
            upload.display_name,
            upload.origin,
            upload.version,
            generated=False,
        )
        return json_response({"file": meta}, headers=final)

    def _requested_file(self, request: web.Request) -> tuple[str, dict[str, Any]] | web.Response:
        """The id and File resource a ``/files/{file}`` request names, or the refusal."""
        denied = _denied(request)
        if denied is not None:
            return denied
        file_id = request.match_info["file"]
        meta = self._file(file_id)
        return self._no_file(file_id) if meta is None else (file_id, meta)

    async def get_file(self, request: web.Request) -> web.Response:
        """Return the File resource of ``GET /{version}/files/{file}``."""
        found = self._requested_file(request)
        return found if isinstance(found, web.Response) else json_response(found[1])

    async def delete_file(self, request: web.Request) -> web.Response:
        """Delete a file (``DELETE /{version}/files/{file}``)."""
        found = self._requested_file(request)
        if isinstance(found, web.Response):
            return found
        file_id, _ = found
        del self.state.files[file_id]
        self.state.file_contents.pop(file_id, None)
        return json_response({})

    async def download_file(self, request: web.Request) -> web.Response:
        """Return a generated file's bytes; uploaded files cannot be downloaded."""
        found = self._requested_file(request)
        if isinstance(found, web.Response):
            return found
        file_id, meta = found
        if meta["source"] != "GENERATED":
            return google_error(400, "Only generated files can be downloaded.")
        return web.Response(body=self.state.file_contents[file_id], content_type=meta["mimeType"])

    # -- batches ---------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        """Create a batch job (``POST /{version}/models/{model}:batchGenerateContent``)."""
        denied = _denied(request)
        if denied is not None:
            return denied
        body, broken = await _read_json(request)
        if broken is not None:
            return broken
        spec = body.get("batch") if isinstance(body, dict) else None
        if not isinstance(spec, dict):
            return google_error(400, "* BatchGenerateContentRequest.batch: batch is required\n")
        input_config = _field(spec, "inputConfig", "input_config")
        if not isinstance(input_config, dict):
            return google_error(
                400, "* GenerateContentBatch.input_config: input_config is required\n"
            )
        file_name = _field(input_config, "fileName", "file_name")
        inline = input_config.get("requests")
        if (file_name is None) == (inline is None):
            return google_error(
                400, "Exactly one of input_config.file_name or requests is required."
            )
        state = self.state
        batch = _Batch(
            id=state.new_id(""),
            seq=next(self._seq),
            model=request.match_info["model"],
            display_name=_field(spec, "displayName", "display_name"),
            created=time.time(),
            duration=state.settings.batch_duration_s,
            origin=str(request.url.origin()),
            version=_api_version(request),
            from_file=file_name is not None,
        )
        if inline is not None:
            problem = self._load_inline(batch, inline)
            if problem:
                return google_error(400, problem)
        else:
            file_id = str(file_name).removeprefix("files/")
            if self._file(file_id) is None:
                return google_error(404, f"File {file_name} not found.")
            self._load_file(batch, state.file_contents[file_id])
        batch.seal()
        self.batches[batch.id] = batch
        state.batches_created += 1
        state.gemini_batches_created += 1
        return json_response(self._operation(batch))

    @staticmethod
    def _load_inline(batch: _Batch, inline: Any) -> str:
        """Validate inline requests into ``batch``; return the 400's message if one is bad."""
        items = inline.get("requests") if isinstance(inline, dict) else None
        if not isinstance(items, list) or not items:
            return "* InlinedRequests.requests: requests is not specified\n"
        for index, item in enumerate(items):
            request = item.get("request") if isinstance(item, dict) else None
            problem, scan, schema = _scan_request(request)
            if problem:
                return f"requests[{index}].request: {problem}"
            carried = {"metadata": item["metadata"]} if "metadata" in item else {}
            batch.add(carried, scan, schema)
        return ""

    @staticmethod
    def _load_file(batch: _Batch, data: bytes) -> None:
        """Parse the input JSONL; a bad line makes the whole job fail, as a bad file does."""
        for line_no, raw in enumerate(data.splitlines(), start=1):
            if not raw.strip():
                continue
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                batch.error = f"Line {line_no} of the input file is not valid JSON."
                return
            request = item.get("request") if isinstance(item, dict) else None
            problem, scan, schema = _scan_request(request)
            if problem:
                batch.error = f"Line {line_no} of the input file: {problem}"
                return
            batch.add({"key": item["key"]} if "key" in item else {}, scan, schema)
        if not batch.lines:
            batch.error = "The input file holds no request."

    def _output(self, batch: _Batch) -> dict[str, Any]:
        """Build (once) the results: inline responses, or a JSONL file for a file input."""
        if batch.output is not None:
            return batch.output
        entries: list[dict[str, Any]] = []
        for line in batch.lines:
            if line.outcome < 0:
                continue
            entry = dict(line.carried)
            if line.outcome:
                entry["error"] = _rpc_status(line.outcome, _marker_message(line.outcome))
            else:
                entry["response"] = generate_content_response(
                    batch.model, line.answer, line.prompt_tokens, self.state.new_id("")
                )
            entries.append(entry)
        if batch.from_file:
            content = b"".join(orjson.dumps(entry) + b"\n" for entry in entries)
            meta = self._store_file(
                f"batch-{batch.id}",
                content,
                "application/jsonl",
                None,
                batch.origin,
                batch.version,
                generated=True,
            )
            batch.output = {"responsesFile": meta["name"]}
        else:
            batch.output = {"inlinedResponses": {"inlinedResponses": entries}}
        return batch.output

    def _operation(self, batch: _Batch) -> dict[str, Any]:
        """Return the job as Google does: an Operation whose metadata is the batch."""
        now = time.time()
        state, since = batch.phase(now)
        if state == "BATCH_STATE_SUCCEEDED":
            done = len(batch.lines)
        else:
            done = batch.done_at(min(now, batch.cancelled_at or now))
        failed = batch.failed_prefix[done]
        counts = {
            "requestCount": len(batch.lines),
            "successfulRequestCount": done - failed,
            "failedRequestCount": failed,
            "pendingRequestCount": len(batch.lines) - done,
        }
        metadata: dict[str, Any] = {
            "@type": _BATCH_TYPE,
            "model": f"models/{batch.model}",
            "name": f"batches/{batch.id}",
            "createTime": _timestamp(batch.created),
            "updateTime": _timestamp(since),
            # int64 fields are JSON strings, and proto3 JSON leaves zeros out.
            "batchStats": {name: str(value) for name, value in counts.items() if value},
            "state": state,
        }
        if batch.display_name is not None:
            metadata["displayName"] = batch.display_name
        operation: dict[str, Any] = {"name": f"batches/{batch.id}", "metadata": metadata}
        if state in _TERMINAL:
            metadata["endTime"] = _timestamp(since)
            operation["done"] = True
        if state == "BATCH_STATE_SUCCEEDED":
            output = self._output(batch)
            metadata["output"] = output
            operation["response"] = {"@type": _OUTPUT_TYPE, **output}
        elif state == "BATCH_STATE_FAILED":
            operation["error"] = _rpc_status(400, batch.error or "")
        return operation

    def _batch(self, request: web.Request) -> _Batch | web.Response:
        denied = _denied(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["batch"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return google_error(404, f"Batch batches/{batch_id} not found.")
        return batch

    async def get_batch(self, request: web.Request) -> web.Response:
        """Return the job's Operation (``GET /{version}/batches/{batch}``)."""
        batch = self._batch(request)
        return batch if isinstance(batch, web.Response) else json_response(self._operation(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        """List jobs, newest first, with ``pageSize`` / ``pageToken`` paging."""
        denied = _denied(request)
        if denied is not None:
            return denied
        try:
            size = int(request.query.get("pageSize") or DEFAULT_PAGE_SIZE)
            token = request.query.get("pageToken")
            below = int(token) if token else None
        except ValueError:
            return google_error(400, "Invalid pageSize or pageToken.")
        if size < 0:
            return google_error(400, "page_size must not be negative.")
        size = min(size or DEFAULT_PAGE_SIZE, MAX_PAGE_SIZE)
        candidates = [
            batch for batch in reversed(self.batches.values()) if below is None or batch.seq < below
        ]
        page = candidates[:size]
        listing: dict[str, Any] = {"operations": [self._operation(batch) for batch in page]}
        if len(candidates) > size:
            listing["nextPageToken"] = str(page[-1].seq)
        return json_response(listing)

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """Cancel a pending or running job; it is CANCELLED at once, with no results."""
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        now = time.time()
        state, _ = batch.phase(now)
        if state in _TERMINAL:
            message = f"Batch batches/{batch.id} is already {state}."
            return json_response(google_error_body(400, message, status="FAILED_PRECONDITION"), 400)
        batch.cancelled_at = now
        return json_response({})

    async def delete_batch(self, request: web.Request) -> web.Response:
        """Forget a job (``DELETE /{version}/batches/{batch}``)."""
        batch = self._batch(request)
        if isinstance(batch, web.Response):
            return batch
        del self.batches[batch.id]
        return json_response({})

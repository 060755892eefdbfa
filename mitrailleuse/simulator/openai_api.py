"""Fake OpenAI endpoints: chat completions, files and the Batch API.

Answers are shaped so that the real ``openai`` SDK parses them into its own types.

Structured outputs: a ``response_format`` of type ``json_schema`` gets as its message
``content`` the JSON text of an object following the schema (``schema_answers``); JSON mode
(``json_object``) follows a schema a system message gives after ``JSON Schema:``. The markers
of the first user message: ``[[schema-invalid]]`` / ``[[schema-invalid-once]]`` make that
object break the schema (the second not in a re-ask, which holds an assistant message);
``[[refusal]]`` answers ``content`` null and ``refusal`` "I'm sorry, ..." (``finish_reason``
``"stop"``); ``[[length]]`` the first half of the text with ``finish_reason`` ``"length"``.
The last two act on plain answers too.

Streaming: ``"stream": true`` answers ``text/event-stream``, OpenAI's ``data: <chunk>`` events
(:func:`completion_chunks`: the role, the answer's words, the ``finish_reason``, the usage when
``stream_options.include_usage`` asks) ending with ``data: [DONE]``, each chunk after a pause
of ``stream_chunk_ms``. Faults before the stream (status markers, rate limits) are HTTP errors
as without it; mid-stream faults, from the last user message, after half the chunks:
``[[cut-stream]]`` closes the connection (no ``finish_reason``, no ``[DONE]``),
``[[cut-stream-once]]`` only the first time that text is sent, ``[[stream-error]]`` sends an
error event (``data: {"error": {...}}``, a ``server_error``) and ends without ``[DONE]``,
``[[end-stream-early]]`` ends the response cleanly there (no ``finish_reason``, no
``[DONE]``, no error: only the missing end tells).
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import time
from dataclasses import dataclass, field
from itertools import accumulate
from typing import Any, NamedTuple

import orjson
from aiohttp import web

from mitrailleuse.simulator.app import (
    SimState,
    batch_line_markers,
    json_response,
    parse_markers,
    retry_headers,
)
from mitrailleuse.simulator.schema_answers import Reply, reply

CHAT_PATH = "/v1/chat/completions"
BATCH_MAX_LINES = 50_000
BATCH_MAX_BYTES = 200 * 1024 * 1024
BATCH_MAX_ERRORS = 100
COMPLETION_WINDOW_S = 24 * 3600
DONE_EVENT = b"data: [DONE]\n\n"
_PIECE_RE = re.compile(r"\s*\S{1,16}\s*|\s+")  # A streamed delta: a word (cut at 16) and its spaces

_ERROR_TYPES: dict[int, tuple[str, str | None]] = {
    400: ("invalid_request_error", None),
    401: ("invalid_request_error", "invalid_api_key"),
    403: ("permission_error", None),
    404: ("invalid_request_error", "not_found"),
    409: ("invalid_request_error", "conflict"),
    422: ("invalid_request_error", None),
    429: ("requests", "rate_limit_exceeded"),
}


def _text_of(content: Any) -> str:
    """Return the text of a message ``content`` (a string or a list of text parts)."""
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        return "".join(
            part.get("text", "")
            for part in content
            if isinstance(part, dict) and part.get("type") == "text"
        )
    return ""


class Scan(NamedTuple):
    """What the simulator reads of a conversation (every API's)."""

    system: str | None  # the first system text
    user: str  # the last user text: the echo's, and the fault markers'
    prompt_tokens: int
    prompt: str  # the first user text: the item's own, whose markers shape the answer
    reasked: bool  # the model answered before: an assistant (Gemini: model) message is there

    def reply(self, schema: dict[str, Any] | None) -> Reply:
        """The model's answer: the echo, or an object following ``schema`` when given."""
        return reply(_answer(self.system, self.user), self.prompt, self.reasked, schema)


def _scan(messages: list[dict[str, Any]]) -> Scan:
    """Read a message list (Anthropic's too, its ``system`` put first as a system message)."""
    system: str | None = None
    user = ""
    first: str | None = None
    reasked = False
    prompt_tokens = 0
    for message in messages:
        text = _text_of(message.get("content"))
        prompt_tokens += (len(text) + 3) // 4 + 4
        role = message.get("role")
        if role == "user":
            user = text
            if first is None:
                first = text
        elif role == "system" and system is None:
            system = text
        elif role == "assistant":
            reasked = True
    return Scan(system, user, prompt_tokens, first or "", reasked)


def _answer(system: str | None, user: str) -> str:
    return f"echo: {user}" if system is None else f"({system}) echo: {user}"


def chat_answer(messages: list[dict[str, Any]]) -> str:
    """Return the simulator's deterministic answer to a chat message list.

    ``"echo: " + <last user text>``, prefixed with ``"(<first system text>) "`` when there
    is a system message, so a test can tell which input produced which output.
    """
    scan = _scan(messages)
    return _answer(scan.system, scan.user)


def openai_error_body(
    status: int, message: str, type_: str | None = None, code: str | None = None, param: Any = None
) -> dict[str, Any]:
    """Build an OpenAI-shaped error body for ``status``."""
    default_type, default_code = _ERROR_TYPES.get(
        status, ("server_error" if status >= 500 else "invalid_request_error", None)
    )
    return {
        "error": {
            "message": message,
            "type": type_ or default_type,
            "param": param,
            "code": code or default_code,
        }
    }


def openai_error(
    status: int,
    message: str,
    *,
    type_: str | None = None,
    code: str | None = None,
    param: Any = None,
    headers: dict[str, str] | None = None,
) -> web.Response:
    """Answer ``status`` with an OpenAI-shaped error body."""
    return json_response(openai_error_body(status, message, type_, code, param), status, headers)


_SERVER_ERROR = "The server had an error while processing your request. Sorry about that!"


def _marker_error_body(code: int) -> dict[str, Any]:
    return openai_error_body(code, f"Simulated error {code} ([[status:{code}]] marker).")


def completion(
    completion_id: str, model: str, answer: Reply, prompt_tokens: int, created: int
) -> dict[str, Any]:
    """Build a ``chat.completion`` object."""
    completion_tokens = (len(answer.text) + 3) // 4
    refused = answer.ending == "refusal"
    return {
        "id": completion_id,
        "object": "chat.completion",
        "created": created,
        "model": model,
        "choices": [
            {
                "index": 0,
                "message": {
                    "role": "assistant",
                    "content": None if refused else answer.text,
                    "refusal": answer.text if refused else None,
                },
                "logprobs": None,
                "finish_reason": "length" if answer.ending == "length" else "stop",
            }
        ],
        "usage": {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        },
    }


def completion_chunks(payload: dict[str, Any], include_usage: bool) -> list[dict[str, Any]]:
    """The ``chat.completion.chunk`` objects that stream ``payload`` (a ``chat.completion``).

    A delta with the role, the text (``content``, or ``refusal`` for a refusal) in pieces of
    :data:`_PIECE_RE`, an empty delta with the ``finish_reason``, and with ``include_usage`` a
    last chunk with no choice and the usage (the others carrying ``"usage": null``, as OpenAI's).
    """
    choice = payload["choices"][0]
    message = choice["message"]
    key = "content" if message["content"] is not None else "refusal"
    head: dict[str, Any] = {
        "id": payload["id"],
        "object": "chat.completion.chunk",
        "created": payload["created"],
        "model": payload["model"],
    }
    if include_usage:
        head["usage"] = None

    def chunk(delta: dict[str, Any], finish_reason: str | None = None) -> dict[str, Any]:
        choices = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish_reason}]
        return {**head, "choices": choices}

    chunks = [chunk({"role": "assistant", key: ""})]
    chunks.extend(chunk({key: piece}) for piece in _PIECE_RE.findall(message[key]))
    chunks.append(chunk({}, choice["finish_reason"]))
    if include_usage:
        chunks.append({**head, "choices": [], "usage": payload["usage"]})
    return chunks


def _event(payload: Any) -> bytes:
    """One server-sent event carrying ``payload`` as its JSON data."""
    return b"data: " + orjson.dumps(payload) + b"\n\n"


def _bearer_ok(header: str | None) -> bool:
    return header is not None and header.startswith("Bearer ") and len(header.strip()) > 7


def _validate_chat(body: Any) -> tuple[str, str | None, Any]:
    """Return ``(problem, param, messages)``; ``problem`` is empty when the body is valid."""
    if not isinstance(body, dict):
        return "The request body must be a JSON object.", None, None
    messages = body.get("messages")
    if messages is None:
        return "Missing required parameter: 'messages'.", "messages", None
    if not isinstance(messages, list) or not messages:
        return "Invalid 'messages': expected a non-empty array.", "messages", None
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            return f"Invalid 'messages[{index}]': expected an object with a role.", "messages", None
    model = body.get("model")
    if not isinstance(model, str) or not model:
        return "Missing required parameter: 'model'.", "model", None
    stream = body.get("stream")
    if stream is not None and not isinstance(stream, bool):
        return "Invalid type for 'stream': expected a boolean.", "stream", None
    options = body.get("stream_options")
    if options is not None and not (stream and isinstance(options, dict)):
        problem = "The 'stream_options' parameter is only allowed, as an object, with 'stream'."
        return problem, "stream_options", None
    response_format = body.get("response_format")
    if isinstance(response_format, dict) and response_format.get("type") == "json_schema":
        spec = response_format.get("json_schema")
        if not (
            isinstance(spec, dict)
            and isinstance(spec.get("name"), str)
            and isinstance(spec.get("schema"), dict)
        ):
            problem = "Invalid 'response_format.json_schema': expected a name and a schema object."
            return problem, "response_format", None
    return "", None, messages


def _schema_of(body: dict[str, Any]) -> dict[str, Any] | None:
    """The JSON Schema the answer must follow (a valid body's ``response_format``), if any.

    In JSON mode (``json_object``, DeepSeek's), a schema a system message gives after
    ``JSON Schema:`` is followed, as a model reading it would; with none, any object does.
    """
    response_format = body.get("response_format")
    kind = response_format.get("type") if isinstance(response_format, dict) else None
    if kind == "json_schema":
        return response_format["json_schema"]["schema"]
    if kind != "json_object":
        return None
    for message in body["messages"]:
        text = _text_of(message.get("content")) if message.get("role") == "system" else ""
        _, lead, given = text.rpartition("JSON Schema:")
        if lead:
            try:
                schema = orjson.loads(given)
            except orjson.JSONDecodeError:
                continue
            if isinstance(schema, dict):
                return schema
    return {"type": "object"}


@dataclass
class _Batch:
    """One batch: its parsed input lines and what happened to it."""

    id: str
    input_file_id: str
    endpoint: str
    completion_window: str
    metadata: dict[str, str] | None
    created: float
    duration: float
    lines: list[dict[str, Any]] = field(default_factory=list)
    outcomes: list[int] = field(default_factory=list)  # 0 ok, >0 error status, -1 missing
    failed_prefix: list[int] = field(default_factory=lambda: [0])
    errors: list[dict[str, Any]] | None = None
    expire: bool = False
    model: str | None = None
    cancelling_at: float | None = None
    cancel_done: int = 0
    finished: bool = False
    output_file_id: str | None = None
    error_file_id: str | None = None
    usage: dict[str, Any] | None = None

    @property
    def total(self) -> int:
        return len(self.lines)

    def counts(self, done: int) -> dict[str, int]:
        failed = self.failed_prefix[done]
        return {"total": self.total, "completed": done - failed, "failed": failed}


class OpenAIApi:
    """Handlers of the fake OpenAI API, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    def routes(self) -> list[web.RouteDef]:
        """Return the route table of the OpenAI endpoints."""
        return [
            web.post(CHAT_PATH, self.chat_completions),
            web.post("/v1/files", self.upload_file),
            web.get("/v1/files/{file_id}", self.retrieve_file),
            web.delete("/v1/files/{file_id}", self.delete_file),
            web.get("/v1/files/{file_id}/content", self.file_content),
            web.post("/v1/batches", self.create_batch),
            web.get("/v1/batches", self.list_batches),
            web.get("/v1/batches/{batch_id}", self.retrieve_batch),
            web.post("/v1/batches/{batch_id}/cancel", self.cancel_batch),
        ]

    # -- chat ------------------------------------------------------------------------------

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        """Answer ``POST /v1/chat/completions`` and log it."""
        state = self.state
        state.chat_requests += 1
        started = time.time()
        texts: list[str] = []
        response = await self._chat(request, texts)
        state.record(started, CHAT_PATH, response.status, texts)
        return response

    async def _chat(self, request: web.Request, texts: list[str]) -> web.StreamResponse:
        state = self.state
        if not _bearer_ok(request.headers.get("Authorization")):
            return openai_error(
                401,
                "You didn't provide an API key. You need to provide your API key in an "
                "Authorization header using Bearer auth (i.e. Authorization: Bearer YOUR_KEY).",
                code="invalid_api_key",
            )
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        problem, param, messages = _validate_chat(body)
        if problem:
            return openai_error(400, problem, param=param)
        scan = _scan(messages)
        user = scan.user
        texts.append(user)
        schema = _schema_of(body)
        if schema is not None:
            state.structured_requests += 1
        answer = scan.reply(schema)
        admission = state.admit(scan.prompt_tokens + (len(answer.text) + 3) // 4)
        headers = admission.headers
        if admission.rejected:
            return openai_error(
                429,
                admission.message,
                type_=admission.kind,
                code="rate_limit_exceeded",
                headers=headers,
            )
        await state.delay()
        markers = parse_markers(user)
        if markers is not None:
            markers = state.active_markers("chat", user, markers)
            response = await self._fault(user, markers, headers)
            if response is not None:
                return response
        if state.random_failure():
            return openai_error(500, _SERVER_ERROR, headers=headers)
        payload = completion(
            state.new_id("chatcmpl-"), body["model"], answer, scan.prompt_tokens, int(time.time())
        )
        if body.get("stream"):
            include_usage = bool((body.get("stream_options") or {}).get("include_usage"))
            chunks = completion_chunks(payload, include_usage)
            return await self._stream(request, chunks, markers or {}, headers)
        return json_response(payload, headers=headers)

    async def _stream(
        self,
        request: web.Request,
        chunks: list[dict[str, Any]],
        markers: dict[str, int | None],
        headers: dict[str, str] | None,
    ) -> web.StreamResponse:
        """Send ``chunks`` as server-sent events, broken off as the stream markers say."""
        state = self.state
        cut = "cut-stream" in markers
        failing = "stream-error" in markers
        early = "end-stream-early" in markers
        if cut or failing or early:
            chunks = chunks[: len(chunks) // 2]
        response = web.StreamResponse(headers=headers)
        response.content_type = "text/event-stream"
        response.charset = "utf-8"
        await response.prepare(request)
        state.chat_streams += 1
        pause = state.settings.stream_chunk_ms / 1000
        with contextlib.suppress(ConnectionResetError):  # The client went away: it is its loss.
            for chunk in chunks:
                if pause:
                    await asyncio.sleep(pause)
                await response.write(_event(chunk))
            if cut:
                transport = request.transport
                if transport is not None:  # None: the client has gone already.
                    transport.close()  # The chunked body never ends: the client sees it cut.
                state.chat_streams_cut += 1
            elif failing:
                await response.write(_event(openai_error_body(500, _SERVER_ERROR)))
                state.chat_streams_errored += 1
            elif early:
                state.chat_streams_cut += 1
            else:
                await response.write(DONE_EVENT)
                state.chat_streams_completed += 1
        return response

    async def _fault(
        self, user: str, markers: dict[str, int | None], headers: dict[str, str] | None
    ) -> web.Response | None:
        """Apply the fault markers in force for a chat request; ``None`` means answer normally."""
        status = self.state.fault_status("chat", user, markers)
        if status is not None:
            extra = dict(headers or {})
            if status == 429:
                extra.update(retry_headers(1.0))
            return json_response(_marker_error_body(status), status, extra)
        full = orjson.dumps(completion("chatcmpl-truncated", "truncated", Reply("echo"), 1, 0))
        return await self.state.body_fault(markers, full, headers)

    # -- files -----------------------------------------------------------------------------

    def _store_file(self, content: bytes, filename: str, purpose: str) -> dict[str, Any]:
        state = self.state
        file_id = state.new_id("file-")
        meta = {
            "id": file_id,
            "object": "file",
            "bytes": len(content),
            "created_at": int(time.time()),
            "filename": filename,
            "purpose": purpose,
            "status": "processed",
            "expires_at": None,
            "status_details": None,
        }
        state.files[file_id] = meta
        state.file_contents[file_id] = content
        return meta

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if _bearer_ok(request.headers.get("Authorization")):
            return None
        return openai_error(401, "You didn't provide an API key.", code="invalid_api_key")

    def _file_or_404(self, file_id: str) -> dict[str, Any] | web.Response:
        meta = self.state.files.get(file_id)
        if meta is None:
            return openai_error(404, f"No such File object: {file_id}", param="id")
        return meta

    async def upload_file(self, request: web.Request) -> web.Response:
        """Store a multipart upload (``POST /v1/files``) and return its FileObject."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        if request.content_type != "multipart/form-data":
            return openai_error(400, "Expected a multipart/form-data body.")
        form = await request.post()
        upload = form.get("file")
        purpose = form.get("purpose")
        if not isinstance(purpose, str) or not purpose:
            return openai_error(400, "Missing required parameter: 'purpose'.", param="purpose")
        if upload is None or isinstance(upload, str):
            return openai_error(400, "Missing required parameter: 'file'.", param="file")
        content = upload.file.read()
        self.state.files_uploaded += 1
        if self.state.settings.upload_latency_ms:
            await asyncio.sleep(self.state.settings.upload_latency_ms / 1000)
        return json_response(self._store_file(content, upload.filename or "upload", purpose))

    async def retrieve_file(self, request: web.Request) -> web.Response:
        """Return the FileObject of ``GET /v1/files/{file_id}``."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        meta = self._file_or_404(request.match_info["file_id"])
        return meta if isinstance(meta, web.Response) else json_response(meta)

    async def delete_file(self, request: web.Request) -> web.Response:
        """Delete a stored file (``DELETE /v1/files/{file_id}``)."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        meta = self._file_or_404(request.match_info["file_id"])
        if isinstance(meta, web.Response):
            return meta
        del self.state.files[meta["id"]]
        self.state.file_contents.pop(meta["id"], None)
        return json_response({"id": meta["id"], "object": "file", "deleted": True})

    async def file_content(self, request: web.Request) -> web.Response:
        """Return the raw bytes of a stored file."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        meta = self._file_or_404(request.match_info["file_id"])
        if isinstance(meta, web.Response):
            return meta
        return web.Response(
            body=self.state.file_contents[meta["id"]], content_type="application/octet-stream"
        )

    # -- batches ---------------------------------------------------------------------------

    async def create_batch(self, request: web.Request) -> web.Response:
        """Create a batch (``POST /v1/batches``); its progress is derived from its age."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return openai_error(400, "We could not parse the JSON body of your request.")
        if not isinstance(body, dict):
            return openai_error(400, "The request body must be a JSON object.")
        file_id = body.get("input_file_id")
        if not isinstance(file_id, str) or file_id not in self.state.files:
            return openai_error(
                400, f"Invalid 'input_file_id': {file_id!r} is not a file.", param="input_file_id"
            )
        endpoint = body.get("endpoint")
        if endpoint != CHAT_PATH:
            return openai_error(
                400,
                f"Invalid 'endpoint': the simulator only runs {CHAT_PATH} batches.",
                param="endpoint",
            )
        window = body.get("completion_window")
        if window != "24h":
            return openai_error(
                400, "Invalid 'completion_window': expected '24h'.", param="completion_window"
            )
        metadata = body.get("metadata")
        if metadata is not None and not isinstance(metadata, dict):
            return openai_error(400, "Invalid 'metadata': expected an object.", param="metadata")
        state = self.state
        batch = _Batch(
            id=state.new_id("batch_"),
            input_file_id=file_id,
            endpoint=endpoint,
            completion_window=window,
            metadata=metadata,
            created=time.time(),
            duration=state.settings.batch_duration_s,
        )
        self._load_lines(batch, state.file_contents[file_id])
        state.batches[batch.id] = batch
        state.batches_created += 1
        return json_response(self._view(batch))

    def _load_lines(self, batch: _Batch, data: bytes) -> None:
        """Parse and validate the input JSONL; failures become the batch's ``errors``."""
        if len(data) > BATCH_MAX_BYTES:
            batch.errors = [
                {
                    "code": "file_too_large",
                    "message": f"The input file exceeds the {BATCH_MAX_BYTES} bytes limit.",
                    "param": None,
                    "line": None,
                }
            ]
            return
        raw_lines = [line for line in data.splitlines() if line.strip()]
        if len(raw_lines) > BATCH_MAX_LINES:
            batch.errors = [
                {
                    "code": "too_many_requests",
                    "message": f"The batch has {len(raw_lines)} requests, "
                    f"more than the {BATCH_MAX_LINES} allowed.",
                    "param": None,
                    "line": None,
                }
            ]
            return
        errors: list[dict[str, Any]] = []
        seen: set[str] = set()

        def problem(line_no: int, code: str, message: str, param: str | None = None) -> None:
            if len(errors) < BATCH_MAX_ERRORS:
                errors.append({"code": code, "message": message, "param": param, "line": line_no})

        for line_no, raw in enumerate(raw_lines, start=1):
            try:
                item = orjson.loads(raw)
            except orjson.JSONDecodeError:
                problem(line_no, "invalid_json_line", "This line is not parseable as valid JSON.")
                continue
            if not isinstance(item, dict):
                problem(line_no, "invalid_json_line", "This line is not a JSON object.")
                continue
            custom_id = item.get("custom_id")
            if not isinstance(custom_id, str) or not custom_id:
                problem(line_no, "missing_required_parameter", "Missing custom_id.", "custom_id")
                continue
            if custom_id in seen:
                problem(line_no, "duplicate_custom_id", f"Duplicate custom_id {custom_id!r}.")
                continue
            seen.add(custom_id)
            if item.get("method") != "POST":
                problem(line_no, "invalid_method", "The method must be POST.", "method")
                continue
            if item.get("url") != batch.endpoint:
                problem(line_no, "mismatched_endpoint", "The url must match the batch endpoint.")
                continue
            message, param, messages = _validate_chat(item.get("body"))
            if message:
                problem(line_no, "invalid_request", message, param)
                continue
            if item["body"].get("stream"):
                problem(line_no, "invalid_request", "A batch request cannot stream.", "stream")
                continue
            batch.lines.append(item)
            outcome, expires = batch_line_markers(_scan(messages).user)
            batch.outcomes.append(outcome)
            batch.expire = batch.expire or expires
            if batch.model is None:
                batch.model = item["body"]["model"]
        if errors:
            batch.errors = errors
        elif not batch.lines:
            batch.errors = [
                {"code": "empty_file", "message": "The input file is empty.", "param": None}
            ]
        batch.failed_prefix = [0, *accumulate(1 if o > 0 else 0 for o in batch.outcomes)]

    def _finish(self, batch: _Batch, done: int) -> None:
        """Write the output and error files for the first ``done`` lines (once)."""
        if batch.finished:
            return
        batch.finished = True
        state = self.state
        now = int(time.time())
        output: list[bytes] = []
        failures: list[bytes] = []
        prompt_total = completion_total = 0
        for item, outcome in zip(batch.lines[:done], batch.outcomes[:done], strict=True):
            if outcome < 0:
                continue
            body = item["body"]
            if outcome:
                result = {"status_code": outcome, "body": _marker_error_body(outcome)}
            else:
                scan = _scan(body["messages"])
                answer = scan.reply(_schema_of(body))
                payload = completion(
                    state.new_id("chatcmpl-"), body["model"], answer, scan.prompt_tokens, now
                )
                prompt_total += scan.prompt_tokens
                completion_total += payload["usage"]["completion_tokens"]
                result = {"status_code": 200, "body": payload}
            line = {
                "id": state.new_id("batch_req_"),
                "custom_id": item["custom_id"],
                "response": {
                    "status_code": result["status_code"],
                    "request_id": state.new_id("req_"),
                    "body": result["body"],
                },
                "error": None,
            }
            (failures if outcome else output).append(orjson.dumps(line))
        if output:
            name = f"{batch.id}_output.jsonl"
            batch.output_file_id = self._store_file(
                b"\n".join(output) + b"\n", name, "batch_output"
            )["id"]
        if failures:
            name = f"{batch.id}_error.jsonl"
            batch.error_file_id = self._store_file(
                b"\n".join(failures) + b"\n", name, "batch_output"
            )["id"]
        batch.usage = {
            "input_tokens": prompt_total,
            "input_tokens_details": {"cached_tokens": 0},
            "output_tokens": completion_total,
            "output_tokens_details": {"reasoning_tokens": 0},
            "total_tokens": prompt_total + completion_total,
        }

    def _progress(self, batch: _Batch, at: float) -> int:
        """Return how many lines are processed ``at`` a given time (in_progress phase)."""
        fraction = (at - batch.created) / batch.duration
        share = min(max((fraction - 0.1) / 0.6, 0.0), 1.0)
        return int(batch.total * share)

    def _view(self, batch: _Batch) -> dict[str, Any]:
        """Return the Batch object as of now, advancing the batch's lifecycle lazily."""
        now = time.time()
        created, duration = batch.created, batch.duration
        view: dict[str, Any] = {
            "id": batch.id,
            "object": "batch",
            "endpoint": batch.endpoint,
            "model": batch.model,
            "errors": None,
            "input_file_id": batch.input_file_id,
            "completion_window": batch.completion_window,
            "status": "validating",
            "output_file_id": None,
            "error_file_id": None,
            "created_at": int(created),
            "in_progress_at": None,
            "expires_at": int(created) + COMPLETION_WINDOW_S,
            "finalizing_at": None,
            "completed_at": None,
            "failed_at": None,
            "expired_at": None,
            "cancelling_at": None,
            "cancelled_at": None,
            "request_counts": {"total": 0, "completed": 0, "failed": 0},
            "metadata": batch.metadata,
            "usage": None,
        }
        fraction = (now - created) / duration
        if batch.cancelling_at is not None:
            view["cancelling_at"] = int(batch.cancelling_at)
            view["request_counts"] = batch.counts(batch.cancel_done)
            if fraction >= 0.1:
                view["in_progress_at"] = int(created + 0.1 * duration)
            cancelled_at = batch.cancelling_at + 0.1 * duration
            if now < cancelled_at:
                view["status"] = "cancelling"
                return view
            self._finish(batch, batch.cancel_done)
            view.update(
                status="cancelled",
                cancelled_at=int(cancelled_at),
                output_file_id=batch.output_file_id,
                error_file_id=batch.error_file_id,
                usage=batch.usage,
            )
            return view
        if fraction < 0.1:
            return view
        if batch.errors is not None:
            view.update(
                status="failed",
                failed_at=int(created + 0.1 * duration),
                errors={"object": "list", "data": batch.errors},
            )
            return view
        view["in_progress_at"] = int(created + 0.1 * duration)
        done = 0 if batch.expire else self._progress(batch, now)
        view["request_counts"] = batch.counts(done)
        if fraction < 0.7:
            view["status"] = "in_progress"
            return view
        if batch.expire:
            if fraction >= 1:
                view.update(status="expired", expired_at=int(created + duration))
            else:
                view["status"] = "in_progress"
            return view
        view["finalizing_at"] = int(created + 0.7 * duration)
        if fraction < 1:
            view["status"] = "finalizing"
            return view
        self._finish(batch, batch.total)
        view.update(
            status="completed",
            completed_at=int(created + duration),
            output_file_id=batch.output_file_id,
            error_file_id=batch.error_file_id,
            usage=batch.usage,
        )
        return view

    def _batch_or_404(self, batch_id: str) -> _Batch | web.Response:
        batch = self.state.batches.get(batch_id)
        if batch is None:
            return openai_error(404, f"No batch found with id '{batch_id}'.", param="id")
        return batch

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        """Return the Batch object of ``GET /v1/batches/{batch_id}``."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        batch = self._batch_or_404(request.match_info["batch_id"])
        if isinstance(batch, web.Response):
            return batch
        return json_response(self._view(batch))

    async def list_batches(self, request: web.Request) -> web.Response:
        """List batches, newest first, with OpenAI's ``after``/``limit`` cursor paging."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            limit = int(request.query.get("limit", "20"))
        except ValueError:
            return openai_error(400, "Invalid 'limit': expected an integer.", param="limit")
        if not 1 <= limit <= 100:
            return openai_error(400, "Invalid 'limit': must be between 1 and 100.", param="limit")
        ids = list(reversed(self.state.batches))
        after = request.query.get("after")
        start = 0
        if after:
            try:
                start = ids.index(after) + 1
            except ValueError:
                return openai_error(
                    400, f"Invalid 'after': unknown batch {after!r}.", param="after"
                )
        page = ids[start : start + limit]
        data = [self._view(self.state.batches[batch_id]) for batch_id in page]
        return json_response(
            {
                "object": "list",
                "data": data,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
                "has_more": start + limit < len(ids),
            }
        )

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """Cancel a running batch: ``cancelling`` now, ``cancelled`` a moment later."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        batch = self._batch_or_404(request.match_info["batch_id"])
        if isinstance(batch, web.Response):
            return batch
        view = self._view(batch)
        if view["status"] in ("validating", "in_progress", "finalizing"):
            now = time.time()
            batch.cancelling_at = now
            batch.cancel_done = 0 if batch.expire else self._progress(batch, now)
            return json_response(self._view(batch))
        if view["status"] in ("cancelling", "cancelled"):
            return json_response(view)
        return openai_error(
            409, f"Cannot cancel a batch with status '{view['status']}'.", code="conflict"
        )

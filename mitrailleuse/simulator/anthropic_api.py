"""Fake Anthropic endpoints: the Messages API and Message Batches.

Answers are shaped so that the real ``anthropic`` SDK parses them into its own types, and the
answer text is the OpenAI simulator's (:func:`chat_answer`): ``system`` plays the part of the
system message, so one test can drive either provider and expect the same text and the same
token estimates.

Choices where the real API gives no exact model to copy:

* Auth: an ``x-api-key`` header or ``Authorization: Bearer`` (the SDK's 2.x ``api_key`` is
  sent as a bearer token); ``anthropic-version`` is accepted but not required.
* Rate limits share the simulator's rpm/tpm windows (:meth:`SimState.admit`); the
  ``anthropic-ratelimit-{requests,tokens}-*`` headers report them, each reset being when the
  window is fully replenished (RFC 3339, rounded up to the second). The tokens figure counts
  input plus output tokens, so no separate ``input-tokens``/``output-tokens`` headers are sent.
* ``error_rate`` draws give 500 ``api_error`` (the knob's documented meaning); 529 comes from
  the ``[[status:529]]`` marker.
* ``[[spend-limit]]`` answers 429 ``rate_limit_error`` with no ``retry-after`` and the
  ``enforced_spend_limit_reached`` error code (the SDK raises ``EnforcedSpendLimitReachedError``,
  a ``RateLimitError``).
* Batches: request params are checked asynchronously, as the real API does: a bad one ends
  ``errored``. ``request_counts`` show every request ``processing`` until the batch ends,
  ``batch_duration_s`` after creation. ``[[batch-expire]]`` in any request ends the whole batch
  then with every request ``expired``; ``[[status:N]]`` makes its request ``errored``;
  ``[[batch-missing]]`` counts its request as succeeded but leaves it out of the results.
  A cancel ends the batch a tenth of ``batch_duration_s`` later; the requests already processed
  (a linear share of the elapsed duration) keep their result, the others are ``canceled``.
  Results come in a shuffled order (never the input order), as the real API warns they may.
* Structured outputs: a ``tool_choice`` of type ``tool`` (naming one of ``tools``) gets a
  ``tool_use`` block calling that tool, its ``input`` an object following the tool's
  ``input_schema`` (``schema_answers``), and ``stop_reason`` ``"tool_use"``. The markers of the
  first user message: ``[[schema-invalid]]`` / ``[[schema-invalid-once]]`` make that input
  break the schema (the second not in a re-ask, which holds an assistant message);
  ``[[refusal]]`` answers ``stop_reason`` ``"refusal"`` with a text block saying sorry (no
  tool_use); ``[[length]]`` ``stop_reason`` ``"max_tokens"`` with the tool's ``input`` cut to
  ``{}`` (a plain answer: its text cut in half). The last two act on plain answers too.
"""

from __future__ import annotations

import math
import os
import random
import re
import time
from collections import Counter
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from aiohttp import web

from mitrailleuse.simulator.app import (
    WINDOW_S,
    Admission,
    SimState,
    batch_line_markers,
    parse_markers,
    retry_headers,
)
from mitrailleuse.simulator.openai_api import Scan, _bearer_ok, _scan
from mitrailleuse.simulator.schema_answers import Reply

MESSAGES_PATH = "/v1/messages"
BATCHES_PATH = "/v1/messages/batches"
API = "anthropic"
BATCH_MAX_REQUESTS = 100_000
BATCH_MAX_BYTES = 256 * 1024 * 1024
BATCH_EXPIRY_S = 24 * 3600
LIST_MAX_LIMIT = 1000
CUSTOM_ID_PATTERN = "^[a-zA-Z0-9_-]{1,64}$"
SPEND_LIMIT_CODE = "enforced_spend_limit_reached"

_CUSTOM_ID_RE = re.compile(CUSTOM_ID_PATTERN)
_ERROR_TYPES = {
    400: "invalid_request_error",
    401: "authentication_error",
    402: "billing_error",
    403: "permission_error",
    404: "not_found_error",
    413: "request_too_large",
    429: "rate_limit_error",
    500: "api_error",
    504: "timeout_error",
    529: "overloaded_error",
}
_STOP_REASONS = {"stop": "end_turn", "refusal": "refusal", "length": "max_tokens"}


def error_type(status: int) -> str:
    """Anthropic's ``error.type`` for an HTTP status."""
    default = "api_error" if status >= 500 else "invalid_request_error"
    return _ERROR_TYPES.get(status, default)


def anthropic_error_body(
    status: int, message: str, details: dict[str, Any] | None = None
) -> dict[str, Any]:
    """Build an Anthropic-shaped error body (also the ``error`` of an errored batch result)."""
    error: dict[str, Any] = {"type": error_type(status), "message": message}
    if details is not None:
        error["details"] = details
    return {"type": "error", "error": error}


def _marker_message(status: int) -> str:
    if status == 529:
        return "Overloaded"
    return f"Simulated error {status} ([[status:{status}]] marker)."


def _spend_limit_message() -> str:
    """The real API's wording: access returns on the first of next month."""
    now = datetime.now(UTC)
    year, month = (now.year + 1, 1) if now.month == 12 else (now.year, now.month + 1)
    return (
        "You have reached your specified API usage limits. "
        f"You will regain access on {year:04d}-{month:02d}-01 at 00:00 UTC."
    )


def rfc3339(t: float, timespec: str = "microseconds") -> str:
    """Format a Unix time as the API does (``2026-12-04T20:00:01.123456Z``)."""
    return datetime.fromtimestamp(t, UTC).isoformat(timespec=timespec).replace("+00:00", "Z")


def _text_blocks_ok(content: Any) -> bool:
    """Whether ``content`` is a string or a list of blocks whose text blocks carry text."""
    if isinstance(content, str):
        return True
    return isinstance(content, list) and all(
        isinstance(block, dict)
        and isinstance(block.get("type"), str)
        and (block["type"] != "text" or isinstance(block.get("text"), str))
        for block in content
    )


def validate_params(body: Any) -> str:
    """Return why ``body`` is not valid Messages API params (pydantic-style), or ``""``."""
    if not isinstance(body, dict):
        return "Input should be a valid dictionary."
    for name in ("model", "max_tokens", "messages"):
        if name not in body:
            return f"{name}: Field required"
    if not isinstance(body["model"], str) or not body["model"]:
        return "model: Input should be a valid string"
    max_tokens = body["max_tokens"]
    if not isinstance(max_tokens, int) or isinstance(max_tokens, bool):
        return "max_tokens: Input should be a valid integer"
    if max_tokens < 1:
        return "max_tokens: Input should be greater than or equal to 1"
    messages = body["messages"]
    if not isinstance(messages, list):
        return "messages: Input should be a valid list"
    if not messages:
        return "messages: at least one message is required"
    for index, message in enumerate(messages):
        if not isinstance(message, dict):
            return f"messages.{index}: Input should be a valid dictionary"
        if message.get("role") not in ("user", "assistant"):
            return f"messages.{index}.role: Input should be 'user' or 'assistant'"
        if not _text_blocks_ok(message.get("content")):
            return f"messages.{index}.content: Input should be a valid string or list of blocks"
    system = body.get("system")
    if system is not None and not _text_blocks_ok(system):
        return "system: Input should be a valid string or list of text blocks"
    if body.get("stream"):
        return "stream: the simulator does not support stream=true"
    choice = body.get("tool_choice")
    if isinstance(choice, dict) and choice.get("type") == "tool" and forced_tool(body)[0] is None:
        return f"tool_choice: no tool named {choice.get('name')!r} with an input_schema in tools"
    return ""


def read_params(body: dict[str, Any]) -> Scan:
    """Read valid Messages params.

    The system prompt is scanned as a leading OpenAI system message, so the text and the
    token estimate are exactly the OpenAI simulator's for the same conversation.
    """
    system = body.get("system")
    lead = [] if system is None else [{"role": "system", "content": system}]
    return _scan([*lead, *body["messages"]])


def forced_tool(body: dict[str, Any]) -> tuple[str | None, dict[str, Any] | None]:
    """The tool ``tool_choice`` makes the model call and its input schema, or ``(None, None)``."""
    choice = body.get("tool_choice")
    tools = body.get("tools")
    if isinstance(choice, dict) and choice.get("type") == "tool" and isinstance(tools, list):
        for tool in tools:
            if (
                isinstance(tool, dict)
                and tool.get("name") == choice.get("name")
                and isinstance(tool.get("input_schema"), dict)
            ):
                return tool["name"], tool["input_schema"]
    return None, None


def message_object(
    message_id: str,
    model: str,
    answer: Reply,
    tool: str | None,
    input_tokens: int,
    service_tier: str,
) -> dict[str, Any]:
    """Build a ``message`` object answering ``answer``, as a call of ``tool`` when one is forced."""
    stop_reason = _STOP_REASONS[answer.ending]
    if tool is None or answer.ending == "refusal":
        content = [{"type": "text", "text": answer.text}]
    else:
        tool_id = "toolu_" + os.urandom(12).hex()
        content = [{"type": "tool_use", "id": tool_id, "name": tool, "input": answer.value}]
        stop_reason = "tool_use" if answer.ending == "stop" else stop_reason
    return {
        "id": message_id,
        "type": "message",
        "role": "assistant",
        "model": model,
        "content": content,
        "stop_reason": stop_reason,
        "stop_sequence": None,
        "usage": {
            "input_tokens": input_tokens,
            "cache_creation_input_tokens": 0,
            "cache_read_input_tokens": 0,
            "output_tokens": (len(answer.text) + 3) // 4,
            "service_tier": service_tier,
        },
    }


def _ratelimit_family(
    headers: dict[str, str], name: str, limit: int, remaining: int, reset: float
) -> None:
    prefix = f"anthropic-ratelimit-{name}-"
    headers[prefix + "limit"] = str(limit)
    headers[prefix + "remaining"] = str(max(remaining, 0))
    headers[prefix + "reset"] = rfc3339(math.ceil(reset), "seconds")


_NO_ANSWER = Reply("")
"""The answer of a batch request refused at creation: it is never sent."""


@dataclass(slots=True)
class _Request:
    """One batch request, judged at creation: its answer or the error it will end with."""

    custom_id: str
    model: str = ""
    answer: Reply = _NO_ANSWER
    tool: str | None = None
    input_tokens: int = 0
    error: tuple[int, str] | None = None
    missing: bool = False


@dataclass
class _MessageBatch:
    """One Message Batch: its requests and what happened to it."""

    id: str
    created: float
    duration: float
    requests: list[_Request]
    expire: bool
    cancel_at: float | None = None
    cancel_done: int = 0
    outcomes: list[str] | None = None
    results: bytes | None = None

    def end_time(self) -> float:
        """When processing ends (or ended)."""
        if self.cancel_at is not None:
            return self.cancel_at + 0.1 * self.duration
        return self.created + self.duration

    def processed(self, at: float) -> int:
        """How many requests are processed ``at`` a given time (linear over the duration)."""
        if self.expire:
            return 0
        share = min(max((at - self.created) / self.duration, 0.0), 1.0)
        return int(len(self.requests) * share)


class AnthropicApi:
    """Handlers of the fake Anthropic API, bound to one simulator state."""

    def __init__(self, state: SimState) -> None:
        self.state = state
        self.batches: dict[str, _MessageBatch] = {}

    def routes(self) -> list[web.RouteDef]:
        """Return the route table of the Anthropic endpoints."""
        batch = BATCHES_PATH + "/{message_batch_id}"
        return [
            web.post(MESSAGES_PATH, self.create_message),
            web.post(BATCHES_PATH, self.create_batch),
            web.get(BATCHES_PATH, self.list_batches),
            web.get(batch, self.retrieve_batch),
            web.delete(batch, self.delete_batch),
            web.post(batch + "/cancel", self.cancel_batch),
            web.get(batch + "/results", self.batch_results),
        ]

    # -- responses -------------------------------------------------------------------------

    def _json(self, payload: Any, headers: dict[str, str] | None = None) -> web.Response:
        """A 200 JSON answer carrying a ``request-id`` header, as every real answer does."""
        return web.Response(
            body=orjson.dumps(payload),
            headers={**(headers or {}), "request-id": self.state.new_id("req_")},
            content_type="application/json",
        )

    def _error(
        self,
        status: int,
        message: str,
        headers: dict[str, str] | None = None,
        details: dict[str, Any] | None = None,
    ) -> web.Response:
        """Answer ``status`` with an Anthropic-shaped error body and its ``request_id``."""
        request_id = self.state.new_id("req_")
        body = {**anthropic_error_body(status, message, details), "request_id": request_id}
        return web.Response(
            body=orjson.dumps(body),
            status=status,
            headers={**(headers or {}), "request-id": request_id},
            content_type="application/json",
        )

    def _unauthorized(self, request: web.Request) -> web.Response | None:
        if request.headers.get("x-api-key", "").strip():
            return None
        if _bearer_ok(request.headers.get("Authorization")):
            return None
        return self._error(401, "x-api-key header is required")

    def _ratelimit_headers(self) -> dict[str, str]:
        """Anthropic's view of the shared windows, read right after :meth:`SimState.admit`."""
        state = self.state
        rpm, tpm = state.settings.rpm, state.settings.tpm
        headers: dict[str, str] = {}
        offset = time.time() - time.monotonic()
        if rpm is not None:
            window = state.request_window
            full = window[-1] + WINDOW_S if window else time.monotonic()
            _ratelimit_family(headers, "requests", rpm, rpm - len(window), full + offset)
        if tpm is not None:
            tokens = state.token_window
            full = tokens[-1][0] + WINDOW_S if tokens else time.monotonic()
            _ratelimit_family(headers, "tokens", tpm, tpm - state.token_sum, full + offset)
        return headers

    def _rate_limited(self, admission: Admission, headers: dict[str, str]) -> web.Response:
        settings = self.state.settings
        limit = (
            f"{settings.rpm} requests" if admission.kind == "requests" else f"{settings.tpm} tokens"
        )
        message = (
            f"This request would exceed the rate limit for your organization of {limit} per "
            "minute. For details, refer to: https://docs.claude.com/en/api/rate-limits. You can "
            "see the response headers for current usage. Please reduce the prompt length or the "
            "maximum tokens requested, or try again later."
        )
        retry_after = retry_headers(admission.wait_s)["Retry-After"]
        return self._error(429, message, {**headers, "retry-after": retry_after})

    # -- messages --------------------------------------------------------------------------

    async def create_message(self, request: web.Request) -> web.Response:
        """Answer ``POST /v1/messages`` and log it."""
        started = time.time()
        texts: list[str] = []
        response = await self._message(request, texts)
        self.state.record(started, MESSAGES_PATH, response.status, texts)
        return response

    async def _message(self, request: web.Request, texts: list[str]) -> web.Response:
        state = self.state
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        try:
            body = orjson.loads(await request.read())
        except orjson.JSONDecodeError:
            return self._error(400, "There was an error parsing the body of your request.")
        problem = validate_params(body)
        if problem:
            return self._error(400, problem)
        scan = read_params(body)
        user = scan.user
        texts.append(user)
        tool, schema = forced_tool(body)
        if schema is not None:
            state.structured_requests += 1
        answer = scan.reply(schema)
        admission = state.admit(scan.prompt_tokens + (len(answer.text) + 3) // 4)
        headers = self._ratelimit_headers()
        if admission.rejected:
            return self._rate_limited(admission, headers)
        await state.delay()
        markers = parse_markers(user)
        if markers is not None:
            response = await self._fault(user, markers, headers)
            if response is not None:
                return response
        if state.random_failure():
            return self._error(500, "Internal server error", headers)
        message = message_object(
            state.new_id("msg_"), body["model"], answer, tool, scan.prompt_tokens, "standard"
        )
        return self._json(message, headers)

    async def _fault(
        self, user: str, markers: dict[str, int | None], headers: dict[str, str]
    ) -> web.Response | None:
        """Apply the fault markers of a message request; ``None`` means answer normally."""
        state = self.state
        markers = state.active_markers(API, user, markers)
        status = state.fault_status(API, user, markers)
        if status is not None:
            extra = {**headers, "retry-after": "1"} if status == 429 else headers
            return self._error(status, _marker_message(status), extra)
        if "spend-limit" in markers:
            details = {"error_code": SPEND_LIMIT_CODE}
            return self._error(429, _spend_limit_message(), headers, details)
        full = orjson.dumps(
            message_object("msg_truncated", "truncated", Reply("echo"), None, 1, "standard")
        )
        return await state.body_fault(markers, full, headers)

    # -- batches ---------------------------------------------------------------------------

    def _judge(self, custom_id: str, params: dict[str, Any]) -> tuple[_Request, bool]:
        """Judge one batch request at creation; the flag says it makes the batch expire."""
        problem = validate_params(params)
        if problem:
            return _Request(custom_id, error=(400, problem)), False
        scan = read_params(params)
        tool, schema = forced_tool(params)
        item = _Request(custom_id, params["model"], scan.reply(schema), tool, scan.prompt_tokens)
        outcome, expires = batch_line_markers(scan.user)
        if outcome > 0:
            item.error = (outcome, _marker_message(outcome))
        item.missing = outcome < 0
        return item, expires

    async def create_batch(self, request: web.Request) -> web.Response:
        """Create a Message Batch (``POST /v1/messages/batches``); it ends as it ages."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        raw = await request.read()
        if len(raw) > BATCH_MAX_BYTES:
            return self._error(413, f"Request exceeds the maximum size of {BATCH_MAX_BYTES} bytes.")
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError:
            return self._error(400, "There was an error parsing the body of your request.")
        entries = body.get("requests") if isinstance(body, dict) else None
        if not isinstance(entries, list):
            return self._error(400, "requests: Input should be a valid list")
        if not 1 <= len(entries) <= BATCH_MAX_REQUESTS:
            return self._error(
                400, f"requests: List should have between 1 and {BATCH_MAX_REQUESTS} items"
            )
        requests: list[_Request] = []
        expire = False
        seen: set[str] = set()
        for index, entry in enumerate(entries):
            problem = _entry_problem(index, entry, seen)
            if problem:
                return self._error(400, problem)
            item, expires = self._judge(entry["custom_id"], entry["params"])
            requests.append(item)
            expire = expire or expires
        state = self.state
        batch = _MessageBatch(
            id=state.new_id("msgbatch_"),
            created=time.time(),
            duration=state.settings.batch_duration_s,
            requests=requests,
            expire=expire,
        )
        self.batches[batch.id] = batch
        state.batches_created += 1
        state.anthropic_batches_created += 1
        return self._json(self._view(batch, request))

    def _outcomes(self, batch: _MessageBatch) -> list[str]:
        """Each request's result type, once the batch has ended."""
        if batch.outcomes is None:
            if batch.cancel_at is not None:
                done, rest = batch.cancel_done, "canceled"
            elif batch.expire:
                done, rest = 0, "expired"
            else:
                done, rest = len(batch.requests), ""
            batch.outcomes = [
                ("errored" if item.error else "succeeded") if index < done else rest
                for index, item in enumerate(batch.requests)
            ]
        return batch.outcomes

    def _view(self, batch: _MessageBatch, request: web.Request) -> dict[str, Any]:
        """Return the ``message_batch`` object as of now."""
        ended_at = batch.end_time()
        ended = time.time() >= ended_at
        counts = dict.fromkeys(("processing", "succeeded", "errored", "canceled", "expired"), 0)
        if ended:
            counts.update(Counter(self._outcomes(batch)))
            status = "ended"
        else:
            counts["processing"] = len(batch.requests)
            status = "in_progress" if batch.cancel_at is None else "canceling"
        results_url = f"{request.url.origin()}{BATCHES_PATH}/{batch.id}/results"
        return {
            "id": batch.id,
            "type": "message_batch",
            "processing_status": status,
            "request_counts": counts,
            "ended_at": rfc3339(ended_at) if ended else None,
            "created_at": rfc3339(batch.created),
            "expires_at": rfc3339(batch.created + BATCH_EXPIRY_S),
            "cancel_initiated_at": None if batch.cancel_at is None else rfc3339(batch.cancel_at),
            "archived_at": None,
            "results_url": results_url if ended else None,
        }

    def _results(self, batch: _MessageBatch) -> bytes:
        """The results file of an ended batch, built once, in a shuffled order."""
        if batch.results is None:
            state = self.state
            lines: list[bytes] = []
            for item, outcome in zip(batch.requests, self._outcomes(batch), strict=True):
                if outcome in ("canceled", "expired"):
                    result: dict[str, Any] = {"type": outcome}
                elif item.error is not None:
                    result = {"type": "errored", "error": anthropic_error_body(*item.error)}
                elif item.missing:
                    continue
                else:
                    message = message_object(
                        state.new_id("msg_"),
                        item.model,
                        item.answer,
                        item.tool,
                        item.input_tokens,
                        "batch",
                    )
                    result = {"type": "succeeded", "message": message}
                lines.append(orjson.dumps({"custom_id": item.custom_id, "result": result}))
            shuffled = lines.copy()
            random.Random(state.settings.seed).shuffle(shuffled)
            if shuffled == lines:
                shuffled.reverse()
            batch.results = b"".join(line + b"\n" for line in shuffled)
        return batch.results

    def _lookup(self, request: web.Request) -> _MessageBatch | web.Response:
        """The batch named in the path, or the 401/404 answer."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        batch_id = request.match_info["message_batch_id"]
        batch = self.batches.get(batch_id)
        if batch is None:
            return self._error(404, f"No Message Batch found with id '{batch_id}'.")
        return batch

    async def retrieve_batch(self, request: web.Request) -> web.Response:
        """Return the batch of ``GET /v1/messages/batches/{id}``."""
        batch = self._lookup(request)
        if isinstance(batch, web.Response):
            return batch
        return self._json(self._view(batch, request))

    async def list_batches(self, request: web.Request) -> web.Response:
        """List batches, newest first, with the ``after_id``/``before_id``/``limit`` cursors."""
        denied = self._unauthorized(request)
        if denied is not None:
            return denied
        query = request.query
        try:
            limit = int(query.get("limit", "20"))
        except ValueError:
            return self._error(400, "limit: Input should be a valid integer")
        if not 1 <= limit <= LIST_MAX_LIMIT:
            return self._error(400, f"limit: Input should be between 1 and {LIST_MAX_LIMIT}")
        after, before = query.get("after_id"), query.get("before_id")
        if after and before:
            return self._error(400, "Only one of after_id and before_id may be given.")
        cursor = after or before
        if cursor and cursor not in self.batches:
            return self._error(400, f"No Message Batch found with id '{cursor}'.")
        ids = list(reversed(self.batches))
        if before:
            end = ids.index(before)
            start = max(end - limit, 0)
            has_more = start > 0
        else:
            start = ids.index(after) + 1 if after else 0
            end = start + limit
            has_more = end < len(ids)
        page = ids[start:end]
        return self._json(
            {
                "data": [self._view(self.batches[batch_id], request) for batch_id in page],
                "has_more": has_more,
                "first_id": page[0] if page else None,
                "last_id": page[-1] if page else None,
            }
        )

    async def cancel_batch(self, request: web.Request) -> web.Response:
        """Cancel a batch: ``canceling`` now, ``ended`` a moment later."""
        batch = self._lookup(request)
        if isinstance(batch, web.Response):
            return batch
        now = time.time()
        if now >= batch.end_time():
            return self._error(400, f"Message Batch {batch.id} has ended and cannot be canceled.")
        if batch.cancel_at is None:
            batch.cancel_at = now
            batch.cancel_done = batch.processed(now)
        return self._json(self._view(batch, request))

    async def delete_batch(self, request: web.Request) -> web.Response:
        """Delete an ended batch (``DELETE /v1/messages/batches/{id}``)."""
        batch = self._lookup(request)
        if isinstance(batch, web.Response):
            return batch
        if time.time() < batch.end_time():
            return self._error(
                400, f"Message Batch {batch.id} is still processing; cancel it before deleting it."
            )
        del self.batches[batch.id]
        return self._json({"id": batch.id, "type": "message_batch_deleted"})

    async def batch_results(self, request: web.Request) -> web.Response:
        """Return the results of an ended batch as JSON Lines."""
        batch = self._lookup(request)
        if isinstance(batch, web.Response):
            return batch
        if time.time() < batch.end_time():
            return self._error(
                400, f"Message Batch {batch.id} has not ended yet: its results are not available."
            )
        return web.Response(
            body=self._results(batch),
            headers={"request-id": self.state.new_id("req_")},
            content_type="application/x-jsonl",
        )


def _entry_problem(index: int, entry: Any, seen: set[str]) -> str:
    """Why a batch's ``requests[index]`` is refused at creation (and note its custom_id)."""
    if not isinstance(entry, dict):
        return f"requests.{index}: Input should be a valid dictionary"
    custom_id = entry.get("custom_id")
    if not isinstance(custom_id, str) or not _CUSTOM_ID_RE.fullmatch(custom_id):
        return f"requests.{index}.custom_id: String should match pattern '{CUSTOM_ID_PATTERN}'"
    if custom_id in seen:
        return (
            f"requests.{index}.custom_id: '{custom_id}' is already used by another request; "
            "custom_id values must be unique within a Message Batch."
        )
    seen.add(custom_id)
    if not isinstance(entry.get("params"), dict):
        return f"requests.{index}.params: Input should be a valid dictionary"
    return ""

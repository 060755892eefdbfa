"""Application factory and the state shared by the fake OpenAI and DeepL endpoints.

Everything here runs on one event loop, so the state is mutated without locks: a check
and the update it guards never have an ``await`` between them.
"""

from __future__ import annotations

import asyncio
import math
import os
import random
import re
import time
from collections import defaultdict, deque
from collections.abc import Awaitable, Callable
from itertools import count
from typing import Any

import orjson
from aiohttp import web
from pydantic import ValidationError

from mitrailleuse.simulator.settings import SimulatorSettings

LOG_LIMIT = 200_000
"""The request log keeps only this many most recent entries."""

WINDOW_S = 60.0
"""Length of the sliding rate-limit window (requests and tokens per minute)."""

MAX_UPLOAD_BYTES = 512 * 1024 * 1024
"""Largest accepted request body (OpenAI's file size limit)."""

_MARKER_RE = re.compile(r"\[\[([a-z-]+)(?::(\d{3}))?\]\]")

STATELESS_ONCE = frozenset({"schema-invalid-once"})
"""``-once`` markers with a meaning of their own, that keeps no state (see ``schema_answers``)."""

HTML_502 = (
    b"<html>\r\n<head><title>502 Bad Gateway</title></head>\r\n<body>\r\n"
    b"<center><h1>502 Bad Gateway</h1></center>\r\n<hr><center>cloudflare</center>\r\n"
    b"</body>\r\n</html>\r\n"
)
"""The page a ``[[html]]`` fault answers with (a proxy's 502), unless an API has its own."""

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def parse_markers(text: str) -> dict[str, int | None] | None:
    """Return the ``[[name]]`` / ``[[name:NNN]]`` fault markers found in ``text``.

    Returns ``None`` (the fast, common case) when the text holds no marker at all.
    """
    if "[[" not in text:
        return None
    found: dict[str, int | None] = {}
    for match in _MARKER_RE.finditer(text):
        code = match.group(2)
        found.setdefault(match.group(1), int(code) if code else None)
    return found or None


def batch_line_markers(text: str) -> tuple[int, bool]:
    """Read the batch markers of one request of a batch: ``(outcome, expires)``.

    The outcome is the status of ``[[status:N]]`` (N >= 300: the request fails), -1 for
    ``[[batch-missing]]`` (it succeeds but is left out of the results), else 0; ``expires`` says
    ``[[batch-expire]]`` makes the whole batch expire.
    """
    markers = parse_markers(text)
    if markers is None:
        return 0, False
    outcome = 0
    code = markers.get("status")
    if code is not None and code >= 300:
        outcome = code
    elif "batch-missing" in markers:
        outcome = -1
    return outcome, "batch-expire" in markers


def json_response(
    payload: Any, status: int = 200, headers: dict[str, str] | None = None
) -> web.Response:
    """Serialize ``payload`` with orjson into a JSON response."""
    return web.Response(
        body=orjson.dumps(payload), status=status, headers=headers, content_type="application/json"
    )


def format_duration(seconds: float) -> str:
    """Format a delay like OpenAI's ``x-ratelimit-reset-*`` headers (``"120ms"``, ``"1m3s"``)."""
    seconds = max(seconds, 0.0)
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    minutes, rest = divmod(seconds, 60)
    rest_text = f"{round(rest, 3):g}s"
    return f"{int(minutes)}m{rest_text}" if minutes else rest_text


def retry_headers(wait_s: float) -> dict[str, str]:
    """Build the ``Retry-After`` / ``retry-after-ms`` pair for a wait of ``wait_s``."""
    wait_s = max(wait_s, 0.001)
    return {"Retry-After": str(math.ceil(wait_s)), "retry-after-ms": str(math.ceil(wait_s * 1000))}


class Admission:
    """Outcome of the rate limiter for one request."""

    __slots__ = ("headers", "kind", "message", "wait_s")

    def __init__(
        self,
        headers: dict[str, str] | None,
        kind: str | None = None,
        wait_s: float = 0.0,
        message: str = "",
    ) -> None:
        self.headers = headers
        self.kind = kind
        self.wait_s = wait_s
        self.message = message

    @property
    def rejected(self) -> bool:
        """Whether the request must be answered 429."""
        return self.kind is not None


_UNLIMITED = Admission(None)


class SimState:
    """Counters, rate windows, request log, stored files and batches of one simulator."""

    def __init__(self, settings: SimulatorSettings) -> None:
        self.settings = settings
        self.token = os.urandom(4).hex()
        self._ids = count(1)
        self.files: dict[str, dict[str, Any]] = {}
        self.file_contents: dict[str, bytes] = {}
        self.batches: dict[str, Any] = {}
        self.in_flight = 0
        self.latency_rng = random.Random(settings.seed)
        self.error_rng = random.Random(settings.seed + 1)
        self.reset()

    def reset(self) -> None:
        """Forget counters, the log, rate windows, attempt counts and DeepL usage."""
        self.requests: defaultdict[str, int] = defaultdict(int)
        self.status_counts: defaultdict[int, int] = defaultdict(int)
        self.max_in_flight = self.in_flight
        self.chat_requests = 0
        self.translate_requests = 0
        self.translated_texts = 0
        self.batches_created = 0
        self.anthropic_batches_created = 0
        self.gemini_requests = 0
        self.gemini_batches_created = 0
        self.structured_requests = 0  # Live calls asking for a JSON Schema answer (any API).
        self.chat_streams = 0  # Chat answers streamed (stream=true, begun: not refused first).
        self.chat_streams_completed = 0  # ... that reached [DONE],
        self.chat_streams_cut = 0  # ... cut by [[cut-stream]] or [[end-stream-early]],
        self.chat_streams_errored = 0  # ... ended by [[stream-error]]'s error event.
        self.files_uploaded = 0
        self.deepl_characters = 0
        self.request_window: deque[float] = deque()
        self.token_window: deque[tuple[float, int]] = deque()
        self.token_sum = 0
        self.attempts: dict[tuple[str, str], int] = {}
        self.log: deque[tuple[float, str, int, list[str]]] = deque(maxlen=LOG_LIMIT)

    def configure(self, changes: dict[str, Any]) -> SimulatorSettings:
        """Apply a partial settings update, reseeding the generators when ``seed`` changes."""
        merged = {**self.settings.model_dump(), **changes}
        self.settings = SimulatorSettings.model_validate(merged)
        if "seed" in changes:
            self.latency_rng.seed(self.settings.seed)
            self.error_rng.seed(self.settings.seed + 1)
        return self.settings

    def new_id(self, prefix: str) -> str:
        """Return an identifier unique to this simulator process (and across restarts)."""
        return f"{prefix}{self.token}{next(self._ids):012x}"

    def admit(self, tokens: int = 0) -> Admission:
        """Apply the rpm/tpm sliding windows; record the request if it is accepted."""
        settings = self.settings
        rpm, tpm = settings.rpm, settings.tpm
        if rpm is None and tpm is None:
            return _UNLIMITED
        now = time.monotonic()
        cutoff = now - WINDOW_S
        headers: dict[str, str] = {}
        kind: str | None = None
        wait = 0.0
        message = ""
        window = self.request_window
        if rpm is not None:
            while window and window[0] <= cutoff:
                window.popleft()
            if len(window) >= rpm:
                kind = "requests"
                wait = window[len(window) - rpm] + WINDOW_S - now
                message = "Rate limit reached for requests"
        tokens_window = self.token_window
        if tpm is not None:
            while tokens_window and tokens_window[0][0] <= cutoff:
                self.token_sum -= tokens_window.popleft()[1]
            if kind is None and self.token_sum + tokens > tpm:
                kind = "tokens"
                if tokens > tpm:
                    message = (
                        f"Request too large for tokens per min (TPM): Limit {tpm}, "
                        f"Requested {tokens}."
                    )
                    wait = WINDOW_S
                else:
                    message = "Rate limit reached for tokens"
                    excess = self.token_sum + tokens - tpm
                    for stamp, used in tokens_window:
                        excess -= used
                        if excess <= 0:
                            wait = stamp + WINDOW_S - now
                            break
        if kind is None:
            if rpm is not None:
                window.append(now)
            if tpm is not None:
                tokens_window.append((now, tokens))
                self.token_sum += tokens
        if rpm is not None:
            headers["x-ratelimit-limit-requests"] = str(rpm)
            headers["x-ratelimit-remaining-requests"] = str(max(rpm - len(window), 0))
            reset = window[0] + WINDOW_S - now if window else 0.0
            headers["x-ratelimit-reset-requests"] = format_duration(reset)
        if tpm is not None:
            headers["x-ratelimit-limit-tokens"] = str(tpm)
            headers["x-ratelimit-remaining-tokens"] = str(max(tpm - self.token_sum, 0))
            reset = tokens_window[0][0] + WINDOW_S - now if tokens_window else 0.0
            headers["x-ratelimit-reset-tokens"] = format_duration(reset)
        if kind is not None:
            headers.update(retry_headers(wait))
        return Admission(headers, kind, wait, message)

    async def delay(self) -> None:
        """Sleep the configured latency (plus or minus jitter) without blocking the loop."""
        settings = self.settings
        ms = settings.latency_ms
        if settings.latency_jitter_ms:
            jitter = settings.latency_jitter_ms
            ms += self.latency_rng.uniform(-jitter, jitter)
        if ms > 0:
            await asyncio.sleep(ms / 1000)

    def random_failure(self) -> bool:
        """Draw whether this request gets a random 500 (``error_rate``)."""
        rate = self.settings.error_rate
        return bool(rate) and self.error_rng.random() < rate

    def fault_status(self, api: str, text: str, markers: dict[str, int | None]) -> int | None:
        """Return the error status forced by ``[[status:N]]`` / ``[[fail-first:N]]``, if any."""
        code = markers.get("status")
        if code is not None and code >= 300:
            return code
        code = markers.get("fail-first")
        if code is not None:
            key = (api, text)
            attempt = self.attempts.get(key, 0) + 1
            self.attempts[key] = attempt
            if attempt == 1:
                return code
        return None

    async def body_fault(
        self,
        markers: dict[str, int | None],
        full_body: bytes,
        headers: dict[str, str] | None = None,
        html: bytes = HTML_502,
    ) -> web.Response | None:
        """Apply the faults of a broken answer body; ``None`` means answer normally.

        ``[[hang]]`` sleeps ``hang_s`` first (and the request carries on); ``[[garbage]]``
        answers 200 with a body that is not JSON, ``[[truncated]]`` the first half of
        ``full_body`` (the valid body the API would send), ``[[html]]`` a 502 ``html`` page and
        ``[[empty]]`` 200 with no body.
        """
        if "hang" in markers:
            await asyncio.sleep(self.settings.hang_s)
        if "garbage" in markers:
            return web.Response(
                body=b"<<this is not JSON>>", headers=headers, content_type="application/json"
            )
        if "truncated" in markers:
            return web.Response(
                body=full_body[: len(full_body) // 2],
                headers=headers,
                content_type="application/json",
            )
        if "html" in markers:
            return web.Response(body=html, status=502, headers=headers, content_type="text/html")
        if "empty" in markers:
            return web.Response(body=b"", headers=headers, content_type="application/json")
        return None

    def active_markers(
        self, api: str, text: str, markers: dict[str, int | None]
    ) -> dict[str, int | None]:
        """The markers in force for this request.

        ``[[name-once]]`` acts as ``[[name]]`` only the first time a text is sent, so that a
        test sees a fault and then its retry succeed (but for :data:`STATELESS_ONCE`).
        """
        once = [name for name in markers if name.endswith("-once") and name not in STATELESS_ONCE]
        if not once:
            return markers
        active = {name: code for name, code in markers.items() if name not in once}
        key = (api, text + "\0once")
        self.attempts[key] = self.attempts.get(key, 0) + 1
        if self.attempts[key] == 1:
            active.update({name.removesuffix("-once"): markers[name] for name in once})
        return active

    def record(self, t: float, endpoint: str, status: int, texts: list[str]) -> None:
        """Append one entry to the request log (when enabled)."""
        if self.settings.record_log:
            self.log.append((t, endpoint, status, texts))

    def stats(self) -> dict[str, Any]:
        """Return the counters exposed by ``GET /_sim/stats``."""
        return {
            "requests": dict(self.requests),
            "status_counts": {str(k): v for k, v in sorted(self.status_counts.items())},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "chat_requests": self.chat_requests,
            "translate_requests": self.translate_requests,
            "translated_texts": self.translated_texts,
            "deepl_character_count": self.deepl_characters,
            "batches_created": self.batches_created,
            "anthropic_batches_created": self.anthropic_batches_created,
            "gemini_requests": self.gemini_requests,
            "gemini_batches_created": self.gemini_batches_created,
            "structured_requests": self.structured_requests,
            "chat_streams": self.chat_streams,
            "chat_streams_completed": self.chat_streams_completed,
            "chat_streams_cut": self.chat_streams_cut,
            "chat_streams_errored": self.chat_streams_errored,
            "files_uploaded": self.files_uploaded,
        }

    def log_entries(self) -> list[dict[str, Any]]:
        """Return the request log as JSON-ready dicts."""
        return [
            {"t": t, "endpoint": endpoint, "status": status, "texts": texts}
            for t, endpoint, status, texts in self.log
        ]


STATE_KEY = web.AppKey("mitrailleuse_simulator_state", SimState)


def _counting_middleware(state: SimState) -> Any:
    """Build the middleware keeping per-route counts, status counts and in-flight numbers."""
    keys: dict[Any, str] = {}

    @web.middleware
    async def middleware(request: web.Request, handler: Handler) -> web.StreamResponse:
        route = request.match_info.route
        key = keys.get(route)
        if key is None:
            resource = route.resource
            if resource is None:
                key = f"{request.method} <unmatched>"
            else:
                canonical = resource.canonical
                key = "" if canonical.startswith("/_sim") else f"{request.method} {canonical}"
                keys[route] = key
        if not key:
            return await handler(request)
        state.requests[key] += 1
        state.in_flight += 1
        if state.in_flight > state.max_in_flight:
            state.max_in_flight = state.in_flight
        status = 500
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as exc:
            status = exc.status
            raise
        except asyncio.CancelledError:
            status = 499  # The client went away (nginx's "client closed request").
            raise
        finally:
            state.in_flight -= 1
            state.status_counts[status] += 1

    return middleware


class _Control:
    """Handlers of the ``/_sim/*`` endpoints used by tests and benchmarks."""

    def __init__(self, state: SimState) -> None:
        self.state = state

    async def stats(self, request: web.Request) -> web.Response:
        return json_response(self.state.stats())

    async def log(self, request: web.Request) -> web.Response:
        return json_response(self.state.log_entries())

    async def reset(self, request: web.Request) -> web.Response:
        self.state.reset()
        return json_response({"ok": True})

    async def get_config(self, request: web.Request) -> web.Response:
        return json_response(self.state.settings.model_dump())

    async def set_config(self, request: web.Request) -> web.Response:
        try:
            changes = orjson.loads(await request.read() or b"{}")
            if not isinstance(changes, dict):
                raise TypeError("the body must be a JSON object")
            settings = self.state.configure(changes)
        except (orjson.JSONDecodeError, TypeError, ValidationError) as exc:
            return json_response({"error": str(exc)}, status=400)
        return json_response(settings.model_dump())


def create_app(settings: SimulatorSettings | None = None) -> web.Application:
    """Build the simulator application (OpenAI chat/files/batches, DeepL, control routes)."""
    from mitrailleuse.simulator.anthropic_api import AnthropicApi
    from mitrailleuse.simulator.deepl_api import DeepLApi
    from mitrailleuse.simulator.gemini_api import GeminiApi
    from mitrailleuse.simulator.openai_api import OpenAIApi

    state = SimState(settings or SimulatorSettings())
    app = web.Application(
        middlewares=[_counting_middleware(state)], client_max_size=MAX_UPLOAD_BYTES
    )
    app[STATE_KEY] = state
    control = _Control(state)
    app.router.add_routes(
        [
            web.get("/_sim/stats", control.stats),
            web.get("/_sim/log", control.log),
            web.post("/_sim/reset", control.reset),
            web.get("/_sim/config", control.get_config),
            web.post("/_sim/config", control.set_config),
        ]
    )
    app.router.add_routes(GeminiApi(state).routes())  # First: shares /v1/files, /v1/batches
    app.router.add_routes(OpenAIApi(state).routes())
    app.router.add_routes(DeepLApi(state).routes())
    app.router.add_routes(AnthropicApi(state).routes())
    return app

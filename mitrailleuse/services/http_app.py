"""The HTTP API: the Python API over HTTP and JSON (FastAPI), with no logic of its own.

Under ``/v1``: tasks (created from JSON or from a multipart upload of input files, executed,
followed, listed, cancelled), a finished run's records as NDJSON, and a run's progress as
Server-Sent Events from the :class:`~mitrailleuse.services.progress.ProgressHub` the gRPC
service uses too (resumable with ``Last-Event-ID``). Every call goes through
:mod:`mitrailleuse.services.tasks`, as gRPC's do: the same checks, the same user scoping
(bearer tokens, :mod:`mitrailleuse.services.tokens`), the same one-line errors, here as RFC 9457
problem documents. ``/health``, ``/health/full`` and ``/stats`` say how the process and the
fleet are; the OpenAPI docs are at ``/docs``.
"""

# No ``from __future__ import annotations``: FastAPI reads the routes' annotations, some of
# them local to create_app, when it declares the routes.
import asyncio
import contextlib
import dataclasses
import logging
import os
import re
import shutil
import tempfile
import time
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from http import HTTPStatus
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar, get_args
from urllib.parse import quote

import orjson
import redis
import redis.asyncio
from fastapi import APIRouter, Depends, FastAPI, Header, Query, Request, Response, Security
from fastapi.exceptions import RequestValidationError
from fastapi.responses import FileResponse, JSONResponse, StreamingResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from kombu.exceptions import OperationalError
from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.background import BackgroundTask
from starlette.datastructures import Headers, UploadFile
from starlette.exceptions import HTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.config import Environment, error_field, error_line, parse_config
from mitrailleuse.cost.pricing import shipped_prices
from mitrailleuse.errors import (
    BrokerError,
    ConfigError,
    InputError,
    MitrailleuseError,
    TaskNameError,
    TaskNotFound,
)
from mitrailleuse.export import export_records
from mitrailleuse.pipeline import chat_stream, liveness
from mitrailleuse.pipeline.chat_stream import Entry
from mitrailleuse.pipeline.queues import all_queues, queue_depths
from mitrailleuse.providers import available_providers, provider_class
from mitrailleuse.ratelimit import task_limiter
from mitrailleuse.services import records_view
from mitrailleuse.services.progress import ProgressEvent, ProgressHub, RateView
from mitrailleuse.services.tasks import (
    TaskNotFinished,
    TaskPage,
    Tasks,
    TaskView,
    Unavailable,
    drain_in_thread,
    first_match,
    in_thread,
    json_from_text,
    one_line,
    redis_probe,
)
from mitrailleuse.services.tokens import Caller, Forbidden, Unauthenticated
from mitrailleuse.taskfolder import FINAL_STATES, TaskFolder, TaskState, check_name, iter_tasks

T = TypeVar("T")
log = logging.getLogger(__name__)

PROBLEM_JSON = "application/problem+json"
NDJSON = "application/x-ndjson"
EVENT_STREAM = "text/event-stream"
#: How long a progress stream may stay silent before it says it is alive (proxies cut idle ones).
HEARTBEAT_S = 15.0
#: The fields of a task's form that hold JSON text.
JSON_FIELDS = ("config", "items")
#: The states of a run under way.
ACTIVE_STATES = frozenset(get_args(TaskState)) - FINAL_STATES - {"created"}
#: The largest chat request body (a conversation), whatever the upload limit.
CHAT_MAX_BYTES = 1 << 20
#: Chat streams one server relays at once: each holds a Redis connection while it waits.
MAX_CHAT_STREAMS = 1000
#: How long a provider's live workers, once seen, are taken as serving it for new chats.
SERVING_TTL_S = 1.0
#: The web page's files: HTML, CSS and an ES module, served as they are (no build step).
WEB_DIR = Path(__file__).parent / "web"
#: What a finished run offers for download.
DOWNLOADS = ("results.jsonl", "errors.jsonl", "results.csv")
#: What a native batch's view shows.
BATCH_FIELDS = {"number", "items", "step", "batch_id", "status", "raw_status", "request_counts"}


class UploadTooLarge(MitrailleuseError):
    """A request body over ``MITRAILLEUSE_HTTP_MAX_UPLOAD_MB``."""


class UnsupportedMediaType(MitrailleuseError):
    """A task sent as neither JSON nor a multipart form."""


class SessionNotFound(MitrailleuseError):
    """No chat session by that id: never opened, expired, or another user's."""


class ChatFailed(MitrailleuseError):
    """The provider's answer to a chat session failed (or was cut) on the worker."""


class TooManyStreams(MitrailleuseError):
    """A chat stream over the :data:`MAX_CHAT_STREAMS` this server relays at once."""


#: The HTTP status of each error the Python API (or this API) raises: gRPC's codes, in HTTP.
STATUS_OF: dict[type[BaseException], HTTPStatus] = {
    Unauthenticated: HTTPStatus.UNAUTHORIZED,
    Forbidden: HTTPStatus.FORBIDDEN,
    TaskNotFound: HTTPStatus.NOT_FOUND,
    SessionNotFound: HTTPStatus.NOT_FOUND,
    ChatFailed: HTTPStatus.BAD_GATEWAY,
    ConfigError: HTTPStatus.BAD_REQUEST,
    InputError: HTTPStatus.BAD_REQUEST,
    TaskNameError: HTTPStatus.BAD_REQUEST,
    UploadTooLarge: HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    UnsupportedMediaType: HTTPStatus.UNSUPPORTED_MEDIA_TYPE,
    BrokerError: HTTPStatus.SERVICE_UNAVAILABLE,
    redis.ConnectionError: HTTPStatus.SERVICE_UNAVAILABLE,
    redis.TimeoutError: HTTPStatus.SERVICE_UNAVAILABLE,
    OperationalError: HTTPStatus.SERVICE_UNAVAILABLE,
    Unavailable: HTTPStatus.SERVICE_UNAVAILABLE,
    TooManyStreams: HTTPStatus.SERVICE_UNAVAILABLE,
    FileNotFoundError: HTTPStatus.NOT_FOUND,
    TaskNotFinished: HTTPStatus.CONFLICT,
    # any other of the Python API's one-line errors (a provider's refusal, ...): said as is
    MitrailleuseError: HTTPStatus.CONFLICT,
}


class TaskRequest(BaseModel):
    """A task to create: a JSON body, or the same fields in a multipart form beside files."""

    model_config = ConfigDict(extra="forbid")

    user_id: str = Field("", description="Who it belongs to (with tokens: the token's user).")
    api: str = Field(description="The provider: openai, deepseek, deepl, anthropic, gemini, ...")
    task_name: str = Field(description="A name for the task.")
    config: dict[str, Any] | None = Field(
        None, description="config.json's content (none: the defaults)."
    )
    items: list[dict[str, Any]] = Field(
        default_factory=list, description="The input items, an object each."
    )


class StreamOptions(BaseModel):
    """OpenAI's ``stream_options``: whether the last chunk carries the usage."""

    include_usage: bool = False


class ChatRequest(BaseModel):
    """OpenAI's chat completion body, plus the provider and the user it is for.

    Any other member (``temperature``, ``max_tokens``, ...) is sent to the provider as it is.
    """

    model_config = ConfigDict(extra="allow")

    user_id: str = Field("", description="Who it belongs to (with tokens: the token's user).")
    api: Literal[chat_stream.STREAMING_PROVIDERS] = Field(  # type: ignore[valid-type]
        "openai", description="The provider: openai or deepseek."
    )
    model: str | None = Field(None, description="None: the provider's default model.")
    messages: list[dict[str, Any]] = Field(min_length=1)
    stream: bool = Field(
        False, description="POST /v1/chat: answer as Server-Sent Events (/chat/async: always)."
    )
    stream_options: StreamOptions | None = None
    n: int = Field(1, ge=1, le=1, description="One answer a session: 1, or left out.")

    def session_request(self, whole: bool) -> dict[str, Any]:
        """What the session keeps for the worker; a ``whole`` answer always carries its usage."""
        asked = self.stream_options is not None and self.stream_options.include_usage
        return {
            "model": self.model,
            "messages": self.messages,
            "settings": self.model_extra or {},
            "include_usage": asked or whole,
        }


class ChatSession(BaseModel):
    """A chat session sent to the fleet: where its Server-Sent Events are read."""

    status: Literal["queued"] = "queued"
    session_id: str
    stream_url: str


def _create_body_doc() -> dict[str, Any]:
    """The OpenAPI request body of ``POST /v1/tasks``: JSON, or a form with input files."""
    schema = TaskRequest.model_json_schema()
    form = {
        **schema,
        "properties": {
            **schema["properties"],
            "config": {"type": "string", "description": "config.json's content, as JSON text."},
            "items": {
                "type": "string",
                "description": "A JSON array of objects, up to 1 MB (more: as files).",
            },
            "files": {
                "type": "array",
                "items": {"type": "string", "format": "binary"},
                "description": "Input files (.json, .jsonl), named as the task should keep them.",
            },
        },
    }
    return {
        "requestBody": {
            "required": True,
            "content": {
                "application/json": {"schema": schema},
                "multipart/form-data": {"schema": form},
            },
        }
    }


def problem(
    status: int, detail: str, headers: Mapping[str, str] | None = None, **extra: Any
) -> JSONResponse:
    """An RFC 9457 problem document (``extra``: its extension members, such as ``field``)."""
    body = {
        "type": "about:blank",
        "title": HTTPStatus(status).phrase,
        "status": int(status),
        "detail": detail,
        **extra,
    }
    return JSONResponse(body, status, headers=dict(headers or {}), media_type=PROBLEM_JSON)


def _said(error: BaseException) -> tuple[HTTPStatus, str]:
    """An error's status and its one line (an unexpected one: 500, and only its kind)."""
    status = first_match(STATUS_OF, error)
    if status is None:
        return HTTPStatus.INTERNAL_SERVER_ERROR, f"internal error: {type(error).__name__}"
    return status, one_line(error) or status.phrase.lower()


async def _error_problem(request: Request, error: Exception) -> JSONResponse:
    """An error as a problem, never a traceback (uvicorn logs an unexpected one's)."""
    status, detail = _said(error)
    headers = None
    if status is HTTPStatus.UNAUTHORIZED:
        headers = {"WWW-Authenticate": "Bearer"}
    elif isinstance(error, TooManyStreams):
        headers = {"Retry-After": "1"}
    return problem(status, detail, headers)


async def _invalid_problem(request: Request, error: RequestValidationError) -> JSONResponse:
    """A malformed request as one problem: its first error, the field named (422)."""
    first, *more = error.errors()
    where, *loc = first["loc"] or ("request",)
    first = {**first, "loc": tuple(loc)}
    return problem(
        HTTPStatus.UNPROCESSABLE_ENTITY,
        error_line([first, *more], str(where)),
        field=error_field(first),
    )


async def _http_problem(request: Request, error: HTTPException) -> JSONResponse:
    """Starlette's own refusals (no such route, a method it does not take) as problems."""
    return problem(error.status_code, str(error.detail), error.headers)


class BodyLimit:
    """Refuse a request body over ``max_bytes`` (413): by its Content-Length, or as it comes.

    A chat's body (under ``/v1/chat``) is held in Redis for its session: at most
    :data:`CHAT_MAX_BYTES`.
    """

    def __init__(self, app: ASGIApp, max_bytes: int) -> None:
        self.app = app
        self.max_bytes = max_bytes

    def _too_large(self, chat: bool) -> UploadTooLarge:
        if chat:
            return UploadTooLarge(f"a chat request is at most {CHAT_MAX_BYTES >> 20} MB")
        return UploadTooLarge(
            f"the request body is over {self.max_bytes >> 20} MB "
            "(MITRAILLEUSE_HTTP_MAX_UPLOAD_MB on the server)"
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Pass the request on, its body counted (refused at once when it says it is over)."""
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        chat = scope["path"].startswith("/v1/chat")
        limit = min(self.max_bytes, CHAT_MAX_BYTES) if chat else self.max_bytes
        length = Headers(scope=scope).get("content-length", "")
        if length.isdigit() and int(length) > limit:
            refused = problem(HTTPStatus.REQUEST_ENTITY_TOO_LARGE, one_line(self._too_large(chat)))
            await refused(scope, receive, send)
            return
        received = 0

        async def counted() -> Message:
            nonlocal received
            message = await receive()
            received += len(message.get("body", b""))
            if received > limit:  # raised in the handler reading it: a 413 problem
                raise self._too_large(chat)
            return message

        await self.app(scope, counted, send)


class ChatStreams:
    """The chat streams this server relays, each with a Redis connection while it waits.

    At most ``limit`` at once: a request for one more is refused (503, ``Retry-After``) before
    its status line; the pool also waits, rather than fails, should a few more slip in between.
    """

    def __init__(self, redis_url: str, limit: int = MAX_CHAT_STREAMS) -> None:
        pool = redis.asyncio.BlockingConnectionPool.from_url(
            redis_url, max_connections=limit, timeout=HEARTBEAT_S
        )
        self.redis = redis.asyncio.Redis(connection_pool=pool)
        self.limit = limit
        self.open = 0

    def check_room(self) -> None:
        """Refuse a new stream when ``limit`` are open."""
        if self.open >= self.limit:
            raise TooManyStreams(
                f"this server relays {self.limit} chat streams already: try again shortly"
            )

    async def relay(self, session_id: str, after: str) -> AsyncIterator[Entry | None]:
        """The session's entries after ``after`` (:func:`chat_stream.relay`), counted open."""
        self.open += 1
        try:
            entries = chat_stream.relay(self.redis, session_id, after, HEARTBEAT_S)
            async with contextlib.aclosing(entries):
                async for entry in entries:
                    yield entry
        finally:
            self.open -= 1

    async def close(self) -> None:
        """Close the pool's connections (at shutdown)."""
        await self.redis.aclose()


def create_app(client: Mitrailleuse, tokens: Mapping[str, str]) -> FastAPI:
    """The HTTP API over ``client``: anyone may call without ``tokens``, else bearers only."""
    max_bytes = Environment().mitrailleuse_http_max_upload_mb << 20
    tasks = Tasks(client)
    hub = ProgressHub()
    probe = redis_probe(client.redis_url)
    bearer = HTTPBearer(auto_error=False, description="A token of MITRAILLEUSE_API_TOKENS.")

    async def caller(
        credentials: Annotated[HTTPAuthorizationCredentials | None, Security(bearer)],
    ) -> Caller:
        """Who calls: the token's user (401 without a known token), or anyone without tokens."""
        given = f"{credentials.scheme} {credentials.credentials}" if credentials else None
        return Caller(tokens, given)

    Who = Annotated[Caller, Depends(caller)]

    def task_at(who: Caller, user_id: str, folder: str) -> TaskFolder:
        """The task ``<user_id>/<folder>``, if the caller may see it (else 404, as for none)."""
        try:
            return tasks.folder(who, client.tasks_dir / user_id / folder)
        except TaskNotFound:
            raise TaskNotFound(f"no task {user_id}/{folder}") from None

    api = APIRouter(prefix="/v1", tags=["tasks"])

    @api.post(
        "/tasks",
        status_code=HTTPStatus.CREATED,
        openapi_extra=_create_body_doc(),
        responses={413: {"description": "The body is over MITRAILLEUSE_HTTP_MAX_UPLOAD_MB."}},
    )
    async def create_task(request: Request, response: Response, who: Who) -> TaskView:
        """A task folder: the config validated, literal keys scrubbed, items and files copied."""
        with tempfile.TemporaryDirectory(prefix="mitrailleuse-upload-") as upload_dir:
            fields, files = await _task_request(request, Path(upload_dir))

            def create() -> TaskView:
                user_id = who.user_for(fields.user_id)
                config = None if fields.config is None else parse_config(fields.config, "config")
                inputs = [*files, *fields.items]
                folder = tasks.create(user_id, fields.api, fields.task_name, config, inputs)
                return TaskView.of(folder)

            try:
                view = await in_thread(create)
            except InputError as error:  # the files named as the client named them
                raise InputError(str(error).replace(upload_dir + os.sep, "")) from None
        response.headers["Location"] = f"/v1/tasks/{quote(view.id)}"
        return view

    @api.get("/tasks")
    async def list_tasks(
        who: Who,
        user_id: Annotated[str, Query(description="Empty: the token's user (or everyone).")] = "",
        state: Annotated[str, Query(description="Only tasks in this state.")] = "",
        page_size: Annotated[int, Query(description="0: 100; at most 500.")] = 0,
        page_token: Annotated[str, Query(description="A response's next_page_token.")] = "",
        provider: Annotated[str, Query(description="Only tasks of this provider.")] = "",
        order: Annotated[Literal["oldest", "newest"], Query(description="By creation.")] = "oldest",
    ) -> TaskPage:
        """The caller's tasks, by state and provider, a page at a time."""
        newest = order == "newest"
        return await in_thread(
            lambda: tasks.page(who, user_id, state, page_size, page_token, provider, newest)
        )

    @api.get("/tasks/{user_id}/{folder}")
    async def get_task(user_id: str, folder: str, who: Who) -> TaskView:
        """The task's state and counts, live while it runs."""
        return await in_thread(lambda: tasks.status(task_at(who, user_id, folder)))

    @api.post(
        "/tasks/{user_id}/{folder}/execute",
        status_code=HTTPStatus.ACCEPTED,
        responses={503: {"description": "No worker serves the task's queues (they are named)."}},
    )
    async def execute_task(user_id: str, folder: str, who: Who) -> TaskView:
        """Submit the task to the fleet (503 when no worker serves its queues)."""

        def execute() -> TaskView:
            found = task_at(who, user_id, folder)
            tasks.execute(found)
            return TaskView.of(found)

        return await in_thread(execute)

    @api.post("/tasks/{user_id}/{folder}/cancel", status_code=HTTPStatus.ACCEPTED)
    async def cancel_task(user_id: str, folder: str, who: Who) -> TaskView:
        """Stop dispatching: in-flight items finish, the run ends cancelled."""
        return await in_thread(lambda: tasks.cancel(task_at(who, user_id, folder)))

    @api.get(
        "/tasks/{user_id}/{folder}/results",
        response_class=StreamingResponse,
        responses={
            200: {"content": {NDJSON: {}}, "description": "A record per line, in input order."},
            409: {"description": "The run has not finished."},
        },
    )
    async def task_results(
        user_id: str,
        folder: str,
        who: Who,
        start: Annotated[int, Query(ge=0, description="The first record's index.")] = 0,
    ) -> StreamingResponse:
        """The finished run's records (``outputs/results.jsonl``), from index ``start`` on."""
        records = await in_thread(lambda: tasks.results(task_at(who, user_id, folder), start))
        lines = (orjson.dumps(record) + b"\n" async for _, record in drain_in_thread(records))
        return StreamingResponse(lines, media_type=NDJSON)

    @api.get("/tasks/{user_id}/{folder}/records", responses={409: {"description": "Not over."}})
    async def task_records(
        user_id: str,
        folder: str,
        who: Who,
        show: Annotated[records_view.Show, Query(description="Which records.")] = "all",
        q: Annotated[str, Query(max_length=200, description="Text to find in a record.")] = "",
        offset: Annotated[int, Query(ge=0, description="A page's next_offset (0: the start).")] = 0,
        limit: Annotated[int, Query(ge=1, le=200, description="Rows at most.")] = 50,
    ) -> records_view.RecordPage:
        """A page of the finished run's records, short, from a byte offset of its results.

        A filter that matches rarely answers with what it found in a slice of the file, and
        where to go on (``next_offset``, ``scanned_to`` of ``size``).
        """

        def read() -> records_view.RecordPage:
            found = tasks.finished(task_at(who, user_id, folder))
            return records_view.page(found.results_path, show, q, offset, limit)

        return await in_thread(read)

    @api.get("/tasks/{user_id}/{folder}/records/{offset}")
    async def task_record(user_id: str, folder: str, offset: int, who: Who) -> dict[str, Any]:
        """One record, whole (``record``), and the request it was sent (``request``)."""
        return await in_thread(
            lambda: records_view.opened(tasks.finished(task_at(who, user_id, folder)), offset)
        )

    @api.get("/tasks/{user_id}/{folder}/batches")
    async def task_batches(user_id: str, folder: str, who: Who) -> list[dict[str, Any]]:
        """The run's native batches: their provider ids, raw statuses and request counts."""

        def batches() -> list[dict[str, Any]]:
            run = client.get_run(task_at(who, user_id, folder))
            return [batch.model_dump(include=BATCH_FIELDS) for batch in run.batches()]

        return await in_thread(batches)

    @api.get(
        "/tasks/{user_id}/{folder}/download/{name}",
        response_class=FileResponse,
        responses={409: {"description": "The run has not finished."}},
    )
    async def task_download(
        user_id: str,
        folder: str,
        name: Literal[DOWNLOADS],
        who: Who,  # type: ignore[valid-type]
    ) -> FileResponse:
        """The finished run's ``results.jsonl`` or ``errors.jsonl``, or its records as CSV."""

        def prepare() -> tuple[Path, BackgroundTask | None]:
            found = tasks.finished(task_at(who, user_id, folder))
            if name == "results.jsonl":
                return found.results_path, None
            if name == "errors.jsonl":
                if not found.errors_path.exists():
                    raise FileNotFoundError("the run has no errors.jsonl")
                return found.errors_path, None
            scratch = Path(tempfile.mkdtemp(prefix="mitrailleuse-csv-"))
            made = export_records(found.results_path, "csv", scratch / name)
            return made, BackgroundTask(shutil.rmtree, scratch, ignore_errors=True)

        path, cleanup = await in_thread(prepare)
        return FileResponse(path, filename=f"{folder}-{name}", background=cleanup)

    @api.get(
        "/tasks/{user_id}/{folder}/events",
        response_class=StreamingResponse,
        responses={200: {"content": {EVENT_STREAM: {}}, "description": "Progress events."}},
    )
    async def task_events(
        user_id: str,
        folder: str,
        who: Who,
        last_event_id: Annotated[
            int | None, Header(description="Resume after this event (the last one received).")
        ] = None,
        after: Annotated[
            int | None, Query(alias="last_event_id", description="Last-Event-ID, as a parameter.")
        ] = None,
    ) -> StreamingResponse:
        """Server-Sent Events of the run's progress, on every change, the final one last.

        Each event's ``id`` is the time in ms (or one more): a client that reconnects with the
        last it got (``Last-Event-ID``) resumes after it, here or on another server.
        """
        found = await in_thread(lambda: task_at(who, user_id, folder))
        events = hub.watch(client.get_run(found), last_event_id or after or 0)
        return StreamingResponse(
            _event_stream(events),
            media_type=EVENT_STREAM,
            headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
        )

    chat = APIRouter(prefix="/v1", tags=["chat"])
    streams = ChatStreams(client.redis_url)
    served_at: dict[str, float] = {}

    def start_chat(who: Caller, body: ChatRequest, whole: bool) -> str:
        """Open the session and send it to the fleet (503 when no worker serves the provider)."""
        user_id = who.user_for(body.user_id)
        if time.monotonic() - served_at.get(body.api, -SERVING_TTL_S) >= SERVING_TTL_S:
            if not liveness.serving(client.redis, [body.api])[body.api]:
                raise Unavailable(f"no worker serves {body.api}: start one (mitrailleuse worker)")
            served_at[body.api] = time.monotonic()
        return client.start_chat(user_id, body.api, body.session_request(whole))

    @chat.get("/chat/providers")
    async def chat_providers(who: Who) -> list[dict[str, Any]]:
        """The providers a chat can use, each with its default model and the priced ones."""
        return [
            {"api": name, "model": cls.model_name(cls.config_model()), "models": models}
            for name in chat_stream.STREAMING_PROVIDERS
            for cls, models in [(provider_class(name), sorted(shipped_prices().get(name, {})))]
        ]

    @chat.post("/chat/async", status_code=HTTPStatus.ACCEPTED)
    async def chat_async(body: ChatRequest, who: Who) -> ChatSession:
        """Send a chat to the fleet and return at once: read it at ``stream_url``."""
        session_id = await in_thread(lambda: start_chat(who, body, whole=False))
        return ChatSession(session_id=session_id, stream_url=f"/v1/stream/{session_id}")

    @chat.get(
        "/stream/{session_id}",
        response_class=StreamingResponse,
        responses={200: {"content": {EVENT_STREAM: {}}, "description": "OpenAI's chunks."}},
    )
    async def chat_events(
        session_id: str,
        who: Who,
        last_event_id: Annotated[
            str | None, Header(description="Resume after this event (the last one received).")
        ] = None,
    ) -> StreamingResponse:
        """The session's chunks as OpenAI streams them, from the start or after Last-Event-ID.

        Each event's ``id`` is its Redis Stream entry id; the stream ends with ``data: [DONE]``,
        or with an ``error`` event (a cut answer is never reported complete).
        """
        after = _entry_id(last_event_id)
        streams.check_room()
        user = await in_thread(lambda: chat_stream.session_user(client.redis, session_id))
        if user is None or not who.may_see(user):
            raise SessionNotFound(f"no chat session {session_id[:64]}")
        return _chat_response(streams.relay(session_id, after))

    @chat.post(
        "/chat",
        response_model=None,
        responses={
            200: {"content": {EVENT_STREAM: {}}, "description": "A chat.completion, or chunks."},
            502: {"description": "The provider's answer failed, or was cut."},
        },
    )
    async def chat_completion(body: ChatRequest, who: Who) -> Response:
        """A chat answered by the fleet: its chunks as Server-Sent Events, or one completion.

        The session's id is in the ``X-Session-Id`` header: a client cut off mid-answer reads
        the rest at ``/v1/stream/{id}``.
        """
        streams.check_room()
        session_id = await in_thread(lambda: start_chat(who, body, whole=not body.stream))
        entries = streams.relay(session_id, "0-0")
        headers = {"X-Session-Id": session_id}
        if body.stream:
            return _chat_response(entries, headers)
        return JSONResponse(await _completion(entries), headers=headers)

    fleet = APIRouter(tags=["health"])

    @fleet.get("/health")
    async def health() -> dict[str, str]:
        """The process answers (no token needed: a liveness probe)."""
        return {"status": "ok"}

    @fleet.get(
        "/health/full",
        dependencies=[Depends(caller)],
        responses={503: {"description": "Redis does not answer."}},
    )
    async def health_full() -> JSONResponse:
        """Redis, the live workers of each queue, and which providers' keys this process has."""
        report = await in_thread(lambda: _fleet_health(probe))
        status = HTTPStatus.OK if report["redis"] else HTTPStatus.SERVICE_UNAVAILABLE
        return JSONResponse(report, status)

    @fleet.get("/stats")
    async def stats(who: Who) -> dict[str, Any]:
        """Queue depths, runs under way, and the budgets in use: rates and calls in flight.

        The budgets are those the caller's runs and the chat sessions draw from, with limits.
        """
        return await in_thread(lambda: _stats(probe, client.tasks_dir, who))

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        yield
        await streams.close()

    app = FastAPI(
        lifespan=lifespan,
        title="Mitrailleuse",
        summary="Push very large numbers of requests through AI provider APIs, losing none.",
        version="1",
    )
    app.include_router(api)
    app.include_router(chat)
    app.include_router(fleet)
    app.mount("/ui", StaticFiles(directory=WEB_DIR), name="ui")

    @app.get("/", include_in_schema=False)
    async def web_page() -> FileResponse:
        """The web page (its data comes from /v1, with the visitor's token)."""
        return FileResponse(WEB_DIR / "index.html")

    app.add_middleware(BodyLimit, max_bytes=max_bytes)
    for kind in STATUS_OF:
        app.add_exception_handler(kind, _error_problem)
    app.add_exception_handler(Exception, _error_problem)
    app.add_exception_handler(RequestValidationError, _invalid_problem)
    app.add_exception_handler(HTTPException, _http_problem)
    return app


async def _task_request(request: Request, upload_dir: Path) -> tuple[TaskRequest, list[Path]]:
    """The task a request describes, and its input files (saved under ``upload_dir``)."""
    kind = request.headers.get("content-type", "").partition(";")[0].strip().lower()
    if kind == "application/json":
        return _validated(TaskRequest.model_validate_json, await request.body()), []
    if kind != "multipart/form-data":
        raise UnsupportedMediaType("send the task as application/json or multipart/form-data")
    # starlette's limits: 1000 files and fields, a field (config, items) up to 1 MB
    async with request.form() as form:
        fields: dict[str, Any] = {}
        uploads: list[UploadFile] = []
        for name, value in form.multi_items():
            if not isinstance(value, str):
                uploads.append(value)
            elif name not in JSON_FIELDS:
                fields[name] = value
            elif value.strip():  # empty: not given
                fields[name] = json_from_text(value, name)
        task = _validated(TaskRequest.model_validate, fields)
        return task, await in_thread(lambda: _saved(uploads, upload_dir))


def _validated(parse: Callable[[Any], T], data: Any) -> T:
    """``parse(data)``, its refusal as FastAPI's own (a 422 naming the field)."""
    try:
        return parse(data)
    except ValidationError as error:
        errors = [{**e, "loc": ("body", *e["loc"])} for e in error.errors()]
        raise RequestValidationError(errors) from None


def _saved(uploads: list[UploadFile], into: Path) -> list[Path]:
    """The uploaded input files, written under the names the client gave them."""
    paths = []
    for upload in uploads:
        name = check_name(Path(upload.filename or "").name, "an input file's name")
        target = into / name
        if target.exists():
            raise InputError(f"{name}: two input files share the name")
        with target.open("xb") as out:
            shutil.copyfileobj(upload.file, out)
        paths.append(target)
    return paths


async def _event_stream(events: AsyncGenerator[ProgressEvent, None]) -> AsyncIterator[bytes]:
    """Progress events as Server-Sent Events, and a comment while idle.

    The stream ends after the final event, or with an ``error`` event when the progress can
    no longer be read (Redis gone): the status line was sent long before.
    """
    async with contextlib.aclosing(_with_heartbeats(events, HEARTBEAT_S)) as beats:
        try:
            async for event in beats:
                if event is None:
                    yield b": keep-alive\n\n"
                    continue
                data = orjson.dumps(dataclasses.asdict(event))
                yield b"id: %d\nevent: progress\ndata: %s\n\n" % (event.event_id, data)
        except Exception as error:  # the status line is sent: say it in the stream
            status, detail = _said(error)
            if status is HTTPStatus.INTERNAL_SERVER_ERROR:
                log.exception("a progress stream failed unexpectedly", exc_info=error)
            document = {"status": status.value, "detail": detail}
            yield b"event: error\ndata: %s\n\n" % orjson.dumps(document)


async def _with_heartbeats(
    events: AsyncGenerator[T, None], every_s: float
) -> AsyncIterator[T | None]:
    """``events``, and None whenever ``every_s`` pass without one; closing it closes them."""
    pending: asyncio.Future[T] | None = None
    try:
        while True:
            pending = pending or asyncio.ensure_future(anext(events))
            done, _ = await asyncio.wait({pending}, timeout=every_s)
            if not done:
                yield None
                continue
            finished, pending = pending, None
            try:
                event = finished.result()
            except StopAsyncIteration:
                return
            yield event
    finally:
        if pending is not None:
            pending.cancel()
            with contextlib.suppress(asyncio.CancelledError, StopAsyncIteration):
                await pending
        await events.aclose()


def _entry_id(last_event_id: str | None) -> str:
    """The Redis Stream entry id a reader resumes after (none: from the start)."""
    if last_event_id is None:
        return "0-0"
    if not re.fullmatch(r"\d+-\d+", last_event_id.strip()):
        raise ConfigError("Last-Event-ID must be an event id this stream sent (<ms>-<seq>)")
    return last_event_id.strip()


def _chat_response(
    entries: AsyncGenerator[Entry | None, None], headers: Mapping[str, str] | None = None
) -> StreamingResponse:
    return StreamingResponse(
        _chat_events(entries),
        media_type=EVENT_STREAM,
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no", **(headers or {})},
    )


async def _chat_events(entries: AsyncGenerator[Entry | None, None]) -> AsyncIterator[bytes]:
    """A session's entries as OpenAI's Server-Sent Events, and a comment while idle."""
    async with contextlib.aclosing(entries):
        try:
            async for entry in entries:
                if entry is None:
                    yield b": keep-alive\n\n"
                    continue
                event = b"event: error\n" if entry.kind == "error" else b""
                yield b"id: %s\n%sdata: %s\n\n" % (entry.entry_id.encode(), event, entry.data)
        except redis.RedisError as error:  # the status line is sent: say it in the stream
            document = {"error": {"type": "unavailable", "message": one_line(error)}}
            yield b"event: error\ndata: %s\n\n" % orjson.dumps(document)


async def _completion(entries: AsyncGenerator[Entry | None, None]) -> dict[str, Any]:
    """One ``chat.completion`` from a session's chunks (a ChatFailed when it ends in error)."""
    pieces: dict[str, list[str]] = {"content": [], "refusal": []}
    head: dict[str, Any] = {}
    finish_reason = None
    extra: dict[str, Any] = {}
    async with contextlib.aclosing(entries):
        async for entry in entries:
            if entry is None or entry.kind == "done":
                continue
            chunk = orjson.loads(entry.data)
            if entry.kind == "error":
                error = chunk["error"]
                raise ChatFailed(f"{error['type']}: {error['message']}")
            head = head or {key: chunk[key] for key in ("id", "created", "model")}
            extra.update({k: chunk[k] for k in ("usage", "cost_usd") if chunk.get(k)})
            for choice in chunk["choices"]:
                for key, texts in pieces.items():
                    texts.append(choice["delta"].get(key) or "")
                finish_reason = choice["finish_reason"] or finish_reason
    content, refusal = ("".join(texts) for texts in pieces.values())
    message = {"role": "assistant", "content": content or None, "refusal": refusal or None}
    if refusal == "":
        message["content"] = content  # an empty answer is still a text answer
    choice = {"index": 0, "message": message, "logprobs": None, "finish_reason": finish_reason}
    return {**head, "object": "chat.completion", "choices": [choice], **extra}


def _fleet_health(probe: redis.Redis) -> dict[str, Any]:
    """Whether Redis answers, each queue's live workers, and how many have each provider's key.

    A worker announces the names of the key variables it has set, never a value.
    """
    try:
        serving = liveness.serving(probe, all_queues())
    except redis.RedisError as error:
        return {"status": "unavailable", "redis": False, "detail": one_line(error)}
    return {
        "status": "ok",
        "redis": True,
        "workers": {queue: len(found) for queue, found in serving.items()},
        "unserved": sorted(queue for queue, found in serving.items() if not found),
        "workers_with_key": {
            name: sum(bool(wanted & have) for have in serving.get(name, []))
            for name, wanted in _key_variables().items()
        },
    }


def _key_variables() -> dict[str, set[str]]:
    """Each provider installed here, and the variables that can hold its key."""
    found = {}
    for name in available_providers():
        with contextlib.suppress(ConfigError):  # its SDK is not installed here (an extra)
            found[name] = set(provider_class(name).key_variables)
    return found


def _stats(probe: redis.Redis, tasks_dir: Path, who: Caller) -> dict[str, Any]:
    """The fleet's queues, the caller's runs under way, and the budgets in use (runs, chats)."""
    depths = queue_depths(probe)
    active = [
        folder
        for folder in iter_tasks(tasks_dir, who.user_id or "all")
        if folder.status().state in ACTIVE_STATES
    ]
    limiters = {limiter.scope: limiter for limiter in chat_stream.chat_limiters(probe)}
    for folder in active:
        limiter = task_limiter(probe, folder)
        limiters.setdefault(limiter.scope, limiter)
    rates = {scope: RateView.of(limiter.rates()) for scope, limiter in limiters.items()}
    return {
        "queues": depths,
        "runs_active": len(active),
        "rates": {scope: dataclasses.asdict(view) for scope, view in rates.items()},
    }

"""``mitrailleuse.v1.MitrailleuseService``: the Python API over gRPC, with no logic of its own.

Each call checks who it acts for (:mod:`mitrailleuse.services.tokens`), runs the services'
shared task calls (:mod:`mitrailleuse.services.tasks`) in a thread (they block on Redis and the
disk), and turns their one-line errors into status codes. ``WatchTask`` streams share one poll
of a run's progress (:class:`~mitrailleuse.services.progress.ProgressHub`): a hundred watchers
cost the run what one does.
"""

from __future__ import annotations

import contextlib
import functools
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any, TypeVar

import grpc
import orjson
import redis
from google.protobuf import json_format
from kombu.exceptions import OperationalError

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.config import TaskConfig
from mitrailleuse.errors import (
    BrokerError,
    ConfigError,
    InputError,
    MitrailleuseError,
    TaskNameError,
    TaskNotFound,
)
from mitrailleuse.services.progress import ProgressEvent, ProgressHub
from mitrailleuse.services.tasks import (
    TaskCounts,
    TaskNotFinished,
    Tasks,
    TaskView,
    Unavailable,
    config_from_text,
    drain_in_thread,
    first_match,
    in_thread,
    one_line,
)
from mitrailleuse.services.tokens import Caller, Forbidden, Unauthenticated
from mitrailleuse.taskfolder import TaskFolder
from mitrailleuse.v1 import mitrailleuse_pb2 as pb
from mitrailleuse.v1 import mitrailleuse_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: What ``SendSingle`` waits for its answer when the request says nothing.
SEND_SINGLE_TIMEOUT_S = 120.0


class AnswerLate(MitrailleuseError):
    """``SendSingle``'s answer did not come within its time."""


#: The status code of each error the Python API (or this service) raises.
STATUS_OF: dict[type[BaseException], grpc.StatusCode] = {
    Unauthenticated: grpc.StatusCode.UNAUTHENTICATED,
    Forbidden: grpc.StatusCode.PERMISSION_DENIED,
    TaskNotFound: grpc.StatusCode.NOT_FOUND,
    ConfigError: grpc.StatusCode.INVALID_ARGUMENT,
    InputError: grpc.StatusCode.INVALID_ARGUMENT,
    TaskNameError: grpc.StatusCode.INVALID_ARGUMENT,
    BrokerError: grpc.StatusCode.UNAVAILABLE,
    redis.ConnectionError: grpc.StatusCode.UNAVAILABLE,
    redis.TimeoutError: grpc.StatusCode.UNAVAILABLE,
    OperationalError: grpc.StatusCode.UNAVAILABLE,
    Unavailable: grpc.StatusCode.UNAVAILABLE,
    AnswerLate: grpc.StatusCode.DEADLINE_EXCEEDED,
    FileNotFoundError: grpc.StatusCode.NOT_FOUND,
    TaskNotFinished: grpc.StatusCode.FAILED_PRECONDITION,
    # any other of the Python API's one-line errors (a provider's refusal, ...): said as is
    MitrailleuseError: grpc.StatusCode.FAILED_PRECONDITION,
}


T = TypeVar("T")


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the error's status and its one line; never a traceback."""
    code = first_match(STATUS_OF, error)
    if code is None:
        log.exception("a gRPC call failed unexpectedly", exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
    await context.abort(code, one_line(error) or code.name.lower())


def _served(
    method: Callable[..., Awaitable[T]],
) -> Callable[..., Awaitable[T]]:
    """A unary call whose errors become status codes."""

    @functools.wraps(method)
    async def call(self: MitrailleuseService, request: Any, context: Any) -> T:
        try:
            return await method(self, request, context)
        except Exception as error:
            await _abort(context, error)
            raise  # unreachable: abort raises

    return call


def _streamed(
    method: Callable[..., AsyncIterator[T]],
) -> Callable[..., AsyncIterator[T]]:
    """A server stream whose errors become status codes."""

    @functools.wraps(method)
    async def call(self: MitrailleuseService, request: Any, context: Any) -> AsyncIterator[T]:
        try:  # closed at once when the client goes: a watch then stops counting it
            async with contextlib.aclosing(method(self, request, context)) as messages:
                async for message in messages:
                    yield message
        except Exception as error:
            await _abort(context, error)

    return call


def _plain(value: Any) -> Any:
    """A Struct's value with whole numbers back as integers (Struct keeps only doubles)."""
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, dict):
        return {key: _plain(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_plain(item) for item in value]
    return value


def _counts(counts: TaskCounts) -> pb.Counts:
    return pb.Counts(
        total=counts.total,
        done=counts.done,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cached=counts.cached,
    )


def task_message(task: TaskFolder | TaskView) -> pb.Task:
    """A task as the service describes it."""
    view = TaskView.of(task) if isinstance(task, TaskFolder) else task
    return pb.Task(
        task_path=view.task_path,
        user_id=view.user_id,
        task_name=view.task_name,
        api=view.api,
        state=view.state,
        counts=_counts(view.counts),
        run_id=view.run_id or "",
        mode=view.mode or "",
    )


def progress_message(event: ProgressEvent) -> pb.Progress:
    """A progress event as ``WatchTask`` streams it (0 for what is not known)."""
    return pb.Progress(
        event_id=event.event_id,
        state=event.state,
        counts=_counts(event.counts),
        spent_usd=event.spent_usd,
        projected_usd=event.projected_usd or 0.0,
        requests_per_minute=event.rates.requests_per_minute,
        tokens_per_minute=event.rates.tokens_per_minute,
        requests_per_minute_limit=event.rates.requests_per_minute_limit,
        tokens_per_minute_limit=event.rates.tokens_per_minute_limit or 0,
        finished=event.finished,
    )


def record_message(index: int, record: dict[str, Any]) -> pb.Record:
    """A result record, whole (``record_json``) and its main fields."""
    return pb.Record(
        index=index,
        id=record["id"],
        status=record["status"],
        output=record.get("output") or "",
        record_json=orjson.dumps(record).decode(),
    )


class MitrailleuseService(pb_grpc.MitrailleuseServiceServicer):
    """The service's calls, each a few lines over the shared :class:`Tasks` calls.

    A call's work (Redis, the disk) runs in a thread (``in_thread``): the loop only moves
    messages, so that a hundred streams and slow disks never hold each other up.
    """

    def __init__(self, client: Mitrailleuse, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens
        self.tasks = Tasks(client)
        self.hub = ProgressHub()

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        return Caller(self.tokens, metadata.get("authorization"))

    def _create(
        self, caller: Caller, request: pb.CreateTaskRequest, mode: str | None
    ) -> TaskFolder:
        user_id = caller.user_for(request.user_id)
        if request.input_paths and caller.user_id is not None:
            raise Forbidden("input_paths are read on the server: with tokens, send items")
        config = config_from_text(request.config_json, "config_json")
        items = [_plain(json_format.MessageToDict(item)) for item in request.items]
        inputs = [*map(Path, request.input_paths), *items]
        return self.tasks.create(user_id, request.api, request.task_name, config, inputs, mode)

    @_served
    async def CreateTask(self, request: pb.CreateTaskRequest, context: Any) -> pb.Task:
        """A task folder: the config validated, literal keys scrubbed, inputs copied."""
        caller = self._caller(context)
        return await in_thread(lambda: task_message(self._create(caller, request, None)))

    @_served
    async def ExecuteTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """Submit the task to the fleet (UNAVAILABLE when no worker serves its queue)."""
        caller = self._caller(context)

        def execute() -> pb.Task:
            folder = self.tasks.folder(caller, request.task_path)
            self.tasks.execute(folder)
            return task_message(folder)

        return await in_thread(execute)

    @_served
    async def GetTaskStatus(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """The task's state and counts, live while it runs."""
        caller = self._caller(context)
        return await in_thread(
            lambda: task_message(self.tasks.status(self.tasks.folder(caller, request.task_path)))
        )

    GetTaskByPath = GetTaskStatus  # the original service's name for it

    @_served
    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        """The caller's tasks (oldest first), by state, a page at a time."""
        caller = self._caller(context)

        def page() -> pb.ListTasksResponse:
            found = self.tasks.page(
                caller, request.user_id, request.state, request.page_size, request.page_token
            )
            return pb.ListTasksResponse(
                tasks=[task_message(view) for view in found.tasks],
                next_page_token=found.next_page_token or "",
            )

        return await in_thread(page)

    @_served
    async def CancelTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """Stop dispatching: in-flight items finish, the run ends cancelled."""
        caller = self._caller(context)
        return await in_thread(
            lambda: task_message(self.tasks.cancel(self.tasks.folder(caller, request.task_path)))
        )

    @_streamed
    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Any
    ) -> AsyncIterator[pb.Progress]:
        """A progress message on every change, ending with the final state."""
        caller = self._caller(context)
        folder = await in_thread(lambda: self.tasks.folder(caller, request.task_path))
        run = self.client.get_run(folder)
        async with contextlib.aclosing(self.hub.watch(run, request.after_event_id)) as events:
            async for event in events:
                yield progress_message(event)

    @_streamed
    async def GetResults(
        self, request: pb.GetResultsRequest, context: Any
    ) -> AsyncIterator[pb.Record]:
        """The finished run's records in input order, from ``start_index`` on."""
        caller = self._caller(context)
        records = await in_thread(
            lambda: self.tasks.results(
                self.tasks.folder(caller, request.task_path), request.start_index
            )
        )
        async for index, record in drain_in_thread(records):
            yield record_message(index, record)

    DownloadBatchResults = GetResults  # the original service's name for a batch's results

    @_served
    async def SendSingle(self, request: pb.SendSingleRequest, context: Any) -> pb.Record:
        """One prompt through the fleet as a one-item task; its record.

        Waits ``timeout_s`` (default 120 s, at most the call's deadline) for the answer; then
        DEADLINE_EXCEEDED, the task going on (its path in the message).
        """
        caller = self._caller(context)
        if request.timeout_s < 0:
            raise ConfigError("timeout_s must be 0 (the default) or more")
        timeout_s = request.timeout_s or SEND_SINGLE_TIMEOUT_S
        remaining = context.time_remaining()
        if remaining is not None:
            timeout_s = min(timeout_s, remaining)
        run = await in_thread(lambda: self.tasks.execute(self._single(caller, request)))
        try:
            await run.wait_async(timeout=timeout_s)
        except TimeoutError:
            raise AnswerLate(f"no answer within {timeout_s:g}s: {run.folder.path}") from None
        record = await in_thread(lambda: next(run.results(), None))
        if record is None:
            raise TaskNotFinished(f"the run ended {run.progress().state} with no record")
        return record_message(0, record)

    def _single(self, caller: Caller, request: pb.SendSingleRequest) -> TaskFolder:
        user_id = caller.user_for(request.user_id)
        config = config_from_text(request.config_json, "config_json")
        item = {_prompt_field(config or TaskConfig(), request.api): request.prompt}
        return self.tasks.create(user_id, request.api, "single", config, [item])

    @_served
    async def CreateBatch(self, request: pb.CreateTaskRequest, context: Any) -> pb.Task:
        """A task in native batch mode, created and executed."""
        caller = self._caller(context)

        def create_batch() -> pb.Task:
            folder = self._create(caller, request, "batch")
            self.tasks.execute(folder)
            return task_message(folder)

        return await in_thread(create_batch)

    @_served
    async def CheckBatchStatus(self, request: pb.TaskRef, context: Any) -> pb.BatchStatus:
        """The task and its native batches, with the provider's own status."""
        caller = self._caller(context)

        def check() -> pb.BatchStatus:
            folder = self.tasks.folder(caller, request.task_path)
            batches = [
                pb.NativeBatch(
                    number=s.number,
                    batch_id=s.batch_id or "",
                    status=s.status or "",
                    raw_status=s.raw_status or "",
                    request_counts=s.request_counts,
                    items=s.items,
                )
                for s in self.client.get_run(folder).batches()
            ]
            return pb.BatchStatus(task=task_message(self.tasks.status(folder)), batches=batches)

        return await in_thread(check)


def _prompt_field(config: TaskConfig, api: str) -> str:
    """The item field a provider's section reads the prompt (DeepL: the text) from."""
    section = config.provider(api)
    return getattr(section, "prompt", None) or getattr(section, "text", "text")

"""``mitrailleuse.v1.MitrailleuseService``: the Python API over gRPC, with no logic of its own.

Each call checks who it acts for (:mod:`mitrailleuse.services.tokens`), runs the Python API
in a thread (it blocks on Redis and the disk), and turns its one-line errors into status
codes. ``WatchTask`` streams share one poll of a run's progress (:class:`ProgressHub`): a
hundred watchers cost the run what one does.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import grpc
import orjson
import redis
from google.protobuf import json_format
from kombu.exceptions import OperationalError

from mitrailleuse.api import Mitrailleuse, Progress, Run
from mitrailleuse.config import TaskConfig, parse_config
from mitrailleuse.errors import (
    BrokerError,
    ConfigError,
    InputError,
    MitrailleuseError,
    TaskNameError,
    TaskNotFound,
)
from mitrailleuse.records import read_records
from mitrailleuse.services.tokens import Caller, Forbidden, Unauthenticated
from mitrailleuse.taskfolder import FINAL_STATES, TaskFolder, iter_tasks
from mitrailleuse.v1 import mitrailleuse_pb2 as pb
from mitrailleuse.v1 import mitrailleuse_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: How often a watched run's progress is read (one read per run, however many watch it).
WATCH_POLL_S = 0.5
#: What ``SendSingle`` waits for its answer when the request says nothing.
SEND_SINGLE_TIMEOUT_S = 120.0
#: The largest ``ListTasks`` page.
MAX_PAGE = 500


class Unavailable(MitrailleuseError):
    """Nothing would serve the call now: no worker serves the queue, or no answer in time."""


class TaskNotFinished(MitrailleuseError):
    """Results asked for before the run ended (or a run that ended without them)."""


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


def status_of(error: BaseException) -> grpc.StatusCode | None:
    """The status code an error maps to (None: an unexpected error, INTERNAL)."""
    for kind, code in STATUS_OF.items():
        if isinstance(error, kind):
            return code
    return None


async def _abort(context: grpc.aio.ServicerContext, error: BaseException) -> None:
    """End the call with the error's status and its one line; never a traceback."""
    code = status_of(error)
    if code is None:
        log.exception("a gRPC call failed unexpectedly", exc_info=error)
        await context.abort(grpc.StatusCode.INTERNAL, f"internal error: {type(error).__name__}")
    if code is grpc.StatusCode.UNAVAILABLE and isinstance(error, redis.RedisError):
        await context.abort(code, "the broker (Redis) does not answer")
    await context.abort(code, str(error).splitlines()[0] if str(error) else code.name.lower())


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


def _counts(counts: Any) -> pb.Counts:
    return pb.Counts(
        total=counts.total,
        done=counts.done,
        succeeded=counts.succeeded,
        failed=counts.failed,
        cached=counts.cached,
    )


def task_message(folder: TaskFolder) -> pb.Task:
    """A task folder as the service describes it."""
    status = folder.status()
    return pb.Task(
        task_path=str(folder.path),
        user_id=folder.user_id,
        task_name=folder.config().task_name,
        api=status.provider,
        state=status.state,
        counts=_counts(status.counts),
        run_id=status.run_id or "",
        mode=status.mode if status.run_id else "",
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


@dataclass(slots=True)
class _Watch:
    """A watched run: its latest progress, and the streams waiting for the next."""

    latest: pb.Progress | None = None
    #: Why the progress can no longer be read (Redis gone): every watcher's stream ends with it.
    error: Exception | None = None
    watchers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    poller: asyncio.Task[None] | None = None

    async def after(self, event_id: int, first: bool = False) -> pb.Progress:
        """The latest progress, once it is newer than ``event_id``.

        A stream's ``first`` message may be an older one when the run has finished: a client
        resuming after the final event (or with a clock ahead) still gets the end.
        """

        def ready() -> bool:
            latest = self.latest
            if self.error is not None:
                return True
            return latest is not None and (
                latest.event_id > event_id or (first and latest.finished)
            )

        async with self.changed:
            await self.changed.wait_for(ready)
            if self.error is not None:
                raise self.error
            assert self.latest is not None
            return self.latest

    async def publish(self, latest: pb.Progress | None, error: Exception | None = None) -> None:
        """Wake every watcher with a new progress, or the error that ends the watch."""
        async with self.changed:
            self.latest, self.error = latest or self.latest, error
            self.changed.notify_all()


class ProgressHub:
    """One poll of each watched run's progress, fanned out to every stream watching it."""

    def __init__(self, poll_s: float = WATCH_POLL_S) -> None:
        self.poll_s = poll_s
        self._watches: dict[Path, _Watch] = {}

    async def watch(self, run: Run, after_event_id: int = 0) -> AsyncIterator[pb.Progress]:
        """Each new progress of ``run`` (after ``after_event_id``), the final one last."""
        key = run.folder.path
        watch = self._watches.setdefault(key, _Watch())
        watch.watchers += 1
        if watch.poller is None:
            watch.poller = asyncio.create_task(self._poll(run, watch))
        sent = after_event_id
        try:
            while True:
                latest = await watch.after(sent, first=sent == after_event_id)
                sent = latest.event_id
                yield latest
                if latest.finished:
                    return
        finally:
            watch.watchers -= 1
            if watch.watchers == 0:
                if watch.poller is not None:
                    watch.poller.cancel()
                self._watches.pop(key, None)

    async def _poll(self, run: Run, watch: _Watch) -> None:
        event_id = 0
        while True:
            try:
                message = await asyncio.to_thread(_progress_message, run)
            except Exception as error:  # the watchers' streams end with it, as a status code
                await watch.publish(None, error)
                return
            last = watch.latest
            if last is None or _changed(last, message):
                # the time in ms: ids keep growing across watches and server restarts, so a
                # client that reconnects (here or to another server) resumes after its last
                event_id = max(event_id + 1, time.time_ns() // 1_000_000)
                message.event_id = event_id
                await watch.publish(message)
            if message.finished:
                return
            await asyncio.sleep(self.poll_s)


def _changed(last: pb.Progress, new: pb.Progress) -> bool:
    """Whether a progress says something new (its event id aside)."""
    compared = pb.Progress()
    compared.CopyFrom(new)
    compared.event_id = last.event_id
    return compared != last


def _progress_message(run: Run) -> pb.Progress:
    progress: Progress = run.progress()
    rates = run.rates()
    return pb.Progress(
        state=progress.state,
        counts=_counts(progress),
        spent_usd=progress.spent_usd,
        projected_usd=progress.projected_usd or 0.0,
        requests_per_minute=rates.requests_per_minute,
        tokens_per_minute=rates.tokens_per_minute,
        requests_per_minute_limit=rates.limits.requests_per_minute,
        tokens_per_minute_limit=rates.limits.tokens_per_minute or 0,
        finished=progress.finished,
    )


class MitrailleuseService(pb_grpc.MitrailleuseServiceServicer):
    """The service's calls, each a few lines over :class:`mitrailleuse.api.Mitrailleuse`.

    A call's work (Redis, the disk) runs in a thread (``_in_thread``): the loop only moves
    messages, so that a hundred streams and slow disks never hold each other up.
    """

    def __init__(self, client: Mitrailleuse, tokens: dict[str, str]) -> None:
        self.client = client
        self.tokens = tokens
        self.hub = ProgressHub()

    def _caller(self, context: grpc.aio.ServicerContext) -> Caller:
        metadata = dict(context.invocation_metadata() or ())
        return Caller(self.tokens, metadata.get("authorization"))

    def _folder(self, caller: Caller, path: str) -> TaskFolder:
        """The task at ``path``, if the caller may see it (else, as for none: NOT_FOUND)."""
        folder = self.client.task(path)
        if not caller.may_see(folder.user_id):
            raise TaskNotFound(f"{path}: no task folder here")
        return folder

    def _create(self, caller: Caller, request: pb.CreateTaskRequest, mode: str | None) -> Any:
        user_id = caller.user_for(request.user_id)
        if request.input_paths and caller.user_id is not None:
            raise Forbidden("input_paths are read on the server: with tokens, send items")
        config = _config(request.config_json)
        if mode is not None:
            config = config or TaskConfig()
            config.provider(request.api).mode = mode
        items = [_plain(json_format.MessageToDict(item)) for item in request.items]
        inputs = [*request.input_paths, *items]
        return self.client.create_task(user_id, request.api, request.task_name, config, inputs)

    def _execute(self, folder: TaskFolder) -> Run:
        """Submit, unless no worker would serve the run (UNAVAILABLE, with which queue)."""
        unserved = sorted(q for q, found in self.client.workers(folder).items() if not found)
        if unserved:
            raise Unavailable(
                f"no worker serves {', '.join(unserved)}: start one (mitrailleuse worker); "
                f"the task waits, created: {folder.path}"
            )
        return self.client.submit(folder)

    def _status(self, folder: TaskFolder) -> pb.Task:
        """The folder's view of a task, made live from Redis while it runs."""
        progress = self.client.get_run(folder).progress()
        message = task_message(folder)
        message.state = progress.state
        message.counts.CopyFrom(_counts(progress))
        return message

    @_served
    async def CreateTask(self, request: pb.CreateTaskRequest, context: Any) -> pb.Task:
        """A task folder: the config validated, literal keys scrubbed, inputs copied."""
        caller = self._caller(context)
        return await _in_thread(lambda: task_message(self._create(caller, request, None)))

    @_served
    async def ExecuteTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """Submit the task to the fleet (UNAVAILABLE when no worker serves its queue)."""
        caller = self._caller(context)

        def execute() -> pb.Task:
            folder = self._folder(caller, request.task_path)
            self._execute(folder)
            return task_message(folder)

        return await _in_thread(execute)

    @_served
    async def GetTaskStatus(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """The task's state and counts, live while it runs."""
        caller = self._caller(context)
        return await _in_thread(lambda: self._status(self._folder(caller, request.task_path)))

    GetTaskByPath = GetTaskStatus  # the original service's name for it

    @_served
    async def ListTasks(self, request: pb.ListTasksRequest, context: Any) -> pb.ListTasksResponse:
        """The caller's tasks (oldest first), by state, a page at a time."""
        caller = self._caller(context)
        user_id = caller.user_for(request.user_id) if caller.user_id else request.user_id
        if request.page_size < 0 or not (request.page_token or "0").isdigit():
            raise ConfigError("page_size must be 0 or more, page_token one a response gave")
        size = min(request.page_size or 100, MAX_PAGE)
        start = int(request.page_token or 0)

        def page() -> pb.ListTasksResponse:
            folders = _listed(self.client.tasks_dir, user_id or "all", request.state)
            more = str(start + size) if start + size < len(folders) else ""
            tasks = [task_message(f) for f in folders[start : start + size]]
            return pb.ListTasksResponse(tasks=tasks, next_page_token=more)

        return await _in_thread(page)

    @_served
    async def CancelTask(self, request: pb.TaskRef, context: Any) -> pb.Task:
        """Stop dispatching: in-flight items finish, the run ends cancelled."""
        caller = self._caller(context)

        def cancel() -> pb.Task:
            folder = self._folder(caller, request.task_path)
            self.client.get_run(folder).cancel()
            return self._status(folder)

        return await _in_thread(cancel)

    @_streamed
    async def WatchTask(
        self, request: pb.WatchTaskRequest, context: Any
    ) -> AsyncIterator[pb.Progress]:
        """A progress message on every change, ending with the final state."""
        caller = self._caller(context)
        folder = await _in_thread(lambda: self._folder(caller, request.task_path))
        async for progress in self.hub.watch(self.client.get_run(folder), request.after_event_id):
            yield progress

    @_streamed
    async def GetResults(
        self, request: pb.GetResultsRequest, context: Any
    ) -> AsyncIterator[pb.Record]:
        """The finished run's records in input order, from ``start_index`` on."""
        caller = self._caller(context)

        def records() -> Iterator[pb.Record]:
            folder = self._folder(caller, request.task_path)
            if folder.status().state not in FINAL_STATES or not folder.results_path.exists():
                raise TaskNotFinished(f"{folder.name}: the run has not finished (WatchTask it)")
            return _records_from(folder, request.start_index)

        found = await _in_thread(records)
        while batch := await _in_thread(lambda: _next_batch(found)):
            for message in batch:
                yield message

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
        run = await _in_thread(lambda: self._execute(self._single(caller, request)))
        try:
            await run.wait_async(timeout=timeout_s)
        except TimeoutError:
            raise AnswerLate(f"no answer within {timeout_s:g}s: {run.folder.path}") from None
        record = await _in_thread(lambda: next(run.results(), None))
        if record is None:
            raise TaskNotFinished(f"the run ended {run.progress().state} with no record")
        return record_message(0, record)

    def _single(self, caller: Caller, request: pb.SendSingleRequest) -> TaskFolder:
        config = _config(request.config_json)
        item = {_prompt_field(config or TaskConfig(), request.api): request.prompt}
        user_id = caller.user_for(request.user_id)
        return self.client.create_task(user_id, request.api, "single", config, [item])

    @_served
    async def CreateBatch(self, request: pb.CreateTaskRequest, context: Any) -> pb.Task:
        """A task in native batch mode, created and executed."""
        caller = self._caller(context)

        def create_batch() -> pb.Task:
            folder = self._create(caller, request, "batch")
            self._execute(folder)
            return task_message(folder)

        return await _in_thread(create_batch)

    @_served
    async def CheckBatchStatus(self, request: pb.TaskRef, context: Any) -> pb.BatchStatus:
        """The task and its native batches, with the provider's own status."""
        caller = self._caller(context)

        def check() -> pb.BatchStatus:
            folder = self._folder(caller, request.task_path)
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
            return pb.BatchStatus(task=self._status(folder), batches=batches)

        return await _in_thread(check)


async def _in_thread(work: Callable[[], T]) -> T:
    """``work`` (Redis, the disk) in a thread, the loop free meanwhile."""
    return await asyncio.to_thread(work)


def _config(text: str) -> TaskConfig | None:
    """A request's ``config_json`` validated (None when empty: the defaults)."""
    if not text:
        return None
    try:
        data = orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"config_json: not valid JSON: {error}") from None
    return parse_config(data, "config_json")


def _prompt_field(config: TaskConfig, api: str) -> str:
    """The item field a provider's section reads the prompt (DeepL: the text) from."""
    section = config.provider(api)
    return getattr(section, "prompt", None) or getattr(section, "text", "text")


def _listed(tasks_dir: Path, user_id: str, state: str) -> list[TaskFolder]:
    folders = list(iter_tasks(tasks_dir, user_id))
    return [f for f in folders if not state or f.status().state == state]


#: Records sent per read of the results file.
RECORDS_PER_READ = 500


def _records_from(folder: TaskFolder, start: int) -> Iterator[pb.Record]:
    for index, record in enumerate(read_records(folder.results_path)):
        if index >= start:
            yield record_message(index, record)


def _next_batch(records: Iterator[pb.Record]) -> list[pb.Record]:
    batch = []
    for record in records:
        batch.append(record)
        if len(batch) == RECORDS_PER_READ:
            break
    return batch

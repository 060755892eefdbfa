"""The Python API: create tasks, submit them to the fleet, follow and collect their runs.

The CLI is a thin layer over this module. :class:`Mitrailleuse` finds Redis (``REDIS_URL`` or
the embedded server) and the tasks dir; :meth:`Mitrailleuse.submit` returns a :class:`Run` at
once, whose callbacks are delivered by a background thread listening to the run's Redis
channel, never by the workers.
"""

from __future__ import annotations

import asyncio
import logging
import threading
import time
from collections.abc import AsyncIterator, Callable, Iterator, Sequence
from dataclasses import dataclass
from functools import cached_property
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar, overload

import redis
from pydantic import BaseModel

from mitrailleuse import keys
from mitrailleuse.batch.state import BatchState
from mitrailleuse.batch.state import all_states as all_batch_states
from mitrailleuse.broker import check_reachable, resolve_redis_url
from mitrailleuse.config import (
    Environment,
    ProviderName,
    TaskConfig,
    load_config,
    parse_config,
    set_response_model,
    without_effect,
)
from mitrailleuse.credentials import scrub_config
from mitrailleuse.modes import resolve_mode
from mitrailleuse.pipeline import chat_stream, liveness, submitter
from mitrailleuse.pipeline.chunks import part_files, part_path
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.run_state import RunState, redis_client
from mitrailleuse.ratelimit import Rates, RedisLimiter, task_limiter
from mitrailleuse.records import read_records
from mitrailleuse.taskfolder import (
    FINAL_STATES,
    Status,
    TaskFolder,
    create_task_folder,
    open_task,
)

log = logging.getLogger(__name__)

M = TypeVar("M", bound=BaseModel)

#: A config given to ``create_task``: a file, a mapping, or a validated model.
ConfigSource = str | Path | dict[str, Any] | TaskConfig | None


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a run got, read from Redis (live) or ``status.json`` (after it ended)."""

    state: str
    total: int
    done: int
    succeeded: int
    failed: int
    cached: int
    #: What the run's records cost so far, in US dollars (records of earlier runs included).
    spent_usd: float = 0.0

    @property
    def projected_usd(self) -> float | None:
        """The whole run's cost at the spend per item so far (None before the first record)."""
        return self.spent_usd / self.done * self.total if self.done else None

    @property
    def finished(self) -> bool:
        """Whether the run ended (completed, failed or cancelled)."""
        return self.state in FINAL_STATES


def folder_progress(folder: TaskFolder) -> Progress:
    """A run's progress as its task folder last recorded it (what is left without Redis)."""
    status = folder.status()
    summary = folder.summary()
    spent = summary.get("cost_usd", 0.0) if summary.get("run_id") == status.run_id else 0.0
    return Progress(state=status.state, **status.counts.model_dump(), spent_usd=spent)


ProgressCallback = Callable[["Run", Progress], None]
ItemCallback = Callable[["Run", dict[str, Any]], None]
CompleteCallback = Callable[["Run"], None]


class Run:
    """One submission of a task: follow it, wait for it, cancel it, read its results."""

    def __init__(self, folder: TaskFolder, client: redis.Redis) -> None:
        self.folder = folder
        self._redis = client

    @property
    def run_id(self) -> str | None:
        """The run's id, as ``status.json`` records it."""
        return self.folder.status().run_id

    def status(self) -> Status:
        """The task's ``status.json``."""
        return self.folder.status()

    def progress(self) -> Progress:
        """Counts and state, live from Redis while the run goes on.

        A cancelled run is ``cancelling`` (``stopping`` when its budget ran out) until its
        in-flight items have their records and its outputs are written; only then is it
        ``cancelled`` (``stopped_budget``), finished.
        """
        status = self.folder.status()
        run = RunState(self._redis, status.run_id) if status.run_id else None
        if run is not None and run.exists():
            info = run.info()
            state = info.get("state") or status.state
            if state not in FINAL_STATES:
                if info.get("cancelled") == "1":
                    state = "stopping" if info.get("stop_state") else "cancelling"
                spent = float(info.get("spent_usd") or 0.0)
                return Progress(state=state, **run.counts(info), spent_usd=spent)
        return folder_progress(self.folder)

    def wait(self, timeout: float | None = None, poll_s: float = 0.5) -> Progress:
        """Block until the run ends; raises TimeoutError after ``timeout`` seconds."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = self.progress()
            if progress.finished:
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run of {self.folder.path} not finished after {timeout}s")
            time.sleep(poll_s)

    async def wait_async(self, timeout: float | None = None, poll_s: float = 0.5) -> Progress:
        """:meth:`wait` for asyncio code: the loop runs on while the run goes on."""
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            progress = await asyncio.to_thread(self.progress)
            if progress.finished:
                return progress
            if deadline is not None and time.monotonic() > deadline:
                raise TimeoutError(f"run of {self.folder.path} not finished after {timeout}s")
            await asyncio.sleep(poll_s)

    async def aresults(self, chunk: int = 1000) -> AsyncIterator[dict[str, Any]]:
        """:meth:`results` for asyncio code.

        The file is read in a thread, ``chunk`` records at a time: a large file never blocks
        the loop.
        """
        records = self.results()
        while batch := await asyncio.to_thread(lambda: list(islice(records, chunk))):
            for record in batch:
                yield record

    def batches(self) -> list[BatchState]:
        """The run's native batches, with their provider status and request counts."""
        run_id = self.run_id
        return [s for s in all_batch_states(self.folder) if s.run_id == run_id]

    def rates(self) -> Rates:
        """The fleet's live request and token rates for this task's provider, with its limits."""
        return self._limiter.rates()

    def workers(self) -> dict[str, list[set[str]]]:
        """The live workers of each queue the run needs, as the key variables each has set."""
        return workers_for(self.folder, self._redis)

    def stalled(self) -> str | None:
        """Why the run cannot move now (``no worker serves openai``), or None if it can."""
        unserved = sorted(queue for queue, found in self.workers().items() if not found)
        return f"no worker serves {', '.join(unserved)}" if unserved else None

    @cached_property
    def _limiter(self) -> RedisLimiter:
        """The task's budget, built once: a progress display asks for rates twice a second."""
        return task_limiter(self._redis, self.folder)

    def cancel(self) -> None:
        """Stop dispatching: in-flight items finish, nothing new is sent."""
        submitter.cancel(self.folder, self._redis)

    @overload
    def results(self, model: None = None) -> Iterator[dict[str, Any]]: ...
    @overload
    def results(self, model: type[M]) -> Iterator[M | None]: ...
    def results(self, model: type[M] | None = None) -> Iterator[dict[str, Any] | M | None]:
        """The records of ``outputs/results.jsonl``, streamed, in input order.

        With ``model`` (a structured run's pydantic model), each record's ``parsed`` object as
        that model instead; None for an item that failed.
        """
        if not self.folder.results_path.exists():
            return
        for record in read_records(self.folder.results_path):
            if model is None:
                yield record
            elif record.get("parsed") is None:
                yield None
            else:
                yield model.model_validate(record["parsed"])

    def results_dict(self) -> dict[str, dict[str, Any]]:
        """Every record by item id (the whole run in memory: for runs that fit in it)."""
        return {record["id"]: record for record in self.results()}

    def listen(
        self,
        on_progress: ProgressCallback | None = None,
        on_item: ItemCallback | None = None,
        on_complete: CompleteCallback | None = None,
    ) -> threading.Thread:
        """Deliver callbacks from a daemon thread subscribed to the run's events."""
        listener = _Listener(self, on_progress, on_item, on_complete)
        thread = threading.Thread(target=listener.run, name="mitrailleuse-listener", daemon=True)
        thread.start()
        return thread


class _Listener:
    """Turns a run's Redis events into callbacks; a raising callback is logged and skipped."""

    def __init__(
        self,
        run: Run,
        on_progress: ProgressCallback | None,
        on_item: ItemCallback | None,
        on_complete: CompleteCallback | None,
    ) -> None:
        self.run_handle = run
        self.on_progress, self.on_item, self.on_complete = on_progress, on_item, on_complete

    def _safely(self, callback: Callable[..., None] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(self.run_handle, *args)
        except Exception:
            log.exception("a run callback raised; the run goes on")

    def run(self) -> None:
        run_id = self.run_handle.run_id
        if run_id is None:
            return
        pubsub = self.run_handle._redis.pubsub(ignore_subscribe_messages=True)
        pubsub.subscribe(keys.events(run_id))
        delivered: set[int] = set()
        try:
            while True:
                message = pubsub.get_message(timeout=1.0)
                event = message["data"].decode() if message else ""
                progress = self.run_handle.progress()
                if event == "progress" or (not message and not progress.finished):
                    self._safely(self.on_progress, progress)
                if event.startswith(keys.CHUNK_WRITTEN) and self.on_item:
                    self._deliver_chunk(int(event.removeprefix(keys.CHUNK_WRITTEN)), delivered)
                if progress.finished:
                    self._deliver_rest(delivered)
                    self._safely(self.on_progress, progress)
                    self._safely(self.on_complete)
                    return
        finally:
            pubsub.close()

    def _deliver_chunk(self, number: int, delivered: set[int]) -> None:
        if number in delivered:
            return
        delivered.add(number)
        path = part_path(self.run_handle.folder, number)
        if path.exists():
            for record in read_records(path):
                self._safely(self.on_item, record)

    def _deliver_rest(self, delivered: set[int]) -> None:
        if self.on_item is None:
            return
        for number, _ in part_files(self.run_handle.folder):
            self._deliver_chunk(number, delivered)


class Mitrailleuse:
    """Entry point of the Python API (README, "From Python")."""

    def __init__(
        self,
        redis_url: str | None = None,
        tasks_dir: str | Path | None = None,
        start_broker: bool = True,
    ) -> None:
        """Find nothing yet: Redis is looked for on first use (``create_task`` needs none).

        ``start_broker=False`` is for read-only callers: with no ``REDIS_URL``, use the tasks
        dir's embedded server if it runs, and never start one.
        """
        env = Environment()
        self.tasks_dir = Path(tasks_dir or env.mitrailleuse_tasks_dir).absolute()
        self.start_broker = start_broker
        self._given = (redis_url, "redis_url") if redis_url else (env.redis_url, "REDIS_URL")
        self._redis_url: str | None = None

    @property
    def redis_url(self) -> str:
        """The Redis of this client, found on first use and kept.

        The one given (``redis_url``, else ``REDIS_URL``) must answer a PING within seconds;
        without one, the tasks dir's embedded server, started unless ``start_broker`` is False.

        Raises:
            BrokerError: the given Redis does not answer, or the embedded one cannot start.
            BrokerNotRunning: ``start_broker`` is False and the embedded server is not running.

        """
        if self._redis_url is None:
            url, source = self._given
            if url:
                self._redis_url = check_reachable(url, source)
            else:
                self._redis_url = resolve_redis_url("", self.tasks_dir, self.start_broker)
        return self._redis_url

    @property
    def redis(self) -> redis.Redis:
        """The shared Redis client."""
        return redis_client(self.redis_url)

    def create_task(
        self,
        user_id: str,
        api: ProviderName,
        task_name: str,
        config: ConfigSource = None,
        inputs: Sequence[str | Path | dict[str, Any]] = (),
        response_model: type[BaseModel] | None = None,
    ) -> TaskFolder:
        """Create a task folder; the config is validated and scrubbed of literal keys first.

        ``response_model`` (a pydantic model) asks for structured answers: its JSON Schema
        becomes the provider's ``api_information.response_schema``.
        """
        if config is None:
            model = TaskConfig()
        elif isinstance(config, TaskConfig):
            model = config.model_copy(deep=True)
        elif isinstance(config, dict):
            model = parse_config(config)
        else:
            model = load_config(Path(config))
        if response_model is not None:
            set_response_model(model, api, response_model)
        scrub_config(model)
        ignored = without_effect(model)
        if ignored:
            log.warning("config: these settings have no effect here: %s", "; ".join(ignored))
        items = [i if isinstance(i, dict) else Path(i) for i in inputs]
        return create_task_folder(self.tasks_dir, user_id, api, task_name, model, items)

    def task(self, path: str | Path) -> TaskFolder:
        """The task folder at ``path`` (inside the tasks dir)."""
        return open_task(self.tasks_dir, path)

    def submit(
        self,
        task: TaskFolder | str | Path,
        on_progress: ProgressCallback | None = None,
        on_item: ItemCallback | None = None,
        on_complete: CompleteCallback | None = None,
    ) -> Run:
        """Send the task to the fleet and return at once."""
        folder = task if isinstance(task, TaskFolder) else self.task(task)
        self._app_ready()
        submitter.submit(folder, self.redis)
        run = Run(folder, self.redis)
        if on_progress or on_item or on_complete:
            run.listen(on_progress, on_item, on_complete)
        return run

    def workers(self, task: TaskFolder | str | Path) -> dict[str, list[set[str]]]:
        """The live workers of each queue a run of ``task`` needs (each: its key variables)."""
        folder = task if isinstance(task, TaskFolder) else self.task(task)
        return workers_for(folder, self.redis)

    def start_chat(self, user_id: str, provider: str, request: dict[str, Any]) -> str:
        """Open a streamed chat session and have a worker answer it; return the session's id.

        ``request``: ``model`` (None: the provider's default), ``messages``, ``settings`` (sent
        as they are) and ``include_usage``. Read it with :func:`~mitrailleuse.pipeline.
        chat_stream.relay`.
        """
        from mitrailleuse.pipeline.tasks import send_chat

        self._app_ready()
        session_id = chat_stream.open_session(self.redis, user_id, provider, request)
        send_chat(session_id, provider)
        return session_id

    def get_run(self, task: TaskFolder | str | Path) -> Run:
        """Re-attach to a task's run, from any process."""
        folder = task if isinstance(task, TaskFolder) else self.task(task)
        return Run(folder, self.redis)

    def _app_ready(self) -> None:
        """Point the Celery app at this instance's Redis before anything is sent.

        Before Celery has loaded its configuration the URL goes in as a pending setting
        (reading ``app.conf`` would load it): the app's hook then finds its broker chosen and
        never looks for one of its own, in another tasks dir.
        """
        from mitrailleuse.pipeline.app import app

        if not app.configured or app.conf.broker_url != self.redis_url:
            app.conf.update(broker_url=self.redis_url, result_backend=self.redis_url)


def workers_for(folder: TaskFolder, client: redis.Redis) -> dict[str, list[set[str]]]:
    """The queues a run of ``folder`` needs, each with its live workers' key variables.

    A live run needs its provider's queue and the control queue; a native batch run only the
    control queue (beat polls the batches). Before its first run, the mode its config asks.
    """
    queues = [CONTROL_QUEUE]
    status, provider = folder.status(), folder.provider
    mode = (
        status.mode
        if status.run_id
        else resolve_mode(provider, folder.config().provider(provider))[0]
    )
    if mode != "batch":
        queues.insert(0, provider)
    return liveness.serving(client, queues)

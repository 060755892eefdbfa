"""What the gRPC service and the HTTP API both do over the Python API, whatever the wire.

Each service checks who calls (:mod:`mitrailleuse.services.tokens`), then asks :class:`Tasks`:
the same scoping (another user's task is answered as if there were none), the same checks
before a run is sent (no worker serves its queue: :class:`Unavailable`), the same views of a
task (:class:`TaskView`), and the same one-line errors, which each service maps to its own
status codes with :func:`first_match`.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from itertools import islice
from pathlib import Path
from typing import Any, TypeVar

import orjson
import redis

from mitrailleuse.api import Mitrailleuse, Run
from mitrailleuse.config import TaskConfig, parse_config
from mitrailleuse.errors import ConfigError, MitrailleuseError, TaskNotFound
from mitrailleuse.records import read_records
from mitrailleuse.services.tokens import Caller
from mitrailleuse.taskfolder import FINAL_STATES, TaskFolder, iter_tasks

#: The largest page of a task list.
MAX_PAGE = 500
#: A page's size when the request says none.
DEFAULT_PAGE = 100
#: Records read from a results file per hop to a thread.
RECORDS_PER_READ = 500

T = TypeVar("T")
C = TypeVar("C")


class Unavailable(MitrailleuseError):
    """Nothing would serve the call now: no worker serves the queue, or no answer in time."""


class TaskNotFinished(MitrailleuseError):
    """Results asked for before the run ended (or a run that ended without them)."""


@dataclass(frozen=True, slots=True)
class TaskCounts:
    """How many items a task has, and how far its run got."""

    total: int
    done: int
    succeeded: int
    failed: int
    cached: int

    @classmethod
    def of(cls, counts: Any) -> TaskCounts:
        """The counts of ``status.json`` or of a live :class:`~mitrailleuse.api.Progress`."""
        return cls(counts.total, counts.done, counts.succeeded, counts.failed, counts.cached)


@dataclass(frozen=True, slots=True)
class TaskView:
    """A task as the services describe it."""

    #: ``<user_id>/<folder name>``: the task's path relative to the tasks dir.
    id: str
    task_path: str
    user_id: str
    task_name: str
    api: str
    #: created, queued, running, batch_submitted, completed, failed, cancelled, stopped_budget.
    state: str
    counts: TaskCounts
    run_id: str | None
    #: realtime or batch (None before the first run).
    mode: str | None
    #: What the run spent so far (as the folder last recorded it, or live while it runs).
    spent_usd: float = 0.0
    #: ISO 8601 times, UTC (None: not yet).
    created_at: str | None = None
    started_at: str | None = None
    finished_at: str | None = None

    @classmethod
    def of(cls, folder: TaskFolder) -> TaskView:
        """The task as its folder records it."""
        status = folder.status()
        summary = folder.summary()
        spent = summary.get("cost_usd") if summary.get("run_id") == status.run_id else None
        return cls(
            id=f"{folder.user_id}/{folder.name}",
            task_path=str(folder.path),
            user_id=folder.user_id,
            task_name=folder.config().task_name,
            api=status.provider,
            state=status.state,
            counts=TaskCounts.of(status.counts),
            run_id=status.run_id,
            mode=status.mode if status.run_id else None,
            spent_usd=spent or 0.0,
            created_at=_iso(status.created_at),
            started_at=_iso(status.started_at),
            finished_at=_iso(status.finished_at),
        )


@dataclass(frozen=True, slots=True)
class TaskPage:
    """A page of a task list, and the token of the next (None: the last page)."""

    tasks: list[TaskView]
    next_page_token: str | None


class Tasks:
    """The services' task calls, each a few lines over :class:`~mitrailleuse.api.Mitrailleuse`.

    Every method blocks (Redis, the disk): the services call them in a thread (:func:`in_thread`).
    """

    def __init__(self, client: Mitrailleuse) -> None:
        self.client = client

    def folder(self, caller: Caller, path: str | Path) -> TaskFolder:
        """The task at ``path``, if the caller may see it (else, as for none: TaskNotFound)."""
        folder = self.client.task(path)
        if not caller.may_see(folder.user_id):
            raise TaskNotFound(f"{path}: no task folder here")
        return folder

    def create(
        self,
        user_id: str,
        api: str,
        task_name: str,
        config: TaskConfig | None,
        inputs: Sequence[Path | dict[str, Any]],
        mode: str | None = None,
    ) -> TaskFolder:
        """A task folder (``mode``: the run's, whatever the config says).

        ``user_id`` is the one the caller may act for (``Caller.user_for``), checked first.
        """
        if mode is not None:
            config = config or TaskConfig()
            config.provider(api).mode = mode
        return self.client.create_task(user_id, api, task_name, config, inputs)

    def execute(self, folder: TaskFolder) -> Run:
        """Submit, unless no worker would serve the run (Unavailable, naming the queues)."""
        unserved = sorted(q for q, found in self.client.workers(folder).items() if not found)
        if unserved:
            raise Unavailable(
                f"no worker serves {', '.join(unserved)}: start one (mitrailleuse worker); "
                f"the task waits, created: {folder.path}"
            )
        return self.client.submit(folder)

    def status(self, folder: TaskFolder) -> TaskView:
        """The folder's view of a task, made live from Redis while it runs."""
        progress = self.client.get_run(folder).progress()
        return replace(
            TaskView.of(folder),
            state=progress.state,
            counts=TaskCounts.of(progress),
            spent_usd=progress.spent_usd,
        )

    def cancel(self, folder: TaskFolder) -> TaskView:
        """Stop dispatching: in-flight items finish, the run ends cancelled."""
        self.client.get_run(folder).cancel()
        return self.status(folder)

    def page(
        self,
        caller: Caller,
        user_id: str,
        state: str,
        page_size: int,
        page_token: str,
        provider: str = "",
        newest_first: bool = False,
    ) -> TaskPage:
        """The caller's tasks (or ``user_id``'s), by state and provider, a page at a time."""
        user = caller.user_for(user_id) if caller.user_id else user_id
        if page_size < 0 or not (page_token or "0").isdigit():
            raise ConfigError("page_size must be 0 or more, page_token one a response gave")
        size = min(page_size or DEFAULT_PAGE, MAX_PAGE)
        start = int(page_token or 0)
        folders = list(iter_tasks(self.client.tasks_dir, user or "all"))
        if newest_first:
            folders.reverse()
        if state or provider:
            statuses = ((f, f.status()) for f in folders)
            folders = [
                f
                for f, status in statuses
                if status.state == (state or status.state)
                and status.provider == (provider or status.provider)
            ]
        more = str(start + size) if start + size < len(folders) else None
        shown = folders[start : start + size]
        return TaskPage([self._view(f) for f in shown], more)

    def _view(self, folder: TaskFolder) -> TaskView:
        """A listed task: live from Redis while its run goes on, else as its folder says."""
        found = TaskView.of(folder)
        return found if found.state in FINAL_STATES | {"created"} else self.status(folder)

    def results(self, folder: TaskFolder, start: int = 0) -> Iterator[tuple[int, dict[str, Any]]]:
        """The finished run's records in input order, each with its index, from ``start`` on."""
        if start < 0:
            raise ConfigError("the start index must be 0 or more")
        return _records_from(self.finished(folder), start)

    def finished(self, folder: TaskFolder) -> TaskFolder:
        """The folder, once its run ended with its results written (else TaskNotFinished)."""
        state = folder.status().state
        if state not in FINAL_STATES or not folder.results_path.exists():
            raise TaskNotFinished(f"{folder.name}: the run has not finished ({state})")
        return folder


def _records_from(folder: TaskFolder, start: int) -> Iterator[tuple[int, dict[str, Any]]]:
    for index, record in enumerate(read_records(folder.results_path)):
        if index >= start:
            yield index, record


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.isoformat()


def json_from_text(text: str, source: str) -> Any:
    """A request's JSON text, parsed (a ConfigError naming ``source`` when it is not JSON)."""
    try:
        return orjson.loads(text)
    except orjson.JSONDecodeError as error:
        raise ConfigError(f"{source}: not valid JSON: {error}") from None


def config_from_text(text: str, source: str) -> TaskConfig | None:
    """A config given as JSON text, validated (None when empty: the defaults)."""
    return parse_config(json_from_text(text, source), source) if text else None


def first_match(table: Mapping[type[BaseException], C], error: BaseException) -> C | None:
    """What ``table`` says of ``error``: its first kind that matches (None: unexpected)."""
    for kind, value in table.items():
        if isinstance(error, kind):
            return value
    return None


def one_line(error: BaseException) -> str:
    """What a caller is told of an error: its first line (Redis's, without its internals)."""
    if isinstance(error, redis.RedisError):
        return "the broker (Redis) does not answer"
    text = str(error)
    return text.splitlines()[0] if text else ""


async def in_thread(work: Callable[[], T]) -> T:
    """``work`` (Redis, the disk) in a thread, the loop free meanwhile."""
    return await asyncio.to_thread(work)


async def drain_in_thread(items: Iterator[T], per_read: int = RECORDS_PER_READ) -> AsyncIterator[T]:
    """``items`` read in a thread, ``per_read`` at a time: a large file never blocks the loop."""
    while batch := await in_thread(lambda: list(islice(items, per_read))):
        for item in batch:
            yield item


def redis_probe(url: str) -> redis.Redis:
    """A client for health checks: one second to answer, no retries (the pipeline's wait)."""
    return redis.Redis.from_url(url, socket_timeout=1, socket_connect_timeout=1)

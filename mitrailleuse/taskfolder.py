"""The on-disk task folder: create, locate and list tasks, and read and write their state files.

The CLI and the Python API create and find tasks here; the control tasks of the pipeline write
``status.json`` and the outputs through :func:`write_atomic`, so a reader never sees half a file.
Layout (README, "The task folder")::

    <tasks_dir>/<user_id>/<api>_<task_name>_<DD_MM_YYYY_HHMMSS>/
        config/config.json  inputs/  outputs/  cache/  logs/  status.json
"""

from __future__ import annotations

import os
import re
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime
from functools import cached_property
from pathlib import Path
from typing import Any, Literal

import orjson
from pydantic import BaseModel, Field

from mitrailleuse.atomic import write_atomic, write_json
from mitrailleuse.config import Logs, ProviderName, TaskConfig, load_config
from mitrailleuse.errors import InputError, MitrailleuseError, TaskNameError, TaskNotFound
from mitrailleuse.inputs import check_has_items, sorted_input_files
from mitrailleuse.providers import provider_class

#: Every state a task goes through (status.json; README, "The task folder").
TaskState = Literal[
    "created",
    "queued",
    "running",
    "batch_submitted",
    "completed",
    "failed",
    "cancelled",
    "stopped_budget",
]
#: States after which nothing more happens unless the task is executed again.
FINAL_STATES = frozenset({"completed", "failed", "cancelled", "stopped_budget"})

_FOLDER_NAME = re.compile(r"^([a-z][a-z0-9-]*)_(.+)_(\d{2}_\d{2}_\d{4}_\d{6})$")
_FORBIDDEN = re.compile(r"[/\\\x00]")


class Counts(BaseModel):
    """How many items the run has, and how far it got."""

    total: int = 0
    done: int = 0
    succeeded: int = 0
    failed: int = 0
    cached: int = 0


class Status(BaseModel):
    """The content of ``status.json``."""

    state: TaskState = "created"
    run_id: str | None = None
    provider: ProviderName
    mode: Literal["realtime", "batch"] = "realtime"
    #: Why the run goes in that mode (the ``mode`` asked for, what the provider offers).
    mode_reason: str | None = None
    counts: Counts = Field(default_factory=Counts)
    created_at: datetime
    updated_at: datetime
    started_at: datetime | None = None
    finished_at: datetime | None = None
    message: str | None = None


def now() -> datetime:
    """The current time, in UTC."""
    return datetime.now(UTC)


def check_name(value: str, what: str) -> str:
    """Refuse a user id or task name that is not a plain name."""
    if not value or not value.strip():
        raise TaskNameError(f"{what} must not be empty")
    if _FORBIDDEN.search(value) or value in {".", ".."} or ".." in value:
        raise TaskNameError(f"{what} {value!r} must be a plain name (no '/', '\\', '..' or NUL)")
    if Path(value).is_absolute() or value.startswith("~"):
        raise TaskNameError(f"{what} {value!r} must be a plain name, not a path")
    return value


class TaskFolder:
    """One task's folder, and the paths of everything in it."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __repr__(self) -> str:
        return f"TaskFolder({str(self.path)!r})"

    @property
    def name(self) -> str:
        """The folder name: ``<api>_<task_name>_<timestamp>``."""
        return self.path.name

    @property
    def user_id(self) -> str:
        """The user the task belongs to."""
        return self.path.parent.name

    @property
    def config_path(self) -> Path:
        """The saved config (never a literal key)."""
        return self.path / "config" / "config.json"

    @property
    def inputs_dir(self) -> Path:
        """The user's input files, as given."""
        return self.path / "inputs"

    @property
    def outputs_dir(self) -> Path:
        """Results, errors, summary and native batch files."""
        return self.path / "outputs"

    @property
    def parts_dir(self) -> Path:
        """Durable records of each finished chunk, before assembly."""
        return self.outputs_dir / "parts"

    @property
    def batches_dir(self) -> Path:
        """Native batch input, output and error files."""
        return self.outputs_dir / "batches"

    @property
    def results_path(self) -> Path:
        """One record per input item, in input order."""
        return self.outputs_dir / "results.jsonl"

    @property
    def errors_path(self) -> Path:
        """The failed records only."""
        return self.outputs_dir / "errors.jsonl"

    @property
    def summary_path(self) -> Path:
        """Counts, timings, tokens, cost, mode."""
        return self.outputs_dir / "summary.json"

    @property
    def cache_dir(self) -> Path:
        """Answers kept for a re-run where Redis never saw them (``responses.jsonl``)."""
        return self.path / "cache"

    @property
    def logs_dir(self) -> Path:
        """The run's log files."""
        return self.path / "logs"

    @cached_property
    def _logs(self) -> Logs:
        try:
            return self.config().general.logs
        except MitrailleuseError:  # a log line must never fail the step it reports
            return Logs()

    @property
    def log_path(self) -> Path:
        """The task's run log (``general.logs.log_file``): submissions, resumes, cancels, ends."""
        return self.logs_dir / self._logs.log_file

    def log(self, message: str) -> None:
        """Append a timestamped line to the run log, unless ``general.logs.log_to_file`` is off.

        One ``O_APPEND`` write per line: lines from several processes never interleave.
        """
        if not self._logs.log_to_file:
            return
        self.logs_dir.mkdir(exist_ok=True)
        line = f"{now().isoformat(timespec='seconds')} {message}\n".encode()
        fd = os.open(self.log_path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
        try:
            os.write(fd, line)
        finally:
            os.close(fd)

    @property
    def status_path(self) -> Path:
        """The task's state file."""
        return self.path / "status.json"

    @property
    def provider(self) -> ProviderName:
        """The provider the task was created for, from its folder name."""
        match = _FOLDER_NAME.match(self.name)
        if not match:
            raise TaskNotFound(f"{self.path} is not a task folder")
        return match.group(1)  # type: ignore[return-value]

    def config(self) -> TaskConfig:
        """The task's saved config."""
        return load_config(self.config_path)

    def input_files(self) -> list[Path]:
        """The input files, in the order their items are numbered."""
        return sorted_input_files(
            p for p in self.inputs_dir.iterdir() if p.is_file() and not p.name.startswith(".")
        )

    def summary(self) -> dict[str, Any]:
        """The last run's ``outputs/summary.json`` (empty before a run ended)."""
        path = self.summary_path
        return orjson.loads(path.read_bytes()) if path.exists() else {}

    def status(self) -> Status:
        """The task's current ``status.json``."""
        return Status.model_validate_json(self.status_path.read_bytes())

    def write_status(self, status: Status) -> None:
        """Replace ``status.json`` atomically."""
        status.updated_at = now()
        write_atomic(self.status_path, status.model_dump_json(indent=2).encode() + b"\n")

    def update_status(self, **changes: Any) -> Status:
        """Change some fields of ``status.json``."""
        status = self.status().model_copy(update=changes)
        self.write_status(status)
        return status


def _copy_inputs(inputs: Sequence[Path | dict[str, Any]], destination: Path) -> None:
    records = [item for item in inputs if isinstance(item, dict)]
    for path in (item for item in inputs if not isinstance(item, dict)):
        target = destination / path.name
        if target.exists():
            raise InputError(f"{path}: two input files share the name {path.name!r}")
        shutil.copyfile(path, target)
    if records:
        with (destination / "items.jsonl").open("wb") as handle:
            for record in records:
                handle.write(orjson.dumps(record) + b"\n")


def create_task_folder(
    tasks_dir: Path,
    user_id: str,
    provider: ProviderName,
    task_name: str,
    config: TaskConfig,
    inputs: Sequence[Path | dict[str, Any]] = (),
) -> TaskFolder:
    """Create a task folder, all at once: it appears complete or not at all.

    Names, inputs and config are checked first; the folder is built under a hidden temporary
    name and renamed into place.
    """
    check_name(user_id, "user id")
    check_name(task_name, "task name")
    # an unknown name is refused, with the closest known one; a plug-in's section is
    # validated now, not at run time; and so is what the provider cannot serve
    provider_class(provider).check_section(config.provider(provider))
    files = sorted_input_files(p for p in inputs if not isinstance(p, dict))
    for path in files:
        check_has_items(path)
    user_dir = tasks_dir / user_id
    user_dir.mkdir(parents=True, exist_ok=True)
    config = config.model_copy(deep=True)
    config.user_id, config.task_name = user_id, task_name
    staging = Path(tempfile.mkdtemp(dir=user_dir, prefix=".creating-"))
    try:
        for sub in ("config", "inputs", "outputs", "cache", "logs"):
            (staging / sub).mkdir()
        write_json(staging / "config" / "config.json", config.model_dump(mode="json"))
        _copy_inputs([*files, *(i for i in inputs if isinstance(i, dict))], staging / "inputs")
        stamp = now()
        TaskFolder(staging).write_status(
            Status(provider=provider, created_at=stamp, updated_at=stamp)
        )
        folder = _rename_into_place(staging, user_dir, f"{provider}_{task_name}")
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return folder


def _rename_into_place(staging: Path, user_dir: Path, prefix: str) -> TaskFolder:
    stamp = now()
    while True:
        target = user_dir / f"{prefix}_{stamp.strftime('%d_%m_%Y_%H%M%S')}"
        try:
            os.rename(staging, target)
        except OSError:
            if not target.exists():
                raise
            stamp = stamp.fromtimestamp(stamp.timestamp() + 1, UTC)
            continue
        return TaskFolder(target)


def open_task(tasks_dir: Path, path: Path | str) -> TaskFolder:
    """The task folder at ``path``, which must lie inside the tasks dir."""
    root = tasks_dir.resolve()
    candidate = Path(path)
    if not candidate.is_absolute() and not candidate.exists():
        candidate = root / candidate
    resolved = candidate.resolve()
    if not resolved.is_relative_to(root) or resolved.parent.parent != root:
        raise TaskNotFound(f"{path}: not a task folder under the tasks dir {root}")
    folder = TaskFolder(resolved)
    if not folder.status_path.is_file() or not _FOLDER_NAME.match(folder.name):
        raise TaskNotFound(f"{path}: no task folder here")
    return folder


def iter_tasks(tasks_dir: Path, user_id: str = "all") -> Iterator[TaskFolder]:
    """Every task of one user (or of all), oldest first."""
    if user_id != "all":
        check_name(user_id, "user id")
    if not tasks_dir.is_dir():
        return
    users = sorted(tasks_dir.iterdir()) if user_id == "all" else [tasks_dir / user_id]
    folders: list[TaskFolder] = []
    for user_dir in users:
        if not user_dir.is_dir() or user_dir.name.startswith("."):
            continue
        folders += [
            TaskFolder(p)
            for p in user_dir.iterdir()
            if _FOLDER_NAME.match(p.name) and (p / "status.json").is_file()
        ]
    yield from sorted(folders, key=_created_key)


def _created_key(folder: TaskFolder) -> tuple[datetime, str]:
    match = _FOLDER_NAME.match(folder.name)
    assert match is not None
    stamp = datetime.strptime(match.group(3), "%d_%m_%Y_%H%M%S")
    return stamp, folder.name


def find_task(
    tasks_dir: Path, user_id: str, task_name: str | None = None, number: int | None = None
) -> TaskFolder:
    """A user's task by name (the newest of that name) or by its number in ``list`` order."""
    tasks = list(iter_tasks(tasks_dir, user_id))
    if number is not None:
        if not 1 <= number <= len(tasks):
            raise TaskNotFound(f"user {user_id!r} has {len(tasks)} task(s); no number {number}")
        return tasks[number - 1]
    if task_name is not None:
        check_name(task_name, "task name")
        named = [t for t in tasks if _FOLDER_NAME.match(t.name).group(2) == task_name]  # type: ignore[union-attr]
        if named:
            return named[-1]
    raise TaskNotFound(f"user {user_id!r} has no task named {task_name!r}")

"""The durable record of each native batch: a state file per batch, and Redis's active set.

Every step of a batch's life is written here before and after it happens, so a crash at any
point is resumed from the file: a batch is never uploaded-and-created twice, and never
forgotten. The files live in ``outputs/batches/`` beside the provider's own files; Redis keeps
the set of batches beat must poll.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any, Literal

import redis
from pydantic import BaseModel, Field, model_validator

from mitrailleuse import keys
from mitrailleuse.atomic import write_atomic
from mitrailleuse.providers.base import FINAL_STATUSES, BatchFile, BatchStatus
from mitrailleuse.taskfolder import TaskFolder

#: Our side of a batch's life; ``status`` is the provider's side, ``raw_status`` its own word.
Step = Literal[
    "written", "uploading", "uploaded", "creating", "created", "refused", "collected", "failed"
]


class BatchState(BaseModel):
    """One native batch, as its state file holds it."""

    run_id: str
    number: int
    items: int
    chunks: list[int]
    step: Step = "written"
    retry_of: int | None = None
    file_id: str | None = None
    #: When the step ``creating`` was first recorded: a batch the provider made since may be ours.
    creating_since: float | None = None
    batch_id: str | None = None
    status: BatchStatus | None = None
    raw_status: str | None = None
    request_counts: dict[str, int] = Field(default_factory=dict)
    output_file_id: str | None = None
    error_file_id: str | None = None
    next_check_at: float = 0.0
    message: str | None = None

    @model_validator(mode="before")
    @classmethod
    def _status_of_older_files(cls, data: Any) -> Any:
        """A file written before ``status`` existed: OpenAI's final words are the shared ones."""
        if isinstance(data, dict) and data.get("status") is None:
            raw = data.get("raw_status")
            if raw in FINAL_STATUSES:
                data = {**data, "status": raw}
        return data

    @property
    def name(self) -> str:
        """The stem of the batch's files."""
        return f"batch-{self.number:05d}"

    @property
    def ended(self) -> bool:
        """Whether the provider said the batch will change no more."""
        return self.status in FINAL_STATUSES

    def request_file(self, folder: TaskFolder) -> BatchFile:
        """The batch's request file, labelled with the run and number at the provider."""
        return BatchFile(
            path=input_path(folder, self.number),
            display_name=f"mitrailleuse-{self.run_id}-{self.number}",
            metadata={"mitrailleuse_run": self.run_id, "mitrailleuse_batch": str(self.number)},
            requests=self.items,
            file_id=self.file_id,
        )


def input_path(folder: TaskFolder, number: int) -> Path:
    """The request lines sent to the provider."""
    return folder.batches_dir / f"batch-{number:05d}-input.jsonl"


def items_path(folder: TaskFolder, number: int) -> Path:
    """Where each line's item came from: ``[id, input_file, index, ordinal]`` per line."""
    return folder.batches_dir / f"batch-{number:05d}-items.jsonl"


def state_path(folder: TaskFolder, number: int) -> Path:
    """The batch's state file."""
    return folder.batches_dir / f"batch-{number:05d}.json"


def load(folder: TaskFolder, number: int) -> BatchState:
    """Read a batch's state."""
    return BatchState.model_validate_json(state_path(folder, number).read_bytes())


def save(folder: TaskFolder, state: BatchState) -> None:
    """Write a batch's state atomically."""
    write_atomic(state_path(folder, state.number), state.model_dump_json(indent=2).encode() + b"\n")


def all_states(folder: TaskFolder) -> list[BatchState]:
    """Every batch of the task, in order."""
    if not folder.batches_dir.exists():
        return []
    return [
        BatchState.model_validate_json(path.read_bytes())
        for path in sorted(folder.batches_dir.glob("batch-?????.json"))
    ]


def track(client: redis.Redis | Any, folder: TaskFolder, number: int) -> None:
    """Put a batch on the list beat polls (``client`` may be a pipeline)."""
    client.sadd(keys.native_batches(), f"{folder.path}|{number}")


def untrack(client: redis.Redis, folder: TaskFolder, number: int) -> None:
    """Take a batch off the list beat polls."""
    client.srem(keys.native_batches(), f"{folder.path}|{number}")


def tracked(client: redis.Redis) -> list[tuple[TaskFolder, int]]:
    """Every batch beat polls."""
    found = []
    for member in client.smembers(keys.native_batches()):
        path, _, number = member.decode().rpartition("|")
        found.append((TaskFolder(Path(path)), int(number)))
    return sorted(found, key=lambda pair: (str(pair[0].path), pair[1]))


def summary(states: list[BatchState]) -> str:
    """One line on a run's native batches: ``2 in_progress 35/40, 1 completed``."""
    groups: dict[str, list[BatchState]] = {}
    for state in states:
        groups.setdefault(state.status or state.step, []).append(state)
    parts = []
    for status, members in groups.items():
        done = sum(
            s.request_counts.get("completed", 0) + s.request_counts.get("failed", 0)
            for s in members
        )
        total = sum(s.items for s in members)
        parts.append(f"{len(members)} {status} {done}/{total}")
    return ", ".join(parts)


def due(state: BatchState, now: float | None = None) -> bool:
    """Whether the batch's ``batch_check_time`` has elapsed since it was last polled."""
    return (now or time.time()) >= state.next_check_at

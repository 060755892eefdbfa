"""One-machine runs: the embedded broker and a child worker when none is there, then wait.

``mitrailleuse run`` and ``mitrailleuse demo`` call :func:`run_locally`; everything it starts
it stops again, whether the run succeeds, fails or is interrupted.
"""

from __future__ import annotations

from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from mitrailleuse.api import Mitrailleuse, Progress
from mitrailleuse.broker import EmbeddedRedis, default_home
from mitrailleuse.config import Environment, ProviderName, TaskConfig
from mitrailleuse.credentials import scrub_config
from mitrailleuse.display import follow
from mitrailleuse.pipeline.fleet import queues_served, start_beat, start_worker, stop_child
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.taskfolder import TaskFolder


@contextmanager
def local_broker() -> Iterator[None]:
    """Start the embedded Redis when ``REDIS_URL`` is unset and none runs; stop it after.

    While the run lasts, the embedded server is started again if it dies (``kill -9``): with
    its AOF (fsync on every write) it comes back with every message and record.
    """
    if Environment().redis_url:
        yield
        return
    embedded = EmbeddedRedis(default_home())
    started = not embedded.is_running()
    embedded.ensure_running()
    try:
        with embedded.supervised():
            yield
    finally:
        if started:
            embedded.stop()


@contextmanager
def local_worker(
    provider: str, concurrency: int | None, env: Mapping[str, str], beat: bool = False
) -> Iterator[None]:
    """Start a child worker for ``provider`` and the control queue unless one serves them.

    With ``beat``, a child beat too (native batches are polled by beat): a second beat on the
    same broker would only poll twice, which the poll lock makes harmless.
    """
    children = []
    if {provider, CONTROL_QUEUE} - queues_served():
        children.append(start_worker([provider, CONTROL_QUEUE], concurrency, env=env))
    if beat:
        children.append(start_beat(env=env))
    try:
        yield
    finally:
        for child in children:
            stop_child(child)


def run_locally(
    api: ProviderName,
    inputs: Sequence[Path | dict[str, Any]],
    config: TaskConfig | None = None,
    user_id: str = "local",
    task_name: str = "run",
    concurrency: int | None = None,
) -> tuple[TaskFolder, Progress]:
    """Create a task, run it to the end on this machine, and return it with its progress."""
    config = config.model_copy(deep=True) if config else TaskConfig()
    literal_keys = scrub_config(config)
    with local_broker():
        client = Mitrailleuse()
        folder = client.create_task(user_id, api, task_name, config, inputs)
        batch = config.provider(api).batch.is_batch_active
        with local_worker(api, concurrency, literal_keys, beat=batch):
            return folder, follow(client.submit(folder))

"""One-machine runs: the embedded broker and a child worker when none is there, then wait.

``mitrailleuse run`` and ``mitrailleuse demo`` call :func:`run_locally`; everything it starts
it stops again, whether the run succeeds, fails or is interrupted.
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from mitrailleuse.api import Mitrailleuse, Progress
from mitrailleuse.broker import EmbeddedRedis, check_reachable, default_home
from mitrailleuse.config import Environment, ProviderName, TaskConfig
from mitrailleuse.credentials import key_variables_set, missing_key, scrub_config
from mitrailleuse.display import ProgressStyle, follow
from mitrailleuse.errors import ConfigError
from mitrailleuse.modes import resolve_mode
from mitrailleuse.pipeline.fleet import (
    queues_served,
    start_beat,
    start_worker,
    stop_child,
    workers_serving,
)
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.taskfolder import TaskFolder

#: The file under the task's ``logs/`` that a run's child worker and beat write to.
WORKER_LOG = "worker.log"


@contextmanager
def local_broker() -> Iterator[None]:
    """Start the embedded Redis when ``REDIS_URL`` is unset and none runs; stop it after.

    ``REDIS_URL`` must answer within seconds (one line if not), before anything is created.
    While the run lasts, the embedded server is started again if it dies (``kill -9``): with
    its AOF (fsync on every write) it comes back with every message and record.

    Raises:
        BrokerError: ``REDIS_URL`` does not answer, or the embedded server cannot start.

    """
    given = Environment().redis_url
    if given:
        check_reachable(given, "REDIS_URL")
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


@dataclass(slots=True)
class ChildLog:
    """Whether the file the children write to is named on stderr once they are stopped.

    It is when the run raised, ended other than completed (set by the caller), or a child
    exited before it was stopped.
    """

    show: bool = False


@contextmanager
def local_worker(
    provider: str,
    concurrency: int | None,
    env: Mapping[str, str],
    log: Path,
    beat: bool = False,
) -> Iterator[ChildLog]:
    """Start a child worker for ``provider`` and the control queue unless one serves them.

    The children write to ``log``, not to the terminal the progress bar is drawn on.

    With ``beat``, a child beat too (native batches are polled by beat): a second beat on the
    same broker would only poll twice, which the poll lock makes harmless.
    """
    child_log = ChildLog()
    children: list[subprocess.Popen[bytes]] = []
    if {provider, CONTROL_QUEUE} - queues_served([provider, CONTROL_QUEUE]):
        children.append(start_worker([provider, CONTROL_QUEUE], concurrency, env=env, log=log))
    if beat:
        children.append(start_beat(env=env, log=log))
    try:
        yield child_log
        child_log.show |= any(child.poll() is not None for child in children)  # exited early
    except Exception:
        child_log.show = True
        raise
    finally:
        for child in children:
            stop_child(child)
        if children and child_log.show:
            print(f"worker log: {log}", file=sys.stderr)


class Interrupted(KeyboardInterrupt):
    """Ctrl-C during a local run: what was started is stopped; the task can be resumed."""

    def __init__(self, folder: TaskFolder) -> None:
        super().__init__(str(folder.path))
        self.folder = folder


def run_locally(
    api: ProviderName,
    inputs: Sequence[Path | dict[str, Any]],
    config: TaskConfig | None = None,
    user_id: str = "local",
    task_name: str = "run",
    concurrency: int | None = None,
    progress: ProgressStyle = ProgressStyle.AUTO,
) -> tuple[TaskFolder, Progress]:
    """Create a task, run it to the end on this machine, and return it with its progress.

    Raises:
        ConfigError: no key for the provider where the run's worker would call it.

    """
    config = config.model_copy(deep=True) if config else TaskConfig()
    literal_keys = scrub_config(config)
    with local_broker():
        _check_key(api, config, literal_keys)
        client = Mitrailleuse()
        folder = client.create_task(user_id, api, task_name, config, inputs)
        batch = resolve_mode(api, config.provider(api))[0] == "batch"
        log = folder.logs_dir / WORKER_LOG
        with local_worker(api, concurrency, literal_keys, log, beat=batch) as child_log:
            try:
                ended = follow(client.submit(folder), progress)
            except KeyboardInterrupt:
                raise Interrupted(folder) from None
            child_log.show = ended.state != "completed"
            return folder, ended


def _check_key(api: ProviderName, config: TaskConfig, literal_keys: Mapping[str, str]) -> None:
    """Refuse a run whose worker (running, or the one started here) has no key to call with."""
    served = workers_serving([api])[api]
    ours = served or [set(key_variables_set([api], {**os.environ, **literal_keys}))]
    missing = missing_key(api, getattr(config.provider(api), "api_key", ""), ours)
    if missing is None:
        return
    where = f"where the workers serving {api} run" if served else "in this shell"
    raise ConfigError(f"{missing} is not set {where}: export it, then run again")

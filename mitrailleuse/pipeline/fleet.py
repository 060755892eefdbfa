"""The fleet's processes: find the workers serving a queue, start and stop a child worker.

``mitrailleuse run`` and ``demo`` start a child worker when nobody serves the queues they need;
``worker``, ``beat`` and ``flower`` build the ``celery -A mitrailleuse …`` command lines here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

from mitrailleuse.broker import state_dir
from mitrailleuse.pipeline import liveness
from mitrailleuse.pipeline.app import app
from mitrailleuse.pipeline.run_state import redis_client


def celery_command(*args: str, quiet: bool = False) -> list[str]:
    """``celery -A mitrailleuse <args>`` with this interpreter (``quiet``: no banner)."""
    return [sys.executable, "-m", "celery", *(["-q"] if quiet else []), "-A", "mitrailleuse", *args]


def worker_command(
    queues: Sequence[str], concurrency: int | None, *extra: str, quiet: bool = False
) -> list[str]:
    """The command line of a worker serving ``queues`` on the threads pool.

    Unless ``extra`` names the node (``-n``), it gets a name of its own: two workers on one
    host would both be ``celery@<host>``, and every broadcast would warn of a duplicate.
    """
    args = [
        "worker",
        "-Q",
        ",".join(queues),
        "-P",
        "threads",
        "--without-gossip",
        "--without-mingle",
    ]
    if concurrency:
        args += ["-c", str(concurrency)]
    if not any(arg == "--hostname" or arg.startswith(("--hostname=", "-n")) for arg in extra):
        args += ["-n", f"mitrailleuse-{uuid.uuid4().hex[:8]}@%h"]  # Celery expands %h
    return celery_command(*args, *extra, quiet=quiet)


def workers_serving(queues: Sequence[str]) -> dict[str, list[set[str]]]:
    """The live workers of each queue, each as the key variables it has set.

    Read from the workers' announcements (:func:`liveness.announce`), one round trip: no
    broadcast to wait for, and a worker that died is gone within seconds.
    """
    return liveness.serving(redis_client(app.conf.broker_url), queues)


def queues_served(queues: Sequence[str]) -> set[str]:
    """Which of ``queues`` some live worker consumes from."""
    return {queue for queue, workers in workers_serving(queues).items() if workers}


#: Where a child worker's and beat's output goes when the caller names no file.
CHILD_LOG = Path(".mitrailleuse") / "worker.log"


def start_worker(
    queues: Sequence[str],
    concurrency: int | None = None,
    env: Mapping[str, str] | None = None,
    log: Path = CHILD_LOG,
) -> subprocess.Popen[bytes]:
    """Start a child worker, its output (INFO: retries, failed items) appended to ``log``."""
    command = worker_command(queues, concurrency, "--loglevel", "INFO", quiet=True)
    return _start_child(command, env, log)


def beat_command(loglevel: str = "INFO", quiet: bool = False) -> list[str]:
    """The command line of beat, its schedule in the tasks dir's ``.mitrailleuse/``."""
    schedule = state_dir() / "beat-schedule"
    schedule.parent.mkdir(parents=True, exist_ok=True)
    return celery_command("beat", "--loglevel", loglevel, "--schedule", str(schedule), quiet=quiet)


def start_beat(
    env: Mapping[str, str] | None = None, log: Path = CHILD_LOG
) -> subprocess.Popen[bytes]:
    """Start a child beat, its output appended to ``log``."""
    return _start_child(beat_command("WARNING", quiet=True), env, log)


def _start_child(
    command: list[str], env: Mapping[str, str] | None, log: Path
) -> subprocess.Popen[bytes]:
    """Start a child process writing to ``log``, not to our terminal (the progress bar's)."""
    log.parent.mkdir(parents=True, exist_ok=True)
    with log.open("ab") as output:
        return subprocess.Popen(
            command,
            env={**os.environ, **(env or {})},
            stdout=output,
            stderr=subprocess.STDOUT,
        )


def stop_child(process: subprocess.Popen[bytes], timeout_s: float = 30.0) -> None:
    """Warm shutdown (in-flight calls finish), then kill if it does not exit in time."""
    if process.poll() is not None:
        return
    process.send_signal(signal.SIGTERM)
    try:
        process.wait(timeout_s)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()

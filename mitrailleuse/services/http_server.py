"""``mitrailleuse serve http``: the HTTP API on a port, served by uvicorn.

Bound to loopback unless told otherwise; another address needs ``MITRAILLEUSE_API_TOKENS``
(tokens of 16+ characters), or the server refuses to start. It speaks plain HTTP: beyond
loopback, a reverse proxy in front of it adds TLS.
"""

from __future__ import annotations

import socket
from collections.abc import Callable

import uvicorn

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.errors import ConfigError
from mitrailleuse.services.http_app import create_app
from mitrailleuse.services.tokens import check_tokens_beyond_loopback, tokens_from_env

DEFAULT_PORT = 8007
#: How long open streams (progress, results) have to end when the server is stopped.
GRACEFUL_S = 5


class _Server(uvicorn.Server):
    """uvicorn's server, saying so once it serves."""

    def __init__(self, config: uvicorn.Config, ready: Callable[[], None]) -> None:
        super().__init__(config)
        self._ready = ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start as uvicorn does, then say where (the port bound when 0 was asked)."""
        await super().startup(sockets)
        if not self.should_exit:
            self._ready()


def serve(
    address: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted; ``on_ready`` gets ``host:port`` once requests are answered."""
    tokens = tokens_from_env()
    check_tokens_beyond_loopback(address, tokens)
    client = Mitrailleuse()
    app = create_app(client, tokens)  # finds (or starts) the broker now, not at the first call
    listener = _bind(address, port)
    where = _host_port(address, listener.getsockname()[1])
    config = uvicorn.Config(
        app, log_level="warning", access_log=False, timeout_graceful_shutdown=GRACEFUL_S
    )

    def ready() -> None:
        if on_ready is not None:
            on_ready(where)

    _Server(config, ready).run(sockets=[listener])


def _bind(address: str, port: int) -> socket.socket:
    """A socket listening on ``address:port``, or a one-line ConfigError."""
    host = address.strip("[]")
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        return socket.create_server((host, port), family=family)
    except OSError:
        where = _host_port(address, port)
        raise ConfigError(f"cannot listen on {where} (in use, or not this machine's)") from None


def _host_port(address: str, port: int) -> str:
    host = address.strip("[]")
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"

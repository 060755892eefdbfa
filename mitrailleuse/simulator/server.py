"""Ways to run the simulator: blocking in the foreground, or in a background thread."""

from __future__ import annotations

import asyncio
import contextlib
import signal
import threading
import urllib.request
from collections.abc import Callable
from types import TracebackType
from typing import Any

import orjson
from aiohttp import web

from mitrailleuse.simulator.app import STATE_KEY, SimState, create_app
from mitrailleuse.simulator.settings import SimulatorSettings

_OPENER = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # Loopback: no proxy.

SHUTDOWN_TIMEOUT_S = 0.5
"""Grace given to in-flight requests (e.g. ``[[hang]]`` ones) when the server stops."""


async def _start(app: web.Application, host: str, port: int) -> tuple[web.AppRunner, str]:
    """Start serving ``app`` and return the runner and the base URL actually bound."""
    runner = web.AppRunner(
        app, access_log=None, handler_cancellation=True, shutdown_timeout=SHUTDOWN_TIMEOUT_S
    )
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=4096)
    await site.start()
    bound_port = runner.addresses[0][1]
    shown = f"[{host}]" if ":" in host else host
    return runner, f"http://{shown}:{bound_port}"


async def _serve(
    host: str, port: int, settings: SimulatorSettings, on_ready: Callable[[str], None] | None
) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGINT, signal.SIGTERM):
        # Outside the main thread (or without signal support) the caller stops us instead.
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):
            loop.add_signal_handler(signum, stop.set)
    runner, url = await _start(create_app(settings), host, port)
    try:
        if on_ready is not None:
            on_ready(url)
        await stop.wait()
    finally:
        await runner.cleanup()


def serve(
    host: str = "127.0.0.1",
    port: int = 8765,
    settings: SimulatorSettings | None = None,
    *,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve the simulator until SIGINT/SIGTERM (port 0 picks a free port).

    Args:
        host: Interface to bind.
        port: TCP port; 0 lets the OS choose.
        settings: Simulator behaviour; defaults to ``SimulatorSettings()``.
        on_ready: Called with the base URL (``http://host:port``) once listening.

    """
    asyncio.run(_serve(host, port, settings or SimulatorSettings(), on_ready))


class SimulatorThread:
    """Run the simulator on a free port in a background thread with its own event loop.

    Use it as a context manager (``with SimulatorThread(settings) as sim: sim.url``) so
    tests get a real HTTP server the SDKs can talk to, and it is torn down afterwards.
    """

    def __init__(
        self, settings: SimulatorSettings | None = None, *, host: str = "127.0.0.1", port: int = 0
    ) -> None:
        self.settings = settings or SimulatorSettings()
        self.host = host
        self.port = port
        self._url: str | None = None
        self._app: web.Application | None = None
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    @property
    def url(self) -> str:
        """Base URL, e.g. ``http://127.0.0.1:40123`` (OpenAI clients append ``/v1``)."""
        if self._url is None:
            raise RuntimeError("the simulator is not running")
        return self._url

    @property
    def state(self) -> SimState:
        """The live state (read it for inspection only: it belongs to the server thread)."""
        if self._app is None:
            raise RuntimeError("the simulator is not running")
        return self._app[STATE_KEY]

    def start(self, timeout: float = 10.0) -> SimulatorThread:
        """Start the server thread and wait until it listens."""
        if self._thread is not None:
            raise RuntimeError("the simulator is already started")
        self._thread = threading.Thread(
            target=self._run, name="mitrailleuse-simulator", daemon=True
        )
        self._thread.start()
        if not self._ready.wait(timeout):
            raise TimeoutError("the simulator did not start in time")
        if self._error is not None:
            raise RuntimeError("the simulator failed to start") from self._error
        return self

    def _run(self) -> None:
        with asyncio.Runner() as runner:
            runner.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        try:
            self._app = create_app(self.settings)
            web_runner, self._url = await _start(self._app, self.host, self.port)
        except BaseException as exc:
            self._error = exc
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await web_runner.cleanup()

    def stop(self, timeout: float = 10.0) -> None:
        """Stop the server and join its thread (idempotent)."""
        thread, loop, stop = self._thread, self._loop, self._stop
        if thread is None:
            return
        if loop is not None and stop is not None and not loop.is_closed():
            with contextlib.suppress(RuntimeError):  # The loop may have just finished.
                loop.call_soon_threadsafe(stop.set)
        thread.join(timeout)
        self._thread = None
        self._url = None

    def __enter__(self) -> SimulatorThread:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    # Control-endpoint helpers, so tests need no HTTP client of their own.

    def _call(self, method: str, path: str, payload: Any = None) -> Any:
        data = None if payload is None else orjson.dumps(payload)
        request = urllib.request.Request(self.url + path, data=data, method=method)
        if data is not None:
            request.add_header("Content-Type", "application/json")
        with _OPENER.open(request, timeout=30) as response:
            return orjson.loads(response.read())

    def configure(self, **changes: Any) -> dict[str, Any]:
        """Change settings live (``POST /_sim/config``); returns the new settings."""
        return self._call("POST", "/_sim/config", changes)

    def reset(self) -> None:
        """Clear counters, log, rate windows and attempt counts (``POST /_sim/reset``)."""
        self._call("POST", "/_sim/reset", {})

    def stats(self) -> dict[str, Any]:
        """Return ``GET /_sim/stats``."""
        return self._call("GET", "/_sim/stats")

    def log(self) -> list[dict[str, Any]]:
        """Return ``GET /_sim/log``."""
        return self._call("GET", "/_sim/log")

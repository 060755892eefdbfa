"""One asyncio loop per worker process: the provider calls of every message are sent there.

A worker thread runs a message (Redis, records, retries) and hands the message's calls to this
loop, where they go out concurrently through the SDKs' async clients; the thread waits for the
answers. One loop for the whole process costs less CPU than one blocking call per thread: no
GIL hand-over per request, one event loop driving every socket.
"""

from __future__ import annotations

import asyncio
import os
import threading
from collections.abc import Coroutine
from concurrent.futures import Future
from typing import Any, TypeVar

T = TypeVar("T")

_loop: asyncio.AbstractEventLoop | None = None
_pid: int | None = None
_lock = threading.Lock()


def _running_loop() -> asyncio.AbstractEventLoop:
    """The process's loop, started on first use (again in a forked child)."""
    global _loop, _pid
    with _lock:
        if _loop is None or _pid != os.getpid():
            _loop = asyncio.new_event_loop()
            _pid = os.getpid()
            thread = threading.Thread(
                target=_loop.run_forever, name="mitrailleuse-calls", daemon=True
            )
            thread.start()
        return _loop


def submit(coroutine: Coroutine[Any, Any, T]) -> Future[T]:
    """Start ``coroutine`` on the process's call loop; its result, when it lands."""
    return asyncio.run_coroutine_threadsafe(coroutine, _running_loop())


def run(coroutine: Coroutine[Any, Any, T]) -> T:
    """Run ``coroutine`` on the process's call loop and wait for its result."""
    return submit(coroutine).result()

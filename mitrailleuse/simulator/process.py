"""The simulator in a child process, for the demo, the tests and the benchmarks.

A separate process keeps the simulator's event loop off the caller's GIL, so what is measured
is the pipeline, not the fake provider sharing its interpreter.
"""

from __future__ import annotations

import os
import subprocess
import sys
from types import TracebackType

import httpx


class SimulatorProcess:
    """``python -m mitrailleuse.simulator`` on a free loopback port; ``url`` once it listens."""

    def __init__(self, *args: str) -> None:
        self.args = args
        self.url = ""
        self.process: subprocess.Popen[str] | None = None

    def start(self, timeout_s: float = 20.0) -> SimulatorProcess:
        """Start it and wait for its ``SIMULATOR_URL=`` line."""
        command = [sys.executable, "-m", "mitrailleuse.simulator", "--port", "0", *self.args]
        self.process = subprocess.Popen(
            command, stdout=subprocess.PIPE, text=True, env={**os.environ, "PYTHONUNBUFFERED": "1"}
        )
        assert self.process.stdout is not None
        line = self.process.stdout.readline().strip()
        if not line.startswith("SIMULATOR_URL="):
            self.stop()
            raise RuntimeError(f"the simulator did not start: {line!r}")
        self.url = line.split("=", 1)[1]
        return self

    def stats(self) -> dict:
        """The simulator's own counters (``/_sim/stats``)."""
        return httpx.get(f"{self.url}/_sim/stats", timeout=10).json()

    def log(self) -> list[dict]:
        """Every request the simulator saw (``/_sim/log``)."""
        return httpx.get(f"{self.url}/_sim/log", timeout=30).json()

    def configure(self, **settings: object) -> None:
        """Change the simulator's settings live."""
        httpx.post(f"{self.url}/_sim/config", json=settings, timeout=10).raise_for_status()

    def reset(self) -> None:
        """Clear counters and log."""
        httpx.post(f"{self.url}/_sim/reset", timeout=10).raise_for_status()

    def stop(self) -> None:
        """Terminate it."""
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()

    def __enter__(self) -> SimulatorProcess:
        return self.start()

    def __exit__(
        self,
        kind: type[BaseException] | None,
        error: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

"""Real processes for tests and benchmarks: a redis-server, Celery workers, the services.

Like ``celery.contrib.testing``, this ships with the package so that the test suite, the
benchmarks and users' own tests start the same real things the same way.
"""

from __future__ import annotations

import os
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import redis
from kombu.exceptions import OperationalError

from mitrailleuse.broker import redis_server_binary
from mitrailleuse.pipeline.fleet import celery_command, worker_command


def free_port() -> int:
    """A loopback port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


class RedisServer:
    """A real redis-server on a free port, with AOF, that can be stopped and started again."""

    def __init__(self, home: Path) -> None:
        self.home = home
        self.port = free_port()
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout_s: float = 10.0) -> RedisServer:
        """Start the server (again, on the same port and data) and wait for PING."""
        self.home.mkdir(parents=True, exist_ok=True)
        options = {
            "port": str(self.port),
            "bind": "127.0.0.1",
            "dir": str(self.home),
            "appendonly": "yes",
            "appendfsync": "always",
            "save": "",
            "loglevel": "warning",
        }
        args = [item for name, value in options.items() for item in (f"--{name}", value)]
        self.process = subprocess.Popen([redis_server_binary(), *args], stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                client.ping()
                return self
            except redis.ConnectionError:
                if time.monotonic() > deadline:
                    raise
                time.sleep(0.05)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGTERM: clean; SIGKILL: a crash)."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(sig)
            self.process.wait(10)


class WorkerProcess:
    """``celery -A mitrailleuse worker`` in a child process."""

    def __init__(
        self,
        env: Mapping[str, str],
        queues: Sequence[str],
        concurrency: int | None,
        name: str,
        cwd: Path | None = None,
        extra: Sequence[str] = (),
    ) -> None:
        self.name = f"{name}@{socket.gethostname()}"
        command = worker_command(
            queues, concurrency, "-n", self.name, "--loglevel", "WARNING", quiet=True
        )
        self.process = subprocess.Popen([*command, *extra], env={**os.environ, **env}, cwd=cwd)

    @property
    def pid(self) -> int:
        """The worker's process id."""
        return self.process.pid

    def wait_ready(self, timeout_s: float = 30.0) -> WorkerProcess:
        """Wait until the worker answers a ping."""
        from mitrailleuse.pipeline.app import app

        deadline = time.monotonic() + timeout_s
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"worker {self.name} exited with {self.process.returncode}")
            try:
                if app.control.ping(destination=[self.name], timeout=0.5):
                    return self
            except (OSError, redis.RedisError, OperationalError):
                time.sleep(0.2)  # the broker restarted since the last ping: a new connection
        raise TimeoutError(f"worker {self.name} did not answer within {timeout_s}s")

    def stop(self, sig: int = signal.SIGTERM, timeout_s: float = 30.0) -> None:
        """Warm shutdown (or ``sig``), killing it if it does not exit in time."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout_s)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


def cpu_seconds(pid: int) -> float:
    """User + system CPU time a process (and its reaped children) used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = sum(int(value) for value in fields[11:15])
    return ticks / os.sysconf("SC_CLK_TCK")


class BeatProcess:
    """``celery -A mitrailleuse beat`` in a child process, its schedule in ``home``."""

    def __init__(self, env: Mapping[str, str], home: Path, cwd: Path | None = None) -> None:
        schedule = home / "beat-schedule"
        command = celery_command("beat", "--loglevel", "WARNING", "--schedule", str(schedule))
        self.process = subprocess.Popen(command, env={**os.environ, **env}, cwd=cwd)

    def stop(self, sig: int = signal.SIGTERM) -> None:
        """Stop it (SIGKILL: a crash)."""
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class ServiceProcess:
    """``mitrailleuse serve <kind> --port 0`` in a child process, on the port it found.

    ``target`` is its ``host:port``; its stderr is drained in a thread (a full pipe would stop
    it), the last lines kept in ``tail``.
    """

    #: The ``serve`` command.
    kind: str
    #: The line the service prints once it serves, its ``host:port`` the first group.
    ready: re.Pattern[str]

    def __init__(
        self, env: Mapping[str, str], cwd: Path | None = None, timeout_s: float = 60
    ) -> None:
        command = [sys.executable, "-m", "mitrailleuse", "serve", self.kind, "--port", "0"]
        self.process = subprocess.Popen(
            command, env=dict(env), cwd=cwd, stderr=subprocess.PIPE, text=True
        )
        assert self.process.stderr is not None
        self.tail: list[str] = []
        deadline = time.monotonic() + timeout_s
        while True:
            line = self.process.stderr.readline()
            self.tail.append(line)
            if found := self.ready.search(line):
                self.target = found.group(1)
                break
            if not line or time.monotonic() > deadline:
                self.stop()
                raise RuntimeError(f"serve {self.kind} did not start:\n" + "".join(self.tail))
        threading.Thread(target=self._drain, name=f"{self.kind}-stderr", daemon=True).start()

    def _drain(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.tail = [*self.tail[-50:], line]

    @property
    def pid(self) -> int:
        """The server's process id."""
        return self.process.pid

    def stop(self) -> None:
        """Stop it (SIGTERM, then SIGKILL after 15 s)."""
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()


class GrpcServiceProcess(ServiceProcess):
    """``mitrailleuse serve grpc``: a channel goes to ``target``."""

    kind = "grpc"
    ready = re.compile(r"gRPC service on (\S+)")


class HttpServiceProcess(ServiceProcess):
    """``mitrailleuse serve http``: its API is at ``url``."""

    kind = "http"
    ready = re.compile(r"HTTP API on (\S+)")

    @property
    def url(self) -> str:
        """``http://host:port``."""
        return f"http://{self.target}"

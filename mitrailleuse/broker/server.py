"""The embedded server's lifecycle: find it or start it, supervise it, stop it.

``EmbeddedRedis(home)`` is the private redis-server whose state lives in ``home``
(:class:`~mitrailleuse.broker.home.RedisHome`). Instances hold no state of their own, so any
number of them, in any number of processes, can look at the same ``home``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import signal
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

from mitrailleuse.broker.binary import redis_server_binary
from mitrailleuse.broker.home import RedisHome
from mitrailleuse.broker.probe import (
    HOST,
    Probe,
    candidate_ports,
    is_live_redis,
    probe,
    shutdown,
    url_for_display,
)
from mitrailleuse.errors import BrokerError


class EmbeddedRedis:
    """The private redis-server whose state lives in one directory."""

    def __init__(self, home: Path) -> None:
        self.files = RedisHome(home)
        self.home = self.files.home

    @property
    def log_file(self) -> Path:
        """The server's log, quoted in start errors."""
        return self.files.log_file

    @property
    def url(self) -> str | None:
        """The URL of the running server, or None when it does not answer."""
        url = self.files.read_url()
        if url is not None and probe(url) is Probe.OK:
            return url
        return None

    @property
    def pid(self) -> int | None:
        """The pid of the server process, or None if no live redis-server is recorded."""
        pid = self.files.read_pid()
        return pid if pid is not None and is_live_redis(pid) else None

    def is_running(self) -> bool:
        """Return True if the server recorded in ``home`` answers PING with its password."""
        return self.url is not None

    def ensure_running(self, timeout_s: float = 10.0) -> str:
        """Return the URL of the running server, starting one if there is none.

        Called at every process start, so the common case is one file read and one
        AUTH+PING round trip, without the lock. Anything else is decided under the lock,
        so that processes starting together share one server.

        Raises:
            BrokerError: no binary, or the server did not answer within ``timeout_s``.

        """
        url = self.files.read_url()
        if url is not None and probe(url) is Probe.OK:
            return url
        deadline = time.monotonic() + timeout_s
        with self.files.locked(timeout_s):
            return self._find_or_start(deadline)

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Shut the server down cleanly (AOF flushed and kept), and remove the url file.

        Returns:
            True if a server was running, False if there was none (stale files are removed).

        Raises:
            BrokerError: the server did not exit within ``timeout_s``.

        """
        deadline = time.monotonic() + timeout_s
        with self.files.locked(timeout_s):
            pid = self.files.read_pid()
            live_pid = pid if pid is not None and is_live_redis(pid) else None
            url = self._answering_url()
            if url is None and live_pid is None:
                self.files.remove_stale_files()
                return False
            if url is not None:
                shutdown(url)
            elif live_pid is not None:
                # Alive but not answering (loading a large AOF, hung): SIGTERM is Redis's
                # own graceful shutdown signal.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(live_pid, signal.SIGTERM)
            self._wait_stopped(live_pid, url, deadline)
            self.files.url_file.unlink(missing_ok=True)
            return True

    @contextlib.contextmanager
    def supervised(self, interval_s: float = 0.5) -> Iterator[None]:
        """Start the server again (same port, password and AOF) whenever it dies, meanwhile.

        ``mitrailleuse run`` owns its embedded server for the length of a run: if that server
        is killed, its workers reconnect to the restarted one and the run goes on.
        """
        stopping = threading.Event()

        def watch() -> None:
            while not stopping.wait(interval_s):
                if self.pid is None and not self.is_running():
                    with contextlib.suppress(BrokerError):
                        self.ensure_running()

        watcher = threading.Thread(target=watch, name="embedded-redis-watch", daemon=True)
        watcher.start()
        try:
            yield
        finally:
            stopping.set()
            watcher.join()

    def _find_or_start(self, deadline: float) -> str:
        """Return the URL of the server of ``home``, recovering from stale state."""
        candidates = [u for u in (self.files.read_url(), self.files.conf_url()) if u is not None]
        for url in dict.fromkeys(candidates):
            state = probe(url)
            if state is Probe.OK:
                self.files.publish(url)
                return url
        pid = self.files.read_pid()
        while pid is not None and is_live_redis(pid):
            # Our server is alive but answers on none of the recorded URLs (still loading,
            # or its url file was deleted): never start a second one on the same AOF.
            for url in candidates:
                if probe(url) is Probe.OK:
                    self.files.publish(url)
                    return url
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the embedded redis-server (pid {pid}) in {self.home} is running but "
                    f"not answering; stop it with `kill {pid}` and try again"
                )
            time.sleep(0.05)

        self.files.remove_stale_files()
        return self._start(deadline)

    def _start(self, deadline: float) -> str:
        """Start a server on ``home`` (replaying its AOF) and return its URL once it answers."""
        previous = self.files.conf_settings()
        password = previous.get("requirepass") or secrets.token_hex(24)
        last_error = ""
        for port in candidate_ports(previous.get("port", "")):
            self.files.write_conf(port, password)
            log_offset = self.files.log_size()
            self._launch(deadline)
            url = f"redis://:{password}@{HOST}:{port}/0"
            outcome = self._wait_started(url, log_offset, deadline)
            if outcome == "ok":
                self.files.publish(url)
                return url
            last_error = outcome
            if outcome != "port-taken":
                break
        raise BrokerError(
            f"the embedded redis-server did not start ({last_error}); "
            f"{self.files.log_file} ends with: {self.files.log_tail()}"
        )

    def _launch(self, deadline: float) -> None:
        """Run redis-server on the written config; it daemonizes once its config is read."""
        binary = redis_server_binary()
        try:
            done = subprocess.run(
                [binary, str(self.files.conf_file)],
                stdin=subprocess.DEVNULL,
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                cwd=self.home,
                start_new_session=True,
                timeout=max(1.0, deadline - time.monotonic()),
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as error:
            raise BrokerError(f"cannot run {binary}: {error}") from None
        if done.returncode != 0:
            output = done.stdout.decode(errors="replace").strip().splitlines()
            detail = " / ".join(line.strip() for line in output[-3:] if line.strip())
            raise BrokerError(f"redis-server refused to start ({binary}): {detail}")

    def _wait_started(self, url: str, log_offset: int, deadline: float) -> str:
        """Poll a just-started server; return "ok", "port-taken", "exited" or "timeout"."""
        delay = 0.01
        while True:
            state = probe(url)
            if state is Probe.OK:
                return "ok"
            if state is Probe.FOREIGN:
                return "port-taken"
            new_log = self.files.log_since(log_offset)
            if "Address already in use" in new_log:
                return "port-taken"
            pid = self.files.read_pid()
            if pid is not None and not is_live_redis(pid):
                return "exited"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _wait_stopped(self, pid: int | None, url: str | None, deadline: float) -> None:
        """Wait until the server process is gone (or, without a pid, stops answering)."""
        while True:
            if pid is not None:
                if not is_live_redis(pid):
                    return
            elif url is None or probe(url) is Probe.DOWN:
                return
            if time.monotonic() >= deadline:
                shown = f"pid {pid}" if pid is not None else url_for_display(url or "")
                raise BrokerError(
                    f"the embedded redis-server ({shown}) did not stop in time; see {self.log_file}"
                )
            time.sleep(0.02)

    def _answering_url(self) -> str | None:
        """Return the first recorded URL (url file, then redis.conf) our server answers on."""
        for url in (self.files.read_url(), self.files.conf_url()):
            if url is not None and probe(url) is Probe.OK:
                return url
        return None

"""The embedded server's home folder: its config, URL, pid, log and lock files.

Files in ``home``: ``redis.conf`` (0600, holds the password), ``url`` (0600), ``lock``
(serialises find-or-start between processes), ``redis.pid``, ``redis.log`` and the AOF.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import time
from collections.abc import Iterator
from pathlib import Path

from mitrailleuse.atomic import write_atomic
from mitrailleuse.broker.probe import HOST
from mitrailleuse.errors import BrokerError

#: "1234:M 25 Nov 2026 11:31:45.814 # " in front of every redis.log line.
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [.*#-] ")

#: Host-tuning warnings found in almost every redis.log, never the cause of a failure.
_LOG_NOISE = ("overcommit", "Transparent Huge Pages", "somaxconn")


class RedisHome:
    """The files of one embedded server; holds no state, so any process may look at them."""

    def __init__(self, home: Path) -> None:
        self.home = Path(home).absolute()

    @property
    def url_file(self) -> Path:
        """Where the running server's URL is published for the other processes."""
        return self.home / "url"

    @property
    def conf_file(self) -> Path:
        """The redis.conf written before every start."""
        return self.home / "redis.conf"

    @property
    def pid_file(self) -> Path:
        """The pid file the server writes once it listens, and removes on SHUTDOWN."""
        return self.home / "redis.pid"

    @property
    def log_file(self) -> Path:
        """The server's log, quoted in start errors."""
        return self.home / "redis.log"

    @property
    def lock_file(self) -> Path:
        """The file locked around find-or-start and stop."""
        return self.home / "lock"

    @contextlib.contextmanager
    def locked(self, timeout_s: float) -> Iterator[None]:
        """Hold the exclusive flock on ``home/lock``; the OS drops it if the holder dies."""
        self.make()
        fd = os.open(self.lock_file, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            # A holder is bounded by its own timeout; wait for it with a generous margin.
            give_up = time.monotonic() + max(30.0, 3 * timeout_s)
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= give_up:
                        raise BrokerError(
                            f"another process holds {self.lock_file} for too long; "
                            "is a mitrailleuse command stuck?"
                        ) from None
                    time.sleep(0.02)
            yield
        finally:
            os.close(fd)  # closing releases the lock

    def make(self) -> None:
        """Create ``home`` private to this user (it holds the password)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.home.chmod(0o700)

    def read_url(self) -> str | None:
        """The URL published in the url file, if any."""
        try:
            text = self.url_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text or None

    def publish(self, url: str) -> None:
        """Write the url file atomically, mode 0600, unless it already says ``url``."""
        if self.read_url() == url:
            return
        write_atomic(self.url_file, (url + "\n").encode(), mode=0o600)

    def read_pid(self) -> int | None:
        """The pid the server wrote, if any."""
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def remove_stale_files(self) -> None:
        """Forget a server that is gone: its url and pid files."""
        self.url_file.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    def write_conf(self, port: int, password: str) -> None:
        """Write the redis.conf of the next start (0600: it holds the password)."""
        lines = [
            "# Written by mitrailleuse before every start; edits are overwritten.",
            "daemonize yes",
            "supervised no",
            f"bind {HOST}",
            "protected-mode yes",
            f"port {port}",
            f"requirepass {_quote(password)}",
            f"dir {_quote(str(self.home))}",
            f"pidfile {_quote(str(self.pid_file))}",
            f"logfile {_quote(str(self.log_file))}",
            "loglevel notice",
            "appendonly yes",
            'appendfilename "appendonly.aof"',
            "appendfsync always",
            "aof-load-truncated yes",
            'save ""',
            'dbfilename "dump.rdb"',
            "maxmemory-policy noeviction",
            "timeout 0",
            "tcp-keepalive 60",
            "databases 16",
        ]
        write_atomic(self.conf_file, ("\n".join(lines) + "\n").encode(), mode=0o600)

    def conf_settings(self) -> dict[str, str]:
        """Return ``port`` and ``requirepass`` from the last written redis.conf, if any."""
        found: dict[str, str] = {}
        try:
            text = self.conf_file.read_text(encoding="utf-8")
        except (OSError, UnicodeDecodeError):
            return found
        for line in text.splitlines():
            key, _, value = line.strip().partition(" ")
            if key in ("port", "requirepass"):
                found[key] = value.strip().strip('"')
        return found

    def conf_url(self) -> str | None:
        """Return the URL the last written redis.conf makes the server listen on."""
        settings = self.conf_settings()
        port, password = settings.get("port", ""), settings.get("requirepass", "")
        if not port.isdigit() or not password:
            return None
        return f"redis://:{password}@{HOST}:{port}/0"

    def log_size(self) -> int:
        """How long redis.log is (where to read a start's new lines from)."""
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def log_since(self, offset: int) -> str:
        """What redis.log says after ``offset``."""
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 2) -> str:
        """Return the last meaningful lines of redis.log, on one line for an error message.

        Timestamps and host-tuning warnings (overcommit, THP) are dropped: they are in
        every log and would push the actual cause out of the message.
        """
        text = self.log_since(max(0, self.log_size() - 8192))
        kept = []
        for raw in text.splitlines():
            line = _LOG_PREFIX.sub("", raw).strip()
            if line and not any(noise in line for noise in _LOG_NOISE):
                kept.append(line)
        return " / ".join(kept[-lines:]) if kept else "(empty)"


def _quote(value: str) -> str:
    """Quote a redis.conf argument (paths may hold spaces, quotes or backslashes)."""
    out = []
    for char in value:
        if char in '\\"':
            out.append("\\" + char)
        elif ord(char) < 32 or ord(char) == 127:
            out.append(f"\\x{ord(char):02x}")
        else:
            out.append(char)
    return '"' + "".join(out) + '"'

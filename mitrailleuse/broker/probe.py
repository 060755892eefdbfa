"""Asking a Redis whether it is ours and ready (with redis-py), and finding ports and processes."""

from __future__ import annotations

import os
import socket
from enum import Enum
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from mitrailleuse.errors import BrokerError

#: The loopback address the embedded server listens on (never a public interface).
HOST = "127.0.0.1"

#: Socket timeout of one liveness probe: loopback answers in well under a millisecond,
#: and a slow answer only sends the caller down the locked (safe) path.
PROBE_TIMEOUT_S = 1.0

#: How long a command waits for a Redis it was given (``REDIS_URL``) to answer: a person waits
#: seconds, not the minute of retries that lets a worker ride out a Redis restart.
REACH_TIMEOUT_S = 5.0

#: How many fresh ports to try when another program grabs the chosen one first.
PORT_ATTEMPTS = 3


class Probe(Enum):
    """What a server answered to AUTH + PING."""

    OK = "ok"  # our server, ready
    BUSY = "busy"  # our server, alive but loading its AOF (or running a long script)
    FOREIGN = "foreign"  # something answered, but not with our password: not ours
    DOWN = "down"  # nothing answers


def _client(url: str, timeout_s: float = PROBE_TIMEOUT_S) -> redis.Redis:
    """A one-shot client: no retries, a short timeout (a probe must answer now or never)."""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout_s,
        socket_connect_timeout=timeout_s,
        retry=Retry(NoBackoff(), 0),
        retry_on_error=[],
    )


def probe(url: str) -> Probe:
    """Tell, in one AUTH + PING, whether our server is there and ready."""
    client = _client(url)
    try:
        client.ping()
    except redis.BusyLoadingError:
        return Probe.BUSY
    except redis.AuthenticationError:
        return Probe.FOREIGN
    except redis.ResponseError as error:
        return Probe.BUSY if str(error).startswith("BUSY") else Probe.FOREIGN
    except redis.exceptions.InvalidResponse:
        return Probe.FOREIGN  # not speaking Redis's protocol: another program has the port
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return Probe.DOWN
    finally:
        client.close()
    return Probe.OK


def unreachable_reason(url: str, timeout_s: float = REACH_TIMEOUT_S) -> str | None:
    """Why one PING to ``url`` failed, on one line (``Connection refused``), or None if it answered.

    A server still loading its AOF counts as reachable: the commands' own retries wait for it.
    """
    client = _client(url, timeout_s)
    try:
        client.ping()
    except redis.BusyLoadingError:
        return None
    except (redis.RedisError, OSError) as error:
        cause = error.__context__
        if isinstance(cause, OSError) and cause.strerror:
            return cause.strerror  # the socket's own words, without redis-py's "Error 111 …"
        return " ".join(str(error).split()).rstrip(".") or type(error).__name__
    finally:
        client.close()
    return None


def memory_and_keys(url: str) -> tuple[str, int]:
    """What a server holds: its used memory (``1.02M``) and its keys, over every database."""
    client = _client(url)
    try:
        memory = str(client.info("memory")["used_memory_human"])
        keyspace = client.info("keyspace")
    finally:
        client.close()
    return memory, sum(int(db["keys"]) for db in keyspace.values())


def shutdown(url: str) -> None:
    """Send SHUTDOWN; Redis fsyncs the AOF and exits, closing the connection without reply."""
    client = _client(url)
    try:
        client.shutdown()
    except (redis.ConnectionError, redis.TimeoutError, OSError):
        return  # connection reset while the server exits: that is success
    except redis.ResponseError as error:
        raise BrokerError(f"the embedded redis-server refused SHUTDOWN: {error}") from None
    finally:
        client.close()


def is_live_redis(pid: int) -> bool:
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


def candidate_ports(previous_port: str) -> list[int]:
    """The ports to try: the previous one first if free (workers holding the old URL come back)."""
    ports: list[int] = []
    if previous_port.isdigit() and port_is_free(int(previous_port)):
        ports.append(int(previous_port))
    while len(ports) < PORT_ATTEMPTS:
        ports.append(free_port())
    return ports


def free_port() -> int:
    """Return a loopback TCP port that is free right now (the kernel picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def port_is_free(port: int) -> bool:
    """Return True if ``port`` can be bound on loopback right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((HOST, port))
        except OSError:
            return False
        return True


def url_for_display(url: str) -> str:
    """Return ``url`` with its password replaced by ``***``, safe to print or log."""
    parts = urlsplit(url)
    if parts.password is None:
        return url
    netloc = parts.netloc.rsplit("@", 1)[1]
    user = parts.username or ""
    return urlunsplit(parts._replace(netloc=f"{user}:***@{netloc}"))

"""``mitrailleuse broker status|stop``: the tasks dir's embedded Redis, looked at or stopped.

Neither command ever starts the embedded server; with ``REDIS_URL`` set they look at (status)
or refuse to touch (stop) that Redis, which Mitrailleuse did not start.
"""

from __future__ import annotations

from urllib.parse import urlsplit

import typer

from mitrailleuse.broker import EmbeddedRedis, default_home, url_for_display
from mitrailleuse.broker.probe import memory_and_keys, unreachable_reason
from mitrailleuse.cli.common import app, fail, out, tasks_dir
from mitrailleuse.config import Environment

broker_app = typer.Typer(
    help="The embedded Redis of the tasks dir: where it lives, whether it runs; stop it.",
    no_args_is_help=True,
)
app.add_typer(broker_app, name="broker")


@broker_app.command()
def status() -> None:
    """Where the embedded Redis lives, whether it runs, its pid, port, memory and keys."""
    given = Environment().redis_url
    if given:
        reason = unreachable_reason(given)
        state = "reachable" if reason is None else f"unreachable ({reason})"
        _say(f"REDIS_URL is set: {url_for_display(given)}, {state}")
        return
    server = EmbeddedRedis(default_home(tasks_dir()))
    url = server.url
    rows = [("tasks dir", str(server.home.parent.parent)), ("home", str(server.home))]
    if url is None:
        rows.append(("state", "not running"))
    else:
        memory, keys = memory_and_keys(url)
        rows += [
            ("state", "running"),
            ("pid", str(server.pid or "unknown")),
            ("port", str(urlsplit(url).port)),
            ("url", url_for_display(url)),
            ("memory", memory),
            ("keys", str(keys)),
        ]
    for label, value in rows:
        _say(f"{label:10} {value}")


@broker_app.command()
def stop() -> None:
    """Shut the embedded Redis down; its data (AOF) is kept for the next start."""
    given = Environment().redis_url
    if given:
        fail(
            f"REDIS_URL is set ({url_for_display(given)}): mitrailleuse did not start that "
            "Redis and does not stop it"
        )
    server = EmbeddedRedis(default_home(tasks_dir()))
    pid = server.pid
    # stop() takes a lock file in the home: a home that was never made has nothing to stop
    if not server.home.is_dir() or not server.stop():
        _say(f"not running ({server.home})")
        return
    _say(f"stopped the embedded Redis (pid {pid}) of {server.home}; its data is kept there")


def _say(line: str) -> None:
    """Print a line as it is (no markup: paths and URLs may hold brackets)."""
    out.print(line, highlight=False, soft_wrap=True)

"""The fleet's processes and local helpers: worker, beat, flower, simulate, demo."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from mitrailleuse.cli.common import app, err, fail, out
from mitrailleuse.config import Environment


@app.command()
def worker(
    queues: Annotated[str, typer.Option("-Q", "--queues", help="Comma-separated queues.")] = "",
    concurrency: Annotated[int | None, typer.Option("-c", "--concurrency")] = None,
    loglevel: Annotated[str, typer.Option("-l", "--loglevel")] = "INFO",
) -> None:
    """A worker of the fleet (``celery -A mitrailleuse worker`` on the threads pool)."""
    from mitrailleuse.pipeline.fleet import worker_command
    from mitrailleuse.pipeline.queues import all_queues

    chosen = [q for q in queues.split(",") if q] or list(all_queues())
    _exec(worker_command(chosen, concurrency, "--loglevel", loglevel))


@app.command()
def beat(loglevel: Annotated[str, typer.Option("-l", "--loglevel")] = "INFO") -> None:
    """The scheduler that polls native batches (``celery -A mitrailleuse beat``)."""
    from mitrailleuse.pipeline.fleet import beat_command

    _exec(beat_command(loglevel))


@app.command()
def flower(
    port: Annotated[int, typer.Option("--port")] = 5555,
    address: Annotated[
        str, typer.Option("--address", help="Listen address; not loopback needs auth.")
    ] = "127.0.0.1",
) -> None:
    """The Flower dashboard on the fleet's broker (``celery -A mitrailleuse flower``).

    Basic auth comes from ``FLOWER_BASIC_AUTH=user:password`` (Flower reads it from the
    environment, so the password is not on the command line for ``ps`` to show).
    """
    from mitrailleuse.pipeline.fleet import celery_command

    if importlib.util.find_spec("flower") is None:
        fail("Flower is not installed: pip install 'mitrailleuse[flower]'")
    auth = Environment().flower_basic_auth
    if auth and not all(":" in pair for pair in auth.split(",")):
        fail("FLOWER_BASIC_AUTH must be user:password (several: user:password,user2:password2)")
    if not auth and not _is_loopback(address):
        fail(f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH=user:password")
    _exec(celery_command("flower", f"--port={port}", f"--address={address}"))


def _is_loopback(address: str) -> bool:
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return address == "localhost"


def _exec(command: list[str]) -> NoReturn:
    sys.stdout.flush()
    os.execv(command[0], command)


@app.command()
def simulate(
    port: Annotated[int, typer.Option("--port")] = 8765,
    latency_ms: Annotated[float, typer.Option("--latency-ms")] = 0.0,
    rpm: Annotated[int | None, typer.Option("--rpm")] = None,
    error_rate: Annotated[float, typer.Option("--error-rate")] = 0.0,
) -> None:
    """The bundled provider simulator (OpenAI and DeepL APIs) on loopback."""
    from mitrailleuse.simulator import SimulatorSettings, serve

    settings = SimulatorSettings(latency_ms=latency_ms, rpm=rpm, error_rate=error_rate)
    err.print(f"simulator on http://127.0.0.1:{port} (Ctrl-C to stop)")
    serve(port=port, settings=settings)


@app.command()
def demo(items: Annotated[int, typer.Option("--items")] = 1000) -> None:
    """A sample task through the whole pipeline, against the simulator."""
    from mitrailleuse.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="mitrailleuse-demo-") as scratch:
        raise typer.Exit(run_demo(Path(scratch), items, out))

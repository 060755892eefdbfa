"""The fleet's processes and local helpers: worker, beat, flower, simulate, demo."""

from __future__ import annotations

import importlib.util
import os
import sys
import tempfile
from pathlib import Path
from typing import Annotated, NoReturn

import typer

from mitrailleuse.cli.common import app, err, fail, out
from mitrailleuse.config import Environment
from mitrailleuse.services.tokens import is_loopback

LogLevel = typer.Option("-l", "--loglevel", help="DEBUG, INFO, WARNING or ERROR.")


@app.command()
def worker(
    queues: Annotated[
        str,
        typer.Option(
            "-Q",
            "--queues",
            help="Comma-separated queues (default: every queue).",
            show_default=False,
        ),
    ] = "",
    concurrency: Annotated[
        int | None,
        typer.Option(
            "-c",
            "--concurrency",
            help="Message slots (threads), each sending its message's calls at once "
            "(default 64, MITRAILLEUSE_CONCURRENCY).",
            show_default=False,
        ),
    ] = None,
    loglevel: Annotated[str, LogLevel] = "INFO",
) -> None:
    """A worker of the fleet: celery -A mitrailleuse worker, on threads, uniquely named."""
    from mitrailleuse.pipeline.fleet import worker_command
    from mitrailleuse.pipeline.queues import all_queues

    chosen = [q for q in queues.split(",") if q] or list(all_queues())
    _exec(worker_command(chosen, concurrency, "--loglevel", loglevel))


@app.command()
def beat(loglevel: Annotated[str, LogLevel] = "INFO") -> None:
    """The scheduler that polls native batches (exactly one per fleet)."""
    from mitrailleuse.pipeline.fleet import beat_command

    _exec(beat_command(loglevel))


@app.command()
def flower(
    port: Annotated[int, typer.Option("--port", help="Port to serve the dashboard on.")] = 5555,
    address: Annotated[
        str, typer.Option("--address", help="Listen address; not loopback needs auth.")
    ] = "127.0.0.1",
) -> None:
    """The Flower dashboard on the fleet's broker (auth: FLOWER_BASIC_AUTH=user:password).

    Flower reads the password from the environment, so it is not on a command line for ps
    to show.
    """
    from mitrailleuse.pipeline.fleet import celery_command

    if importlib.util.find_spec("flower") is None:
        fail("Flower is not installed: pip install 'mitrailleuse[flower]'")
    auth = Environment().flower_basic_auth
    if auth and not all(":" in pair for pair in auth.split(",")):
        fail("FLOWER_BASIC_AUTH must be user:password (several: user:password,user2:password2)")
    if not auth and not is_loopback(address):
        fail(f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH=user:password")
    _exec(celery_command("flower", f"--port={port}", f"--address={address}"))


def _exec(command: list[str]) -> NoReturn:
    sys.stdout.flush()
    os.execv(command[0], command)


@app.command()
def simulate(
    port: Annotated[int, typer.Option("--port", help="Port on 127.0.0.1.")] = 8765,
    latency_ms: Annotated[
        float, typer.Option("--latency-ms", help="Time each answer takes.")
    ] = 0.0,
    rpm: Annotated[
        int | None,
        typer.Option(
            "--rpm",
            help="Requests/min before 429 + Retry-After (default: no limit).",
            show_default=False,
        ),
    ] = None,
    error_rate: Annotated[
        float, typer.Option("--error-rate", help="Share of requests answered 500 (0 to 1).")
    ] = 0.0,
    hang_s: Annotated[
        float, typer.Option("--hang-s", help="How long a [[hang]] prompt sleeps.")
    ] = 30.0,
) -> None:
    """The bundled provider simulator (OpenAI and DeepL APIs) on loopback."""
    from mitrailleuse.simulator import SimulatorSettings, serve

    settings = SimulatorSettings(
        latency_ms=latency_ms, rpm=rpm, error_rate=error_rate, hang_s=hang_s
    )
    err.print(f"simulator on http://127.0.0.1:{port} (Ctrl-C to stop)")
    serve(port=port, settings=settings)


@app.command()
def demo(
    items: Annotated[int, typer.Option("--items", help="How many sample items to run.")] = 1000,
) -> None:
    """A sample task through the whole pipeline, against the simulator."""
    from mitrailleuse.demo import run_demo

    with tempfile.TemporaryDirectory(prefix="mitrailleuse-demo-") as scratch:
        raise typer.Exit(run_demo(Path(scratch), items, out))

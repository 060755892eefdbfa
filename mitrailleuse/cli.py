"""The ``mitrailleuse`` command: parses arguments, calls the Python API, prints.

Exit codes: 0 every item succeeded; 1 the run finished with failed items (or did not finish);
2 bad usage, config or input path (one line, no traceback); 130 interrupted.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import sys
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.table import Table

from mitrailleuse.config import Environment, ProviderName, load_config
from mitrailleuse.errors import MitrailleuseError
from mitrailleuse.taskfolder import TaskFolder, find_task, iter_tasks

if TYPE_CHECKING:
    from mitrailleuse.api import Mitrailleuse, Progress, Run

app = typer.Typer(
    name="mitrailleuse",
    help="Push very large numbers of requests through AI provider APIs, losing none.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

TaskPath = Annotated[Path, typer.Option("--task-path", help="The task folder.")]
UserId = Annotated[str, typer.Option("--user-id", help="Who the task belongs to.")]
ApiName = Annotated[
    ProviderName, typer.Option("--api-name", help="The provider: openai, deepseek, deepl, …")
]
TaskName = Annotated[str, typer.Option("--task-name", help="A name for the task.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="A config.json (the seed's template works).")
]
InputsOption = Annotated[
    list[Path], typer.Option("--input", help="An input .json/.jsonl file (repeatable).")
]


def _fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def _client() -> Mitrailleuse:
    from mitrailleuse.api import Mitrailleuse  # lazily: Celery is slow to import

    return Mitrailleuse()


def _tasks_dir() -> Path:
    return Environment().mitrailleuse_tasks_dir


@app.command()
def create(
    user_id: UserId,
    api_name: ApiName,
    task_name: TaskName,
    config: ConfigOption = None,
    inputs: InputsOption = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Make a task folder; print its path as the last line."""
    folder = _client().create_task(user_id, api_name, task_name, config, inputs)
    out.print(str(folder.path), highlight=False, soft_wrap=True)


@app.command("list")
def list_tasks(user_id: UserId) -> None:
    """Tasks with their status and counts (``--user-id all`` for everyone's)."""
    table = Table("#", "user", "task", "state", "done/total", "failed", box=None)
    for number, folder in enumerate(iter_tasks(_tasks_dir(), user_id), start=1):
        status = folder.status()
        counts = status.counts
        table.add_row(
            str(number),
            folder.user_id,
            folder.name,
            status.state,
            f"{counts.done}/{counts.total}",
            str(counts.failed),
        )
    out.print(table)


@app.command()
def get(task_path: TaskPath) -> None:
    """One task's status, counts and paths."""
    from mitrailleuse.taskfolder import open_task

    folder = open_task(_tasks_dir(), task_path)
    status = folder.status()
    out.print_json(status.model_dump_json())
    for label, path in (
        ("config", folder.config_path),
        ("inputs", folder.inputs_dir),
        ("results", folder.results_path),
        ("errors", folder.errors_path),
        ("summary", folder.summary_path),
    ):
        out.print(f"{label:8} {path}", highlight=False, soft_wrap=True)


@app.command()
def execute(
    task_path: Annotated[Path | None, typer.Option("--task-path", help="The task folder.")] = None,
    user_id: Annotated[str | None, typer.Option("--user-id")] = None,
    task_name: Annotated[str | None, typer.Option("--task-name")] = None,
    task_number: Annotated[
        int | None, typer.Option("--task-number", help="As `list` numbers it.")
    ] = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once submitted.")] = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Print the projected tokens and cost; call nothing.")
    ] = False,
) -> None:
    """Submit a task to the fleet; by default wait, with a progress bar."""
    client = _client()
    if task_path is not None:
        folder = client.task(task_path)
    elif user_id is not None and (task_name is not None or task_number is not None):
        folder = find_task(client.tasks_dir, user_id, task_name, task_number)
    else:
        _fail("give --task-path, or --user-id with --task-name or --task-number")
    if estimate:
        _print_estimate(folder)
        return
    run = client.submit(folder)
    _warn_if_unserved(folder.provider)
    out.print(f"submitted run {run.run_id} of {folder.path}", highlight=False, soft_wrap=True)
    if detach:
        return
    _finish(run)


def _print_estimate(folder: TaskFolder) -> None:
    from mitrailleuse.cost.estimate import estimate

    found = estimate(folder)
    table = Table(title=f"estimate: {folder.path.name}", show_header=False)
    table.add_row("provider / model", f"{found.provider} / {found.model}")
    table.add_row("mode", "native batch (discounted)" if found.batch else "realtime")
    table.add_row(
        "items sent", f"{found.items:,}" + (f" ({found.invalid:,} invalid)" * bool(found.invalid))
    )
    table.add_row(f"prompt {found.unit}", f"{found.prompt_units:,}")
    if found.unit == "tokens":
        table.add_row("completion tokens, at most", f"{found.completion_budget:,} (max_tokens)")
    low, high = found.cost_usd(False), found.cost_usd(True)
    if low is None or high is None:
        table.add_row("cost", "unknown: no price for this model (general.prices)")
    else:
        table.add_row("cost, prompt only", f"${low:.4f}")
        table.add_row("cost, at most", f"${high:.4f}")
    out.print(table)


def _warn_if_unserved(provider: str) -> None:
    from mitrailleuse.pipeline.fleet import queues_served
    from mitrailleuse.pipeline.queues import CONTROL_QUEUE

    missing = {provider, CONTROL_QUEUE} - queues_served()
    if missing:
        err.print(
            f"[yellow]warning:[/yellow] no worker serves {', '.join(sorted(missing))}: "
            "start one with `mitrailleuse worker` (the run waits in Redis until then)"
        )


def _finish(run: Run) -> NoReturn:
    from mitrailleuse.display import follow

    _report(run.folder, follow(run))


def _report(folder: TaskFolder, progress: Progress) -> NoReturn:
    from mitrailleuse.display import summary_line

    out.print(summary_line(progress), highlight=False)
    out.print(str(folder.results_path), highlight=False, soft_wrap=True)
    ok = progress.state == "completed" and progress.failed == 0
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED_ITEMS)


@app.command()
def status(task_path: Annotated[Path, typer.Argument(help="The task folder.")]) -> None:
    """A run's state and counts, live while it goes on."""
    from mitrailleuse.display import rates_line, summary_line

    client = _client()
    run = client.get_run(client.task(task_path))
    progress = run.progress()
    out.print(summary_line(progress), highlight=False)
    if not progress.finished:
        out.print(f"fleet: {rates_line(run.rates())}", highlight=False)
    if batches := run.batches():
        from mitrailleuse.batch.state import summary

        out.print(f"native batches: {summary(batches)}", highlight=False)


@app.command()
def cancel(task_path: Annotated[Path, typer.Argument(help="The task folder.")]) -> None:
    """Stop dispatching a run: in-flight items finish; the status becomes ``cancelled``."""
    client = _client()
    client.get_run(client.task(task_path)).cancel()
    out.print(f"cancelled {task_path}", highlight=False, soft_wrap=True)


@app.command()
def run(
    api_name: ApiName,
    inputs: InputsOption,
    config: ConfigOption = None,
    user_id: Annotated[str, typer.Option("--user-id")] = "local",
    task_name: Annotated[str, typer.Option("--task-name")] = "run",
    concurrency: Annotated[int | None, typer.Option("-c", "--concurrency")] = None,
) -> None:
    """Create + execute + wait, starting a broker and a worker when none is there."""
    from mitrailleuse.local import run_locally

    if not inputs:
        _fail("give at least one --input file")
    model = load_config(config) if config else None
    folder, progress = run_locally(api_name, inputs, model, user_id, task_name, concurrency)
    _report(folder, progress)


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

    auth = Environment().flower_basic_auth
    if auth and not all(":" in pair for pair in auth.split(",")):
        _fail("FLOWER_BASIC_AUTH must be user:password (several: user:password,user2:password2)")
    if not auth and not _is_loopback(address):
        _fail(f"refusing to serve Flower on {address} without FLOWER_BASIC_AUTH=user:password")
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


def main() -> None:
    """Run the CLI with Mitrailleuse's exit codes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)
    except MitrailleuseError as error:
        err.print(f"[red]error:[/red] {error}", highlight=False, soft_wrap=True)
        code = EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as error:
        # click's usage errors (typer may vendor click, so they are recognised by shape)
        if not (hasattr(error, "show") and hasattr(error, "exit_code")):
            raise
        error.show()
        code = EXIT_USAGE
    sys.exit(code or EXIT_OK)

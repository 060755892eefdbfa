"""Commands on tasks and runs: create, list, get, execute, status, cancel, run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.table import Table

from mitrailleuse.cli.common import (
    EXIT_FAILED_ITEMS,
    EXIT_OK,
    ApiName,
    ConfigOption,
    InputsOption,
    TaskName,
    TaskPath,
    UserId,
    app,
    client,
    err,
    fail,
    out,
    tasks_dir,
)
from mitrailleuse.config import load_config
from mitrailleuse.taskfolder import TaskFolder, find_task, iter_tasks

if TYPE_CHECKING:
    from mitrailleuse.api import Progress, Run


@app.command()
def create(
    user_id: UserId,
    api_name: ApiName,
    task_name: TaskName,
    config: ConfigOption = None,
    inputs: InputsOption = [],  # noqa: B006 - typer reads the default, never mutates it
) -> None:
    """Make a task folder; print its path as the last line."""
    folder = client().create_task(user_id, api_name, task_name, config, inputs)
    out.print(str(folder.path), highlight=False, soft_wrap=True)


@app.command("list")
def list_tasks(user_id: UserId) -> None:
    """Tasks with their status and counts (``--user-id all`` for everyone's)."""
    table = Table("#", "user", "task", "state", "done/total", "failed", box=None)
    for number, folder in enumerate(iter_tasks(tasks_dir(), user_id), start=1):
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

    folder = open_task(tasks_dir(), task_path)
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
    api = client()
    if task_path is not None:
        folder = api.task(task_path)
    elif user_id is not None and (task_name is not None or task_number is not None):
        folder = find_task(api.tasks_dir, user_id, task_name, task_number)
    else:
        fail("give --task-path, or --user-id with --task-name or --task-number")
    if estimate:
        _print_estimate(folder)
        return
    run = api.submit(folder)
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

    api = client()
    run = api.get_run(api.task(task_path))
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
    api = client()
    api.get_run(api.task(task_path)).cancel()
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
        fail("give at least one --input file")
    model = load_config(config) if config else None
    folder, progress = run_locally(api_name, inputs, model, user_id, task_name, concurrency)
    _report(folder, progress)

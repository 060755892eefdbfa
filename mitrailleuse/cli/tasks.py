"""Commands on tasks and runs: create, list, get, execute, status, cancel, run."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.markup import escape

from mitrailleuse.cli.common import (
    EXIT_FAILED_ITEMS,
    EXIT_INTERRUPTED,
    EXIT_OK,
    ApiName,
    ConfigOption,
    InputsOption,
    TaskArgument,
    TaskName,
    TaskNameOption,
    TaskNumber,
    TaskPathOption,
    TaskUser,
    UserId,
    app,
    client,
    err,
    fail,
    find_folder,
    out,
    tasks_dir,
)
from mitrailleuse.config import load_config
from mitrailleuse.display import ProgressStyle
from mitrailleuse.errors import BrokerNotRunning
from mitrailleuse.taskfolder import FINAL_STATES, TaskFolder, iter_tasks

if TYPE_CHECKING:
    from mitrailleuse.api import Progress, Run

StrictOption = Annotated[
    bool, typer.Option("--strict", help="Refuse a config with unknown keys (exit 2).")
]
ProgressOption = Annotated[
    ProgressStyle,
    typer.Option(
        "--progress",
        help="auto: a live line on a terminal, else plain: a line every few seconds; "
        "none: only the end.",
    ),
]


@app.command()
def create(
    user_id: UserId,
    api_name: ApiName,
    task_name: TaskName,
    config: ConfigOption = None,
    inputs: InputsOption = [],  # noqa: B006 - typer reads the default, never mutates it
    strict: StrictOption = False,
) -> None:
    """Make a task folder; print its path as the last line."""
    model = load_config(config, strict=strict) if config else None
    folder = client().create_task(user_id, api_name, task_name, model, inputs)
    out.print(str(folder.path), highlight=False, soft_wrap=True)


@app.command("list")
def list_tasks(
    user_id: Annotated[
        str, typer.Option("--user-id", help="One user's tasks (all: everyone's).")
    ] = "all",
) -> None:
    """Tasks with their state and counts (numbered as --task-number takes them)."""
    folders = list(iter_tasks(tasks_dir(), user_id))
    stalled = _stalled_reasons(folders)
    from rich.table import Table  # rich.table costs every command 50 ms at start

    table = Table("#", "user", "task", "state", "done/total", "failed", box=None)
    for number, folder in enumerate(folders, start=1):
        status = folder.status()
        counts = status.counts
        table.add_row(
            str(number),
            folder.user_id,
            folder.name,
            "stalled" if folder.path in stalled else status.state,
            f"{counts.done}/{counts.total}",
            str(counts.failed),
        )
    out.print(table)
    for path, reason in stalled.items():
        err.print(f"stalled: {path.name}: {reason}", highlight=False, soft_wrap=True)


def _stalled_reasons(folders: list[TaskFolder]) -> dict[Path, str]:
    """Why each unfinished task cannot move now (no broker, no worker), by its path."""
    running = [f for f in folders if f.status().state not in FINAL_STATES | {"created"}]
    if not running:
        return {}
    try:
        api = client(start_broker=False)
        reasons = {folder.path: api.get_run(folder).stalled() for folder in running}
    except BrokerNotRunning:
        return dict.fromkeys((folder.path for folder in running), "no broker is running")
    return {path: reason for path, reason in reasons.items() if reason}


@app.command()
def get(
    path: TaskArgument = None,
    task_path: TaskPathOption = None,
    user_id: TaskUser = None,
    task_name: TaskNameOption = None,
    task_number: TaskNumber = None,
) -> None:
    """One task's status, counts and paths."""
    folder = find_folder(path, task_path, user_id, task_name, task_number)
    status = folder.status()
    out.print_json(status.model_dump_json())
    for label, where in (
        ("config", folder.config_path),
        ("inputs", folder.inputs_dir),
        ("results", folder.results_path),
        ("errors", folder.errors_path),
        ("summary", folder.summary_path),
    ):
        out.print(f"{label:8} {where}", highlight=False, soft_wrap=True)


@app.command()
def execute(
    path: TaskArgument = None,
    task_path: TaskPathOption = None,
    user_id: TaskUser = None,
    task_name: TaskNameOption = None,
    task_number: TaskNumber = None,
    detach: Annotated[bool, typer.Option("--detach", help="Return once submitted.")] = False,
    estimate: Annotated[
        bool, typer.Option("--estimate", help="Print the projected tokens and cost; call nothing.")
    ] = False,
    progress: ProgressOption = ProgressStyle.AUTO,
) -> None:
    """Send a task to the fleet and, unless --detach, wait showing its progress."""
    folder = find_folder(path, task_path, user_id, task_name, task_number)
    if estimate:
        _print_estimate(folder)
        return
    api = client()
    served = api.workers(folder)
    _check_key(folder, served)
    run = api.submit(folder)
    _warn_if_unserved(served)
    out.print(f"submitted run {run.run_id} of {folder.path}", highlight=False, soft_wrap=True)
    if detach:
        return
    try:
        _finish(run, progress)
    except KeyboardInterrupt:
        err.print(
            "interrupted: the run goes on in the fleet; follow it with "
            f"`mitrailleuse status {folder.path}`",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None


def _print_estimate(folder: TaskFolder) -> None:
    from rich.markup import escape

    from mitrailleuse.cost.estimate import estimate

    found = estimate(folder)
    from rich.table import Table

    table = Table(title=f"estimate: {folder.path.name}", show_header=False)
    table.add_row("provider / model", f"{found.provider} / {found.model}")
    table.add_row("mode", "native batch (discounted)" if found.batch else "realtime")
    sent = f"{found.items:,}"
    if found.invalid:
        top = list(found.reasons.items())
        why = ", ".join(
            f"{count:,} \N{MULTIPLICATION SIGN} {escape(reason)}" for reason, count in top[:3]
        )
        sent += f" ({found.invalid:,} invalid: {why}{', …' * (len(top) > 3)})"
    table.add_row("items sent", sent)
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


def _check_key(folder: TaskFolder, served: dict[str, list[set[str]]]) -> None:
    """Refuse a run whose provider's workers all lack its key (nothing is sent)."""
    from mitrailleuse.credentials import missing_key

    provider = folder.provider
    key = getattr(folder.config().provider(provider), "api_key", "")
    missing = missing_key(provider, key, served.get(provider, []))
    if missing:
        fail(
            f"{missing} is not set where the {len(served[provider])} worker(s) serving "
            f"{provider} run: set it there and restart them"
        )


def _warn_if_unserved(served: dict[str, list[set[str]]]) -> None:
    unserved = sorted(queue for queue, workers in served.items() if not workers)
    if unserved:
        err.print(
            f"[yellow]warning:[/yellow] no worker serves {', '.join(unserved)}: "
            "start one with `mitrailleuse worker` (the run waits in Redis until then)"
        )


def _finish(run: Run, style: ProgressStyle) -> NoReturn:
    from mitrailleuse.display import follow

    _report(run.folder, follow(run, style))


def _report(folder: TaskFolder, progress: Progress) -> NoReturn:
    from mitrailleuse.display import digest_lines, summary_line

    out.print(summary_line(progress), highlight=False)
    summary = folder.summary()
    if summary.get("run_id") == folder.status().run_id:
        for line in digest_lines(summary.get("failures") or {}):
            out.print(escape(line), highlight=False, soft_wrap=True)
        if pace := _pace_hint(folder, summary):
            out.print(f"hint: {pace}", highlight=False, soft_wrap=True)
    out.print(str(folder.results_path), highlight=False, soft_wrap=True)
    ok = progress.state == "completed" and progress.failed == 0
    raise typer.Exit(EXIT_OK if ok else EXIT_FAILED_ITEMS)


def _pace_hint(folder: TaskFolder, summary: dict) -> str | None:
    from mitrailleuse.hints import pace_hint
    from mitrailleuse.providers import provider_class

    return pace_hint(summary, provider_class(folder.provider).max_items_per_call == 1)


@app.command()
def status(
    path: TaskArgument = None,
    task_path: TaskPathOption = None,
    user_id: TaskUser = None,
    task_name: TaskNameOption = None,
    task_number: TaskNumber = None,
) -> None:
    """A run's state and counts; says when no worker serves it."""
    from mitrailleuse.api import folder_progress
    from mitrailleuse.display import rates_line, summary_line

    folder = find_folder(path, task_path, user_id, task_name, task_number)
    try:
        run = client(start_broker=False).get_run(folder)
        progress = run.progress()
    except BrokerNotRunning:
        run, progress = None, folder_progress(folder)
    line = summary_line(progress)
    if not progress.finished:
        reason = run.stalled() if run is not None else "no broker is running"
        if reason:
            line = f"stalled ({reason}): " + line.partition(": ")[2]
    out.print(line, highlight=False, soft_wrap=True)
    if run is None:
        return
    if not progress.finished:
        out.print(f"fleet: {rates_line(run.rates())}", highlight=False)
    if batches := run.batches():
        from mitrailleuse.batch.state import summary

        out.print(f"native batches: {summary(batches)}", highlight=False)


@app.command()
def cancel(
    path: TaskArgument = None,
    task_path: TaskPathOption = None,
    user_id: TaskUser = None,
    task_name: TaskNameOption = None,
    task_number: TaskNumber = None,
) -> None:
    """Stop a run: nothing new is sent; in-flight items finish."""
    folder = find_folder(path, task_path, user_id, task_name, task_number)
    client().get_run(folder).cancel()
    out.print(f"cancelled {folder.path}", highlight=False, soft_wrap=True)


@app.command()
def run(
    api_name: ApiName,
    inputs: InputsOption,
    config: ConfigOption = None,
    user_id: Annotated[str, typer.Option("--user-id", help="Who the task belongs to.")] = "local",
    task_name: Annotated[str, typer.Option("--task-name", help="A name for the task.")] = "run",
    concurrency: Annotated[
        int | None,
        typer.Option(
            "-c",
            "--concurrency",
            help="Threads of the worker run starts (default 64).",
            show_default=False,
        ),
    ] = None,
    progress: ProgressOption = ProgressStyle.AUTO,
    strict: StrictOption = False,
) -> None:
    """Create and execute a task here, starting a broker and a worker if needed."""
    from mitrailleuse.local import Interrupted, run_locally

    if not inputs:
        fail("give at least one --input file")
    model = load_config(config, strict=strict) if config else None
    try:
        folder, ended = run_locally(
            api_name, inputs, model, user_id, task_name, concurrency, progress
        )
    except Interrupted as stopped:
        err.print(
            "interrupted: the items with a record are kept; resume with "
            f"`mitrailleuse execute {stopped.folder.path}` once a worker runs "
            "(`mitrailleuse worker`)",
            highlight=False,
            soft_wrap=True,
        )
        raise typer.Exit(EXIT_INTERRUPTED) from None
    _report(folder, ended)

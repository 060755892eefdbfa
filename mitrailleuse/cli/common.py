"""What every command shares: the typer app, the consoles, exit codes and the common options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

from mitrailleuse.config import Environment, ProviderName

if TYPE_CHECKING:
    from mitrailleuse.api import Mitrailleuse
    from mitrailleuse.taskfolder import TaskFolder

app = typer.Typer(
    name="mitrailleuse",
    help="Push very large numbers of requests through AI provider APIs, losing none.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)
out = Console()
err = Console(stderr=True)

EXIT_OK, EXIT_FAILED_ITEMS, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

TaskArgument = Annotated[
    Path | None,
    typer.Argument(
        help="The task folder (or give --task-path, or --user-id with a name).", show_default=False
    ),
]
TaskPathOption = Annotated[
    Path | None, typer.Option("--task-path", help="The task folder.", show_default=False)
]
TaskUser = Annotated[
    str | None,
    typer.Option("--user-id", help="With --task-name or --task-number.", show_default=False),
]
TaskNameOption = Annotated[
    str | None,
    typer.Option("--task-name", help="The user's newest task of that name.", show_default=False),
]
TaskNumber = Annotated[
    int | None,
    typer.Option(
        "--task-number", help="The user's task of that number in `list`.", show_default=False
    ),
]
UserId = Annotated[str, typer.Option("--user-id", help="Who the task belongs to.")]
ApiName = Annotated[
    ProviderName, typer.Option("--api-name", help="The provider: openai, deepseek, deepl, …")
]
TaskName = Annotated[str, typer.Option("--task-name", help="A name for the task.")]
ConfigOption = Annotated[
    Path | None, typer.Option("--config", help="A config.json (the seed's template works).")
]
InputsOption = Annotated[
    list[Path],
    typer.Option("--input", metavar="FILE", help="An input .json/.jsonl file (repeatable)."),
]


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error and exit (2 unless told)."""
    err.print(f"[red]error:[/red] {escape(message)}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def client(start_broker: bool = True) -> Mitrailleuse:
    """The Python API's client (imported lazily: Celery is slow to import).

    ``start_broker=False`` for a read-only command: it never starts the embedded Redis.
    """
    from mitrailleuse.api import Mitrailleuse

    return Mitrailleuse(start_broker=start_broker)


def tasks_dir() -> Path:
    """The tasks dir of this environment."""
    return Environment().mitrailleuse_tasks_dir


def find_folder(
    path: Path | None,
    task_path: Path | None,
    user_id: str | None,
    task_name: str | None,
    task_number: int | None,
) -> TaskFolder:
    """The task a command names, the same three ways in every command."""
    from mitrailleuse.taskfolder import find_task, open_task

    chosen = path or task_path
    if chosen is not None:
        return open_task(tasks_dir(), chosen)
    if user_id is not None and (task_name is not None or task_number is not None):
        return find_task(tasks_dir(), user_id, task_name, task_number)
    fail("name the task: its folder, or --user-id with --task-name or --task-number")


def show_version(value: bool) -> None:
    """``--version``: print it and stop."""
    if value:
        from mitrailleuse import __version__

        out.print(f"mitrailleuse {__version__}", highlight=False)
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option("--version", callback=show_version, is_eager=True, help="Print the version."),
    ] = False,
) -> None:
    """Push very large numbers of requests through AI provider APIs, losing none."""

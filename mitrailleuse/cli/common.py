"""What every command shares: the typer app, the consoles, exit codes and the common options."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated, NoReturn

import typer
from rich.console import Console

from mitrailleuse.config import Environment, ProviderName

if TYPE_CHECKING:
    from mitrailleuse.api import Mitrailleuse

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


def fail(message: str, code: int = EXIT_USAGE) -> NoReturn:
    """Print a one-line error and exit (2 unless told)."""
    err.print(f"[red]error:[/red] {message}", highlight=False, soft_wrap=True)
    raise typer.Exit(code)


def client() -> Mitrailleuse:
    """The Python API's client (imported lazily: Celery is slow to import)."""
    from mitrailleuse.api import Mitrailleuse

    return Mitrailleuse()


def tasks_dir() -> Path:
    """The tasks dir of this environment."""
    return Environment().mitrailleuse_tasks_dir

"""``mitrailleuse export``: a task's results as a table (CSV, Parquet or flat JSONL)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import Annotated, cast

import typer

from mitrailleuse.cli.common import (
    TaskArgument,
    TaskNameOption,
    TaskNumber,
    TaskPathOption,
    TaskUser,
    app,
    fail,
    find_folder,
    out,
)
from mitrailleuse.export import ExportError, ExportFormat, default_output, export_records


class TableFormat(StrEnum):
    """``--format``: the table formats ``export`` writes."""

    CSV = "csv"
    PARQUET = "parquet"
    JSONL = "jsonl"


FormatOption = Annotated[
    TableFormat,
    typer.Option(
        "--format", help="csv; parquet (needs pyarrow); jsonl: one flat JSON object a line."
    ),
]
OutputOption = Annotated[
    Path | None,
    typer.Option(
        "--output",
        metavar="FILE",
        help="Where to write (default: the task's outputs/results.csv, .parquet, .flat.jsonl).",
        show_default=False,
    ),
]


@app.command("export")
def export_command(
    path: TaskArgument = None,
    task_path: TaskPathOption = None,
    user_id: TaskUser = None,
    task_name: TaskNameOption = None,
    task_number: TaskNumber = None,
    fmt: FormatOption = TableFormat.CSV,
    output: OutputOption = None,
) -> None:
    """Write a task's results as a table, one row per item; print its path as the last line."""
    folder = find_folder(path, task_path, user_id, task_name, task_number)
    if not folder.results_path.is_file():
        fail(f"{folder.path}: no results yet (outputs/results.jsonl): execute the task first")
    kind = cast("ExportFormat", fmt.value)
    target = output if output is not None else default_output(folder.path, kind)
    try:
        written = export_records(folder.results_path, kind, target)
    except ExportError as error:
        fail(str(error))
    out.print(str(written.resolve()), highlight=False, soft_wrap=True)

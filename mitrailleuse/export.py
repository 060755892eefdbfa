"""A task's results as a table: CSV, Parquet or flat JSONL (``mitrailleuse export``).

``outputs/results.jsonl`` keeps everything a run learned, nested, one record per item; a
spreadsheet, pandas or a warehouse wants one flat row per item. :func:`flatten` turns a record
into that row and :func:`export_records` writes every row, in the file's (input) order.

The file is read twice, streamed: once to learn the columns (their union over every record, in
first-seen order) and, for Parquet, their types; once to write. Memory stays bounded by one
row group whatever the number of records. Every output is written atomically.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any, Literal, get_args

import orjson

from mitrailleuse.atomic import atomic_file
from mitrailleuse.errors import MitrailleuseError

if TYPE_CHECKING:
    import pyarrow

__all__ = [
    "BASE_COLUMNS",
    "FORMATS",
    "ExportError",
    "ExportFormat",
    "default_output",
    "export_records",
    "flatten",
]

#: The table formats :func:`export_records` writes.
ExportFormat = Literal["csv", "parquet", "jsonl"]
FORMATS: tuple[str, ...] = get_args(ExportFormat)

#: The columns every table starts with, in this order (absent values are empty).
BASE_COLUMNS: tuple[str, ...] = (
    "id",
    "input_file",
    "index",
    "status",
    "provider",
    "model",
    "mode",
    "attempts",
    "cached",
    "cost_usd",
    "latency_ms",
    "prompt_tokens",
    "completion_tokens",
    "error_type",
    "error_message",
)
_PLAIN = ("id", "input_file", "index", "status", "provider", "model", "mode", "attempts")
_PLAIN_TAIL = ("cached", "cost_usd", "latency_ms")

#: Rows per Parquet row group: what the writer holds in memory at once.
ROW_GROUP_SIZE = 10_000

#: Parquet types of known columns that are empty in every record (else they are inferred).
_KNOWN_TYPES = {
    "index": "int",
    "attempts": "int",
    "cached": "bool",
    "cost_usd": "float",
    "latency_ms": "int",
    "prompt_tokens": "int",
    "completion_tokens": "int",
    "reasks": "int",
}
_INT64 = (-(2**63), 2**63 - 1)

PYARROW_MISSING = "parquet export needs pyarrow: pip install 'mitrailleuse[parquet]'"


class ExportError(MitrailleuseError):
    """The export cannot be made: no results file, no pyarrow for Parquet, a bad output path."""


def flatten(record: dict[str, Any]) -> dict[str, Any]:
    """One result record as one flat row: scalar values only, never the response body.

    The base columns (:data:`BASE_COLUMNS`, usage and error unpacked) come first, then
    ``reasks`` when the record has it, then the structured answer's fields as ``parsed.<field>``
    (dotted names for nested objects; a list, whatever it holds, as JSON text) when the record
    has ``parsed``, else the text answer as ``output``. Used by :func:`export_records` for every
    format, so CSV, Parquet and JSONL rows always agree.
    """
    usage = record.get("usage") or {}
    error = record.get("error") or {}
    row: dict[str, Any] = {name: record.get(name) for name in _PLAIN}
    row.update((name, record.get(name)) for name in _PLAIN_TAIL)
    row["prompt_tokens"] = usage.get("prompt_tokens")
    row["completion_tokens"] = usage.get("completion_tokens")
    row["error_type"] = error.get("type")
    row["error_message"] = error.get("message")
    if "reasks" in record:
        row["reasks"] = record["reasks"]
    if "parsed" in record:
        _flatten_into(row, "parsed", record["parsed"])
    else:
        row["output"] = _scalar(record.get("output"))
    return row


def _flatten_into(row: dict[str, Any], prefix: str, value: Any) -> None:
    """Nested objects as dotted columns; a failed item's ``parsed: null`` adds none."""
    if isinstance(value, dict):
        for key, item in value.items():
            _flatten_into(row, f"{prefix}.{key}", item)
    elif value is not None or prefix != "parsed":
        row[prefix] = _scalar(value)


def _scalar(value: Any) -> Any:
    """A cell's value: lists and objects as JSON text, scalars as they are."""
    if isinstance(value, list | dict):
        return orjson.dumps(value).decode()
    return value


def default_output(task_path: Path, fmt: ExportFormat) -> Path:
    """Where ``export`` writes unless told: beside the results, ``outputs/results.<format>``.

    JSONL is ``results.flat.jsonl``: ``results.jsonl`` is the run's own file, never replaced.
    """
    name = "results.flat.jsonl" if fmt == "jsonl" else f"results.{fmt}"
    return task_path / "outputs" / name


def export_records(results_path: Path, fmt: ExportFormat, output: Path) -> Path:
    """Write the records of ``results_path`` (a ``results.jsonl``) to ``output`` as a table.

    ``fmt`` is ``csv`` (a header, then one row a record; empty cells for nulls, ``true`` and
    ``false`` for booleans), ``parquet`` (needs ``pyarrow``; each column's type inferred from its
    values) or ``jsonl`` (one flat object a line, every column, JSON types kept). Rows keep the
    file's order. Returns ``output``; raises :class:`ExportError` when it cannot be made.
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}: choose {', '.join(FORMATS)}")
    pa = _pyarrow() if fmt == "parquet" else None
    results_path, output = Path(results_path), Path(output)
    if not results_path.is_file():
        raise ExportError(f"{results_path}: no results yet")
    if output.exists() and output.resolve() == results_path.resolve():
        raise ExportError(f"{output}: that is the results file itself; choose another --output")
    if not output.parent.is_dir():
        raise ExportError(f"{output.parent}: no such directory")
    with results_path.open("rb") as source:  # one handle: both passes read the same file
        columns, kinds = _survey(_records(source))
        source.seek(0)
        rows = (flatten(record) for record in _records(source))
        with atomic_file(output, buffering=1 << 20) as handle:
            if fmt == "csv":
                _write_csv(handle, columns, rows)
            elif fmt == "jsonl":
                _write_jsonl(handle, columns, rows)
            else:
                _write_parquet(pa, handle, columns, kinds, rows)
    return output


def _pyarrow() -> Any:
    """pyarrow, an optional extra: its absence is a usage error, not a traceback."""
    try:
        import pyarrow
        import pyarrow.parquet
    except ImportError:
        raise ExportError(PYARROW_MISSING) from None
    return pyarrow


def _records(source: IO[bytes]) -> Iterator[dict[str, Any]]:
    for number, line in enumerate(source, start=1):
        if not line.strip():
            continue
        try:
            record = orjson.loads(line)
        except orjson.JSONDecodeError as error:
            raise ExportError(f"{source.name}: line {number} is not JSON: {error}") from None
        if not isinstance(record, dict):
            raise ExportError(f"{source.name}: line {number} is not a record (a JSON object)")
        yield record


def _survey(records: Iterator[dict[str, Any]]) -> tuple[list[str], dict[str, set[str]]]:
    """The first pass: the union of columns in the documented order, and each column's kinds."""
    seen: dict[str, set[str]] = {name: set() for name in BASE_COLUMNS}
    for record in records:
        for name, value in flatten(record).items():
            kinds = seen.setdefault(name, set())
            if value is not None:
                kinds.add(_kind(value))
    rest = [name for name in seen if name not in BASE_COLUMNS and name != "reasks"]
    reasks = ["reasks"] if "reasks" in seen else []
    return [*BASE_COLUMNS, *reasks, *rest], seen


def _kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int):
        return "int" if _INT64[0] <= value <= _INT64[1] else "str"
    if isinstance(value, float):
        return "float"
    return "str"


def _text(value: Any) -> str:
    """A cell as text (CSV, and Parquet string columns): JSON's spelling of null and booleans."""
    if value is None:
        return ""
    if isinstance(value, bool):
        return "true" if value else "false"
    return value if isinstance(value, str) else str(value)


def _write_csv(handle: IO[bytes], columns: list[str], rows: Iterator[dict[str, Any]]) -> None:
    text = io.TextIOWrapper(handle, encoding="utf-8", newline="", write_through=False)
    writer = csv.writer(text)
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_text(row.get(name)) for name in columns])
    text.flush()
    text.detach()  # the atomic file syncs and closes the binary handle


def _write_jsonl(handle: IO[bytes], columns: list[str], rows: Iterator[dict[str, Any]]) -> None:
    for row in rows:
        handle.write(orjson.dumps({name: row.get(name) for name in columns}) + b"\n")


def _arrow_type(pa: Any, name: str, kinds: set[str]) -> pyarrow.DataType:
    """A column's type from the kinds of its values: all ints, numbers, bools, else string."""
    if not kinds:
        kinds = {_KNOWN_TYPES.get(name, "str")}
    if kinds == {"bool"}:
        return pa.bool_()
    if kinds == {"int"}:
        return pa.int64()
    if kinds <= {"int", "float"}:
        return pa.float64()
    return pa.string()


def _write_parquet(
    pa: Any,
    handle: IO[bytes],
    columns: list[str],
    kinds: dict[str, set[str]],
    rows: Iterator[dict[str, Any]],
) -> None:
    schema = pa.schema([pa.field(name, _arrow_type(pa, name, kinds[name])) for name in columns])
    as_text = [field.type == pa.string() for field in schema]
    with pa.parquet.ParquetWriter(handle, schema) as writer:
        batch: list[list[Any]] = [[] for _ in columns]
        for row in rows:
            for cells, name, text in zip(batch, columns, as_text, strict=True):
                value = row.get(name)
                cells.append(_text(value) if text and value is not None else value)
            if len(batch[0]) >= ROW_GROUP_SIZE:
                writer.write_batch(pa.record_batch(batch, schema=schema))
                batch = [[] for _ in columns]
        if batch[0]:
            writer.write_batch(pa.record_batch(batch, schema=schema))

"""A run's records for people: pages of short rows over its results file, and one opened.

A run of 1,000,000 records has a results file of gigabytes: nothing here loads it. A page is
read from a byte offset (the ``next_offset`` of the page before) up to ``limit`` rows, with a
cheap byte test on each line before it is parsed (a failed record holds ``"status":"failed"``
as the assembler writes it), and at most :data:`SCAN_BYTES` read per request, so a filter that
matches rarely answers at once with what it found and where to go on. A record is named by its
byte offset: opening it is one seek. Its request is built again from its input line, as the
feeder built it, so it shows what was sent and never a key (keys are not in requests).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import orjson

from mitrailleuse.errors import InputError
from mitrailleuse.inputs import item_at
from mitrailleuse.providers import provider_class
from mitrailleuse.taskfolder import TaskFolder

#: Which records a page shows.
Show = Literal["all", "failed", "cached", "similar"]
#: The most bytes one page request reads before it answers with what it found.
SCAN_BYTES = 32 << 20
#: The characters of an output (or error message) a row shows.
PREVIEW_CHARS = 160

#: Each filter: a byte test on the raw line (cheap, may pass too much), then the exact one.
_FILTERS: dict[str, tuple[bytes, Callable[[dict[str, Any]], bool]]] = {
    "failed": (b'"status":"failed"', lambda record: record["status"] == "failed"),
    "cached": (b'"cached":true', lambda record: bool(record.get("cached"))),
    "similar": (b'"similar_to":', lambda record: bool(record.get("similar_to"))),
}


@dataclass(frozen=True, slots=True)
class RecordRow:
    """One record, short: what a table row shows of it."""

    #: Where the record's line starts in the results file: its handle.
    offset: int
    id: str
    index: int
    status: str
    #: The output's start, or the error's.
    preview: str
    attempts: int
    latency_ms: int | None
    cost_usd: float | None
    cached: bool
    similar_to: str | None

    @classmethod
    def of(cls, record: dict[str, Any], offset: int) -> RecordRow:
        """The row of a record read at ``offset``."""
        error = record.get("error") or {}
        shown = record.get("output")
        if shown is None:
            shown = f"{error.get('type')}: {error.get('message')}" if error else ""
        elif not isinstance(shown, str):
            shown = orjson.dumps(shown).decode()
        return cls(
            offset=offset,
            id=str(record.get("id")),
            index=int(record.get("index") or 0),
            status=str(record.get("status")),
            preview=shown[:PREVIEW_CHARS],
            attempts=int(record.get("attempts") or 0),
            latency_ms=record.get("latency_ms"),
            cost_usd=record.get("cost_usd"),
            cached=bool(record.get("cached")),
            similar_to=record.get("similar_to"),
        )


@dataclass(frozen=True, slots=True)
class RecordPage:
    """Rows from an offset, and where the next page starts (None: the file's end)."""

    rows: list[RecordRow]
    next_offset: int | None
    #: How far into the file this page read, of its size: a rare filter's progress.
    scanned_to: int
    size: int


def page(path: Path, show: Show, query: str, offset: int, limit: int) -> RecordPage:
    """Up to ``limit`` rows of the records from ``offset`` that ``show`` and ``query`` keep.

    ``query`` is looked for in each line, as is, without case: a record's output, error,
    id, or its response's text.
    """
    needle, keep = _FILTERS.get(show, (b"", lambda record: True))
    words = query.strip().lower().encode()
    size = path.stat().st_size
    rows: list[RecordRow] = []
    position = _line_start(path, offset)
    with path.open("rb") as handle:
        handle.seek(position)
        for line in handle:
            start, position = position, position + len(line)
            if needle in line and (not words or words in line.lower()):
                record = orjson.loads(line)
                if keep(record):
                    rows.append(RecordRow.of(record, start))
            if len(rows) == limit or position - offset >= SCAN_BYTES:
                break
    return RecordPage(rows, position if position < size else None, position, size)


def opened(folder: TaskFolder, offset: int) -> dict[str, Any]:
    """The record at ``offset`` of the run's results, and the request it was sent.

    ``request`` is None when its input line cannot be read again (a bad line: the record
    says why), or when the inputs changed since.
    """
    path = folder.results_path
    if offset != _line_start(path, offset):
        raise InputError(f"no record starts at byte {offset} of the results")
    with path.open("rb") as handle:
        handle.seek(offset)
        line = handle.readline()
    if not line.strip():
        raise InputError(f"no record starts at byte {offset} of the results")
    record = orjson.loads(line)
    return {"record": record, "request": _request_of(folder, record)}


def _request_of(folder: TaskFolder, record: dict[str, Any]) -> dict[str, Any] | None:
    """The request built again from the record's input line, as the feeder built it."""
    try:
        data = item_at(folder.inputs_dir / record["input_file"], int(record["index"]))
    except (InputError, KeyError, ValueError):
        return None
    if data is None:
        return None
    provider = provider_class(folder.provider)
    return provider.build_request(data, folder.config().provider(folder.provider))


def _line_start(path: Path, offset: int) -> int:
    """``offset`` if a line starts there (0, or just after a newline), else the next start."""
    if offset <= 0:
        return 0
    with path.open("rb") as handle:
        handle.seek(offset - 1)
        if handle.read(1) == b"\n":
            return offset
        handle.readline()
        return handle.tell()

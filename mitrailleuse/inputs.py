"""Turns the user's input files (``*.jsonl``, ``*.json``) into numbered items, streaming.

The task folder lists and checks input files with :func:`sorted_input_files`; the feeder reads
them with :func:`iter_items` (and sizes the run with :func:`count_items`), keeping the
:class:`Cursor` of the last item it handed to Celery so that a restarted run picks up where it
stopped without reading anything again; providers read request fields with :func:`get_field`.
It calls nothing but ``orjson`` and the file system.

JSONL files are read one line at a time in binary, so a run of millions of lines uses constant
memory. A ``.json`` file is parsed whole (it has no line boundaries to stream on): large inputs
belong in JSONL. A line or element that cannot be used becomes an *invalid item* (``data`` is
``None`` and ``error`` says why) rather than an exception, so one bad line never stops a run.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from mitrailleuse.errors import InputError

#: Suffixes an input file may have (compared case-insensitively), and how each is read.
JSONL_SUFFIX = ".jsonl"
JSON_SUFFIX = ".json"
ACCEPTED_SUFFIXES = (JSON_SUFFIX, JSONL_SUFFIX)

#: Field an item may carry to choose its own id.
CUSTOM_ID_FIELD = "custom_id"

#: Sole key of a ``.json`` object whose list elements are the items: ``{"prompts": [...]}``.
FLATTENED_KEY = "prompts"

#: Bytes a UTF-8 file may start with; editors on Windows add it, orjson refuses it.
_BOM = b"\xef\xbb\xbf"

#: Read size when counting newlines to name the line of an error after a resume.
_CHUNK_SIZE = 1 << 20

#: The largest JSONL line sent as an item: above what any supported model takes in one
#: request (about 1M tokens), and what would make every Celery message carrying it heavy.
MAX_LINE_BYTES = 4 << 20


@dataclass(frozen=True, slots=True)
class Cursor:
    """Where a run stands: enough to go on reading without looking at what came before."""

    #: Index into the sorted list of files.
    file_index: int = 0
    #: JSONL: byte offset of the next line; JSON: position of the next element.
    offset: int = 0
    #: Item numbers already used in this file (the next item is ``number + 1``).
    number: int = 0
    #: Items already yielded in the whole run (0-based position of the next one).
    ordinal: int = 0


@dataclass(frozen=True, slots=True)
class Item:
    """One numbered input item, with its content or the reason it cannot be sent."""

    #: The item's ``custom_id``, else ``<file name>:<index>``.
    id: str
    #: Base name of the file it came from.
    input_file: str
    #: 1-based item number within its file.
    index: int
    #: 0-based position in the run.
    ordinal: int
    #: The JSON object; ``None`` when the item is invalid.
    data: dict[str, Any] | None
    #: Why the item is invalid; ``None`` when it is valid.
    error: str | None

    @property
    def place(self) -> str:
        """``<file name>:<index>``: the item's id when it has no ``custom_id`` of its own."""
        return f"{self.input_file}:{self.index}"


def sorted_input_files(paths: Iterable[Path]) -> list[Path]:
    """Check input paths and sort them by base name, the order their items are numbered in.

    Checking before a task folder is made turns a typo into a one-line ``InputError`` (wrong
    suffix, missing, not a file) instead of a run of zero items. Equal base names are ordered
    by full path, so the order never depends on the caller's.
    """
    files = [Path(p) for p in paths]
    for path in files:
        _suffix(path)
        if not path.exists():
            raise InputError(f"{path}: no such input file")
        if not path.is_file():
            raise InputError(f"{path}: not a file")
    return sorted(files, key=lambda p: (p.name, str(p)))


def iter_items(
    paths: Sequence[Path], start: Cursor = Cursor(), limit: int | None = None
) -> Iterator[tuple[Item, Cursor]]:
    """Yield the run's items in order, each with the cursor that points just after it.

    ``paths`` must already be sorted (:func:`sorted_input_files`). Passing a yielded cursor
    back as ``start`` continues with the next item without reading the lines before it (a
    ``.json`` file is still parsed whole), so a restarted feeder needs only its last cursor.
    ``limit`` (sampling) applies to the run-wide ordinal, so a resumed iteration with the same
    limit stops at the same item. Raises ``InputError`` for a file that cannot be read.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    ordinal = start.ordinal
    for file_index in range(start.file_index, len(paths)):
        if limit is not None and ordinal >= limit:
            return
        path = paths[file_index]
        resumed = file_index == start.file_index
        offset = start.offset if resumed else 0
        number = start.number if resumed else 0
        read = _iter_jsonl if _suffix(path) == JSONL_SUFFIX else _iter_json
        for item, cursor in read(path, file_index, offset, number, ordinal):
            yield item, cursor
            ordinal = cursor.ordinal
            if limit is not None and ordinal >= limit:
                return  # before reading a line that would be left out anyway


def item_at(path: Path, index: int) -> dict[str, Any] | None:
    """The object of item ``index`` (1-based, as :func:`iter_items` numbers them) of a file.

    None when that item is not an object (its record says why). A JSONL file is read up to that
    line without parsing the lines before it.
    """
    if _suffix(path) != JSONL_SUFFIX:
        elements = _json_elements(path)
        if isinstance(elements, str) or not 0 < index <= len(elements):
            return None
        element = elements[index - 1]
        return element if type(element) is dict else None
    number = 0
    with _open(path) as handle:
        for line in handle:
            if number == 0 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.isspace() or not line:
                continue
            number += 1
            if number == index:
                return None if len(line) > MAX_LINE_BYTES else _parse_line(line)[0]
    return None


def count_items(paths: Sequence[Path], limit: int | None = None) -> int:
    """Count the items :func:`iter_items` yields from the start, at most ``limit``.

    The feeder needs the total for status and progress before the first item is sent, so
    JSONL lines are only checked for being blank, not parsed: several times faster.
    """
    if limit is not None and limit < 0:
        raise ValueError(f"limit must be >= 0, got {limit}")
    total = 0
    for path in paths:
        if limit is not None and total >= limit:
            break
        if _suffix(path) == JSONL_SUFFIX:
            total += _count_jsonl(path, None if limit is None else limit - total)
        else:
            elements = _json_elements(path)
            total += 1 if isinstance(elements, str) else len(elements)
    return total if limit is None else min(total, limit)


def get_field(obj: Mapping[str, Any], path: str) -> Any:
    """Read a field by dotted path: ``"question.text"`` is ``obj["question"]["text"]``.

    Configs name request fields this way so that nested inputs need no reshaping. An exact key
    containing dots wins over the nested path (``obj["a.b"]`` before ``obj["a"]["b"]``) at
    every level, and numeric segments index lists (``"choices.0.text"``). Raises
    ``KeyError(path)`` when nothing is there; a JSON ``null`` is found and returned as ``None``.
    """
    if path in obj:
        return obj[path]
    if "." in path:
        found, value = _resolve(obj, path)
        if found:
            return value
    raise KeyError(path)


def _resolve(node: Any, path: str) -> tuple[bool, Any]:
    """Find ``path`` under ``node``: the longest key of each level first, then shorter ones."""
    found, value = _child(node, path)
    if found:
        return True, value
    dot = path.rfind(".")
    while dot != -1:
        found, child = _child(node, path[:dot])
        if found:
            found, value = _resolve(child, path[dot + 1 :])
            if found:
                return True, value
        dot = path.rfind(".", 0, dot)
    return False, None


def _child(node: Any, key: str) -> tuple[bool, Any]:
    """Look ``key`` up in a mapping, or as a non-negative index in a list."""
    if isinstance(node, Mapping):
        if key in node:
            return True, node[key]
    elif isinstance(node, list | tuple) and key.isascii() and key.isdigit():
        position = int(key)
        if position < len(node):
            return True, node[position]
    return False, None


def _suffix(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix not in ACCEPTED_SUFFIXES:
        raise InputError(
            f"{path}: unsupported input file type {path.suffix or '(no suffix)'!r};"
            f" accepted: {', '.join(ACCEPTED_SUFFIXES)}"
        )
    return suffix


def _open(path: Path) -> BinaryIO:
    try:
        return path.open("rb")
    except OSError as error:
        raise InputError(f"{path}: cannot read input file: {error.strerror}") from None


def _item(
    name: str, number: int, ordinal: int, data: dict[str, Any] | None, error: str | None
) -> Item:
    custom_id = data.get(CUSTOM_ID_FIELD) if data is not None else None
    if custom_id is None or custom_id == "":
        item_id = f"{name}:{number}"  # Item.place
    else:
        item_id = custom_id if isinstance(custom_id, str) else str(custom_id)
    return Item(item_id, name, number, ordinal, data, error)


def _iter_jsonl(
    path: Path, file_index: int, offset: int, number: int, ordinal: int
) -> Iterator[tuple[Item, Cursor]]:
    name = path.name
    resume_offset = offset
    # Bad lines are named by physical line number. After a resume the lines before
    # ``resume_offset`` are counted only when an error needs them, so a clean resume reads
    # nothing twice.
    lines_before: int | None = 0 if resume_offset == 0 else None
    lines_read = 0
    with _open(path) as handle:
        if offset:
            handle.seek(offset)
        for line in handle:
            line_start = offset
            offset += len(line)
            lines_read += 1
            if line_start == 0 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.isspace() or not line:
                continue
            number += 1
            if len(line) > MAX_LINE_BYTES:
                data, reason = None, f"{len(line):,} bytes, more than an item may have (4 MiB)"
            else:
                data, reason = _parse_line(line)
            if reason is not None:
                if lines_before is None:
                    lines_before = _count_newlines(path, resume_offset)
                data, reason = None, f"line {lines_before + lines_read}: {reason}"
            yield (
                _item(name, number, ordinal, data, reason),
                Cursor(file_index, offset, number, ordinal + 1),
            )
            ordinal += 1


def _parse_line(line: bytes) -> tuple[dict[str, Any] | None, str | None]:
    """The object on a JSONL line, or why there is none."""
    try:
        data = orjson.loads(line)
    except orjson.JSONDecodeError as error:
        return None, _decode_error(line, error, whole_file=False)
    if type(data) is not dict:
        return None, f"not a JSON object (got {_kind(data)})"
    return data, None


def check_has_items(path: Path) -> None:
    """Refuse an input file with no item in it, reading no further than its first one."""
    if _suffix(path) == JSONL_SUFFIX:
        with _open(path) as handle:
            if any(line.strip() and line.strip() != _BOM for line in handle):
                return
        raise InputError(f"{path}: no items (the file is empty or has only blank lines)")
    if _json_elements(path) == []:
        raise InputError(f"{path}: no items (an empty file or an empty JSON array)")


def _iter_json(
    path: Path, file_index: int, offset: int, number: int, ordinal: int
) -> Iterator[tuple[Item, Cursor]]:
    name = path.name
    elements = _json_elements(path)
    if isinstance(elements, str):
        if offset == 0:
            yield _item(name, 1, ordinal, None, elements), Cursor(file_index, 1, 1, ordinal + 1)
        return
    for position in range(offset, len(elements)):
        element = elements[position]
        number += 1
        if type(element) is dict:
            data, reason = element, None
        else:
            data, reason = None, f"element {position + 1}: not a JSON object (got {_kind(element)})"
        yield (
            _item(name, number, ordinal, data, reason),
            Cursor(file_index, position + 1, number, ordinal + 1),
        )
        ordinal += 1


def _json_elements(path: Path) -> list[Any] | str:
    """Return the items of a ``.json`` file as raw JSON values, or why the file has none."""
    with _open(path) as handle:
        content = handle.read()
    if content.startswith(_BOM):
        content = content[len(_BOM) :]
    if not content or content.isspace():
        return []
    try:
        document = orjson.loads(content)
    except orjson.JSONDecodeError as error:
        return _decode_error(content, error, whole_file=True)
    if type(document) is list:
        return document
    if type(document) is dict:
        prompts = document.get(FLATTENED_KEY)
        if len(document) == 1 and type(prompts) is list:
            return prompts
        return [document]
    return f"not a JSON array or object (got {_kind(document)})"


def _count_jsonl(path: Path, limit: int | None) -> int:
    count = 0
    with _open(path) as handle:
        for line_number, line in enumerate(handle):
            if line_number == 0 and line.startswith(_BOM):
                line = line[len(_BOM) :]
            if line.isspace() or not line:
                continue
            count += 1
            if count == limit:
                break
    return count


def _count_newlines(path: Path, end: int) -> int:
    """Count the lines that end before byte ``end``: the line numbers a resume skipped."""
    count = 0
    with _open(path) as handle:
        while end > 0:
            chunk = handle.read(min(_CHUNK_SIZE, end))
            if not chunk:
                break
            count += chunk.count(b"\n")
            end -= len(chunk)
    return count


def _decode_error(content: bytes, error: orjson.JSONDecodeError, whole_file: bool) -> str:
    """Say why orjson refused ``content``, in the words of the user's file."""
    try:
        content.decode("utf-8")
    except UnicodeDecodeError as bad:
        if whole_file:
            line = content.count(b"\n", 0, bad.start) + 1
            return f"not valid UTF-8 at line {line}"
        return "not valid UTF-8"
    where = f"line {error.lineno} column {error.colno}" if whole_file else f"column {error.colno}"
    return f"invalid JSON: {error.msg} at {where}"


def _kind(value: Any) -> str:
    """Name the JSON type of a parsed value, for error messages."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"

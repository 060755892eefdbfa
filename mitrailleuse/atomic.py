"""Atomic file writes: a reader sees a file's old content or its new one, never a mix.

Every file Mitrailleuse writes for others to read goes through here: ``status.json``, part
files and the run's outputs, native batch state and downloads, the embedded Redis's config
and URL (private, mode 0600).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, BinaryIO

import orjson


@contextmanager
def atomic_file(path: Path, mode: int = 0o644, buffering: int = -1) -> Iterator[BinaryIO]:
    """A file written under a temporary name, synced and renamed into place on success."""
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb", buffering=buffering) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_file(path, mode) as handle:
        handle.write(data)


def write_json(path: Path, value: Any) -> None:
    """Write a JSON document atomically, indented for people to read."""
    write_atomic(path, orjson.dumps(value, option=orjson.OPT_INDENT_2) + b"\n")

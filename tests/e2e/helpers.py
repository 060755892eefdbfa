"""Small helpers shared by the end-to-end tests."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson

from mitrailleuse.pipeline.assembler import read_records


def write_jsonl(path: Path, rows: list[Any]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(row) + b"\n" for row in rows))
    return path


def results(folder: Any) -> list[dict[str, Any]]:
    return list(read_records(folder.results_path))


def questions(count: int, prefix: str = "q") -> list[dict[str, str]]:
    return [{"input_text": f"{prefix}-{n}: what is {n} squared?"} for n in range(1, count + 1)]

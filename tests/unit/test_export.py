"""The exporter's pieces: flatten, row groups, plain-text runs, refusals."""

from __future__ import annotations

import csv
from pathlib import Path

import orjson
import pytest

from mitrailleuse import export
from mitrailleuse.export import BASE_COLUMNS, ExportError, export_records, flatten


def write(path: Path, records: list[dict]) -> Path:
    path.write_bytes(b"".join(orjson.dumps(r) + b"\n" for r in records))
    return path


def text_record(n: int, output: str | None = "hello") -> dict:
    return {
        "id": f"q.jsonl:{n}",
        "input_file": "q.jsonl",
        "index": n,
        "status": "succeeded" if output is not None else "failed",
        "provider": "deepl",
        "model": None,
        "output": output,
        "response": {"big": "body"},
        "error": None if output is not None else {"type": "t", "message": "m", "status_code": 1},
        "attempts": 1,
        "cached": False,
        "usage": {"characters": 5},
        "cost_usd": None,
        "latency_ms": 3,
        "mode": "realtime",
    }


def test_flatten_a_structured_record():
    row = flatten(
        {
            **text_record(0),
            "parsed": {"a": {"b": {"c": 1}}, "l": [1, {"x": [2]}], "e": {}, "n": None},
            "reasks": 2,
        }
    )
    assert list(row)[: len(BASE_COLUMNS)] == list(BASE_COLUMNS)
    assert row["reasks"] == 2
    assert row["parsed.a.b.c"] == 1 and row["parsed.l"] == '[1,{"x":[2]}]'
    assert row["parsed.n"] is None and "parsed.e" not in row
    assert "output" not in row and "response" not in row and "usage" not in row


def test_flatten_a_text_record_and_a_failed_one():
    row = flatten(text_record(0))
    assert row["output"] == "hello" and row["prompt_tokens"] is None and "reasks" not in row
    bad = flatten(text_record(1, output=None))
    assert bad["output"] is None and bad["error_type"] == "t" and bad["error_message"] == "m"
    assert not any(name.startswith("parsed") for name in flatten({**bad, "parsed": None}))


def test_a_plain_text_run_has_an_output_column(tmp_path):
    source = write(tmp_path / "results.jsonl", [text_record(0), text_record(1, None)])
    out = export_records(source, "csv", tmp_path / "out.csv")
    with out.open(newline="") as handle:
        rows = list(csv.reader(handle))
    assert rows[0] == [*BASE_COLUMNS, "output"]
    assert rows[1][-1] == "hello" and rows[2][-1] == "" and len(rows) == 3


def test_parquet_is_written_in_bounded_row_groups(tmp_path, monkeypatch):
    pq = pytest.importorskip("pyarrow.parquet")
    monkeypatch.setattr(export, "ROW_GROUP_SIZE", 100)
    source = write(tmp_path / "results.jsonl", [text_record(n) for n in range(250)])
    out = export_records(source, "parquet", tmp_path / "out.parquet")
    meta = pq.ParquetFile(out).metadata
    assert meta.num_rows == 250
    assert [meta.row_group(i).num_rows for i in range(meta.num_row_groups)] == [100, 100, 50]
    table = pq.read_table(out)
    assert table.column("index").to_pylist() == list(range(250))
    assert str(table.schema.field("cost_usd").type) == "double"  # null everywhere, known type


def test_an_empty_results_file_gives_a_header_only(tmp_path):
    source = write(tmp_path / "results.jsonl", [])
    out = export_records(source, "csv", tmp_path / "out.csv")
    assert out.read_text().splitlines() == [",".join(BASE_COLUMNS)]


def test_refusals(tmp_path):
    source = write(tmp_path / "results.jsonl", [text_record(0)])
    with pytest.raises(ExportError, match="no results yet"):
        export_records(tmp_path / "missing.jsonl", "csv", tmp_path / "x.csv")
    with pytest.raises(ExportError, match="results file itself"):
        export_records(source, "jsonl", source)
    with pytest.raises(ExportError, match="no such directory"):
        export_records(source, "csv", tmp_path / "nope" / "x.csv")
    with pytest.raises(ExportError, match="unknown export format"):
        export_records(source, "xlsx", tmp_path / "x.xlsx")  # type: ignore[arg-type]
    (tmp_path / "broken.jsonl").write_text('{"id": 1}\nnot json\n')
    with pytest.raises(ExportError, match="line 2 is not JSON"):
        export_records(tmp_path / "broken.jsonl", "csv", tmp_path / "x.csv")
    assert not (tmp_path / "x.csv").exists()
    assert not list(tmp_path.glob(".x.csv.*"))

"""``mitrailleuse export`` as users run it: a subprocess on a task folder with 1,000 records."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import orjson
import pytest

from mitrailleuse.config import TaskConfig
from mitrailleuse.taskfolder import TaskFolder, create_task_folder
from tests.e2e.test_cli import REPO

pytestmark = pytest.mark.e2e

COUNT = 1_000
EXTRA = 501  # the only record whose parsed has `nickname`: a column first seen late
BASE = [
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
]
PARSED = [
    "parsed.name",
    "parsed.address.city",
    "parsed.address.geo.lat",
    "parsed.address.geo.lon",
    "parsed.tags",
    "parsed.contacts",
    "parsed.score",
    "parsed.ratio",
    "parsed.zip",
    "parsed.active",
    "parsed.note",
]
COLUMNS = [*BASE, "reasks", *PARSED, "parsed.nickname"]


def failed(n: int) -> bool:
    return n % 7 == 3  # 3, 10, 17, ...


assert not failed(EXTRA) and not failed(20) and failed(3)


def record(n: int) -> dict[str, Any]:
    """A record as a run with a response schema writes it (every 7th one failed)."""
    base = {"id": f"questions.jsonl:{n}", "input_file": "questions.jsonl", "index": n}
    common = {"provider": "openai", "model": "gpt-4o-mini", "mode": "realtime", "reasks": n % 3}
    if failed(n):
        error = {"type": "server_error", "message": f"HTTP 500, try {n}\nagain", "status_code": 500}
        return {
            **base,
            "status": "failed",
            **common,
            "output": None,
            "response": None,
            "error": error,
            "attempts": 4,
            "cached": False,
            "usage": {},
            "cost_usd": 0.0,
            "latency_ms": None,
            "parsed": None,
        }
    parsed: dict[str, Any] = {
        "name": f'Zoë, "n{n}"' if n == 1 else f"name-{n}",
        "address": {"city": "Paris" if n % 2 else "Lyon", "geo": {"lat": 48.5 + n, "lon": 2}},
        "tags": ["a", f"t{n}"],
        "contacts": [{"kind": "mail", "value": f"{n}@example.com"}],
        "score": n,
        "ratio": n if n % 2 else n + 0.5,  # ints and floats: float64
        "zip": f"0{n}" if n % 5 == 0 else n,  # ints and strings: string
        "active": n % 2 == 0,
        "note": None,
    }
    if n == EXTRA:
        parsed["nickname"] = "the extra key"
    return {
        **base,
        "status": "succeeded",
        **common,
        "output": orjson.dumps(parsed).decode(),
        "response": {"id": f"chatcmpl-{n}", "choices": [{"message": {"content": "secret body"}}]},
        "error": None,
        "attempts": 1,
        "cached": n % 10 == 0,
        "usage": {"prompt_tokens": 12, "completion_tokens": 9, "total_tokens": 21},
        "cost_usd": 0.0000071,
        "latency_ms": 400 + n,
        "parsed": parsed,
    }


@pytest.fixture
def workdir(tmp_path: Path) -> Path:
    return tmp_path


@pytest.fixture
def task(workdir: Path) -> TaskFolder:
    folder = create_task_folder(workdir / "tasks", "alice", "openai", "people", TaskConfig())
    lines = b"".join(orjson.dumps(record(n)) + b"\n" for n in range(COUNT))
    folder.results_path.write_bytes(lines)
    return folder


def env(workdir: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(REPO), "MITRAILLEUSE_TASKS_DIR": str(workdir / "tasks")}


def cli(workdir: Path, *args: str) -> subprocess.CompletedProcess:
    command = [sys.executable, "-m", "mitrailleuse", "export", *args]
    return subprocess.run(
        command, cwd=workdir, env=env(workdir), capture_output=True, text=True, timeout=120
    )


def last_line(done: subprocess.CompletedProcess) -> Path:
    assert done.returncode == 0, done.stderr
    return Path(done.stdout.strip().splitlines()[-1])


def assert_usage_error(done: subprocess.CompletedProcess, *words: str) -> None:
    assert done.returncode == 2, done.stdout + done.stderr
    assert len(done.stderr.strip().splitlines()) == 1, done.stderr
    assert "Traceback" not in done.stderr
    for word in words:
        assert word in done.stderr, done.stderr


def test_csv_has_the_union_of_columns_and_every_row_in_order(workdir, task):
    path = last_line(cli(workdir, "--task-path", str(task.path), "--format", "csv"))
    assert path == task.outputs_dir / "results.csv"
    with path.open(newline="", encoding="utf-8") as handle:
        reader = csv.reader(handle)
        header = next(reader)
        rows = [dict(zip(header, row, strict=True)) for row in reader]
    assert header == COLUMNS
    assert "response" not in header and "output" not in header
    assert len(rows) == COUNT
    assert [row["id"] for row in rows] == [f"questions.jsonl:{n}" for n in range(COUNT)]

    one = rows[1]
    assert one["parsed.name"] == 'Zoë, "n1"'
    assert one["status"] == "succeeded" and one["error_type"] == "" and one["reasks"] == "1"
    assert one["prompt_tokens"] == "12" and one["completion_tokens"] == "9"
    assert one["cached"] == "false" and float(one["cost_usd"]) == 0.0000071
    assert one["latency_ms"] == "401" and one["parsed.address.city"] == "Paris"
    assert one["parsed.address.geo.lat"] == "49.5" and one["parsed.address.geo.lon"] == "2"
    assert json.loads(one["parsed.tags"]) == ["a", "t1"]
    assert json.loads(one["parsed.contacts"]) == [{"kind": "mail", "value": "1@example.com"}]
    assert one["parsed.active"] == "false" and one["parsed.note"] == ""
    assert rows[20]["cached"] == "true" and rows[20]["parsed.zip"] == "020"

    bad = rows[3]
    assert bad["status"] == "failed" and bad["error_type"] == "server_error"
    assert bad["error_message"] == "HTTP 500, try 3\nagain"
    assert bad["latency_ms"] == "" and bad["prompt_tokens"] == ""
    assert all(bad[name] == "" for name in PARSED)

    assert rows[EXTRA]["parsed.nickname"] == "the extra key"
    assert {row["parsed.nickname"] for i, row in enumerate(rows) if i != EXTRA} == {""}
    assert sum(row["status"] == "failed" for row in rows) == sum(map(failed, range(COUNT)))


def test_jsonl_is_flat_keeps_json_types_and_leaves_the_results_alone(workdir, task):
    before = task.results_path.read_bytes()
    path = last_line(cli(workdir, str(task.path), "--format", "jsonl"))
    assert path == task.outputs_dir / "results.flat.jsonl"
    assert task.results_path.read_bytes() == before
    rows = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == COUNT
    assert all(list(row) == COLUMNS for row in rows)
    one, bad = rows[1], rows[3]
    assert one["index"] == 1 and one["cached"] is False and one["cost_usd"] == 0.0000071
    assert one["parsed.address.geo.lat"] == 49.5 and one["parsed.active"] is False
    assert one["parsed.tags"] == '["a","t1"]' and one["parsed.note"] is None
    assert bad["parsed.name"] is None and bad["latency_ms"] is None and bad["attempts"] == 4
    assert rows[EXTRA]["parsed.nickname"] == "the extra key" and rows[0]["parsed.nickname"] is None
    assert not any("secret body" in line for line in path.read_text().splitlines())


def test_parquet_types_are_inferred_per_column(workdir, task):
    import pyarrow as pa
    import pyarrow.parquet as pq

    path = last_line(cli(workdir, "--task-path", str(task.path), "--format", "parquet"))
    assert path == task.outputs_dir / "results.parquet"
    table = pq.read_table(path)
    assert table.column_names == COLUMNS and table.num_rows == COUNT
    types = dict(zip(table.column_names, table.schema.types, strict=True))
    assert types["index"] == pa.int64() and types["attempts"] == pa.int64()
    assert types["latency_ms"] == pa.int64() and types["reasks"] == pa.int64()
    assert types["cost_usd"] == pa.float64() and types["cached"] == pa.bool_()
    assert types["parsed.score"] == pa.int64()
    assert types["parsed.ratio"] == pa.float64()  # ints and floats
    assert types["parsed.address.geo.lat"] == pa.float64()
    assert types["parsed.address.geo.lon"] == pa.int64()
    assert types["parsed.zip"] == pa.string()  # ints and strings
    assert types["parsed.active"] == pa.bool_()
    assert types["parsed.note"] == pa.string()  # null everywhere
    assert types["parsed.tags"] == pa.string() and types["error_message"] == pa.string()

    rows = table.to_pylist()
    assert [row["index"] for row in rows] == list(range(COUNT))
    assert rows[1]["parsed.zip"] == "1" and rows[20]["parsed.zip"] == "020"
    assert rows[2]["parsed.ratio"] == 2.5 and rows[1]["parsed.ratio"] == 1.0
    assert rows[3]["status"] == "failed" and rows[3]["parsed.score"] is None
    assert rows[3]["latency_ms"] is None and rows[3]["error_type"] == "server_error"
    assert rows[EXTRA]["parsed.nickname"] == "the extra key"


def test_output_goes_where_told(workdir, task):
    path = last_line(
        cli(workdir, "--user-id", "alice", "--task-name", "people", "--output", "t.csv")
    )
    assert path == (workdir / "t.csv").resolve()
    assert (workdir / "t.csv").read_text(encoding="utf-8").startswith("id,input_file,index,")
    assert not (task.outputs_dir / "results.csv").exists()


def test_parquet_without_pyarrow_names_the_extra_in_one_line(workdir, task):
    blocked = (
        "import sys; sys.modules['pyarrow'] = None; "
        f"sys.argv = ['mitrailleuse', 'export', '--task-path', {str(task.path)!r}, "
        "'--format', 'parquet']; "
        "from mitrailleuse.cli import main; main()"
    )
    done = subprocess.run(
        [sys.executable, "-c", blocked],
        cwd=workdir,
        env=env(workdir),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert_usage_error(done, "parquet export needs pyarrow: pip install 'mitrailleuse[parquet]'")
    assert sorted(p.name for p in task.outputs_dir.iterdir()) == ["results.jsonl"]


def test_a_task_without_results_exits_2_in_one_line(workdir, task):
    task.results_path.unlink()
    assert_usage_error(cli(workdir, "--task-path", str(task.path)), "no results yet")
    assert list(task.outputs_dir.iterdir()) == []


def test_no_such_task_folder_exits_2_in_one_line(workdir, task):
    missing = task.path.with_name("openai_nothing_01_01_2026_000000")
    assert_usage_error(cli(workdir, "--task-path", str(missing)), "no task folder")
    refused = cli(workdir, "--task-path", str(task.path), "--format", "xlsx")  # click's usage
    assert refused.returncode == 2 and "xlsx" in refused.stderr
    assert "Traceback" not in refused.stderr


def test_the_results_file_is_never_overwritten(workdir, task):
    before = task.results_path.read_bytes()
    done = cli(workdir, str(task.path), "--format", "jsonl", "--output", str(task.results_path))
    assert_usage_error(done, "results file itself")
    assert task.results_path.read_bytes() == before

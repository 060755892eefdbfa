"""A results file read a page at a time, never whole; an input item found by its number."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mitrailleuse.inputs import item_at, iter_items
from mitrailleuse.services import records_view


def results(tmp_path: Path, count: int, failed_every: int) -> Path:
    path = tmp_path / "results.jsonl"
    lines = []
    for n in range(1, count + 1):
        failed = n % failed_every == 0
        record = {
            "id": f"in.jsonl:{n}",
            "index": n,
            "status": "failed" if failed else "succeeded",
            "output": None if failed else f"answer {n}",
            "error": {"type": "http_500", "message": "boom"} if failed else None,
            "attempts": 1,
            "cached": n % 5 == 0,
            "latency_ms": 3,
            "cost_usd": 0.0,
        }
        lines.append(json.dumps(record, separators=(",", ":")))
    path.write_text("\n".join(lines) + "\n")
    return path


def test_a_rare_filter_answers_after_a_slice_and_says_where_to_go_on(tmp_path, monkeypatch):
    path = results(tmp_path, 2000, failed_every=700)
    monkeypatch.setattr(records_view, "SCAN_BYTES", 20_000)  # a slice of this small file
    found, offset, pages = [], 0, 0
    while offset is not None:
        page = records_view.page(path, "failed", "", offset, 50)
        assert page.scanned_to - offset < 20_000 + 200  # a slice, plus the line it ended in
        found += [row.index for row in page.rows]
        offset, pages = page.next_offset, pages + 1
    assert found == [700, 1400] and pages > 5


def test_a_page_from_the_middle_of_a_line_starts_at_the_next_one(tmp_path):
    path = results(tmp_path, 10, failed_every=100)
    page = records_view.page(path, "all", "", 5, 3)
    assert [row.index for row in page.rows] == [2, 3, 4]
    assert records_view.page(path, "cached", "", 0, 10).rows[0].index == 5
    assert [row.index for row in records_view.page(path, "all", "ANSWER 7", 0, 10).rows] == [7]


def test_an_item_is_found_by_its_number_as_the_feeder_numbers_it(tmp_path):
    jsonl = tmp_path / "in.jsonl"
    jsonl.write_bytes(b'\xef\xbb\xbf{"a": 1}\n\n   \n{"a": 2}\nnot json\n{"a": 4}\n')
    numbered = {item.index: item.data for item, _ in iter_items([jsonl])}
    assert {n: item_at(jsonl, n) for n in range(1, 6)} == {**numbered, 5: None}
    array = tmp_path / "in.json"
    array.write_text('[{"a": 1}, 2, {"a": 3}]')
    assert [item_at(array, n) for n in (1, 2, 3, 4)] == [{"a": 1}, None, {"a": 3}, None]


@pytest.mark.parametrize("offset", [-5, 10**9])
def test_offsets_outside_the_file_give_an_empty_page(tmp_path, offset):
    path = results(tmp_path, 3, failed_every=100)
    page = records_view.page(path, "all", "", max(offset, 0), 5)
    assert (len(page.rows), page.next_offset) == ((3, None) if offset < 0 else (0, None))

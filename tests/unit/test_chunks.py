"""Chunk arithmetic and part files: which items make chunk k, wherever a run resumes."""

from __future__ import annotations

import pytest

from mitrailleuse.config import TaskConfig
from mitrailleuse.inputs import Cursor
from mitrailleuse.pipeline.chunks import (
    chunk_of,
    group_calls,
    items_in_chunk,
    part_files,
    part_path,
    read_chunk,
)
from mitrailleuse.providers.deepl import DeepLProvider
from mitrailleuse.providers.openai import OpenAIProvider
from mitrailleuse.taskfolder import create_task_folder


@pytest.mark.parametrize(("chunk_size", "total"), [(1, 5), (3, 10), (10, 10), (7, 50), (20, 3)])
def test_every_item_is_in_exactly_one_chunk(chunk_size, total):
    chunks = -(-total // chunk_size)
    assert sum(items_in_chunk(k, chunk_size, total) for k in range(chunks)) == total
    assert items_in_chunk(chunks, chunk_size, total) == 0
    for ordinal in range(total):
        k = chunk_of(ordinal, chunk_size)
        assert k * chunk_size <= ordinal < (k + 1) * chunk_size


@pytest.fixture
def folder(tmp_path):
    """A task of 23 items over two input files."""
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    first.write_text("".join(f'{{"input_text": "a{n}"}}\n' for n in range(10)))
    second.write_text("".join(f'{{"input_text": "b{n}"}}\n' for n in range(13)))
    return create_task_folder(tmp_path / "t", "u", "openai", "n", TaskConfig(), [first, second])


def test_chunks_read_from_a_cursor_are_the_arithmetic_chunks(folder):
    chunk_size, start, number, seen = 5, Cursor(), 0, []
    while taken := read_chunk(folder, start, None, chunk_size):
        ordinals = [item.ordinal for item, _ in taken]
        assert {chunk_of(o, chunk_size) for o in ordinals} == {number}
        assert len(ordinals) == items_in_chunk(number, chunk_size, 23)
        again = read_chunk(folder, start, None, chunk_size)  # a resumed run reads the same
        assert [item.ordinal for item, _ in again] == ordinals
        seen += ordinals
        start, number = taken[-1][1], number + 1
    assert seen == list(range(23))


def test_sampling_limit_ends_the_last_chunk(folder):
    taken = read_chunk(folder, Cursor(), 7, 5)
    rest = read_chunk(folder, taken[-1][1], 7, 5)
    assert [item.ordinal for item, _ in rest] == [5, 6]


def test_part_files_come_back_in_input_order(folder):
    folder.parts_dir.mkdir(parents=True)
    for number in (12, 3, 0, 1000):
        part_path(folder, number).write_text("")
    assert [number for number, _ in part_files(folder)] == [0, 3, 12, 1000]


def message(text, lang="DE"):
    return {"request": {"text": text, "target_lang": lang, "source_lang": None}}


def test_group_calls_respects_count_bytes_and_language():
    calls = group_calls(DeepLProvider, [message(f"t{n}") for n in range(120)])
    assert [len(c) for c in calls] == [50, 50, 20]
    mixed = group_calls(DeepLProvider, [message("a", "DE"), message("b", "FR"), message("c", "DE")])
    assert [[m["request"]["text"] for m in c] for c in mixed] == [["a", "c"], ["b"]]
    big = group_calls(DeepLProvider, [message("x" * 40_000) for _ in range(7)])
    assert all(sum(len(m["request"]["text"]) for m in c) < 128 * 1024 for c in big)
    assert len(big) == 3
    assert [len(c) for c in group_calls(OpenAIProvider, [{"request": {}}] * 3)] == [1, 1, 1]

"""Unit tests for mitrailleuse.inputs: numbering, invalid items, sampling, resuming."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from mitrailleuse.errors import InputError
from mitrailleuse.inputs import (
    MAX_LINE_BYTES,
    Cursor,
    Item,
    count_items,
    get_field,
    iter_items,
    sorted_input_files,
)


def write(path: Path, content: str | bytes) -> Path:
    if isinstance(content, str):
        content = content.encode()
    path.write_bytes(content)
    return path


def jsonl(path: Path, *objects: Any) -> Path:
    return write(path, "".join(json.dumps(o) + "\n" for o in objects))


def items(paths: list[Path], **kwargs: Any) -> list[Item]:
    return [item for item, _ in iter_items(paths, **kwargs)]


# --- JSONL -------------------------------------------------------------------------------


def test_jsonl_valid_lines_are_numbered_from_one(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "questions.jsonl", {"input_text": "a"}, {"input_text": "b"})
    got = items([f])
    assert got == [
        Item("questions.jsonl:1", "questions.jsonl", 1, 0, {"input_text": "a"}, None),
        Item("questions.jsonl:2", "questions.jsonl", 2, 1, {"input_text": "b"}, None),
    ]


def test_jsonl_blank_lines_are_skipped_and_take_no_number(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", '\n{"a": 1}\n   \n\t\r\n{"a": 2}\r\n\n  ')
    got = items([f])
    assert [(i.id, i.index, i.data) for i in got] == [
        ("q.jsonl:1", 1, {"a": 1}),
        ("q.jsonl:2", 2, {"a": 2}),
    ]
    assert count_items([f]) == 2


def test_jsonl_last_line_without_newline(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", '{"a": 1}\n{"a": 2}')
    assert [i.data for i in items([f])] == [{"a": 1}, {"a": 2}]


def test_jsonl_invalid_json_is_an_invalid_item_and_the_rest_goes_on(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", '{"a": 1}\n\n{"a": 1 "b": 2}\n{"a": 3}\n')
    got = items([f])
    assert [i.index for i in got] == [1, 2, 3]
    bad = got[1]
    assert bad.id == "q.jsonl:2"
    assert bad.data is None
    # The physical line (3, counting the blank one) and the column are named.
    assert bad.error is not None
    assert bad.error.startswith("line 3: invalid JSON: ")
    assert bad.error.endswith("at column 9")
    assert got[2] == Item("q.jsonl:3", "q.jsonl", 3, 2, {"a": 3}, None)


def test_jsonl_truncated_line(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", '{"a": \n')
    (bad,) = items([f])
    assert bad.error is not None and bad.error.startswith("line 1: invalid JSON: ")


@pytest.mark.parametrize(
    ("line", "kind"),
    [
        ("[1, 2]", "array"),
        ('"text"', "string"),
        ("3", "number"),
        ("1.5", "number"),
        ("true", "boolean"),
        ("null", "null"),
    ],
)
def test_jsonl_line_that_is_not_an_object(tmp_path: Path, line: str, kind: str) -> None:
    f = write(tmp_path / "q.jsonl", '{"a": 1}\n{"a": 2}\n' + line + "\n")
    bad = items([f])[2]
    assert bad.data is None
    assert bad.error == f"line 3: not a JSON object (got {kind})"
    assert bad.id == "q.jsonl:3"


def test_jsonl_line_that_is_not_utf8(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", b'{"a": 1}\n{"a": "caf\xe9"}\n{"a": 3}\n')
    got = items([f])
    assert got[1].error == "line 2: not valid UTF-8"
    assert got[1].data is None
    assert got[2].data == {"a": 3}


def test_jsonl_utf8_bom_is_ignored(tmp_path: Path) -> None:
    f = write(tmp_path / "q.jsonl", b'\xef\xbb\xbf{"a": "\xc3\xa9"}\n{"a": 2}\n')
    assert [i.data for i in items([f])] == [{"a": "é"}, {"a": 2}]


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xef\xbb\xbf", b"\xef\xbb\xbf\r\n  \n"])
def test_jsonl_without_items(tmp_path: Path, content: bytes) -> None:
    f = write(tmp_path / "q.jsonl", content)
    assert items([f]) == []
    assert count_items([f]) == 0


def test_missing_prompt_field_is_fine_here(tmp_path: Path) -> None:
    # Whether an item has the fields a provider needs is the provider's business.
    f = jsonl(tmp_path / "q.jsonl", {"something": "else"}, {})
    got = items([f])
    assert [(i.data, i.error) for i in got] == [({"something": "else"}, None), ({}, None)]


def test_a_line_over_the_item_limit_fails_alone(tmp_path: Path) -> None:
    fits = "x" * (MAX_LINE_BYTES - 100)
    big = "x" * (10 * 1024 * 1024)
    f = jsonl(tmp_path / "big.jsonl", {"a": fits}, {"input_text": big}, {"a": 3})
    got = items([f])
    assert len(got) == 3
    assert got[0].data == {"a": fits}
    assert got[1].data is None and got[1].error.startswith("line 2: 10,485,7")
    assert "more than an item may have (4 MiB)" in got[1].error
    assert got[2].data == {"a": 3}
    assert count_items([f]) == 3


# --- JSON --------------------------------------------------------------------------------


def test_json_array_of_objects(tmp_path: Path) -> None:
    f = write(tmp_path / "q.json", json.dumps([{"a": 1}, {"a": 2}, "oops", {"a": 4}]))
    got = items([f])
    assert [(i.id, i.index, i.ordinal, i.data) for i in got] == [
        ("q.json:1", 1, 0, {"a": 1}),
        ("q.json:2", 2, 1, {"a": 2}),
        ("q.json:3", 3, 2, None),
        ("q.json:4", 4, 3, {"a": 4}),
    ]
    assert got[2].error == "element 3: not a JSON object (got string)"
    assert count_items([f]) == 4


def test_json_single_object_is_one_item(tmp_path: Path) -> None:
    f = write(tmp_path / "q.json", json.dumps({"question": {"text": "hi"}}))
    assert items([f]) == [Item("q.json:1", "q.json", 1, 0, {"question": {"text": "hi"}}, None)]
    assert count_items([f]) == 1


def test_json_prompts_object_is_flattened(tmp_path: Path) -> None:
    doc = {"prompts": [{"input_text": "a"}, "bare string", {"input_text": "c", "custom_id": "c"}]}
    f = write(tmp_path / "p.json", json.dumps(doc))
    got = items([f])
    assert [(i.id, i.data) for i in got] == [
        ("p.json:1", {"input_text": "a"}),
        ("p.json:2", None),
        ("c", {"input_text": "c", "custom_id": "c"}),
    ]
    # Elements are kept as they are: a string is not wrapped into an object.
    assert got[1].error == "element 2: not a JSON object (got string)"
    assert count_items([f]) == 3


def test_json_object_with_prompts_and_other_keys_is_one_item(tmp_path: Path) -> None:
    doc = {"prompts": [{"a": 1}], "input_text": "x"}
    f = write(tmp_path / "p.json", json.dumps(doc))
    assert [i.data for i in items([f])] == [doc]


def test_json_file_that_is_not_json(tmp_path: Path) -> None:
    f = write(tmp_path / "q.json", '[{"a": 1},\n {"a": 2} {"a": 3}]')
    (bad,) = items([f])
    assert (bad.id, bad.index, bad.ordinal, bad.data) == ("q.json:1", 1, 0, None)
    assert bad.error is not None
    assert bad.error.startswith("invalid JSON: ")
    assert bad.error.endswith("at line 2 column 11")
    assert count_items([f]) == 1


def test_json_file_that_is_not_utf8(tmp_path: Path) -> None:
    f = write(tmp_path / "q.json", b'[{"a": 1},\n {"a": "caf\xe9"}]')
    (bad,) = items([f])
    assert bad.error == "not valid UTF-8 at line 2"


def test_json_scalar_document(tmp_path: Path) -> None:
    f = write(tmp_path / "q.json", '"just text"')
    (bad,) = items([f])
    assert bad.error == "not a JSON array or object (got string)"
    assert bad.id == "q.json:1"


@pytest.mark.parametrize("content", ["", "  \n", "[]", '{"prompts": []}'])
def test_json_without_items(tmp_path: Path, content: str) -> None:
    f = write(tmp_path / "q.json", content)
    assert items([f]) == []
    assert count_items([f]) == 0


# --- ids ---------------------------------------------------------------------------------


def test_custom_id_is_used_and_converted_to_text(tmp_path: Path) -> None:
    f = jsonl(
        tmp_path / "q.jsonl",
        {"custom_id": "alpha", "a": 1},
        {"a": 2},
        {"custom_id": 42},
        {"custom_id": None},
        {"custom_id": ""},
        {"custom_id": 1.5},
    )
    assert [i.id for i in items([f])] == [
        "alpha",
        "q.jsonl:2",
        "42",
        "q.jsonl:4",
        "q.jsonl:5",
        "1.5",
    ]


def test_generated_id_uses_the_base_name(tmp_path: Path) -> None:
    sub = tmp_path / "deep" / "er"
    sub.mkdir(parents=True)
    f = jsonl(sub / "questions.jsonl", *({"a": n} for n in range(17)))
    assert items([f])[-1].id == "questions.jsonl:17"
    assert items([f])[-1].input_file == "questions.jsonl"


# --- files -------------------------------------------------------------------------------


def test_files_are_sorted_by_base_name(tmp_path: Path) -> None:
    (tmp_path / "x").mkdir()
    b = jsonl(tmp_path / "b.jsonl", {"n": "b1"}, {"n": "b2"})
    a = write(tmp_path / "x" / "a.json", json.dumps([{"n": "a1"}, {"n": "a2"}]))
    c = jsonl(tmp_path / "c.jsonl", {"n": "c1"})
    files = sorted_input_files([c, b, a])
    assert files == [a, b, c]
    got = items(files)
    assert [i.data["n"] for i in got if i.data] == ["a1", "a2", "b1", "b2", "c1"]
    assert [i.ordinal for i in got] == [0, 1, 2, 3, 4]
    assert [i.index for i in got] == [1, 2, 1, 2, 1]
    assert count_items(files) == 5


def test_sorted_input_files_accepts_any_iterable(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.jsonl", {})
    assert sorted_input_files(p for p in [f]) == [f]
    assert sorted_input_files([]) == []


def test_uppercase_suffix_is_accepted(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "A.JSONL", {"a": 1})
    assert [i.data for i in items(sorted_input_files([f]))] == [{"a": 1}]


@pytest.mark.parametrize("name", ["q.csv", "q.txt", "q", "q.jsonl.gz"])
def test_bad_suffix_raises_input_error(tmp_path: Path, name: str) -> None:
    f = write(tmp_path / name, "{}\n")
    with pytest.raises(InputError) as caught:
        sorted_input_files([f])
    message = str(caught.value)
    assert name in message and ".json" in message and ".jsonl" in message
    assert "\n" not in message
    with pytest.raises(InputError):
        list(iter_items([f]))


def test_missing_file_raises_input_error(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(InputError, match=r"nope\.jsonl"):
        sorted_input_files([missing])
    with pytest.raises(InputError, match=r"nope\.jsonl"):
        list(iter_items([missing]))
    with pytest.raises(InputError, match=r"nope\.jsonl"):
        count_items([missing])


def test_directory_raises_input_error(tmp_path: Path) -> None:
    d = tmp_path / "dir.jsonl"
    d.mkdir()
    with pytest.raises(InputError, match="not a file"):
        sorted_input_files([d])


# --- sampling ----------------------------------------------------------------------------


def test_limit_yields_the_first_items_of_the_run(tmp_path: Path) -> None:
    a = write(tmp_path / "a.jsonl", '{"n": 1}\nnot json\n{"n": 3}\n')
    b = jsonl(tmp_path / "b.jsonl", {"n": 4}, {"n": 5})
    files = [a, b]
    assert [i.id for i in items(files, limit=2)] == ["a.jsonl:1", "a.jsonl:2"]
    assert [i.id for i in items(files, limit=4)] == [
        "a.jsonl:1",
        "a.jsonl:2",
        "a.jsonl:3",
        "b.jsonl:1",
    ]
    assert len(items(files, limit=100)) == 5
    assert items(files, limit=0) == []
    assert [count_items(files, limit=n) for n in (0, 2, 4, 5, 100)] == [0, 2, 4, 5, 5]
    assert count_items(files) == 5


def test_negative_limit_is_refused(tmp_path: Path) -> None:
    f = jsonl(tmp_path / "a.jsonl", {})
    with pytest.raises(ValueError):
        list(iter_items([f], limit=-1))
    with pytest.raises(ValueError):
        count_items([f], limit=-1)


def test_limit_does_not_read_past_the_sample(tmp_path: Path) -> None:
    a = jsonl(tmp_path / "a.jsonl", {"n": 1}, {"n": 2})
    gone = tmp_path / "b.jsonl"  # never opened: the sample ends in a.jsonl
    assert len(items([a, gone], limit=2)) == 2
    assert count_items([a, gone], limit=2) == 2
    # A resume at the end of the sample opens nothing either.
    last = list(iter_items([a, gone], limit=2))[-1][1]
    a.unlink()
    assert list(iter_items([a, gone], start=last, limit=2)) == []


# --- resuming ----------------------------------------------------------------------------


@pytest.fixture
def run_files(tmp_path: Path) -> list[Path]:
    a = write(
        tmp_path / "a.jsonl",
        b'\xef\xbb\xbf{"n": "a1"}\n\n{"n": "a2", "custom_id": "x"}\n'
        b'broken\n  \n[1]\n{"n": "a6"}\n\n',
    )
    b = write(tmp_path / "b.json", json.dumps([{"n": "b1"}, 7, {"n": "b3"}]))
    c = write(tmp_path / "c.json", "{not json")
    d = write(tmp_path / "d.json", json.dumps({"prompts": [{"n": "d1"}, {"n": "d2"}]}))
    e = write(tmp_path / "e.jsonl", "")
    f = write(tmp_path / "f.jsonl", b'{"n": "f1"}\n\xff\n{"n": "f3"}')
    return sorted_input_files([f, e, d, c, b, a])


def test_cursor_points_after_its_item(run_files: list[Path]) -> None:
    pairs = list(iter_items(run_files))
    assert len(pairs) == 14 == count_items(run_files)
    for position, (item, cursor) in enumerate(pairs):
        assert item.ordinal == position
        assert cursor.ordinal == position + 1
        assert cursor.number == item.index
        assert run_files[cursor.file_index].name == item.input_file
    # JSONL cursors hold byte offsets, JSON cursors hold element positions.
    first_a, first_b = pairs[0][1], pairs[5][1]
    assert first_a.offset == len(b'\xef\xbb\xbf{"n": "a1"}\n')
    assert first_b == Cursor(file_index=1, offset=1, number=1, ordinal=6)


@pytest.mark.parametrize("limit", [None, 9])
def test_resuming_from_every_cursor_yields_exactly_the_rest(
    run_files: list[Path], limit: int | None
) -> None:
    full = list(iter_items(run_files, limit=limit))
    for position, (_, cursor) in enumerate(full):
        rest = list(iter_items(run_files, start=cursor, limit=limit))
        assert rest == full[position + 1 :], f"resuming after item {position}"


def test_errors_name_the_same_line_after_a_resume(run_files: list[Path]) -> None:
    full = list(iter_items(run_files))
    errors = {item.id: item.error for item, _ in full if item.error}
    assert (
        errors["a.jsonl:3"]
        == "line 4: invalid JSON: unexpected character, expected a JSON value at column 1"
    )
    assert errors["a.jsonl:4"] == "line 6: not a JSON object (got array)"
    assert errors["b.json:2"] == "element 2: not a JSON object (got number)"
    assert errors["c.json:1"].startswith("invalid JSON: ")
    assert errors["f.jsonl:2"] == "line 2: not valid UTF-8"
    resumed = list(iter_items(run_files, start=full[2][1]))
    assert resumed[0][0].error == "line 6: not a JSON object (got array)"


def test_resume_does_not_read_earlier_files(run_files: list[Path], tmp_path: Path) -> None:
    full = list(iter_items(run_files))
    cursor = full[10][1]  # after d.json's last item
    run_files[0].unlink()  # a.jsonl: a resume past it must not open it
    assert [i.id for i, _ in iter_items(run_files, start=cursor)] == [
        "f.jsonl:1",
        "f.jsonl:2",
        "f.jsonl:3",
    ]


def test_resume_at_the_end_yields_nothing(run_files: list[Path]) -> None:
    last = list(iter_items(run_files))[-1][1]
    assert list(iter_items(run_files, start=last)) == []
    assert list(iter_items(run_files, start=Cursor(file_index=len(run_files)))) == []


def test_cursor_and_item_are_frozen_slotted_dataclasses() -> None:
    cursor = Cursor()
    assert cursor == Cursor(0, 0, 0, 0)
    with pytest.raises(dataclasses.FrozenInstanceError):
        cursor.offset = 3  # type: ignore[misc]
    assert not hasattr(cursor, "__dict__")
    item = Item("a", "a.jsonl", 1, 0, {}, None)
    assert not hasattr(item, "__dict__")


# --- dotted paths ------------------------------------------------------------------------


def test_get_field_plain_and_nested() -> None:
    obj = {"input_text": "hi", "question": {"text": "why?", "meta": {"lang": "en"}}}
    assert get_field(obj, "input_text") == "hi"
    assert get_field(obj, "question.text") == "why?"
    assert get_field(obj, "question.meta.lang") == "en"
    assert get_field(obj, "question") == {"text": "why?", "meta": {"lang": "en"}}


def test_get_field_exact_dotted_key_wins() -> None:
    obj = {"a.b": "exact", "a": {"b": "nested"}}
    assert get_field(obj, "a.b") == "exact"
    # At every level, and with backtracking when the longer key leads nowhere.
    assert get_field({"a": {"b.c": 1, "b": {"c": 2}}}, "a.b.c") == 1
    assert get_field({"a.b": {"x": 1}, "a": {"b": {"c": 2}}}, "a.b.c") == 2


def test_get_field_list_index() -> None:
    obj = {"choices": [{"text": "zero"}, {"text": "one"}], "m": [[1, 2], [3, 4]]}
    assert get_field(obj, "choices.0.text") == "zero"
    assert get_field(obj, "choices.1.text") == "one"
    assert get_field(obj, "m.1.0") == 3
    assert get_field(obj, "choices.1") == {"text": "one"}


def test_get_field_null_is_found() -> None:
    assert get_field({"a": {"b": None}}, "a.b") is None


@pytest.mark.parametrize(
    "path",
    [
        "missing",
        "question.missing",
        "question.text.deeper",
        "choices.5.text",
        "choices.-1.text",
        "choices.x",
        "choices.",
        "n.0",
        "",
    ],
)
def test_get_field_missing_raises_key_error_with_the_path(path: str) -> None:
    obj = {"question": {"text": "why?"}, "choices": [{"text": "zero"}], "n": 3}
    with pytest.raises(KeyError) as caught:
        get_field(obj, path)
    assert caught.value.args == (path,)

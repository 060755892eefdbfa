"""Bad input: every bad line fails alone with a precise record; unusable files are refused."""

from __future__ import annotations

import pytest

from mitrailleuse.api import Mitrailleuse
from tests.e2e.helpers import results
from tests.e2e.test_cli import cli, create

pytestmark = pytest.mark.e2e

TEN_MB_LINE = b'{"input_text": "' + b"x" * (10 << 20) + b'"}\n'


def test_every_bad_line_fails_alone_with_a_precise_record(tmp_path, tasks_dir, sim, start_worker):
    start_worker()
    source = tmp_path / "mixed.jsonl"
    source.write_bytes(
        b'{"input_text": "first"}\n'
        b"{not json\n"
        b"\n"
        b'{"other": "no prompt here"}\n'
        b"[1, 2]\n"
        b'{"input_text": "caf\xe9 au lait"}\n'
        + TEN_MB_LINE
        + b'{"custom_id": "dup", "input_text": "one"}\n'
        b'{"custom_id": "dup", "input_text": "two"}\n'
        b'{"input_text": "last"}\n'
    )
    m = Mitrailleuse()
    task = m.create_task("bob", "openai", "mixed", None, [source])
    progress = m.submit(task).wait(timeout=60)

    assert progress.state == "completed"
    records = results(task)
    assert [r["index"] for r in records] == list(range(1, 10))
    messages = {r["index"]: r["error"]["message"] for r in records if r["error"]}
    assert {r["error"]["type"] for r in records if r["error"]} == {"invalid_input"}
    assert messages.pop(2).startswith("line 2: invalid JSON: "), "orjson says the rest"
    assert messages == {
        3: "missing prompt field 'input_text'",
        4: "line 5: not a JSON object (got array)",
        5: "line 6: not valid UTF-8",
        6: f"line 7: {len(TEN_MB_LINE):,} bytes, more than an item may have (4 MiB)",
        8: "duplicate custom_id 'dup': item mixed.jsonl:7 has it",
    }, messages
    assert [r["id"] for r in records][6:] == ["dup", "mixed.jsonl:8", "mixed.jsonl:9"]
    assert [r["index"] for r in records if r["status"] == "succeeded"] == [1, 7, 9]
    assert sim.stats()["chat_requests"] == 3, "a bad line reached the provider"
    assert len(task.errors_path.read_bytes().splitlines()) == 6


@pytest.mark.parametrize(
    ("name", "content", "says"),
    [
        ("empty.jsonl", b"", "no items"),
        ("blank.jsonl", b"\n  \n\n", "no items"),
        ("empty.json", b"[]", "no items"),
        ("nothing.json", b"", "no items"),
        ("items.csv", b"input_text\nhello\n", "unsupported input file type '.csv'"),
    ],
)
def test_unusable_input_files_are_refused_before_the_task_exists(tmp_path, name, content, says):
    (tmp_path / name).write_bytes(content)
    made = create(tmp_path, "u", "t", "--input", name)
    assert made.returncode == 2, made.stderr
    assert len(made.stderr.strip().splitlines()) == 1, made.stderr
    assert name in made.stderr and says in made.stderr and "Traceback" not in made.stderr
    assert not (tmp_path / "tasks").exists() or not any((tmp_path / "tasks").rglob("*"))


def test_a_task_with_no_items_is_refused_at_execute(tmp_path, fleet_env):
    made = create(tmp_path, "u", "bare", env=fleet_env)
    assert made.returncode == 0, made.stderr
    path = made.stdout.strip().splitlines()[-1]
    sent = cli("execute", "--task-path", path, "--detach", cwd=tmp_path, env=fleet_env)
    assert sent.returncode == 2 and "no items to send" in sent.stderr, sent.stderr
    assert len(sent.stderr.strip().splitlines()) == 1 and "Traceback" not in sent.stderr

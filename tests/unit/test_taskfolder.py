from __future__ import annotations

import os

import pytest

from mitrailleuse.atomic import write_atomic
from mitrailleuse.config import TaskConfig
from mitrailleuse.errors import InputError, TaskNameError, TaskNotFound
from mitrailleuse.taskfolder import (
    create_task_folder,
    find_task,
    iter_tasks,
    open_task,
)


def make(tasks_dir, tmp_path, user="alice", name="faq", inputs=None):
    source = tmp_path / "q.jsonl"
    source.write_text('{"input_text": "hi"}\n')
    return create_task_folder(tasks_dir, user, "openai", name, TaskConfig(), inputs or [source])


def test_layout(tmp_path):
    tasks = tmp_path / "tasks"
    folder = make(tasks, tmp_path)
    assert folder.path.parent == tasks / "alice"
    assert folder.name.startswith("openai_faq_")
    for sub in ("config/config.json", "inputs/q.jsonl", "outputs", "cache", "logs", "status.json"):
        assert (folder.path / sub).exists(), sub
    status = folder.status()
    assert status.state == "created" and status.provider == "openai"
    assert folder.config().user_id == "alice"


def test_dict_inputs_are_written_as_jsonl(tmp_path):
    folder = create_task_folder(
        tmp_path / "t", "u", "openai", "n", TaskConfig(), [{"input_text": "a"}, {"input_text": "b"}]
    )
    assert (folder.inputs_dir / "items.jsonl").read_text().count("\n") == 2


@pytest.mark.parametrize(
    ("user", "name"),
    [
        ("..", "x"),
        ("a/b", "x"),
        ("u", "../x"),
        ("u", "a\\b"),
        ("u", "a\x00b"),
        ("/abs", "x"),
        ("", "x"),
        ("u", ""),
        ("u", "  "),
        ("~root", "x"),
    ],
)
def test_names_that_could_escape_are_refused_and_leave_nothing(tmp_path, user, name):
    tasks = tmp_path / "tasks"
    with pytest.raises(TaskNameError):
        make(tasks, tmp_path, user, name)
    assert not tasks.exists() or list(tasks.rglob("*")) == []


def test_a_bad_input_leaves_nothing(tmp_path):
    tasks = tmp_path / "tasks"
    bad = tmp_path / "notes.txt"
    bad.write_text("x")
    with pytest.raises(InputError):
        make(tasks, tmp_path, inputs=[bad])
    with pytest.raises(InputError):
        make(tasks, tmp_path, inputs=[tmp_path / "missing.jsonl"])
    assert list(tasks.rglob("*")) == []


def test_two_tasks_in_the_same_second_get_distinct_folders(tmp_path):
    tasks = tmp_path / "tasks"
    first, second = make(tasks, tmp_path), make(tasks, tmp_path)
    assert first.path != second.path


def test_list_find_and_open(tmp_path):
    tasks = tmp_path / "tasks"
    a = make(tasks, tmp_path, "alice", "one")
    b = make(tasks, tmp_path, "alice", "two")
    c = make(tasks, tmp_path, "bob", "one")
    assert [f.path for f in iter_tasks(tasks, "alice")] == [a.path, b.path]
    assert {f.path for f in iter_tasks(tasks, "all")} == {a.path, b.path, c.path}
    assert find_task(tasks, "alice", task_name="two").path == b.path
    assert find_task(tasks, "alice", number=1).path == a.path
    with pytest.raises(TaskNotFound):
        find_task(tasks, "alice", number=3)
    assert open_task(tasks, a.path).path == a.path
    assert open_task(tasks, f"alice/{a.name}").path == a.path


def test_open_refuses_paths_outside_the_tasks_dir(tmp_path):
    tasks = tmp_path / "tasks"
    folder = make(tasks, tmp_path)
    for path in (
        tmp_path,
        tasks / "alice" / ".." / "..",
        "../../etc",
        "/etc",
        folder.path / "inputs",
    ):
        with pytest.raises(TaskNotFound):
            open_task(tasks, path)


def test_write_atomic_leaves_no_temporary_file(tmp_path):
    target = tmp_path / "f.json"
    write_atomic(target, b"one")
    write_atomic(target, b"two")
    assert target.read_bytes() == b"two"
    assert os.listdir(tmp_path) == ["f.json"]

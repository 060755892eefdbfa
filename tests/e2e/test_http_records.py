"""What the web page reads, end to end over HTTP: records a page at a time, one record with
its request, downloads, native batches, the chat's providers, and the task list's filters."""

from __future__ import annotations

import csv
import io
import json
import time
from pathlib import Path

import pytest

from mitrailleuse.records import read_records
from tests.conftest import TEST_KEY
from tests.e2e.helpers import questions
from tests.e2e.test_http import problem, serve, task_body  # noqa: F401

pytestmark = pytest.mark.e2e


@pytest.fixture
def http(serve, start_worker):  # noqa: F811
    start_worker(queues=["openai", "mitrailleuse"], concurrency=4)
    return serve().client


def finished_task(http, rows: list[dict], name: str = "r", config: dict | None = None) -> dict:
    task = http.post("/v1/tasks", json=task_body(rows, name=name, config=config)).json()
    assert http.post(f"/v1/tasks/{task['id']}/execute").status_code == 202
    events = http.get(f"/v1/tasks/{task['id']}/events", timeout=120)  # to the final event
    assert '"finished":true' in events.text
    return task


def test_records_a_page_at_a_time_filtered_searched_and_opened(http):
    rows = questions(30)
    for n in (4, 17):  # refused at once, not retried
        rows[n]["input_text"] += " [[status:400]]"
    task = finished_task(http, rows)
    base = f"/v1/tasks/{task['id']}"
    results = list(read_records(Path(task["task_path"]) / "outputs" / "results.jsonl"))

    seen, offset = [], 0
    while offset is not None:
        page = http.get(f"{base}/records", params={"offset": offset, "limit": 7}).json()
        assert len(page["rows"]) == 7 or page["next_offset"] is None
        seen += page["rows"]
        offset = page["next_offset"]
    assert [row["id"] for row in seen] == [r["id"] for r in results]  # all, in order, once

    failed = http.get(f"{base}/records", params={"show": "failed"}).json()["rows"]
    assert [row["index"] for row in failed] == [5, 18]
    assert failed[0]["preview"].startswith("http_400: ")
    found = http.get(f"{base}/records", params={"q": "Q-23: WHAT"}).json()["rows"]
    assert [row["index"] for row in found] == [23]

    opened = http.get(f"{base}/records/{failed[0]['offset']}").json()
    assert opened["record"]["error"]["type"] == "http_400"
    assert opened["request"]["messages"][-1]["content"] == rows[4]["input_text"]
    assert TEST_KEY not in json.dumps(opened)
    problem(http.get(f"{base}/records/{failed[0]['offset'] + 3}"), 400)

    assert http.get(f"{base}/download/results.jsonl").content.count(b"\n") == 30
    errors = http.get(f"{base}/download/errors.jsonl").content.decode().splitlines()
    assert [json.loads(line)["index"] for line in errors] == [5, 18]
    table = list(csv.DictReader(io.StringIO(http.get(f"{base}/download/results.csv").text)))
    assert [row["id"] for row in table] == [r["id"] for r in results]
    problem(http.get(f"{base}/download/secrets.txt"), 422)
    assert http.get(f"{base}/batches").json() == []  # a realtime run has none


def test_records_wait_for_the_end_of_the_run(http, sim):
    sim.configure(latency_ms=2000)
    task = http.post("/v1/tasks", json=task_body(questions(3), name="slow")).json()
    assert http.post(f"/v1/tasks/{task['id']}/execute").status_code == 202
    problem(http.get(f"/v1/tasks/{task['id']}/records"), 409)
    problem(http.get(f"/v1/tasks/{task['id']}/download/results.csv"), 409)


def test_the_task_list_newest_first_by_provider_and_the_chat_providers(http):
    first = http.post("/v1/tasks", json=task_body([{}], name="one")).json()
    time.sleep(1.1)  # a task's folder name, which orders the list, holds its second
    second = http.post("/v1/tasks", json=task_body([{"text": "x"}], name="two", api="deepl")).json()
    newest = http.get("/v1/tasks", params={"order": "newest"}).json()["tasks"]
    assert [t["id"] for t in newest][:2] == [second["id"], first["id"]]
    deepl = http.get("/v1/tasks", params={"provider": "deepl"}).json()["tasks"]
    assert [t["id"] for t in deepl] == [second["id"]]
    assert deepl[0]["created_at"] and deepl[0]["started_at"] is None
    providers = {p["api"]: p for p in http.get("/v1/chat/providers").json()}
    assert set(providers) == {"openai", "deepseek"}
    assert providers["openai"]["model"] == "gpt-4o-mini" in providers["openai"]["models"]


def test_a_native_batch_runs_batches_are_listed_with_their_raw_status(
    serve,  # noqa: F811
    sim,
    start_worker,
    start_beat,
):
    sim.configure(batch_duration_s=0.5)
    start_worker(queues=["mitrailleuse"])
    start_beat()
    http = serve().client
    config = {"openai": {"mode": "batch", "batch": {"batch_size": 20, "batch_check_time": 0.5}}}
    task = finished_task(http, questions(12), config=config)
    batches = http.get(f"/v1/tasks/{task['id']}/batches").json()
    assert sum(batch["items"] for batch in batches) == 12
    assert {batch["raw_status"] for batch in batches} == {"completed"}
    assert all(batch["batch_id"].startswith("batch") for batch in batches)

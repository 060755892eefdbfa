"""The HTTP API end to end: ``mitrailleuse serve http`` on a loopback port, real workers.

Create (a JSON body, a multipart upload) → execute → Server-Sent Events of the progress (read
to the end; cut mid-run and resumed with ``Last-Event-ID``) → NDJSON results; health and
stats; every error as an RFC 9457 problem document; tokens scoping each request to its user;
the refusal to serve beyond loopback without tokens.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import kombu
import pytest
from httpx_sse import EventSource
from typer.testing import CliRunner

from mitrailleuse.cli import app
from mitrailleuse.records import read_records
from mitrailleuse.services import http_app
from mitrailleuse.services.progress import ProgressEvent, RateView
from mitrailleuse.services.tasks import TaskCounts
from mitrailleuse.testing import HttpServiceProcess, RedisServer
from tests.e2e.helpers import questions

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
ALICE, BOB = "alice-token-0123456789", "bob-token-0123456789"
TOKENS = f"alice:{ALICE},bob:{BOB}"


class HttpServer(HttpServiceProcess):
    """The API in a child process, and an httpx client to it."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env, cwd=REPO)
        self.client = httpx.Client(base_url=self.url, timeout=60)

    def stop(self) -> None:
        self.client.close()
        super().stop()


@pytest.fixture
def serve(fleet_env, tasks_dir) -> Iterator[Callable[..., HttpServer]]:
    started: list[HttpServer] = []

    def start(env: dict[str, str] | None = None) -> HttpServer:
        merged = {
            **os.environ,
            **fleet_env,
            "MITRAILLEUSE_TASKS_DIR": str(tasks_dir),
            "MITRAILLEUSE_HTTP_MAX_UPLOAD_MB": "1",
        }
        server = HttpServer({**merged, **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        assert "Traceback" not in "".join(server.tail), "".join(server.tail)


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def task_body(rows, name="h", config=None, user="alice", api="openai") -> dict:
    body = {"user_id": user, "api": api, "task_name": name, "items": rows}
    return body if config is None else {**body, "config": config}


def problem(response: httpx.Response, status: int) -> dict:
    """The response's problem document, checked: its status, its members, one line."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    document = response.json()
    assert set(document) >= {"type", "title", "status", "detail"}
    assert document["status"] == status
    assert "\n" not in document["detail"] and "Traceback" not in response.text
    return document


def sse_events(response: httpx.Response, count: int | None = None) -> list[dict]:
    """A ``text/event-stream`` read with httpx-sse (``count``: then the client goes).

    Each event as ``id``, ``data``, and ``event`` unless it is a plain message.
    """
    got: list[dict] = []
    for event in EventSource(response).iter_sse():
        named = {} if event.event == "message" else {"event": event.event}
        got.append({"id": event.id, "data": event.data, **named})
        if len(got) == count:
            break
    return got


def stream_events(client: httpx.Client, task_id: str, count: int | None = None, **kwargs):
    """The task's progress events: ``count`` of them (then the client goes), or all."""
    with client.stream("GET", f"/v1/tasks/{task_id}/events", **kwargs) as response:
        assert response.status_code == 200, response.read()
        assert response.headers["content-type"].startswith("text/event-stream")
        assert response.headers["cache-control"] == "no-cache"
        got = sse_events(response, count)
    return [{**event, "data": json.loads(event["data"])} for event in got]


def check_ids(got: list[dict]) -> None:
    ids = [int(event["id"]) for event in got]
    assert ids == [event["data"]["event_id"] for event in got]
    assert ids == sorted(set(ids)), "event ids must grow, none repeated"


def ndjson(response: httpx.Response) -> list[dict]:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "application/x-ndjson"
    return [json.loads(line) for line in response.text.splitlines()]


def test_a_task_from_json_to_results(serve, start_worker):
    start_worker(queues=["openai", "mitrailleuse"])
    server = serve()
    http = server.client
    config = {"openai": {"batch": {"batch_size": 7}}}
    created = http.post("/v1/tasks", json=task_body(questions(40), config=config))
    assert created.status_code == 201, created.text
    task = created.json()
    assert (task["state"], task["api"], task["run_id"], task["mode"]) == (
        "created",
        "openai",
        None,
        None,
    )
    assert task["id"] == f"alice/{Path(task['task_path']).name}"
    assert created.headers["location"] == f"/v1/tasks/{task['id']}"

    executed = http.post(f"/v1/tasks/{task['id']}/execute")
    assert executed.status_code == 202 and executed.json()["run_id"]
    got = stream_events(http, task["id"])
    check_ids(got)
    final = got[-1]["data"]
    assert got[-1]["event"] == "progress"
    assert (
        final["finished"] and final["state"] == "completed" and final["counts"]["succeeded"] == 40
    )
    assert not any(event["data"]["finished"] for event in got[:-1])
    assert final["rates"]["requests_per_minute_limit"] > 0

    on_disk = list(read_records(Path(task["task_path"]) / "outputs/results.jsonl"))
    assert ndjson(http.get(f"/v1/tasks/{task['id']}/results")) == on_disk
    resumed = ndjson(http.get(f"/v1/tasks/{task['id']}/results", params={"start": 35}))
    assert [r["id"] for r in resumed] == [r["id"] for r in on_disk[35:]]
    status = http.get(f"/v1/tasks/{task['id']}").json()
    assert (status["state"], status["counts"]["succeeded"], status["mode"]) == (
        "completed",
        40,
        "realtime",
    )

    listed = http.get("/v1/tasks", params={"user_id": "alice", "state": "completed"}).json()
    assert [t["id"] for t in listed["tasks"]] == [task["id"]]
    others = [
        http.post("/v1/tasks", json=task_body(questions(1), f"p{n}")).json() for n in range(3)
    ]
    ids, token = [], ""
    while True:  # two at a time, oldest first
        page = http.get("/v1/tasks", params={"page_size": 2, "page_token": token}).json()
        assert len(page["tasks"]) <= 2
        ids += [t["id"] for t in page["tasks"]]
        if not (token := page["next_page_token"]):
            break
    assert ids == [task["id"], *(t["id"] for t in others)]

    health = http.get("/health/full")
    assert health.status_code == 200 and "canary-" not in health.text  # TEST_KEY's start
    report = health.json()
    assert report["redis"] and report["workers"]["openai"] >= 1
    assert report["workers"]["mitrailleuse"] >= 1 and "openai" not in report["unserved"]
    with_key = report["workers_with_key"]["openai"]
    assert with_key == report["workers"]["openai"] >= 1
    start_worker(queues=["openai"], concurrency=1, env={"OPENAI_API_KEY": ""})  # none
    report = http.get("/health/full").json()
    assert report["workers"]["openai"] == with_key + 1
    assert report["workers_with_key"]["openai"] == with_key


def test_an_upload_and_a_progress_stream_resumed(serve, sim, start_worker):
    sim.configure(latency_ms=150)
    start_worker(queues=["openai", "mitrailleuse"], concurrency=2)
    http = serve().client
    form = {
        "user_id": "alice",
        "api": "openai",
        "task_name": "up",
        "config": json.dumps({"openai": {"batch": {"batch_size": 1}}}),
        "items": json.dumps(questions(10, "form")),
    }
    jsonl = "".join(json.dumps(row) + "\n" for row in questions(20, "jsonl"))
    files = [
        ("files", ("a.jsonl", jsonl.encode(), "application/jsonl")),
        ("files", ("b.json", json.dumps(questions(10, "json")).encode(), "application/json")),
    ]
    created = http.post("/v1/tasks", data=form, files=files)
    assert created.status_code == 201, created.text
    task = created.json()
    inputs = sorted(p.name for p in (Path(task["task_path"]) / "inputs").iterdir())
    assert inputs == ["a.jsonl", "b.json", "items.jsonl"]
    assert http.post(f"/v1/tasks/{task['id']}/execute").status_code == 202

    first = stream_events(http, task["id"], count=2)  # then the client goes, mid-run
    assert not any(event["data"]["finished"] for event in first)
    stats = http.get("/stats").json()
    assert stats["runs_active"] == 1
    rates = next(rates for scope, rates in stats["rates"].items() if scope.startswith("openai:"))
    assert rates["requests_per_minute_limit"] > 0
    assert 0 <= rates["in_flight"] <= rates["max_in_flight"]
    assert set(stats["queues"]) >= {"openai", "mitrailleuse"}

    rest = stream_events(http, task["id"], headers={"Last-Event-ID": first[-1]["id"]})
    check_ids([*first, *rest])
    final = rest[-1]["data"]
    assert final["finished"] and final["state"] == "completed"
    assert final["counts"]["succeeded"] == final["counts"]["total"] == 40
    # after the end, the same by parameter: the final event at once
    (again,) = stream_events(http, task["id"], params={"last_event_id": first[0]["id"]})
    assert again["data"]["finished"] and int(again["id"]) > int(first[0]["id"])

    records = ndjson(http.get(f"/v1/tasks/{task['id']}/results"))
    assert len(records) == 40 and {r["status"] for r in records} == {"succeeded"}
    assert {r["id"].split(":")[0] for r in records} == {"a.jsonl", "b.json", "items.jsonl"}


def test_every_error_is_a_problem_document(serve, tmp_path):
    own = RedisServer(tmp_path / "redis").start()  # its queues are this test's only
    http = serve({"REDIS_URL": own.url}).client
    bad = task_body([{"input_text": "x"}], config={"openai": {"retry": {"max_attempts": 0}}})
    refused = problem(http.post("/v1/tasks", json=bad), 400)
    assert refused["detail"].startswith("config: openai.retry.max_attempts: ")
    problem(http.post("/v1/tasks", json=task_body([{"input_text": "x"}], api="nope")), 400)
    malformed = problem(http.post("/v1/tasks", json={**task_body([]), "items": "x"}), 422)
    assert malformed["field"] == "items" and malformed["detail"].startswith("body: items: ")
    unnamed = problem(http.post("/v1/tasks", json={"api": "openai", "items": []}), 422)
    assert unnamed["field"] == "task_name"
    problem(http.post("/v1/tasks", content=b"{", headers={"content-type": "application/json"}), 422)
    problem(http.post("/v1/tasks", content=b"x", headers={"content-type": "text/plain"}), 415)
    upload = [("files", ("bad.txt", b"x"))]
    wrong = problem(http.post("/v1/tasks", data=task_body([]) | {"items": "[]"}, files=upload), 400)
    assert wrong["detail"].startswith("bad.txt: unsupported input file type")  # no server path
    big = [("files", ("big.jsonl", b'{"input_text": "x"}\n' * 60_000))]  # 1.2 MB, over 1 MB
    too_big = problem(http.post("/v1/tasks", data={"api": "openai"}, files=big), 413)
    assert "MITRAILLEUSE_HTTP_MAX_UPLOAD_MB" in too_big["detail"]

    problem(http.get("/v1/tasks/alice/nothing_here"), 404)
    problem(http.get("/v1/tasks/alice/..%2F..%2Fetc/results"), 404)
    problem(http.get("/v1/nothing"), 404)
    problem(http.get("/v1/tasks", params={"page_token": "not-a-token"}), 400)
    task = http.post("/v1/tasks", json=task_body([{"input_text": "x"}])).json()
    unserved = problem(http.post(f"/v1/tasks/{task['id']}/execute"), 503)
    assert unserved["detail"] == (
        "no worker serves mitrailleuse, openai: start one (mitrailleuse worker); "
        f"the task waits, created: {task['task_path']}"
    )
    problem(http.get(f"/v1/tasks/{task['id']}/results"), 409)
    problem(http.get(f"/v1/tasks/{task['id']}/events", params={"last_event_id": "x"}), 422)

    assert http.get("/health").json() == {"status": "ok"}
    report = http.get("/health/full").json()
    assert report["workers"]["openai"] == 0 and "openai" in report["unserved"]
    with kombu.Connection(own.url) as connection:  # kombu keeps a list per priority step
        producer = connection.Producer()
        for priority in (0, 9):
            producer.publish(
                {}, routing_key="openai", declare=[kombu.Queue("openai")], priority=priority
            )
    assert http.get("/stats").json()["queues"]["openai"] == 2
    own.stop()
    down = http.get("/health/full")
    assert down.status_code == 503 and down.json()["redis"] is False
    problem(http.get("/stats"), 503)


def test_tokens_scope_every_request_to_its_user(serve):
    http = serve({"MITRAILLEUSE_API_TOKENS": TOKENS}).client
    anonymous = http.get("/v1/tasks")
    problem(anonymous, 401)
    assert anonymous.headers["www-authenticate"] == "Bearer"
    problem(http.get("/v1/tasks", headers=bearer("guess")), 401)
    problem(http.get("/health/full"), 401)
    assert http.get("/health").status_code == 200  # a liveness probe needs no token

    mine = http.post(
        "/v1/tasks", json=task_body(questions(2), "mine", user=""), headers=bearer(ALICE)
    )
    assert mine.status_code == 201 and mine.json()["user_id"] == "alice"
    task = mine.json()
    upload = [("files", ("q.jsonl", b'{"input_text": "x"}\n'))]
    form = {"api": "openai", "task_name": "upload"}
    uploaded = http.post("/v1/tasks", data=form, files=upload, headers=bearer(ALICE))
    assert uploaded.status_code == 201 and uploaded.json()["user_id"] == "alice"

    problem(http.post("/v1/tasks", json=task_body(questions(1)), headers=bearer(BOB)), 403)
    problem(http.get("/v1/tasks", params={"user_id": "alice"}, headers=bearer(BOB)), 403)
    for method, path in (
        ("GET", ""),
        ("POST", "/execute"),
        ("POST", "/cancel"),
        ("GET", "/results"),
        ("GET", "/events"),
    ):
        response = http.request(method, f"/v1/tasks/{task['id']}{path}", headers=bearer(BOB))
        assert problem(response, 404)["detail"] == f"no task {task['id']}"
    assert http.get("/v1/tasks", headers=bearer(BOB)).json()["tasks"] == []
    listed = http.get("/v1/tasks", headers=bearer(ALICE)).json()["tasks"]
    assert [t["task_name"] for t in listed] == ["mine", "upload"]
    assert http.get("/stats", headers=bearer(BOB)).json()["runs_active"] == 0


def test_serving_beyond_loopback_needs_tokens(fleet_env, tasks_dir):
    env = {**os.environ, **fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tasks_dir)}
    command = [sys.executable, "-m", "mitrailleuse", "serve", "http", "--address", "0.0.0.0"]
    for tokens, said in (
        ("", "needs MITRAILLEUSE_API_TOKENS (user:token pairs)"),
        ("alice:short", "needs tokens of 16+ characters"),
    ):
        env["MITRAILLEUSE_API_TOKENS"] = tokens
        refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
        assert refused.returncode == 2
        assert refused.stderr.strip().splitlines() == [f"error: serving on 0.0.0.0 {said}"]


def test_serve_http_without_its_packages_says_what_to_install(monkeypatch):
    found = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name: None if name == "uvicorn" else found(name)
    )
    result = CliRunner().invoke(app, ["serve", "http"])
    assert result.exit_code == 2
    assert (
        result.output.strip()
        == "error: the HTTP API needs its packages: pip install 'mitrailleuse[http]'"
    )


def test_an_idle_stream_says_it_is_alive(monkeypatch):
    """Between events farther apart than the heartbeat, a comment: proxies keep the stream."""
    monkeypatch.setattr(http_app, "HEARTBEAT_S", 0.05)
    final = ProgressEvent(
        event_id=7,
        state="completed",
        counts=TaskCounts(1, 1, 1, 0, 0),
        spent_usd=0.0,
        projected_usd=None,
        rates=RateView(0.0, 0.0, 500, None, 0, 64),
        finished=True,
    )

    async def slow_events():
        await asyncio.sleep(0.3)
        yield final

    async def read() -> list[bytes]:
        return [chunk async for chunk in http_app._event_stream(slow_events())]

    chunks = asyncio.run(read())
    assert chunks[0] == b": keep-alive\n\n" and len(chunks) >= 3
    assert chunks[-1].startswith(b"id: 7\nevent: progress\ndata: {")

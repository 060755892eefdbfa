"""The gRPC service end to end: ``mitrailleuse serve grpc`` on a loopback port, real workers.

Create → execute → watch → results, the seed's calls (``SendSingle``, the batch trio against
the simulator's batch API), reflection as ``grpcurl list`` uses it, health following Redis,
every error code, and tokens scoping each call to its user's tasks.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import json_format
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from mitrailleuse.testing import GrpcServiceProcess, RedisServer
from mitrailleuse.v1 import mitrailleuse_pb2 as pb
from mitrailleuse.v1 import mitrailleuse_pb2_grpc as pb_grpc
from tests.e2e.helpers import questions, results

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
SERVICE = "mitrailleuse.v1.MitrailleuseService"
TOKENS = "alice:alice-token-0123456789,bob:bob-token-0123456789"


class GrpcServer(GrpcServiceProcess):
    """The service in a child process, and a channel and stub to it."""

    def __init__(self, env: dict[str, str]) -> None:
        super().__init__(env, cwd=REPO)
        self.channel = grpc.insecure_channel(self.target)
        self.stub = pb_grpc.MitrailleuseServiceStub(self.channel)

    def stop(self) -> None:
        self.channel.close()
        super().stop()


@pytest.fixture
def serve(fleet_env, tasks_dir) -> Iterator[Callable[..., GrpcServer]]:
    started: list[GrpcServer] = []

    def start(env: dict[str, str] | None = None) -> GrpcServer:
        merged = {**os.environ, **fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tasks_dir)}
        server = GrpcServer({**merged, **(env or {})})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


def create_request(rows, api="openai", name="g", config=None, user="alice"):
    request = pb.CreateTaskRequest(
        user_id=user, api=api, task_name=name, config_json=json.dumps(config or {})
    )
    for row in rows:
        request.items.add().update(row)
    return request


def code_of(call: Callable[[], object]) -> tuple[grpc.StatusCode, str]:
    with pytest.raises(grpc.RpcError) as raised:
        result = call()
        if hasattr(result, "__iter__"):
            list(result)  # a stream fails on its first message
    return raised.value.code(), raised.value.details()


def test_create_execute_watch_and_results(serve, start_worker):
    start_worker(queues=["openai", "mitrailleuse"])
    server = serve()
    stub = server.stub
    rows = questions(40)
    task = stub.CreateTask(create_request(rows, config={"openai": {"batch": {"batch_size": 7}}}))
    assert task.state == "created" and task.counts.total == 0 and task.api == "openai"

    stub.ExecuteTask(pb.TaskRef(task_path=task.task_path))
    events = list(stub.WatchTask(pb.WatchTaskRequest(task_path=task.task_path), timeout=120))
    ids = [e.event_id for e in events]
    assert ids == sorted(set(ids)) and ids[0] > 0
    final = events[-1]
    assert final.finished and final.state == "completed" and final.counts.succeeded == 40
    assert all(not e.finished for e in events[:-1])
    assert final.requests_per_minute_limit > 0

    streamed = list(stub.GetResults(pb.GetResultsRequest(task_path=task.task_path)))
    on_disk = results(
        type("F", (), {"results_path": Path(task.task_path) / "outputs/results.jsonl"})
    )
    assert [json.loads(r.record_json) for r in streamed] == on_disk
    assert [r.index for r in streamed] == list(range(40))
    resumed = stub.GetResults(pb.GetResultsRequest(task_path=task.task_path, start_index=35))
    assert [r.id for r in resumed] == [r["id"] for r in on_disk[35:]]
    # a watcher that comes after the end gets the final state at once, and one that resumes
    # after an event it got (reconnecting) gets what came after it
    (late,) = stub.WatchTask(pb.WatchTaskRequest(task_path=task.task_path), timeout=30)
    assert late.finished and late.counts == final.counts and late.event_id > final.event_id
    resumed = pb.WatchTaskRequest(task_path=task.task_path, after_event_id=events[0].event_id)
    (again,) = stub.WatchTask(resumed, timeout=30)
    assert again.finished and again.event_id > events[0].event_id
    past_the_end = pb.WatchTaskRequest(task_path=task.task_path, after_event_id=2**62)
    (end,) = stub.WatchTask(past_the_end, timeout=30)
    assert end.finished and end.state == "completed"

    status = stub.GetTaskStatus(pb.TaskRef(task_path=task.task_path))
    assert (status.state, status.counts.succeeded, status.mode) == ("completed", 40, "realtime")
    listed = stub.ListTasks(pb.ListTasksRequest(user_id="alice", state="completed"))
    assert [t.task_path for t in listed.tasks] == [task.task_path]
    others = [stub.CreateTask(create_request(rows[:1], name=f"p{n}")) for n in range(3)]
    paths, token = [], ""
    while True:  # two at a time, oldest first
        page = stub.ListTasks(pb.ListTasksRequest(user_id="alice", page_size=2, page_token=token))
        assert len(page.tasks) <= 2
        paths += [t.task_path for t in page.tasks]
        if not (token := page.next_page_token):
            break
    assert paths == [task.task_path, *(t.task_path for t in others)]
    created = stub.ListTasks(pb.ListTasksRequest(state="created"))
    assert [t.task_name for t in created.tasks] == ["p0", "p1", "p2"]


def test_send_single(serve, start_worker):
    start_worker(queues=["openai", "mitrailleuse"])
    stub = serve().stub
    record = stub.SendSingle(
        pb.SendSingleRequest(user_id="alice", api="openai", prompt="What is 2 + 2?"), timeout=120
    )
    assert record.status == "succeeded" and record.output == "echo: What is 2 + 2?"
    assert json.loads(record.record_json)["provider"] == "openai"


def test_the_batch_trio_against_the_simulators_batch_api(serve, sim, start_worker, start_beat):
    sim.configure(batch_duration_s=1.0)
    start_worker(queues=["mitrailleuse"])
    start_beat()
    stub = serve().stub
    config = {"openai": {"batch": {"batch_size": 10, "batch_check_time": 0.5}}}
    task = stub.CreateBatch(create_request(questions(25), config=config, name="b"))
    deadline = time.monotonic() + 120
    while (
        status := stub.CheckBatchStatus(pb.TaskRef(task_path=task.task_path))
    ).task.state not in (
        "completed",
        "failed",
    ):
        assert time.monotonic() < deadline, status
        time.sleep(0.5)
    assert status.task.state == "completed" and status.task.mode == "batch"
    assert status.batches and {b.raw_status for b in status.batches} == {"completed"}
    assert sum(b.items for b in status.batches) == 25
    assert all(b.batch_id.startswith("batch_") for b in status.batches)
    records = list(stub.DownloadBatchResults(pb.GetResultsRequest(task_path=task.task_path)))
    assert len(records) == 25 and {r.status for r in records} == {"succeeded"}
    assert {json.loads(r.record_json)["mode"] for r in records} == {"batch"}


def test_reflection_lists_the_service_and_its_methods(serve):
    """What ``grpcurl -plaintext localhost:50051 list`` (and ``describe``) asks."""
    server = serve()
    database = ProtoReflectionDescriptorDatabase(server.channel)
    services = database.get_services()
    assert SERVICE in services and "grpc.health.v1.Health" in services
    from google.protobuf.descriptor_pool import DescriptorPool

    service = DescriptorPool(database).FindServiceByName(SERVICE)
    assert {m.name for m in service.methods} >= {
        "CreateTask",
        "ExecuteTask",
        "GetTaskStatus",
        "ListTasks",
        "GetTaskByPath",
        "CancelTask",
        "WatchTask",
        "GetResults",
        "SendSingle",
        "CreateBatch",
        "CheckBatchStatus",
        "DownloadBatchResults",
    }


def test_health_follows_redis(serve, fleet_env, tmp_path):
    redis_server = RedisServer(tmp_path / "redis").start()
    server = serve({"REDIS_URL": redis_server.url})
    health = health_pb2_grpc.HealthStub(server.channel)
    serving = health_pb2.HealthCheckResponse.SERVING

    def status(name=""):
        return health.Check(health_pb2.HealthCheckRequest(service=name), timeout=5).status

    deadline = time.monotonic() + 10
    while status() != serving:
        assert time.monotonic() < deadline
        time.sleep(0.2)
    assert status(SERVICE) == serving
    redis_server.stop()
    deadline = time.monotonic() + 20
    while status() == serving:
        assert time.monotonic() < deadline, "health still SERVING with Redis stopped"
        time.sleep(0.2)
    assert status(SERVICE) == health_pb2.HealthCheckResponse.NOT_SERVING
    redis_server.start()
    deadline = time.monotonic() + 20
    while status() != serving:
        assert time.monotonic() < deadline, "health did not come back with Redis"
        time.sleep(0.2)


def test_every_error_code(serve, tasks_dir):
    stub = serve().stub
    bad_config = create_request(
        [{"input_text": "x"}], config={"openai": {"retry": {"max_attempts": 0}}}
    )
    code, details = code_of(lambda: stub.CreateTask(bad_config))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    assert (
        "openai.retry.max_attempts" in details
        and "\n" not in details
        and "Traceback" not in details
    )

    code, _ = code_of(lambda: stub.CreateTask(create_request([{"input_text": "x"}], api="nope")))
    assert code is grpc.StatusCode.INVALID_ARGUMENT
    code, _ = code_of(lambda: stub.GetTaskStatus(pb.TaskRef(task_path="alice/nothing_here")))
    assert code is grpc.StatusCode.NOT_FOUND
    code, _ = code_of(lambda: stub.GetResults(pb.GetResultsRequest(task_path="/etc")))
    assert code is grpc.StatusCode.NOT_FOUND

    task = stub.CreateTask(create_request([{"input_text": "x"}]))
    code, details = code_of(lambda: stub.ExecuteTask(pb.TaskRef(task_path=task.task_path)))
    assert code is grpc.StatusCode.UNAVAILABLE
    assert details == (
        "no worker serves mitrailleuse, openai: start one (mitrailleuse worker); "
        f"the task waits, created: {task.task_path}"
    )
    code, _ = code_of(lambda: stub.GetResults(pb.GetResultsRequest(task_path=task.task_path)))
    assert code is grpc.StatusCode.FAILED_PRECONDITION
    single = pb.SendSingleRequest(user_id="alice", api="openai", prompt="x", config_json="{")
    code, details = code_of(lambda: stub.SendSingle(single))
    assert code is grpc.StatusCode.INVALID_ARGUMENT and details.startswith("config_json: not")
    pages = pb.ListTasksRequest(page_token="not-a-token")
    assert code_of(lambda: stub.ListTasks(pages))[0] is grpc.StatusCode.INVALID_ARGUMENT


def test_tokens_scope_every_call_to_its_user(serve, start_worker):
    start_worker(queues=["openai", "mitrailleuse"])
    stub = serve({"MITRAILLEUSE_API_TOKENS": TOKENS}).stub
    alice, bob = bearer("alice-token-0123456789"), bearer("bob-token-0123456789")

    code, _ = code_of(lambda: stub.ListTasks(pb.ListTasksRequest()))
    assert code is grpc.StatusCode.UNAUTHENTICATED
    code, _ = code_of(lambda: stub.ListTasks(pb.ListTasksRequest(), metadata=bearer("guess")))
    assert code is grpc.StatusCode.UNAUTHENTICATED

    task = stub.CreateTask(create_request(questions(5), name="mine"), metadata=alice)
    code, _ = code_of(
        lambda: stub.CreateTask(create_request(questions(1), user="alice"), metadata=bob)
    )
    assert code is grpc.StatusCode.PERMISSION_DENIED
    ref = pb.TaskRef(task_path=task.task_path)
    for call in (
        lambda: stub.GetTaskStatus(ref, metadata=bob),
        lambda: stub.ExecuteTask(ref, metadata=bob),
        lambda: stub.CancelTask(ref, metadata=bob),
        lambda: stub.WatchTask(pb.WatchTaskRequest(task_path=task.task_path), metadata=bob),
        lambda: stub.GetResults(pb.GetResultsRequest(task_path=task.task_path), metadata=bob),
    ):
        assert code_of(call)[0] is grpc.StatusCode.NOT_FOUND
    assert stub.ListTasks(pb.ListTasksRequest(), metadata=bob).tasks == []
    # files on the server are not a token user's to read
    reading = pb.CreateTaskRequest(user_id="bob", api="openai", task_name="peek")
    reading.input_paths.append(task.task_path + "/config/config.json")
    code, details = code_of(lambda: stub.CreateTask(reading, metadata=bob))
    assert code is grpc.StatusCode.PERMISSION_DENIED and "send items" in details
    assert [t.task_name for t in stub.ListTasks(pb.ListTasksRequest(), metadata=alice).tasks] == [
        "mine"
    ]
    stub.ExecuteTask(ref, metadata=alice)
    (*_, final) = stub.WatchTask(pb.WatchTaskRequest(task_path=task.task_path), metadata=alice)
    assert final.state == "completed"
    assert "alice-token" not in json.dumps(json_format.MessageToDict(final))


def test_serving_beyond_loopback_needs_tls_and_tokens(fleet_env, tasks_dir):
    env = {**os.environ, **fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tasks_dir)}
    command = [sys.executable, "-m", "mitrailleuse", "serve", "grpc", "--address", "0.0.0.0"]
    refused = subprocess.run(command, env=env, capture_output=True, text=True, timeout=60)
    assert refused.returncode == 2
    assert refused.stderr.strip().splitlines() == [
        "error: serving on 0.0.0.0 needs TLS: give --tls-cert and --tls-key"
    ]

"""The README's gRPC section, run as it is written: its grpcurl session and its Python client.

grpcurl is a Go binary (no wheel, no Go toolchain here), so the session's lines go through
``Grpcurl`` below, a stand-in that does what grpcurl does with the same arguments: server
reflection to ``list`` and ``describe``, and for a call the method's request and response
types found the same way (``-d`` JSON in, proto JSON out, one object per streamed message).
The shell around it is the README's too: ``TASK=$(grpcurl … | jq -r .taskPath)`` keeps the
field, and ``$TASK`` in a later line is replaced by it. Only the port differs: the README's
50051 becomes the test server's.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import grpc
import pytest
from google.protobuf import json_format
from google.protobuf.descriptor import Descriptor, FieldDescriptor, ServiceDescriptor
from google.protobuf.descriptor_pool import DescriptorPool
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha.proto_reflection_descriptor_database import (
    ProtoReflectionDescriptorDatabase,
)

from tests.e2e.helpers import newcomer_env
from tests.e2e.test_grpc import SERVICE, GrpcServer

pytestmark = pytest.mark.e2e

REPO = Path(__file__).resolve().parents[2]
README_ADDRESS = "localhost:50051"
#: What the block runs besides grpcurl; the test starts the same with its fixtures.
SETUP_LINES = [
    "pip install 'mitrailleuse[grpc]'",
    "mitrailleuse worker &",
    "mitrailleuse serve grpc &",
]


# --- the README's section -------------------------------------------------------------------


def grpc_section() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    start = readme.index("## gRPC service\n")
    end = readme.find("\n## ", start + 1)
    return readme[start : end if end != -1 else None]


def code_block(language: str, containing: str) -> str:
    blocks = re.findall(rf"```{language}\n(.*?)```", grpc_section(), re.S)
    found = [block for block in blocks if containing in block]
    assert len(found) == 1, f"one ```{language} block with {containing!r} in 'gRPC service'"
    return found[0]


def shell_commands(block: str) -> list[list[str]]:
    """The block's commands, shlex-split (comments dropped, ``\\``-newlines and newlines in
    quotes joined as a shell does)."""
    commands: list[list[str]] = []
    pending = ""
    for line in block.replace("\\\n", " ").splitlines():
        pending = f"{pending}\n{line}" if pending else line
        try:
            words = shlex.split(pending, comments=True)
        except ValueError:  # a quote still open: the command goes on
            continue
        pending = ""
        if words:
            commands.append(words)
    assert not pending, f"unclosed quote in {pending!r}"
    return commands


# --- grpcurl, with grpcio and server reflection ---------------------------------------------


class GrpcurlError(AssertionError):
    pass


_TYPE_NAMES = {
    getattr(FieldDescriptor, name): name.removeprefix("TYPE_").lower()
    for name in dir(FieldDescriptor)
    if name.startswith("TYPE_")
}


def _type_name(field: FieldDescriptor) -> str:
    if field.message_type is not None:
        return f".{field.message_type.full_name}"
    if field.enum_type is not None:
        return f".{field.enum_type.full_name}"
    return _TYPE_NAMES[field.type]


def _field_line(field: FieldDescriptor) -> str:
    entry = field.message_type
    if entry is not None and entry.GetOptions().map_entry:
        key, value = (_type_name(entry.fields_by_name[name]) for name in ("key", "value"))
        kind = f"map<{key}, {value}>"
    else:
        kind = f"repeated {_type_name(field)}" if field.is_repeated else _type_name(field)
    return f"  {kind} {field.name} = {field.number};"


def _describe_message(message: Descriptor) -> str:
    lines = [f"message {message.name} {{", *map(_field_line, message.fields), "}"]
    return "\n".join(lines)


def _describe_service(service: ServiceDescriptor) -> str:
    def side(stream: bool, message: Descriptor) -> str:
        return f"{'stream ' if stream else ''}.{message.full_name}"

    lines = [f"service {service.name} {{"]
    for method in service.methods:
        request = side(method.client_streaming, method.input_type)
        response = side(method.server_streaming, method.output_type)
        lines.append(f"  rpc {method.name} ( {request} ) returns ( {response} );")
    return "\n".join([*lines, "}"])


class Grpcurl:
    """``grpcurl [-plaintext] [-H 'name: value'] [-d JSON] ADDRESS (list [SERVICE] | describe
    SYMBOL | SERVICE/METHOD)``: stdout as grpcurl prints it; a failed call raises with
    grpcurl's ``ERROR: Code … Message …``."""

    def __init__(self, target: str) -> None:
        self.target = target

    def __call__(self, argv: list[str]) -> str:
        assert argv[0] == "grpcurl", argv
        args = list(argv[1:])
        plaintext, data, metadata = False, None, []
        while args and args[0].startswith("-"):
            flag = args.pop(0)
            if flag == "-plaintext":
                plaintext = True
            elif flag == "-d":
                data = args.pop(0)
            elif flag == "-H":
                name, _, value = args.pop(0).partition(":")
                metadata.append((name.strip().lower(), value.strip()))
            else:
                raise AssertionError(f"a grpcurl flag the stand-in does not know: {flag}")
        assert plaintext, "the server under test has no certificate: -plaintext"
        address, *rest = args
        assert address == README_ADDRESS, address
        with grpc.insecure_channel(self.target) as channel:
            database = ProtoReflectionDescriptorDatabase(channel)
            pool = DescriptorPool(database)
            verb, *symbols = rest or ["list"]
            if verb == "list":
                if not symbols:
                    return "\n".join(sorted(database.get_services()))
                service = pool.FindServiceByName(symbols[0])
                return "\n".join(sorted(method.full_name for method in service.methods))
            if verb == "describe":
                return "\n".join(self._describe(pool, symbol) for symbol in symbols)
            assert not symbols, rest
            return self._call(channel, pool, verb, data, tuple(metadata))

    @staticmethod
    def _describe(pool: DescriptorPool, symbol: str) -> str:
        try:
            return f"{symbol} is a service:\n{_describe_service(pool.FindServiceByName(symbol))}"
        except KeyError:
            pass
        try:
            message = pool.FindMessageTypeByName(symbol)
        except KeyError:
            raise GrpcurlError(f"Failed to resolve symbol {symbol!r}") from None
        return f"{symbol} is a message:\n{_describe_message(message)}"

    @staticmethod
    def _call(
        channel: grpc.Channel,
        pool: DescriptorPool,
        name: str,
        data: str | None,
        metadata: tuple[tuple[str, str], ...],
    ) -> str:
        service_name, _, method_name = re.sub(r"\.(\w+)$", r"/\1", name).rpartition("/")
        method = pool.FindServiceByName(service_name).methods_by_name[method_name]
        assert not method.client_streaming, "the README calls no client stream"
        request_class = GetMessageClass(method.input_type)
        response_class = GetMessageClass(method.output_type)
        request = json_format.Parse(data or "{}", request_class())
        make = channel.unary_stream if method.server_streaming else channel.unary_unary
        call = make(
            f"/{service_name}/{method_name}",
            request_serializer=request_class.SerializeToString,
            response_deserializer=response_class.FromString,
        )
        try:
            answer = call(request, metadata=metadata, timeout=120)
            responses = list(answer) if method.server_streaming else [answer]
        except grpc.RpcError as error:
            code = "".join(part.title() for part in error.code().name.split("_"))
            raise GrpcurlError(f"ERROR:\n  Code: {code}\n  Message: {error.details()}") from None
        return "\n".join(json_format.MessageToJson(response, indent=2) for response in responses)


def jq_raw(program: list[str], text: str) -> str:
    """``jq -r .field`` on one JSON object: all the README pipes grpcurl into."""
    assert program[:2] == ["jq", "-r"] and re.fullmatch(r"\.\w+", program[2]), program
    value = json.loads(text)[program[2][1:]]
    return value if isinstance(value, str) else json.dumps(value)


def json_objects(text: str) -> list[dict[str, Any]]:
    """grpcurl's output for a stream: one JSON object after another."""
    decoder, objects, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        found, at = decoder.raw_decode(text, at)
        objects.append(found)
        while at < len(text) and text[at].isspace():
            at += 1
    return objects


_ASSIGNMENT = re.compile(r"(\w+)=\$\((.*)")
_VARIABLE = re.compile(r"\$(\w+)|\$\{(\w+)\}")


def run_session(commands: list[list[str]], grpcurl: Grpcurl) -> list[tuple[list[str], str]]:
    """Each grpcurl command (``NAME=$(grpcurl … | jq -r .f)`` too) with its output, in order."""
    variables: dict[str, str] = {}
    outputs = []
    for words in commands:
        assigned = None
        if match := _ASSIGNMENT.fullmatch(words[0]):
            assert words[-1].endswith(")"), words
            assigned = match.group(1)
            words = [match.group(2), *words[1:-1], words[-1].removesuffix(")")]
        if words[0] != "grpcurl":
            continue
        argv, pipe = words, None
        if "|" in words:
            at = words.index("|")
            argv, pipe = words[:at], words[at + 1 :]

        def substituted(word: str) -> str:
            return _VARIABLE.sub(lambda m: variables[m.group(1) or m.group(2)], word)

        argv = [substituted(word) for word in argv]
        output = grpcurl(argv)
        outputs.append((argv, output))
        if pipe is not None:
            output = jq_raw(pipe, output)
        if assigned is not None:
            variables[assigned] = output
    return outputs


# --- the tests ------------------------------------------------------------------------------


@pytest.fixture
def serve(fleet_env, tasks_dir) -> Iterator[Callable[[], GrpcServer]]:
    """``mitrailleuse serve grpc`` as the README starts it (loopback, no tokens)."""
    started: list[GrpcServer] = []

    def start() -> GrpcServer:
        server = GrpcServer({**os.environ, **fleet_env, "MITRAILLEUSE_TASKS_DIR": str(tasks_dir)})
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()


def test_the_block_runs_only_grpcurl_beside_what_the_test_starts():
    commands = shell_commands(code_block("sh", "grpcurl"))
    others = [shlex.join(words) for words in commands if "grpcurl" not in words[0]]
    assert others == [shlex.join(shlex.split(line)) for line in SETUP_LINES]


def test_the_readme_grpcurl_session_runs_as_written(serve, start_worker, tasks_dir):
    start_worker(queues=["openai", "mitrailleuse"])
    server = serve()
    commands = shell_commands(code_block("sh", "grpcurl"))
    outputs = run_session(commands, Grpcurl(server.target))
    # each output by what follows the address: list, describe X, or the method
    by_verb = {" ".join(argv[argv.index(README_ADDRESS) + 1 :]): out for argv, out in outputs}

    listed = by_verb["list"].splitlines()
    assert {SERVICE, "grpc.health.v1.Health"} <= set(listed)
    assert "grpc.reflection.v1alpha.ServerReflection" in listed
    service = by_verb[f"describe {SERVICE}"]
    assert service.startswith(f"{SERVICE} is a service:\nservice MitrailleuseService {{\n")
    assert (
        "  rpc WatchTask ( .mitrailleuse.v1.WatchTaskRequest )"
        " returns ( stream .mitrailleuse.v1.Progress );" in service
    )
    request = by_verb["describe mitrailleuse.v1.CreateTaskRequest"]
    assert "  repeated .google.protobuf.Struct items = 6;" in request

    created = json.loads(by_verb[f"{SERVICE}/CreateTask"])
    task = Path(created["taskPath"])
    assert task.parent == tasks_dir / "alice" and created["state"] == "created"
    assert (created["userId"], created["api"], created["taskName"]) == ("alice", "openai", "faq")
    executed = json.loads(by_verb[f"{SERVICE}/ExecuteTask"])
    assert executed["taskPath"] == str(task)

    *running, final = json_objects(by_verb[f"{SERVICE}/WatchTask"])
    assert final["state"] == "completed" and final["finished"] is True
    assert final["counts"]["succeeded"] == "1"  # int64: a string in proto JSON, as grpcurl has it
    assert not any(progress.get("finished") for progress in running)

    (record,) = json_objects(by_verb[f"{SERVICE}/GetResults"])
    assert record["status"] == "succeeded" and "capital of France" in record["output"]
    whole = json.loads(record["recordJson"])
    assert whole["id"] == record["id"] and whole["status"] == "succeeded"
    assert json.loads(by_verb["grpc.health.v1.Health/Check"]) == {"status": "SERVING"}


def test_the_grpcurl_stand_in_reports_errors_as_grpcurl_does(serve):
    grpcurl = Grpcurl(serve().target)
    call = f"{SERVICE}/GetTaskStatus"
    with pytest.raises(GrpcurlError, match=r"ERROR:\n  Code: NotFound\n  Message: "):
        grpcurl(
            ["grpcurl", "-plaintext", "-d", '{"task_path": "alice/none"}', README_ADDRESS, call]
        )
    assert f"{SERVICE}.WatchTask" in grpcurl(
        ["grpcurl", "-plaintext", README_ADDRESS, "list", SERVICE]
    )


def test_the_readme_python_client_runs_as_written(serve, start_worker, tmp_path: Path):
    start_worker(queues=["openai", "mitrailleuse"])
    server = serve()
    block = code_block("python", "MitrailleuseServiceStub")
    assert block.count(README_ADDRESS) == 1
    port = server.target.rpartition(":")[2]
    script = tmp_path / "client.py"
    script.write_text(block.replace(README_ADDRESS, f"localhost:{port}"))
    env = newcomer_env()
    env["PYTHONPATH"] = str(REPO)
    done = subprocess.run(
        [sys.executable, str(script)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    lines = done.stdout.strip().splitlines()
    progress = [line for line in lines if re.fullmatch(r"\w+ \d+ / \d+", line)]
    assert progress and progress[-1] == "completed 2 / 2", lines
    records = lines[len(progress) :]
    assert len(records) == 2 and all(" succeeded " in line for line in records), lines
    assert "capital of France" in records[0] and "prime number" in records[1]

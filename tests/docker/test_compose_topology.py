"""The compose fleet's openai worker, in Docker, driven by pytest-celery.

What the unit tests cannot see: the image from compose/Dockerfile, started the way
docker-compose.yml starts worker-openai, joins a Redis broker and serves exactly its queue.
pytest-celery only works against a Docker engine: without one the module is skipped.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import IO

import pytest
import yaml
from celery import Celery
from pytest_celery import (
    DEFAULT_WORKER_CONTAINER_TIMEOUT,
    CeleryBackendCluster,
    CeleryBrokerCluster,
    CeleryTestSetup,
    CeleryTestWorker,
    CeleryWorkerCluster,
    CeleryWorkerContainer,
    RedisTestBackend,
    RedisTestBroker,
)
from pytest_docker_tools import build, container, fxtr

REPO = Path(__file__).resolve().parents[2]
# The topology under test is the compose file's, not a copy of it.
SERVICES = yaml.safe_load((REPO / "compose" / "docker-compose.yml").read_text())["services"]
WORKER = SERVICES["worker-openai"]


def _docker_unreachable() -> str | None:
    try:
        import docker

        docker.from_env(timeout=5).ping()
    except Exception as exc:  # no socket, no permission, daemon down: all mean "no engine"
        return f"no Docker engine reachable, pytest-celery needs one ({type(exc).__name__}: {exc})"
    return None


SKIP_REASON = _docker_unreachable()
pytestmark = pytest.mark.skipif(SKIP_REASON is not None, reason=SKIP_REASON or "")


class MitrailleuseWorkerContainer(CeleryWorkerContainer):
    @classmethod
    def worker_name(cls) -> str:
        # `mitrailleuse worker` takes no -n: the node is celery@<hostname>, and a container's
        # hostname is its short id, which is what CeleryTestWorker.hostname() appends.
        return "celery"

    @classmethod
    def worker_queue(cls) -> str:
        return "openai"


@pytest.fixture(scope="session")
def mitrailleuse_build_context() -> Iterator[IO[bytes]]:
    # docker-py builds without BuildKit, which reads only <context>/.dockerignore: the repo
    # root (.venv, tasks/, compose/.env) would all be sent. Apply compose's own ignore file.
    from docker.utils import tar

    rules = (REPO / "compose" / "Dockerfile.dockerignore").read_text().splitlines()
    patterns = [r.strip() for r in rules if r.strip() and not r.lstrip().startswith("#")]
    with tar(str(REPO), exclude=patterns, dockerfile=("compose/Dockerfile", None)) as context:
        context.seek(0)
        yield context


mitrailleuse_image = build(
    fileobj=fxtr("mitrailleuse_build_context"),
    custom_context=True,
    dockerfile="compose/Dockerfile",
    tag="mitrailleuse:pytest-celery",  # not compose's mitrailleuse:local
)


@pytest.fixture
def openai_worker_env(celery_worker_cluster_config: dict) -> dict[str, str]:
    broker = celery_worker_cluster_config["celery_broker_cluster_config"]["urls"][0]
    backend = celery_worker_cluster_config["celery_backend_cluster_config"]["urls"][0]
    # REDIS_URL is the fleet's one Redis (broker, run state, rate-limit buckets); Celery's
    # CELERY_RESULT_BACKEND override sends results where celery_setup.app reads them.
    return {"REDIS_URL": broker, "CELERY_RESULT_BACKEND": backend, "MITRAILLEUSE_CONCURRENCY": "4"}


openai_worker_container = container(
    image="{mitrailleuse_image.id}",
    command=WORKER["command"],
    init=WORKER.get("init", False),
    environment=fxtr("openai_worker_env"),
    network="{default_pytest_celery_network.name}",
    wrapper_class=MitrailleuseWorkerContainer,
    timeout=DEFAULT_WORKER_CONTAINER_TIMEOUT,
)


# The plugin's defaults parametrize over every broker it knows (RabbitMQ too) and run its own
# worker image: pin Redis, as compose does, and replace the worker with ours.
@pytest.fixture
def default_redis_broker_image() -> str:
    return SERVICES["redis"]["image"]


@pytest.fixture
def default_redis_backend_image() -> str:
    return SERVICES["redis"]["image"]


@pytest.fixture
def celery_broker_cluster(celery_redis_broker: RedisTestBroker) -> Iterator[CeleryBrokerCluster]:
    cluster = CeleryBrokerCluster(celery_redis_broker)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_backend_cluster(
    celery_redis_backend: RedisTestBackend,
) -> Iterator[CeleryBackendCluster]:
    cluster = CeleryBackendCluster(celery_redis_backend)
    yield cluster
    cluster.teardown()


@pytest.fixture
def celery_worker_cluster(
    openai_worker_container: MitrailleuseWorkerContainer, celery_setup_app: Celery
) -> Iterator[CeleryWorkerCluster]:
    worker = CeleryTestWorker(openai_worker_container, app=celery_setup_app)
    cluster = CeleryWorkerCluster(worker)
    yield cluster
    cluster.teardown()
    worker.teardown()


# The first run pulls python:3.11-slim and pip-installs the project: the suite's 300 s may not do.
@pytest.mark.timeout(900)
def test_openai_worker_serves_its_queue(celery_setup: CeleryTestSetup) -> None:
    node = celery_setup.worker.hostname()
    # Control commands only: our worker does not have pytest-celery's ping task, and a
    # mitrailleuse.call would need a provider. What matters is that it answers on the broker.
    assert celery_setup.app.control.ping(destination=[node], timeout=10) == [{node: {"ok": "pong"}}]
    inspect = celery_setup.app.control.inspect(destination=[node], timeout=10)
    assert [queue["name"] for queue in inspect.active_queues()[node]] == ["openai"]
    assert "mitrailleuse.call" in inspect.registered()[node]

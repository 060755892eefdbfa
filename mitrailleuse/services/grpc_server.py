"""``mitrailleuse serve grpc``: the service on a port, with reflection and health.

Bound to loopback unless told otherwise; another address needs TLS (a certificate and its
key) and ``MITRAILLEUSE_API_TOKENS``, or the server refuses to start. The standard health
service says SERVING only while Redis answers; reflection lets ``grpcurl`` list the calls.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Callable
from pathlib import Path

import grpc
import redis
from grpc_health.v1 import health as grpc_health
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.errors import ConfigError
from mitrailleuse.services.grpc_service import MitrailleuseService
from mitrailleuse.services.tasks import redis_probe
from mitrailleuse.services.tokens import (
    check_tokens_beyond_loopback,
    is_loopback,
    tokens_from_env,
)
from mitrailleuse.v1 import mitrailleuse_pb2 as pb
from mitrailleuse.v1 import mitrailleuse_pb2_grpc as pb_grpc

log = logging.getLogger(__name__)

#: The service's full name, as reflection and health name it.
SERVICE_NAME = pb.DESCRIPTOR.services_by_name["MitrailleuseService"].full_name
DEFAULT_PORT = 50051
#: How often the health service asks Redis whether it answers.
HEALTH_CHECK_S = 1.0


def check_exposure(address: str, tls: tuple[Path, Path] | None, tokens: dict[str, str]) -> None:
    """Refuse to serve beyond loopback without TLS and tokens (a ConfigError says what)."""
    if tls is None and not is_loopback(address):
        raise ConfigError(f"serving on {address} needs TLS: give --tls-cert and --tls-key")
    check_tokens_beyond_loopback(address, tokens)


def serve(
    address: str = "127.0.0.1",
    port: int = DEFAULT_PORT,
    tls: tuple[Path, Path] | None = None,
    on_ready: Callable[[str], None] | None = None,
) -> None:
    """Serve until interrupted; ``on_ready`` gets ``host:port`` once the port is bound."""
    tokens = tokens_from_env()
    check_exposure(address, tls, tokens)
    client = Mitrailleuse()
    client.redis_url  # noqa: B018 - find (or start) the broker now, not at the first call
    asyncio.run(_serve(client, tokens, address, port, tls, on_ready))


async def _serve(
    client: Mitrailleuse,
    tokens: dict[str, str],
    address: str,
    port: int,
    tls: tuple[Path, Path] | None,
    on_ready: Callable[[str], None] | None,
) -> None:
    server = grpc.aio.server()
    pb_grpc.add_MitrailleuseServiceServicer_to_server(MitrailleuseService(client, tokens), server)
    health = grpc_health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health, server)
    names = (SERVICE_NAME, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
    reflection.enable_server_reflection((*names, reflection.SERVICE_NAME), server)
    bound = _bind(server, address, port, tls)
    probe = redis_probe(client.redis_url)
    await _check_redis(probe, health)  # a status from the first call on
    await server.start()
    watcher = asyncio.create_task(_watch_redis(probe, health))
    if on_ready is not None:
        on_ready(f"{address}:{bound}")
    try:
        await server.wait_for_termination()
    finally:
        watcher.cancel()
        await health.enter_graceful_shutdown()
        await server.stop(grace=5)


def _bind(server: grpc.aio.Server, address: str, port: int, tls: tuple[Path, Path] | None) -> int:
    """Listen on ``address:port`` (TLS when given); the port bound, or a one-line ConfigError."""
    target = f"[{address}]:{port}" if ":" in address else f"{address}:{port}"
    try:
        if tls is None:
            return server.add_insecure_port(target)
        cert, key = (path.read_bytes() for path in tls)
        return server.add_secure_port(target, grpc.ssl_server_credentials([(key, cert)]))
    except OSError as error:
        raise ConfigError(f"cannot read the TLS files: {error}") from None
    except RuntimeError:  # grpc's word for a port in use, or an address it cannot bind
        raise ConfigError(f"cannot listen on {target} (in use, or not this machine's)") from None


async def _check_redis(probe: redis.Redis, health: grpc_health.aio.HealthServicer) -> None:
    """SERVING if Redis answers a PING now (within a second), else NOT_SERVING."""
    try:
        up = await asyncio.to_thread(probe.ping)
    except redis.RedisError:
        up = False
    status = (
        health_pb2.HealthCheckResponse.SERVING if up else health_pb2.HealthCheckResponse.NOT_SERVING
    )
    for name in ("", SERVICE_NAME):
        await health.set(name, status)


async def _watch_redis(probe: redis.Redis, health: grpc_health.aio.HealthServicer) -> None:
    """Follow Redis: the health status changes within a few seconds of it."""
    while True:
        await asyncio.sleep(HEALTH_CHECK_S)
        await _check_redis(probe, health)

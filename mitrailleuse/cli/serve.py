"""``mitrailleuse serve grpc|http``: the Python API as a network service."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from mitrailleuse.cli.common import app, err, fail

serve_app = typer.Typer(help="Serve the Python API over the network.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


def _installed(*modules: str) -> bool:
    return all(importlib.util.find_spec(module) is not None for module in modules)


@serve_app.command("grpc")
def grpc_service(
    address: Annotated[
        str, typer.Option("--address", help="Where to listen (beyond loopback: TLS and tokens).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port (0: any free one).")] = 50051,
    tls_cert: Annotated[
        Path | None, typer.Option("--tls-cert", help="The server's certificate (PEM).")
    ] = None,
    tls_key: Annotated[
        Path | None, typer.Option("--tls-key", help="Its private key (PEM).")
    ] = None,
) -> None:
    """mitrailleuse.v1.MitrailleuseService, with reflection and health, until Ctrl-C."""
    if not _installed("grpc_reflection"):
        fail("the gRPC service needs its packages: pip install 'mitrailleuse[grpc]'")
    from mitrailleuse.services.grpc_server import serve

    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key, or neither")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None

    def ready(where: str) -> None:
        err.print(f"gRPC service on {where} (Ctrl-C to stop)", highlight=False)

    serve(address, port, tls, on_ready=ready)


@serve_app.command("http")
def http_api(
    address: Annotated[
        str, typer.Option("--address", help="Where to listen (beyond loopback: tokens).")
    ] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="The port (0: any free one).")] = 8007,
) -> None:
    """The HTTP API under /v1 (OpenAPI docs at /docs), until Ctrl-C."""
    # python-multipart is imported as python_multipart, or as multipart before 0.0.13
    if not _installed("fastapi", "uvicorn") or not (
        _installed("python_multipart") or _installed("multipart")
    ):
        fail("the HTTP API needs its packages: pip install 'mitrailleuse[http]'")
    from mitrailleuse.services.http_server import serve

    def ready(where: str) -> None:
        err.print(f"HTTP API on {where} (Ctrl-C to stop)", highlight=False)

    serve(address, port, on_ready=ready)

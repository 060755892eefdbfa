"""``mitrailleuse serve grpc``: the Python API as a network service."""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Annotated

import typer

from mitrailleuse.cli.common import app, err, fail

serve_app = typer.Typer(help="Serve the Python API over the network.", no_args_is_help=True)
app.add_typer(serve_app, name="serve")


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
    if importlib.util.find_spec("grpc_reflection") is None:
        fail("the gRPC service needs its packages: pip install 'mitrailleuse[grpc]'")
    from mitrailleuse.services.grpc_server import serve

    if (tls_cert is None) != (tls_key is None):
        fail("give both --tls-cert and --tls-key, or neither")
    tls = (tls_cert, tls_key) if tls_cert and tls_key else None

    def ready(where: str) -> None:
        err.print(f"gRPC service on {where} (Ctrl-C to stop)", highlight=False)

    serve(address, port, tls, on_ready=ready)

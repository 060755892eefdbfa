"""Command line: ``python -m mitrailleuse.simulator --port 0 --rpm 600 ...``.

Prints one ``SIMULATOR_URL=http://host:port`` line once listening, so a parent process
(a benchmark, a compose file, a test) can learn the port it got.
"""

from __future__ import annotations

import argparse
import sys

from mitrailleuse.simulator.server import serve
from mitrailleuse.simulator.settings import SimulatorSettings


def build_parser() -> argparse.ArgumentParser:
    """Return the argument parser; every settings field has a flag."""
    defaults = SimulatorSettings()
    parser = argparse.ArgumentParser(
        prog="python -m mitrailleuse.simulator",
        description="Fake OpenAI and DeepL APIs on loopback.",
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8765, help="0 picks a free port")
    parser.add_argument("--latency-ms", type=float, default=defaults.latency_ms)
    parser.add_argument("--latency-jitter-ms", type=float, default=defaults.latency_jitter_ms)
    parser.add_argument("--rpm", type=int, default=None, help="requests per minute limit")
    parser.add_argument("--tpm", type=int, default=None, help="tokens per minute limit")
    parser.add_argument("--error-rate", type=float, default=defaults.error_rate)
    parser.add_argument("--seed", type=int, default=defaults.seed)
    parser.add_argument("--batch-duration-s", type=float, default=defaults.batch_duration_s)
    parser.add_argument("--deepl-character-limit", type=int, default=None)
    parser.add_argument("--hang-s", type=float, default=defaults.hang_s)
    parser.add_argument("--stream-chunk-ms", type=float, default=defaults.stream_chunk_ms)
    parser.add_argument(
        "--no-record-log", dest="record_log", action="store_false", help="disable /_sim/log"
    )
    return parser


def main(argv: list[str] | None = None) -> int:
    """Parse arguments, serve until SIGINT/SIGTERM and return the exit code."""
    args = vars(build_parser().parse_args(argv))
    host, port = args.pop("host"), args.pop("port")
    settings = SimulatorSettings(**args)

    def announce(url: str) -> None:
        sys.stdout.write(f"SIMULATOR_URL={url}\n")
        sys.stdout.flush()

    serve(host, port, settings, on_ready=announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())

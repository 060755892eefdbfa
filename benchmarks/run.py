"""``make bench``: every benchmark under benchmarks/, gathered into one table and a JSON file.

Each bench runs in a process of its own and measures its figures beside their baselines in the
same run, on this machine, against the simulator over loopback; its last stdout line is
``RESULTS-JSON: {...}``. This script prints one table of all their rows (name, figure, baseline,
target, met?) and writes the same rows, each bench's raw numbers and the machine's description
to ``benchmarks/results.json`` (``results-quick.json`` with ``--quick``, a smoke test of every
bench at small sizes in about two minutes).

Usage: ``python benchmarks/run.py [inputs pipeline ratelimit limits scale native_batch guarantees
grpc http_chat] [--quick]``
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from common import machine, parse_results, print_table

HERE = Path(__file__).resolve().parent

#: name -> (full-size arguments, --quick arguments); the script is bench_<name>.py.
BENCHMARKS: dict[str, tuple[list[str], list[str]]] = {
    "inputs": ([], ["--lines", "100000"]),
    "pipeline": ([], ["--items", "2000", "--in-flight", "64", "--scale-items", "600"]),
    "ratelimit": ([], ["--seconds", "12"]),
    "limits": ([], ["--announced-items", "700", "--cookbook-items", "700"]),
    "scale": ([], ["--lines", "50000", "--seconds", "10"]),
    "native_batch": ([], ["--items", "200", "--batch-duration-s", "2"]),
    "guarantees": ([], ["--items", "60", "--kill-items", "200", "--runs", "3"]),
    "grpc": ([], ["--items", "400", "--rounds", "1"]),
    "http_chat": ([], ["--sessions", "40"]),
}
#: A bench still running after this long is stopped and reported as failed.
TIMEOUT_S = {False: 20 * 60, True: 5 * 60}


def run_one(name: str, quick: bool) -> dict:
    """Run one bench; its rows and raw numbers, or a row saying how it failed."""
    command = [sys.executable, str(HERE / f"bench_{name}.py"), *BENCHMARKS[name][quick]]
    started = time.perf_counter()
    # a session of its own: a bench that times out is stopped with its workers, Redis, simulator
    bench = subprocess.Popen(
        command,
        cwd=HERE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
    )
    try:
        stdout, stderr = bench.communicate(timeout=TIMEOUT_S[quick])
        code: int | str = bench.returncode
    except subprocess.TimeoutExpired:
        os.killpg(bench.pid, signal.SIGKILL)
        stdout, stderr = bench.communicate()
        code = "timeout"
    except KeyboardInterrupt:  # Ctrl-C reaches our group only: pass it on to the bench's
        os.killpg(bench.pid, signal.SIGTERM)
        bench.wait()
        raise
    seconds = round(time.perf_counter() - started, 1)
    results = parse_results(stdout) if code == 0 else None
    if results is None:
        print(f"{name} failed ({code}):\n{stderr[-3000:]}", file=sys.stderr)
        failure = {
            "name": f"{name}: FAILED ({code})",
            "figure": "",
            "baseline": "",
            "target": "",
            "met": False,
        }
        results = {"title": name, "rows": [failure], "raw": {"stderr_tail": stderr[-3000:]}}
    return {**results, "seconds": seconds, "returncode": code, "command": command[1:]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="small sizes: a smoke test")
    parser.add_argument("--output", type=Path, help="the JSON file (default: results.json)")
    parser.add_argument("only", nargs="*", help=f"some of: {' '.join(BENCHMARKS)}")
    args = parser.parse_args()
    unknown = set(args.only) - set(BENCHMARKS)
    if unknown:
        parser.error(f"unknown benchmark(s): {', '.join(sorted(unknown))}")
    names = [name for name in BENCHMARKS if not args.only or name in args.only]
    output = args.output or HERE / ("results-quick.json" if args.quick else "results.json")
    host = machine()
    started = time.perf_counter()
    benches = {}
    for number, name in enumerate(names, start=1):
        print(f"[{number}/{len(names)}] {name} ...", end=" ", flush=True)
        benches[name] = run_one(name, args.quick)
        missed = sum(row["met"] is False for row in benches[name]["rows"])
        note = f", {missed} target(s) missed" if missed else ""
        print(f"{benches[name]['seconds']:.0f} s{note}", flush=True)
    total_s = round(time.perf_counter() - started, 1)

    rows = [{"bench": name, **row} for name, bench in benches.items() for row in bench["rows"]]
    table = [
        {
            "name": r["name"],
            "figure": r["figure"],
            "baseline": r["baseline"],
            "target": r["target"],
            "met?": r["met"],
        }
        for r in rows
    ]
    print_table(
        f"Mitrailleuse benchmarks{' (--quick: small sizes, not figures)' if args.quick else ''}"
        f" - {host['cores']} cores, {host['cpu_model']}, {host['memory_gb']} GB, "
        f"Python {host['python']}, {host['date']}, {total_s / 60:.1f} min",
        table,
    )
    result = {
        "machine": host,
        "quick": args.quick,
        "total_s": total_s,
        "rows": rows,
        "benches": benches,
    }
    output.write_text(json.dumps(result, indent=2, default=str) + "\n")
    print(f"\n{output}")
    if any(bench["returncode"] != 0 for bench in benches.values()):
        sys.exit(1)


if __name__ == "__main__":
    main()

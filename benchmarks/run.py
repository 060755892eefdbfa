"""``make bench``: every benchmark under benchmarks/, each printing its table.

Each script measures its figures and its baseline in the same run, on this machine, against
the simulator over loopback. ``--quick`` shortens the runs (for a smoke test).
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent

BENCHMARKS = {
    "inputs": (["bench_inputs.py"], ["bench_inputs.py", "--lines", "100000"]),
    "pipeline": (
        ["bench_pipeline.py"],
        ["bench_pipeline.py", "--items", "2000", "--latency-items", "500"],
    ),
    "ratelimit": (["bench_ratelimit.py"], ["bench_ratelimit.py", "--seconds", "20"]),
}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("only", nargs="*", choices=[*BENCHMARKS, []])
    args = parser.parse_args()
    for name, (full, quick) in BENCHMARKS.items():
        if args.only and name not in args.only:
            continue
        started = time.perf_counter()
        command = [
            sys.executable,
            str(HERE / (quick if args.quick else full)[0]),
            *(quick if args.quick else full)[1:],
        ]
        done = subprocess.run(command, cwd=HERE, capture_output=True, text=True)
        tables = [line for line in done.stdout.splitlines() if line.strip()]
        print(f"\n== {name} ({time.perf_counter() - started:.0f} s)")
        print("\n".join(tables[-12:]))
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            sys.exit(done.returncode)


if __name__ == "__main__":
    main()

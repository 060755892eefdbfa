"""Where a worker's CPU goes: py-spy on one worker while N items run at a given latency.

Samples only threads holding the GIL (``py-spy record --gil``), so waiting is not counted, and
prints the share of samples per package (self time) and per function (inclusive). Needs
``pip install py-spy`` (and the right to trace the worker: root, or ptrace allowed).

Usage: ``python benchmarks/profile_worker.py [--items 5000] [--latency-ms 0] [--in-flight N]``
"""

from __future__ import annotations

import argparse
import re
import shutil
import signal
import subprocess
import sys
from collections import Counter
from pathlib import Path

from common import UNLIMITED_CONFIG, UNLIMITED_ENV, bench_env, write_questions

from mitrailleuse.api import Mitrailleuse


def shares(raw: Path) -> tuple[int, Counter[str], Counter[str]]:
    """Samples, self samples per package, inclusive samples per function, from collapsed stacks."""
    packages: Counter[str] = Counter()
    functions: Counter[str] = Counter()
    total = 0
    for line in raw.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not stack:
            continue
        n = int(count)
        frames = stack.split(";")
        total += n
        where = re.search(r"\((.*?)(?::\d+)?\)$", frames[-1])
        path = where.group(1) if where else frames[-1]
        package = re.search(
            r"site-packages/([^/]+)|(mitrailleuse/[^/.]+)|python3\.\d+/([^/.]+)", path
        )
        packages[next((g for g in package.groups() if g), path) if package else path] += n
        for frame in {re.sub(r":\d+\)$", ")", frame) for frame in frames}:
            functions[frame] += n
    return total, packages, functions


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=5000)
    parser.add_argument("--latency-ms", type=float, default=0)
    parser.add_argument("--in-flight", type=int, help="rate_limit.max_in_flight (default: none)")
    parser.add_argument("--top", type=int, default=40)
    args = parser.parse_args()
    spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(spy).exists():
        raise SystemExit("py-spy is not installed: pip install py-spy")
    with bench_env() as bench:
        bench.simulator.configure(latency_ms=args.latency_ms)
        capped = {"MITRAILLEUSE_OPENAI_MAX_IN_FLIGHT": str(args.in_flight or "")}
        worker = bench.worker(env={**UNLIMITED_ENV, **(capped if args.in_flight else {})})
        source = write_questions(bench.scratch / "profile.jsonl", args.items)
        m = Mitrailleuse()
        config = {"openai": {"batch": {"batch_size": 50}, "rate_limit": UNLIMITED_CONFIG}}
        task = m.create_task("bench", "openai", "profile", config, [source])
        raw = bench.scratch / "stacks.txt"
        command = [spy, "record", "--pid", str(worker.pid), "--format", "raw", "-o", str(raw)]
        recorder = subprocess.Popen(
            [*command, "--rate", "200", "--nonblocking", "--gil"],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        progress = m.submit(task).wait(timeout=3600, poll_s=0.2)
        recorder.send_signal(signal.SIGINT)
        recorder.wait()
        total, packages, functions = shares(raw)
    print(f"{progress.succeeded} items at {args.latency_ms:g} ms; {total} samples holding the GIL")
    print("\nself, by package")
    for name, n in packages.most_common(15):
        print(f"{100 * n / total:5.1f} %  {name}")
    print("\ninclusive, by function")
    for name, n in functions.most_common(args.top):
        print(f"{100 * n / total:5.1f} %  {name[:140]}")


if __name__ == "__main__":
    main()

"""Benchmark mitrailleuse.inputs: stream a large JSONL file in constant memory.

Generates an N-line JSONL file (default 1,000,000) in a temporary directory, then measures, each
in its own child process so that peak RSS figures do not mix:

- ``interpreter``: the child's floor (Python + mitrailleuse.inputs imported, nothing read);
- ``iter_items``: every item of the file through the streaming reader;
- ``count_items``: the fast count the feeder does first;
- ``naive json.loads``: the baseline ``[json.loads(l) for l in open(f)]``.

Usage: python benchmarks/bench_inputs.py [--lines N] [--json]

With ``--json`` the figures go to stdout as JSON and the table to stderr. Target: the streaming
reader's peak RSS stays under 100 MB whatever N is.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
TARGET_PEAK_RSS_MB = 100.0
MODES = ("interpreter", "iter_items", "count_items", "naive")
LABELS = {
    "interpreter": "interpreter floor",
    "iter_items": "iter_items (stream)",
    "count_items": "count_items",
    "naive": "naive json.loads",
}


def generate(path: Path, lines: int) -> None:
    with path.open("w", encoding="utf-8", buffering=1 << 20) as handle:
        for n in range(lines):
            a, b = n % 997, (n * 7) % 1009
            handle.write(
                f'{{"input_text": "What is {a} + {b}?", "instructions": "Answer briefly"}}\n'
            )


def peak_rss_mb() -> float:
    """Peak resident set size of this process, from /proc (VmHWM) or getrusage."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    except OSError:
        pass
    maxrss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return maxrss / (1024 * 1024) if sys.platform == "darwin" else maxrss / 1024


def child(mode: str, path: Path) -> dict[str, Any]:
    """Run one measurement in this (child) process and return its figures."""
    from mitrailleuse.inputs import count_items, iter_items

    started = time.perf_counter()
    items = 0
    invalid = 0
    if mode == "iter_items":
        for item, _cursor in iter_items([path]):
            items += 1
            invalid += item.error is not None
    elif mode == "count_items":
        items = count_items([path])
    elif mode == "naive":
        with path.open(encoding="utf-8") as handle:
            loaded = [json.loads(line) for line in handle]
        items = len(loaded)
    seconds = time.perf_counter() - started
    return {
        "mode": mode,
        "items": items,
        "invalid": invalid,
        "seconds": seconds,
        "peak_rss_mb": peak_rss_mb(),
    }


def measure(mode: str, path: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout)


def table(lines: int, file_mb: float, rows: list[dict[str, Any]]) -> str:
    out = [
        f"input: {lines:,} lines, {file_mb:.1f} MB; Python {sys.version.split()[0]}",
        f"{'reader':<22} {'lines':>11} {'seconds':>8} {'lines/s':>11} {'peak RSS MB':>12}",
    ]
    for row in rows:
        rate = f"{row['items'] / row['seconds']:,.0f}" if row["items"] and row["seconds"] else "-"
        count = f"{row['items']:,}" if row["mode"] != "interpreter" else "-"
        out.append(
            f"{LABELS[row['mode']]:<22} {count:>11} {row['seconds']:>8.2f} {rate:>11} "
            f"{row['peak_rss_mb']:>12.1f}"
        )
    stream = next(r for r in rows if r["mode"] == "iter_items")
    verdict = "OK" if stream["peak_rss_mb"] < TARGET_PEAK_RSS_MB else "OVER TARGET"
    peak, target = stream["peak_rss_mb"], TARGET_PEAK_RSS_MB
    out.append(f"streaming peak RSS {peak:.1f} MB vs target < {target:.0f} MB: {verdict}")
    return "\n".join(out)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the generated file")
    parser.add_argument("--json", action="store_true", help="write the figures as JSON to stdout")
    parser.add_argument("--child", nargs=2, metavar=("MODE", "FILE"), help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.child:
        mode, file = args.child
        if mode not in MODES:
            parser.error(f"unknown mode {mode!r}")
        print(json.dumps(child(mode, Path(file))))
        return 0

    with tempfile.TemporaryDirectory(prefix="bench_inputs_") as tmp:
        path = Path(tmp) / "questions.jsonl"
        started = time.perf_counter()
        generate(path, args.lines)
        generate_s = time.perf_counter() - started
        file_mb = path.stat().st_size / (1024 * 1024)
        rows = [measure(mode, path) for mode in MODES]

    for row in rows:
        if row["mode"] != "interpreter" and row["items"] != args.lines:
            raise SystemExit(f"{row['mode']} saw {row['items']} items, expected {args.lines}")
    report = table(args.lines, file_mb, rows)
    stream = next(r for r in rows if r["mode"] == "iter_items")
    figures = {
        "lines": args.lines,
        "file_mb": round(file_mb, 2),
        "generate_s": round(generate_s, 3),
        "python": sys.version.split()[0],
        "target_peak_rss_mb": TARGET_PEAK_RSS_MB,
        "target_met": stream["peak_rss_mb"] < TARGET_PEAK_RSS_MB,
        "results": {
            row["mode"]: {
                "items": row["items"],
                "seconds": round(row["seconds"], 3),
                "lines_per_s": (
                    round(row["items"] / row["seconds"])
                    if row["items"] and row["seconds"]
                    else None
                ),
                "peak_rss_mb": round(row["peak_rss_mb"], 1),
            }
            for row in rows
        },
    }
    if args.json:
        print(report, file=sys.stderr)
        print(json.dumps(figures, indent=2))
    else:
        print(report)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

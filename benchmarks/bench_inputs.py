"""Reading inputs: a large JSONL file streamed in constant memory.

Generates an N-line JSONL file (default 1,000,000) in a temporary directory, then measures, each
in a fresh child interpreter so that peak RSS figures (the kernel's VmHWM) do not mix:

- ``interpreter``: the child's floor (Python + mitrailleuse.inputs imported, nothing read);
- ``iter_items``: every item of the file through the streaming reader;
- ``count_items``: the fast count ``submit`` does first;
- ``naive json.loads``: the baseline ``[json.loads(l) for l in open(f)]``.

Target: the streaming reader's peak RSS stays under 100 MB whatever N is.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

from common import REPO, Row, own_peak_rss_mb, report

TARGET_PEAK_RSS_MB = 100.0
MODES = ("interpreter", "iter_items", "count_items", "naive")


def generate(path: Path, lines: int) -> None:
    with path.open("w", encoding="utf-8", buffering=1 << 20) as handle:
        for n in range(lines):
            a, b = n % 997, (n * 7) % 1009
            handle.write(
                f'{{"input_text": "What is {a} + {b}?", "instructions": "Answer briefly"}}\n'
            )


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
        "peak_rss_mb": own_peak_rss_mb(),
    }


def measure(mode: str, path: Path) -> dict[str, Any]:
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
    }
    done = subprocess.run(
        [sys.executable, __file__, "--child", mode, str(path)],
        check=True,
        capture_output=True,
        text=True,
        env=env,
    )
    return json.loads(done.stdout)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000, help="lines in the generated file")
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
        file_mb = path.stat().st_size / 1e6
        rows = [measure(mode, path) for mode in MODES]

    for row in rows:
        if row["mode"] != "interpreter" and row["items"] != args.lines:
            raise SystemExit(f"{row['mode']} saw {row['items']} items, expected {args.lines}")
    by_mode = {row["mode"]: row for row in rows}

    def read(mode: str) -> str:
        row = by_mode[mode]
        return f"{row['peak_rss_mb']:.1f} MB ({row['items'] / row['seconds']:,.0f} lines/s)"

    stream = by_mode["iter_items"]["peak_rss_mb"]
    n = f"{args.lines:,}"
    table = [
        Row(
            f"inputs: read {n} JSONL lines ({file_mb:.0f} MB): peak RSS (lines/s)",
            read("iter_items"),
            f"{read('naive')}, json.loads per line into a list",
            f"< {TARGET_PEAK_RSS_MB:.0f} MB",
            stream < TARGET_PEAK_RSS_MB,
        ),
        Row(
            f"inputs: count {n} lines (submit's first pass): peak RSS (lines/s)",
            read("count_items"),
            f"{by_mode['interpreter']['peak_rss_mb']:.1f} MB, the interpreter floor",
        ),
    ]
    raw = {
        "lines": args.lines,
        "file_mb": round(file_mb, 2),
        "generate_s": round(generate_s, 3),
        "results": {row["mode"]: {k: v for k, v in row.items() if k != "mode"} for row in rows},
    }
    report("inputs", f"inputs: {n} lines, Python {sys.version.split()[0]}", table, raw)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

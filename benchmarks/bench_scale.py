"""Scale: a 1,000,000-line JSONL input through the feeder, in bounded memory, at 0 ms latency.

The submitting process (the one that calls ``Mitrailleuse().create_task`` and ``submit``, then
follows the run as a user's script would) is a fresh interpreter of its own, so its peak RSS is
its own: it reports the kernel's high-water mark (VmHWM) when it ends. The feeder runs in the
worker serving the control queue, so the workers' RSS is measured too: sampled from /proc every
0.2 s, and their VmHWM read before they stop. Each phase has a fresh Redis, whose
``used_memory_peak`` is that phase's.

- live: a control worker (the feeder) and an openai worker, default pools; the run goes on for
  N seconds (steady state: the feeder's window is full), then ``Run.cancel()``.
- batch: native batches (``batch_size`` 1000, ``combine_batches``: 50,000 lines a batch); the
  time from ``submit`` until every line is in a batch uploaded and created at the simulator
  (each batch's state file past the upload step), beside a plain openai-SDK script that reads
  the same file, writes the same request lines and uploads and creates the same batches.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

from common import (
    UNLIMITED_CONFIG,
    UNLIMITED_ENV,
    Row,
    RssSampler,
    bench_env,
    own_peak_rss_mb,
    plain_batch_files,
    plain_create_batch,
    plural,
    proc_mb,
    report,
    write_questions,
)

TARGET_SUBMITTER_MB = 200.0
TARGET_REDIS_MB = 300.0
CONFIGS = {
    "live": {"openai": {"batch": {"batch_size": 50}, "rate_limit": UNLIMITED_CONFIG}},
    "batch": {
        "openai": {"batch": {"is_batch_active": True, "batch_size": 1000, "combine_batches": True}}
    },
}
CHILD_MARK = "CHILD-JSON: "
#: The fewest items done over which Redis's growth is fitted (the feeder's window is 2,000).
MIN_FIT_ITEMS = 2_000


# -- the children: fresh interpreters, so that their peak RSS is theirs alone ---------------


def submitter(mode: str, source: Path, seconds: float, timeout_s: float) -> dict:
    """Create and submit the task, follow it as a user's script would; report own peak RSS."""
    from mitrailleuse.api import Mitrailleuse

    floor = proc_mb("self", "VmRSS")  # the interpreter with the API imported
    m = Mitrailleuse()
    t0 = time.perf_counter()
    task = m.create_task("bench", "openai", f"scale-{mode}", CONFIGS[mode], [source])
    t1 = time.perf_counter()
    run = m.submit(task)
    t2 = time.perf_counter()
    out = {"floor_rss_mb": floor, "create_s": t1 - t0, "submit_s": t2 - t1}
    if mode == "live":
        while time.perf_counter() - t2 < seconds:
            progress = run.progress()
            if progress.finished:
                break
            time.sleep(0.5)
        progress = run.progress()
        out["followed_s"] = time.perf_counter() - t2
        run.cancel()
        final = run.wait(timeout=timeout_s, poll_s=0.2)
        out.update(total=progress.total, done=progress.done, final_state=final.state)
        out["done_after_cancel"] = final.done
    else:
        deadline = time.monotonic() + timeout_s
        while True:
            progress, states = run.progress(), run.batches()
            in_batches = sum(s.items for s in states)
            if in_batches == progress.total and all(s.step == "created" for s in states):
                break
            if time.monotonic() > deadline:
                steps = [s.step for s in states]
                raise SystemExit(f"batches not all created after {timeout_s}s: {steps}")
            time.sleep(0.1)
        out["uploaded_s"] = time.perf_counter() - t2
        out.update(total=progress.total, batches=len(states), lines=in_batches)
    out["peak_rss_mb"] = own_peak_rss_mb()
    return {k: round(v, 2) if isinstance(v, float) else v for k, v in out.items()}


def plain_batches(source: Path) -> dict:
    """The baseline: read, write request lines, upload, create; the openai SDK and nothing else."""
    import openai

    client = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL and OPENAI_API_KEY: the simulator
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="plain-batches-") as scratch:
        files = plain_batch_files(source, Path(scratch))
        for path in files:
            plain_create_batch(client, path)
    return {
        "uploaded_s": round(time.perf_counter() - started, 2),
        "batches": len(files),
        "peak_rss_mb": round(own_peak_rss_mb(), 2),
    }


def run_child(args: list[str], sampler: RssSampler | None, timeout_s: float) -> dict:
    """This script in a child process; its figures are the ``CHILD-JSON`` line it prints."""
    child = subprocess.Popen(
        [sys.executable, __file__, "--child", json.dumps(args)], stdout=subprocess.PIPE, text=True
    )
    if sampler is not None:
        sampler.add("submitter", child.pid)
    try:
        stdout, _ = child.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        child.kill()
        raise
    if child.returncode != 0:
        raise SystemExit(f"child {args[0]} exited with {child.returncode}")
    line = next(x for x in reversed(stdout.splitlines()) if x.startswith(CHILD_MARK))
    return json.loads(line[len(CHILD_MARK) :])


# -- the phases ------------------------------------------------------------------------------


class RedisGrowth:
    """Redis's memory against the calls the simulator answered, once a second.

    A minute's run is far from the input's end, so what Redis keeps per item done says where
    it would be at the end. Measured as ``used_memory`` less the clients' and the AOF's buffers
    (which come and go with the traffic), fitted by least squares over the run's second half
    (the feeder's window long full); a cancelled run's leftovers would count the items it
    dispatched and never called.
    """

    def __init__(self, bench, interval_s: float = 1.0) -> None:
        self.bench, self.interval_s = bench, interval_s
        self.samples: list[tuple[int, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="redis-growth", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            done = self.bench.simulator.stats()["chat_requests"]
            info = self.bench.redis_info()
            buffers = (
                info["mem_clients_normal"] + info["mem_clients_slaves"] + info["mem_aof_buffer"]
            )
            self.samples.append((done, info["used_memory"] - buffers))

    def stop(self, items: int) -> dict:
        """Bytes per item done, and the memory that projects at ``items`` done."""
        self._stop.set()
        self._thread.join()
        steady = self.samples[len(self.samples) // 2 :]
        xs = [x for x, _ in steady]
        if len(steady) < 3 or max(xs, default=0) - min(xs, default=0) < MIN_FIT_ITEMS:
            return {"samples": len(self.samples)}  # the window's churn would drown the slope
        mean_x, mean_y = sum(xs) / len(steady), sum(y for _, y in steady) / len(steady)
        slope = sum((x - mean_x) * (y - mean_y) for x, y in steady) / sum(
            (x - mean_x) ** 2 for x in xs
        )
        return {
            "samples": len(self.samples),
            "fitted_items": [min(xs), max(xs)],
            "bytes_per_item": round(slope),
            "projected_mb": round((mean_y + slope * (items - mean_x)) / 1e6, 1),
        }


def phase(mode: str, source: Path, seconds: float, timeout_s: float) -> dict:
    """One submitter run against fresh Redis, simulator and workers, with RSS sampled."""
    with bench_env() as bench:
        queues = {"control": ("mitrailleuse",)}
        if mode == "live":
            queues["openai"] = ("openai",)
        workers = {
            name: bench.worker(queues=q, name=f"scale-{name}", env=UNLIMITED_ENV)
            for name, q in queues.items()
        }
        sampler = RssSampler(0.2)
        for name, worker in workers.items():
            sampler.add(f"{name} worker", worker.pid)
        sampler.add("redis-server", bench.redis.process.pid)
        sampler.start()
        time.sleep(0.5)  # a first sample of each idle process
        redis_start = bench.redis_info()["used_memory"]
        growth = RedisGrowth(bench) if mode == "live" else None
        child = run_child(["submitter", mode, str(source), seconds, timeout_s], sampler, timeout_s)
        processes = sampler.stop()
        redis_growth = growth.stop(child["total"]) if growth else None
        info = bench.redis_info()
        stats = bench.simulator.stats()
        simulator_rss = proc_mb(bench.simulator.process.pid, "VmRSS")
    if mode == "live" and child["final_state"] != "cancelled":
        raise SystemExit(f"the live run ended {child['final_state']}, not cancelled")
    seen = (stats["files_uploaded"], stats["batches_created"])
    if mode == "batch" and seen != (child["batches"], child["batches"]):
        raise SystemExit(f"{child['batches']} batches, but the simulator saw {stats}")
    return {
        "submitter": child,
        "processes": processes,
        "redis_used_memory_start_mb": round(redis_start / 1e6, 1),
        "redis_used_memory_end_mb": round(info["used_memory"] / 1e6, 1),
        "redis_used_memory_peak_mb": round(info["used_memory_peak"] / 1e6, 1),
        "redis_growth": redis_growth,
        "simulator_stats": {k: stats[k] for k in ("requests", "files_uploaded", "batches_created")},
        "simulator_rss_mb": simulator_rss and round(simulator_rss),
        "rss_samples": sampler.samples,
    }


def baseline_phase(source: Path, timeout_s: float) -> dict:
    """The plain SDK script, against a simulator of its own (the first one holds 1M lines)."""
    with bench_env() as bench:
        out = run_child(["plain", str(source)], None, timeout_s)
        stats = bench.simulator.stats()
    out["simulator"] = {k: stats[k] for k in ("files_uploaded", "batches_created")}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--seconds", type=float, default=60, help="the live run's length")
    parser.add_argument("--timeout", type=float, default=600, help="per phase")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        kind, *rest = json.loads(args.child)
        if kind == "submitter":
            out = submitter(rest[0], Path(rest[1]), float(rest[2]), float(rest[3]))
        else:
            out = plain_batches(Path(rest[0]))
        print(CHILD_MARK + json.dumps(out), flush=True)
        return

    with tempfile.TemporaryDirectory(prefix="bench-scale-") as scratch:
        source = Path(scratch) / "scale.jsonl"
        started = time.perf_counter()
        write_questions(source, args.lines)
        generate_s = time.perf_counter() - started
        file_mb = source.stat().st_size / 1e6
        live = phase("live", source, args.seconds, args.timeout)
        batch = phase("batch", source, 0, args.timeout)
        plain = baseline_phase(source, args.timeout)
    rows = figures(args, live, batch, plain)
    raw = {
        "lines": args.lines,
        "file_mb": round(file_mb, 1),
        "generate_s": round(generate_s, 2),
        "live": live,
        "batch": batch,
        "plain_sdk_batches": plain,
        "args": vars(args),
    }
    report("scale", f"scale: {args.lines:,}-line JSONL ({file_mb:.0f} MB), 0 ms", rows, raw)


def figures(args: argparse.Namespace, live: dict, batch: dict, plain: dict) -> list[Row]:
    """The table's rows: per phase, the submitter, the workers, Redis; then each phase's pace."""

    def mb(value: float | None) -> str:
        return "-" if value is None else f"{value:.0f} MB"

    def memory_rows(label: str, phase: dict, workers: list[str]) -> list[Row]:
        sub, seen = phase["submitter"], phase["processes"]
        peaks = [seen[f"{w} worker"]["peak_rss_mb"] for w in workers]
        idle = [seen[f"{w} worker"]["first_rss_mb"] for w in workers]
        redis_peak = phase["redis_used_memory_peak_mb"]
        return [
            Row(
                f"scale ({label}, {args.lines:,} lines): submitter peak RSS",
                mb(sub["peak_rss_mb"]),
                f"{mb(sub['floor_rss_mb'])} with the API imported",
                f"<= {TARGET_SUBMITTER_MB:.0f} MB",
                sub["peak_rss_mb"] <= TARGET_SUBMITTER_MB,
            ),
            Row(
                f"scale ({label}): worker peak RSS, " + " / ".join(workers),
                " / ".join(map(mb, peaks)),
                "idle: " + " / ".join(map(mb, idle)),
            ),
            Row(
                f"scale ({label}): Redis used_memory_peak",
                mb(redis_peak),
                f"{mb(phase['redis_used_memory_start_mb'])} at start",
                f"<= {TARGET_REDIS_MB:.0f} MB",
                redis_peak <= TARGET_REDIS_MB,
            ),
        ]

    sub, followed = live["submitter"], live["submitter"]["followed_s"]
    pace = Row(
        f"scale (live): items done in {followed:.0f} s at 0 ms (of {sub['total']:,})",
        f"{sub['done']:,} ({sub['done'] / followed:.0f}/s)",
    )
    growth = live["redis_growth"]
    if "projected_mb" in growth:
        first, last = growth["fitted_items"]
        projection = Row(
            f"scale (live): Redis memory per item done; at {sub['total']:,} done (projected)",
            f"{growth['bytes_per_item']:,} B; {growth['projected_mb']:,.0f} MB",
            f"fitted from {first:,} to {last:,} items done",
            f"<= {TARGET_REDIS_MB:.0f} MB",
            growth["projected_mb"] <= TARGET_REDIS_MB,
        )
    else:
        projection = Row("scale (live): Redis memory per item done", "too short a run to fit")
    sub = batch["submitter"]
    upload = Row(
        f"scale (batch): read, split, upload {sub['lines']:,} lines as native batches",
        f"{sub['uploaded_s']:.1f} s ({sub['lines'] / sub['uploaded_s']:,.0f} lines/s, "
        f"{plural(sub['batches'], 'batch')})",
        f"{plain['uploaded_s']:.1f} s, a plain openai SDK script "
        f"({plural(plain['batches'], 'batch')})",
    )
    return [
        *memory_rows("live", live, ["control", "openai"]),
        projection,
        pace,
        *memory_rows("batch", batch, ["control"]),
        upload,
    ]


if __name__ == "__main__":
    main()

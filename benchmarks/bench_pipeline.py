"""The live pipeline's overhead and concurrency, against the simulator over loopback.

Overhead: N items at 0 ms latency through one worker (its default threads pool), beside a plain
asyncio + httpx loop with the same concurrency, in the same run: items/s and CPU-ms per item
(worker + Redis for the pipeline, the whole child for the baseline). Zero latency leaves only
what each side spends per item.

Concurrency: M items at 1,000 ms latency through one worker at ``-c 256``: the requests the
simulator saw in flight at once (``/_sim/stats`` max_in_flight), and items/s, against the ideal
(concurrency / latency). The rate limiter's budgets are lifted (``UNLIMITED_ENV``, and the
task's ``rate_limit``), so only the worker's slots can cap it.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time

from common import (
    BENCH_KEY,
    UNLIMITED_CONFIG,
    UNLIMITED_ENV,
    Row,
    bench_env,
    ratio,
    report,
    write_questions,
)

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.pipeline.app import app
from mitrailleuse.testing import cpu_seconds


def run_pipeline(bench, items: int, concurrency: int | None, name: str) -> dict:
    """One run of ``items`` through a fresh worker; wall time from submit to completed."""
    worker = bench.worker(concurrency=concurrency, env=UNLIMITED_ENV)
    try:
        source = write_questions(bench.scratch / f"{name}.jsonl", items)
        m = Mitrailleuse()
        config = {"openai": {"batch": {"batch_size": 50}, "rate_limit": UNLIMITED_CONFIG}}
        task = m.create_task("bench", "openai", name, config, [source])
        bench.simulator.reset()
        cpu_before = cpu_seconds(worker.pid) + cpu_seconds(bench.redis.process.pid)
        started = time.perf_counter()
        progress = m.submit(task).wait(timeout=3600, poll_s=0.1)
        wall = time.perf_counter() - started
        cpu = cpu_seconds(worker.pid) + cpu_seconds(bench.redis.process.pid) - cpu_before
        stats = bench.simulator.stats()
    finally:
        worker.stop()
    if progress.succeeded != items:
        raise SystemExit(f"{name}: {progress}")
    return {
        "items": items,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 1),
        "cpu_ms_per_item": round(cpu * 1000 / items, 2),
        "max_in_flight": stats["max_in_flight"],
    }


async def _baseline(url: str, items: int, concurrency: int) -> None:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(items):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    headers = {"Authorization": f"Bearer {BENCH_KEY}"}
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def loop() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"b{n}"}]}
                response = await client.post("/chat/completions", json=body, headers=headers)
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

        await asyncio.gather(*(loop() for _ in range(concurrency)))


def run_baseline(bench, items: int, concurrency: int) -> dict:
    """asyncio + httpx in a forked child, so its CPU time is measured alone."""
    bench.simulator.reset()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.run(_baseline(bench.env["OPENAI_BASE_URL"], items, concurrency))
            code = 0
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"the asyncio + httpx baseline exited with {status}")
    return {
        "items": items,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 1),
        "cpu_ms_per_item": round((usage.ru_utime + usage.ru_stime) * 1000 / items, 2),
        "max_in_flight": bench.simulator.stats()["max_in_flight"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--latency-items", type=int, default=2_000)
    parser.add_argument("--latency-ms", type=float, default=1_000)
    parser.add_argument("--latency-concurrency", type=int, default=256)
    args = parser.parse_args()
    default_c = app.conf.worker_concurrency  # the worker's default pool: what users get
    with bench_env() as bench:
        overhead = run_pipeline(bench, args.items, None, "overhead")
        baseline = run_baseline(bench, args.items, default_c)
        bench.simulator.configure(latency_ms=args.latency_ms)
        slow = run_pipeline(bench, args.latency_items, args.latency_concurrency, "latency")
    c, ms = args.latency_concurrency, args.latency_ms
    ideal = c / (ms / 1000)
    base = f"asyncio + httpx, {default_c} at once"
    rows = [
        Row(
            f"overhead: items/s, {args.items:,} items at 0 ms, 1 worker -c {default_c}",
            f"{overhead['items_per_s']:.0f}",
            f"{baseline['items_per_s']:.0f} ({base}); ratio "
            + ratio(overhead["items_per_s"], baseline["items_per_s"]),
        ),
        Row(
            "overhead: CPU-ms/item (worker + Redis)",
            f"{overhead['cpu_ms_per_item']:.2f}",
            f"{baseline['cpu_ms_per_item']:.2f} ({base}); ratio "
            + ratio(overhead["cpu_ms_per_item"], baseline["cpu_ms_per_item"]),
            "<= 2",
            overhead["cpu_ms_per_item"] <= 2,
        ),
        Row(
            f"concurrency: requests in flight, {args.latency_items:,} items at {ms:.0f} ms, -c {c}",
            f"{slow['max_in_flight']} ({slow['max_in_flight'] / c:.0%})",
            f"{c} ideal",
            ">= 90% of ideal",
            slow["max_in_flight"] >= 0.9 * c,
        ),
        Row(
            "concurrency: items/s",
            f"{slow['items_per_s']:.0f}",
            f"{ideal:.0f} ideal ({c} / {ms / 1000:g} s); ratio {slow['items_per_s'] / ideal:.2f}",
        ),
    ]
    raw = {"overhead": overhead, "baseline": baseline, "latency": slow, "args": vars(args)}
    report("pipeline", f"pipeline, one worker, {os.cpu_count()} cores", rows, raw)


if __name__ == "__main__":
    main()

"""The live pipeline's overhead and concurrency, against the simulator over loopback.

Prints: items/s and CPU-ms per item for N items at 0 ms latency (one worker, its default pool),
beside a plain asyncio + httpx loop with the same concurrency; and, at high latency, the
requests in flight achieved against the worker's concurrency.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import time

from common import BENCH_KEY, bench_env, print_table, write_questions

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.testing import cpu_seconds


def run_pipeline(bench, items: int, concurrency: int, batch_size: int = 50) -> dict:
    worker = bench.worker(concurrency=concurrency)
    try:
        source = write_questions(bench.scratch / f"q{items}.jsonl", items)
        m = Mitrailleuse()
        # the simulator has no limit: the budgets are opened wide, so the pipeline is measured
        unlimited = {
            "requests_per_minute": 10**7,
            "tokens_per_minute": None,
            "max_in_flight": 10**6,
        }
        config = {"openai": {"batch": {"batch_size": batch_size}, "rate_limit": unlimited}}
        task = m.create_task("bench", "openai", "overhead", config, [source])
        bench.simulator.reset()
        cpu_before = cpu_seconds(worker.pid) + cpu_seconds(bench.redis.process.pid)
        started = time.perf_counter()
        progress = m.submit(task).wait(timeout=3600, poll_s=0.1)
        wall = time.perf_counter() - started
        worker_cpu = cpu_seconds(worker.pid)
        redis_cpu = cpu_seconds(bench.redis.process.pid)
        stats = bench.simulator.stats()
    finally:
        worker.stop()
    assert progress.succeeded == items, progress
    return {
        "wall_s": wall,
        "items_per_s": items / wall,
        "cpu_ms_per_item": (worker_cpu + redis_cpu - cpu_before) * 1000 / items,
        "max_in_flight": stats["max_in_flight"],
    }


async def _baseline(url: str, items: int, concurrency: int) -> None:
    import httpx

    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(items):
        queue.put_nowait(n)
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=60) as client:

        async def loop() -> None:
            while not queue.empty():
                n = queue.get_nowait()
                body = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": f"q{n}"}]}
                response = await client.post(
                    "/chat/completions", json=body, headers={"Authorization": f"Bearer {BENCH_KEY}"}
                )
                response.raise_for_status()
                response.json()["choices"][0]["message"]["content"]

        await asyncio.gather(*(loop() for _ in range(concurrency)))


def run_baseline(bench, items: int, concurrency: int) -> dict:
    """asyncio + httpx in a child process, so its CPU time is measured alone."""
    bench.simulator.reset()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        asyncio.run(_baseline(bench.env["OPENAI_BASE_URL"], items, concurrency))
        os._exit(0)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    assert status == 0
    return {
        "wall_s": wall,
        "items_per_s": items / wall,
        "cpu_ms_per_item": (usage.ru_utime + usage.ru_stime) * 1000 / items,
        "max_in_flight": bench.simulator.stats()["max_in_flight"],
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--items", type=int, default=20_000)
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--latency-items", type=int, default=2_000)
    parser.add_argument("--latency-ms", type=float, default=500)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with bench_env() as bench:
        pipeline = run_pipeline(bench, args.items, args.concurrency)
        baseline = run_baseline(bench, args.items, args.concurrency)
        bench.simulator.configure(latency_ms=args.latency_ms)
        latency = run_pipeline(bench, args.latency_items, args.concurrency)
    ideal = args.concurrency / (args.latency_ms / 1000)
    table = [
        {
            "figure": "items/s (0 ms)",
            "pipeline": f"{pipeline['items_per_s']:.0f}",
            "asyncio+httpx": f"{baseline['items_per_s']:.0f}",
            "ratio": f"{pipeline['items_per_s'] / baseline['items_per_s']:.2f}",
        },
        {
            "figure": "CPU-ms/item (0 ms)",
            "pipeline": f"{pipeline['cpu_ms_per_item']:.2f}",
            "asyncio+httpx": f"{baseline['cpu_ms_per_item']:.2f}",
            "ratio": f"{pipeline['cpu_ms_per_item'] / baseline['cpu_ms_per_item']:.2f}",
        },
        {
            "figure": f"in flight ({args.latency_ms:.0f} ms)",
            "pipeline": str(latency["max_in_flight"]),
            "asyncio+httpx": f"ideal {args.concurrency}",
            "ratio": f"{latency['max_in_flight'] / args.concurrency:.2f}",
        },
        {
            "figure": f"items/s ({args.latency_ms:.0f} ms)",
            "pipeline": f"{latency['items_per_s']:.0f}",
            "asyncio+httpx": f"ideal {ideal:.0f}",
            "ratio": f"{latency['items_per_s'] / ideal:.2f}",
        },
    ]
    print_table(
        f"pipeline, one worker (threads, -c {args.concurrency}), {os.cpu_count()} cores", table
    )
    if args.json:
        print(json.dumps({"pipeline": pipeline, "baseline": baseline, "latency": latency}))


if __name__ == "__main__":
    main()

"""The live pipeline's overhead, concurrency and scale-out, against the simulator over loopback.

Overhead: N items at 0 ms latency through one worker and a task at their defaults (the task's
chunks of 20 items, one message each), beside a plain asyncio + httpx loop with the same
concurrency, in the same run: items/s and CPU-ms per item (the worker, which also runs the
feeder and the chord callbacks, plus the Redis server, for the pipeline; the whole child for the
baseline). Zero latency leaves only what each side spends per item.

Concurrency: at 1,000 ms latency, ``rate_limit.max_in_flight`` set to C and a worker at its
defaults (64 message slots): the calls in flight at the simulator (sampled, averaged over the
steady state; and over the whole run, by Little's law: items/s x latency, ramp and tail
included), and items/s against the ideal C / latency, over a run 20 latencies long.

Scale out: 1 and 2 worker processes at 200 ms latency, each with 4 slots x 8 calls (32 calls in
flight), limits lifted: items/s of 2 against 1. The same at 0 ms (default pools), with the CPU
share of each process: what saturates on this machine.

The rate limiter's budgets are lifted (``UNLIMITED_ENV``, and the task's ``rate_limit``), so only
the workers (and ``max_in_flight`` where set) can cap a run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import threading
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

#: How often the concurrency run's calls in flight are read at the simulator.
SAMPLE_S = 0.2
#: The scale-out runs' workers: 4 slots of 8 calls, 32 calls in flight each.
SCALE_SLOTS = {"concurrency": 4, "calls_per_message": 8}


def run_pipeline(
    bench,
    items: int,
    name: str,
    workers: int = 1,
    concurrency: int | None = None,
    env: dict[str, str] | None = None,
    calls_per_message: int | None = None,
    latency_s: float | None = None,
) -> dict:
    """One run of ``items`` through fresh workers; wall time from submit to completed.

    With ``latency_s``, the simulator's calls in flight are sampled every
    :data:`SAMPLE_S` and averaged over the steady state: the run less its first and last
    latency (the ramp and the tail).
    """
    started_workers = [
        bench.worker(
            concurrency=concurrency, name=f"{name}{n}", env={**UNLIMITED_ENV, **(env or {})}
        )
        for n in range(workers)
    ]
    pids = {f"worker{n}": w.pid for n, w in enumerate(started_workers)}
    pids["redis"] = bench.redis.process.pid
    pids["simulator"] = bench.simulator.process.pid
    try:
        source = write_questions(bench.scratch / f"{name}.jsonl", items)
        m = Mitrailleuse()
        config: dict = {"openai": {"rate_limit": UNLIMITED_CONFIG}}  # batch_size: the default
        if calls_per_message:
            config["general"] = {"calls_per_message": calls_per_message}
        task = m.create_task("bench", "openai", name, config, [source])
        bench.simulator.reset()
        before = {who: cpu_seconds(pid) for who, pid in pids.items()}
        started = time.perf_counter()
        with InFlightSampler(bench.simulator, started) as sampler:
            progress = m.submit(task).wait(timeout=3600, poll_s=0.1)
        wall = time.perf_counter() - started
        used = {who: cpu_seconds(pid) - before[who] for who, pid in pids.items()}
        stats = bench.simulator.stats()
    finally:
        for worker in started_workers:
            worker.stop()
    if progress.succeeded != items:
        raise SystemExit(f"{name}: {progress}")
    fleet_cpu = sum(v for who, v in used.items() if who != "simulator")
    return {
        "items": items,
        "workers": workers,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 1),
        "cpu_ms_per_item": round(fleet_cpu * 1000 / items, 2),
        "cpu_share": {who: round(v / wall, 2) for who, v in used.items()},
        "max_in_flight": stats["max_in_flight"],
        "steady_in_flight": sampler.mean(latency_s, wall - latency_s) if latency_s else None,
    }


class InFlightSampler:
    """The simulator's calls in flight, read every :data:`SAMPLE_S` from a thread."""

    def __init__(self, simulator, started: float) -> None:
        self.simulator, self.started = simulator, started
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def __enter__(self) -> InFlightSampler:
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join()

    def _run(self) -> None:
        while not self._stop.wait(SAMPLE_S):
            in_flight = self.simulator.stats()["in_flight"]
            self.samples.append((time.perf_counter() - self.started, in_flight))

    def mean(self, since_s: float, until_s: float) -> float:
        """The mean of the samples taken between ``since_s`` and ``until_s`` into the run."""
        steady = [n for t, n in self.samples if since_s <= t <= until_s]
        return sum(steady) / len(steady)


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


async def _sdk_alone(url: str, items: int, concurrency: int) -> None:
    """The worker's transport alone (``OpenAIProvider.send_async``: the SDK over aiohttp), as a
    plain loop: the part of the pipeline's cost that keeping the real SDK cannot shed."""
    from mitrailleuse.config import parse_config
    from mitrailleuse.providers import provider_class

    section = parse_config({"openai": {"api_information": {"model": "gpt-4o-mini"}}}).openai
    provider = provider_class("openai")(section, BENCH_KEY)
    queue: asyncio.Queue[int] = asyncio.Queue()
    for n in range(items):
        queue.put_nowait(n)

    async def loop() -> None:
        while not queue.empty():
            n = queue.get_nowait()
            payload = {"messages": [{"role": "user", "content": f"b{n}"}]}
            await provider.send_async([payload], 60)

    await asyncio.gather(*(loop() for _ in range(concurrency)))
    await provider.aclose()


def run_baseline(bench, items: int, concurrency: int, loop=_baseline) -> dict:
    """A plain loop (asyncio + httpx) in a forked child, so its CPU time is measured alone."""
    bench.simulator.reset()
    started = time.perf_counter()
    pid = os.fork()
    if pid == 0:
        code = 1
        try:
            asyncio.run(loop(bench.env["OPENAI_BASE_URL"], items, concurrency))
            code = 0
        finally:
            os._exit(code)
    _, status, usage = os.wait4(pid, 0)
    wall = time.perf_counter() - started
    if status != 0:
        raise SystemExit(f"the {loop.__name__} loop exited with {status}")
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
    parser.add_argument("--in-flight", type=int, default=256)
    parser.add_argument("--latency-ms", type=float, default=1_000)
    parser.add_argument("--scale-items", type=int, default=4_000)
    parser.add_argument("--scale-latency-ms", type=float, default=200)
    args = parser.parse_args()
    default_c = app.conf.worker_concurrency  # the worker's default pool: what users get
    c, ms = args.in_flight, args.latency_ms
    latency_items = int(c * 20)  # twenty latencies of ideal throughput: ramp and tail < 10%
    capped = {"MITRAILLEUSE_OPENAI_MAX_IN_FLIGHT": str(c)}
    with bench_env() as bench:
        overhead = run_pipeline(bench, args.items, "overhead")
        baseline = run_baseline(bench, args.items, default_c)
        sdk = run_baseline(bench, args.items, default_c, loop=_sdk_alone)
        zero = [run_pipeline(bench, args.items // 2, f"zero{n}", workers=n) for n in (1, 2)]
        bench.simulator.configure(latency_ms=args.scale_latency_ms)
        scaled = [
            run_pipeline(bench, args.scale_items, f"scale{n}", workers=n, **SCALE_SLOTS)
            for n in (1, 2)
        ]
        bench.simulator.configure(latency_ms=ms)
        slow = run_pipeline(bench, latency_items, "latency", env=capped, latency_s=ms / 1000)
    ideal = c / (ms / 1000)
    mean_in_flight = slow["items_per_s"] * ms / 1000
    steady = slow["steady_in_flight"]
    base = f"asyncio + httpx, {default_c} at once"
    scale_ratio = scaled[1]["items_per_s"] / scaled[0]["items_per_s"]
    zero_ratio = zero[1]["items_per_s"] / zero[0]["items_per_s"]
    rows = [
        Row(
            f"overhead: items/s, {args.items:,} items at 0 ms, 1 worker -c {default_c}",
            f"{overhead['items_per_s']:.0f}",
            f"{baseline['items_per_s']:.0f} ({base}); ratio "
            + ratio(overhead["items_per_s"], baseline["items_per_s"]),
        ),
        Row(
            "overhead: CPU-ms/item (worker with feeder + Redis)",
            f"{overhead['cpu_ms_per_item']:.2f}",
            f"{baseline['cpu_ms_per_item']:.2f} ({base}); ratio "
            + ratio(overhead["cpu_ms_per_item"], baseline["cpu_ms_per_item"]),
            "ratio <= 1.3",
            overhead["cpu_ms_per_item"] <= 1.3 * baseline["cpu_ms_per_item"],
        ),
        Row(
            "overhead: CPU-ms/item of the SDK alone (OpenAIProvider.send_async in a plain loop)",
            f"{sdk['cpu_ms_per_item']:.2f}",
            f"{baseline['cpu_ms_per_item']:.2f} ({base}); ratio "
            + ratio(sdk["cpu_ms_per_item"], baseline["cpu_ms_per_item"]),
        ),
        Row(
            f"concurrency: calls in flight at {ms:.0f} ms, max_in_flight {c}, "
            f"{latency_items:,} items: mean at the simulator in the steady state (run less its "
            "first and last latency)",
            f"{steady:.0f} ({steady / c:.0%})",
            f"{c} configured",
            ">= 90%",
            steady >= 0.9 * c,
        ),
        Row(
            "concurrency: calls in flight over the whole run, ramp and tail included: max / "
            "mean (items/s x latency)",
            f"{slow['max_in_flight']} / {mean_in_flight:.0f} ({mean_in_flight / c:.0%})",
            f"{c} configured",
        ),
        Row(
            "concurrency: items/s",
            f"{slow['items_per_s']:.0f}",
            f"{ideal:.0f} ideal ({c} / {ms / 1000:g} s)",
            ">= 0.85 of ideal",
            slow["items_per_s"] >= 0.85 * ideal,
        ),
        Row(
            f"scale out: items/s, 2 workers vs 1 at {args.scale_latency_ms:.0f} ms, 32 calls each",
            f"{scaled[1]['items_per_s']:.0f} vs {scaled[0]['items_per_s']:.0f}"
            f" ({scale_ratio:.2f}x)",
            "1 worker",
            ">= 1.9x",
            scale_ratio >= 1.9,
        ),
        Row(
            "scale out at 0 ms: items/s, 2 workers vs 1; CPU share of 2 cores (2 workers)",
            f"{zero[1]['items_per_s']:.0f} vs {zero[0]['items_per_s']:.0f} ({zero_ratio:.2f}x)",
            ", ".join(f"{who} {share:.0%}" for who, share in zero[1]["cpu_share"].items()),
        ),
    ]
    raw = {
        "overhead": overhead,
        "baseline": baseline,
        "zero_ms": zero,
        "scale": scaled,
        "latency": slow,
        "args": vars(args),
    }
    report("pipeline", f"pipeline, {os.cpu_count()} cores", rows, raw)


if __name__ == "__main__":
    main()

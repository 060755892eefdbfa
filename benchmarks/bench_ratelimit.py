"""Rate-limit saturation: how close the fleet runs to a provider's limit, and the 429s it gets.

Each row runs about a minute against the simulator with the same limit as the task's
``rate_limit``: Mitrailleuse's Redis limiter with 1 and 2 worker processes, then Celery's own
per-worker ``rate_limit`` with 2 workers (our limiter lifted), the usual alternative.
"""

from __future__ import annotations

import argparse
import json
import time

from common import bench_env, print_table, write_questions

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.pipeline.app import app

LIFTED = {
    "MITRAILLEUSE_OPENAI_REQUESTS_PER_MINUTE": "1000000",
    "MITRAILLEUSE_OPENAI_MAX_IN_FLIGHT": "1000000",
    "MITRAILLEUSE_OPENAI_TOKENS_PER_MINUTE": "1000000000",
}


def best_window(times: list[float], window_s: float = 60.0) -> int:
    times, best, start = sorted(times), 0, 0
    for end, t in enumerate(times):
        while t - times[start] >= window_s:
            start += 1
        best = max(best, end - start + 1)
    return best


def scenario(
    bench,
    name: str,
    workers: int,
    rpm: int | None,
    tpm: int | None,
    items: int,
    celery_limit: str | None = None,
) -> dict:
    bench.simulator.configure(rpm=rpm, tpm=tpm, record_log=True)
    bench.simulator.reset()
    env = LIFTED if celery_limit else {}
    started = [
        bench.worker(concurrency=16, name=f"rl{n}", extra=())
        if not env
        else _worker_with_env(bench, env, n)
        for n in range(workers)
    ]
    try:
        if celery_limit:
            app.control.rate_limit(
                "mitrailleuse.call", celery_limit, destination=[w.name for w in started], reply=True
            )
        slug = "".join(c if c.isalnum() else "-" for c in name)
        source = write_questions(bench.scratch / f"{slug}-{workers}.jsonl", items)
        config = {
            "openai": {
                "rate_limit": {
                    "requests_per_minute": rpm or 1_000_000,
                    "tokens_per_minute": tpm,
                    "max_in_flight": 64,
                },
                "api_information": {"model": "gpt-4o-mini", "setting": {"max_tokens": 16}},
                "retry": {"max_attempts": 20, "initial_backoff_s": 0.5},
            }
        }
        m = Mitrailleuse()
        task = m.create_task("bench", "openai", slug, config, [source])
        t0 = time.perf_counter()
        progress = m.submit(task).wait(timeout=900, poll_s=0.5)
        wall = time.perf_counter() - t0
        log = bench.simulator.log()
    finally:
        for worker in started:
            worker.stop()
    accepted = [e["t"] for e in log if e["status"] == 200]
    throttled = sum(e["status"] == 429 for e in log)
    row = {
        "scenario": name,
        "workers": workers,
        "items": items,
        "wall_s": round(wall, 1),
        "items/min": round(progress.succeeded / wall * 60),
        "429s": throttled,
    }
    if rpm:
        row["best 60 s (requests)"] = best_window(accepted)
        row["fraction of limit"] = round(best_window(accepted) / rpm, 3)
    if tpm:
        row["fraction of limit"] = round(_token_fraction(log, tpm), 3)
    return row


def _token_fraction(log: list[dict], tpm: int) -> float:
    import math

    def tokens(entry: dict) -> int:
        text = entry["texts"][0]
        prompt = math.ceil(len(text) / 4) + 4
        completion = math.ceil(len("echo: " + text) / 4)
        return prompt + completion

    events = sorted((e["t"], tokens(e)) for e in log if e["status"] == 200)
    best, start, total = 0, 0, 0
    for end in range(len(events)):
        total += events[end][1]
        while events[end][0] - events[start][0] >= 60.0:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best / tpm


def _worker_with_env(bench, env: dict, n: int):
    from mitrailleuse.testing import WorkerProcess

    return WorkerProcess(
        {**bench.env, **env}, ("openai", "mitrailleuse"), 16, f"celery-rl{n}-{time.monotonic_ns()}"
    ).wait_ready()


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=75)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    items = int(args.rpm * args.seconds / 60)
    rows = []
    with bench_env() as bench:
        rows.append(scenario(bench, "redis limiter", 1, args.rpm, None, items))
        rows.append(scenario(bench, "redis limiter", 2, args.rpm, None, items))
        rows.append(
            scenario(
                bench,
                "celery rate_limit per worker",
                2,
                args.rpm,
                None,
                items,
                celery_limit=f"{args.rpm}/m",
            )
        )
        token_items = int(args.tpm / 22 * args.seconds / 60)
        rows.append(scenario(bench, "redis limiter, tokens/min", 2, None, args.tpm, token_items))
    print_table(
        f"rate limits: {args.rpm} requests/min, {args.tpm} tokens/min (simulator: same)",
        rows,
    )
    if args.json:
        print(json.dumps(rows))


if __name__ == "__main__":
    main()

"""Rate-limit saturation: how close the fleet runs to a provider's limit, and the 429s it gets.

The simulator enforces the same limit as the task's ``rate_limit`` over a sliding 60 s window.
Each scenario runs for a fixed time (75 s: a full minute plus the ramp up), with more items than
the limit lets through, then is cancelled; its figures come from the simulator's request log:
the most requests (or tokens) accepted in any 60 s window over the limit, the 429s, and the
requests/min over the whole run. Scenarios: Mitrailleuse's Redis limiter with 1 and 2 worker
processes; Celery's own per-worker ``rate_limit`` with 2 workers (our limiter lifted), the usual
alternative; a tokens/min limit with 2 workers.
"""

from __future__ import annotations

import argparse
import math
import time

from common import UNLIMITED_ENV, Row, bench_env, report, write_questions

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.pipeline.app import app

WINDOW_S = 60.0
#: What "saturated" means here: most of the limit used, and the provider never said no.
TARGET_FRACTION = 0.95


def best_window(events: list[tuple[float, int]]) -> int:
    """The largest total of ``(time, amount)`` events within any 60 s window."""
    events = sorted(events)
    best = total = start = 0
    for t, amount in events:
        total += amount
        while t - events[start][0] >= WINDOW_S:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def tokens(text: str) -> int:
    """The tokens the simulator counts for a prompt and its echoed answer."""
    return math.ceil(len(text) / 4) + 4 + math.ceil(len("echo: " + text) / 4)


def scenario(
    bench,
    name: str,
    workers: int,
    rpm: int | None,
    tpm: int | None,
    seconds: float,
    celery_limit: str | None = None,
) -> dict:
    """Run for ``seconds``, cancel, and read the simulator's log."""
    bench.simulator.configure(rpm=rpm, tpm=tpm, record_log=True)
    bench.simulator.reset()
    env = UNLIMITED_ENV if celery_limit else {}
    started = [
        bench.worker(concurrency=16, name=f"rl{n}", env=env, queues=("openai", "mitrailleuse"))
        for n in range(workers)
    ]
    try:
        if celery_limit:
            names = [w.name for w in started]
            app.control.rate_limit("mitrailleuse.call", celery_limit, destination=names, reply=True)
        per_minute = rpm if rpm else tpm / tokens("x" * 40)
        items = int(per_minute * seconds / WINDOW_S * 1.5) + 100  # never runs out in time
        slug = "".join(c if c.isalnum() else "-" for c in name) + f"-{workers}"
        source = write_questions(bench.scratch / f"{slug}.jsonl", items)
        config = {
            "openai": {
                "rate_limit": {
                    "requests_per_minute": rpm or 10**9,
                    "tokens_per_minute": tpm,
                    "max_in_flight": 64,
                },
                "api_information": {"model": "gpt-4o-mini", "setting": {"max_tokens": 16}},
                "retry": {"max_attempts": 20, "initial_backoff_s": 0.5},
            }
        }
        m = Mitrailleuse()
        task = m.create_task("bench", "openai", slug, config, [source])
        run = m.submit(task)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not run.progress().finished:
            time.sleep(0.5)
        run.cancel()
        run.wait(timeout=120, poll_s=0.2)
        log = bench.simulator.log()
    finally:
        for worker in started:
            worker.stop()
    accepted = [e for e in log if e["status"] == 200]
    if not accepted:
        raise SystemExit(f"{name}: no request accepted")
    span = max(e["t"] for e in accepted) - min(e["t"] for e in log)
    row = {
        "scenario": name,
        "workers": workers,
        "seconds": seconds,
        "requests": len(log),
        "accepted": len(accepted),
        "429s": sum(e["status"] == 429 for e in log),
        "requests_per_min": round(len(accepted) / span * WINDOW_S) if span else None,
    }
    if rpm:
        row["best_60s"] = best_window([(e["t"], 1) for e in accepted])
        row["fraction"] = round(row["best_60s"] / rpm, 3)
    else:
        row["best_60s"] = best_window([(e["t"], tokens(e["texts"][0])) for e in accepted])
        row["fraction"] = round(row["best_60s"] / tpm, 3)
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=75, help="each scenario's run")
    args = parser.parse_args()
    rpm, tpm, seconds = args.rpm, args.tpm, args.seconds
    with bench_env() as bench:
        one = scenario(bench, "redis limiter", 1, rpm, None, seconds)
        two = scenario(bench, "redis limiter", 2, rpm, None, seconds)
        celery = scenario(bench, "celery rate_limit per worker", 2, rpm, None, seconds, f"{rpm}/m")
        tok = scenario(bench, "redis limiter, tokens/min", 2, None, tpm, seconds)

    def saturation(row: dict) -> str:
        return f"{row['fraction']:.3f}; {row['429s']}"

    def met(row: dict) -> bool:
        return row["fraction"] >= TARGET_FRACTION and row["429s"] == 0

    target = f">= {TARGET_FRACTION}; 0"
    celery_cell = f"Celery rate_limit='{rpm}/m' per worker, 2 workers: {saturation(celery)}"
    short = "" if seconds >= WINDOW_S else f" (runs of {seconds:g} s: under a minute)"
    rows = [
        Row(f"rate limit {rpm:,}/min, 1 worker: best-60 s fraction; 429s{short}",
            saturation(one), "", target, met(one)),
        Row(f"rate limit {rpm:,}/min, 2 workers: best-60 s fraction; 429s",
            saturation(two), celery_cell, target, met(two)),
        Row(f"rate limit {rpm:,}/min, 2 workers: requests/min over the {seconds:g} s run",
            f"{two['requests_per_min']:,}", f"Celery: {celery['requests_per_min']:,}"),
        Row(f"rate limit {tpm:,} tokens/min, 2 workers: best-60 s fraction; 429s",
            saturation(tok), "", target, met(tok)),
    ]  # fmt: skip
    raw = {"scenarios": [one, two, celery, tok], "args": vars(args)}
    report("ratelimit", f"rate limits against the simulator's own ({seconds:g} s runs)", rows, raw)


if __name__ == "__main__":
    main()

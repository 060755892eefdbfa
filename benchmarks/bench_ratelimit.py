"""Rate-limit saturation: how close the fleet runs to a provider's limit, and the 429s it gets.

The simulator enforces the same limit as the task's ``rate_limit`` over a sliding 60 s window.
Each scenario runs for a fixed time (75 s: a full minute plus the ramp up), with more items than
the limit lets through, then is cancelled; its figures come from the simulator's request log:
the most requests (or tokens) accepted in any 60 s window over the limit, the 429s, and the
requests/min over the whole run. Scenarios: Mitrailleuse's Redis limiter with 1 and 2 worker
processes; Celery's own per-worker ``rate_limit`` with 2 workers (our limiter lifted, one call
per message), the usual alternative; a tokens/min limit with 2 workers.
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


def best_window(events: list[tuple[float, int]], window_s: float = WINDOW_S) -> int:
    """The largest total of ``(time, amount)`` events within any ``window_s`` window."""
    events = sorted(events)
    best = total = start = 0
    for t, amount in events:
        total += amount
        while t - events[start][0] >= window_s:
            total -= events[start][1]
            start += 1
        best = max(best, total)
    return best


def tokens(text: str) -> int:
    """The tokens the simulator counts for a prompt and its echoed answer."""
    return math.ceil(len(text) / 4) + 4 + math.ceil(len("echo: " + text) / 4)


def scenario(
    name: str,
    workers: int,
    rpm: int | None,
    tpm: int | None,
    seconds: float,
    celery_limit: str | None = None,
) -> dict:
    """Run for ``seconds`` on a fresh Redis and simulator, cancel, and read the simulator's log.

    The figures end at the cancel: nothing waits for the run's queued items to drain (through
    Celery's per-worker token bucket, that alone takes most of a minute).
    """
    simulator_limits = [f"--rpm={rpm}"] if rpm else [f"--tpm={tpm}"]
    with bench_env(*simulator_limits) as bench:
        bench.simulator.configure(record_log=True)
        env = UNLIMITED_ENV if celery_limit else {}
        started = [
            bench.worker(concurrency=16, name=f"rl{n}", env=env, queues=("openai", "mitrailleuse"))
            for n in range(workers)
        ]
        if celery_limit:
            names = [w.name for w in started]
            app.control.rate_limit("mitrailleuse.call", celery_limit, destination=names, reply=True)
        per_minute = rpm if rpm else tpm / tokens("x" * 40)
        items = int(per_minute * seconds / WINDOW_S * 1.5) + 100  # never runs out in time
        slug = "".join(c if c.isalnum() else "-" for c in name) + f"-{workers}"
        source = write_questions(bench.scratch / f"{slug}.jsonl", items)
        config: dict = {
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
        if celery_limit:  # Celery limits messages: one call each, or it limits no request
            config["general"] = {"calls_per_message": 1}
        m = Mitrailleuse()
        task = m.create_task("bench", "openai", slug, config, [source])
        bench.simulator.reset()
        run = m.submit(task)
        deadline = time.monotonic() + seconds
        while time.monotonic() < deadline and not run.progress().finished:
            time.sleep(0.5)
        run.cancel()
        time.sleep(1.0)  # calls in flight at the cancel finish (no new one starts)
        log = bench.simulator.log()
        for worker in started:
            worker.stop(timeout_s=10)
    accepted = [e for e in log if e["status"] == 200]
    if not accepted:
        raise SystemExit(f"{name}: no request accepted")
    span = max(e["t"] for e in accepted) - min(e["t"] for e in log)
    # a run shorter than a minute is compared with the limit pro rata (the quick smoke test)
    window = min(WINDOW_S, span)
    limit = (rpm or tpm) * window / WINDOW_S
    if rpm:
        best = best_window([(e["t"], 1) for e in accepted], window)
    else:
        best = best_window([(e["t"], tokens(e["texts"][0])) for e in accepted], window)
    return {
        "scenario": name,
        "workers": workers,
        "seconds": seconds,
        "requests": len(log),
        "accepted": len(accepted),
        "429s": sum(e["status"] == 429 for e in log),
        "requests_per_min": round(len(accepted) / span * WINDOW_S) if span else None,
        "window_s": round(window, 1),
        "best_window": best,
        "fraction": round(best / limit, 3),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rpm", type=int, default=1200)
    parser.add_argument("--tpm", type=int, default=30_000)
    parser.add_argument("--seconds", type=float, default=75, help="each scenario's run")
    args = parser.parse_args()
    rpm, tpm, seconds = args.rpm, args.tpm, args.seconds
    one = scenario("redis limiter", 1, rpm, None, seconds)
    two = scenario("redis limiter", 2, rpm, None, seconds)
    celery = scenario("celery rate_limit per worker", 2, rpm, None, seconds, f"{rpm}/m")
    tok = scenario("redis limiter, tokens/min", 2, None, tpm, seconds)

    def saturation(row: dict) -> str:
        return f"{row['fraction']:.3f}; {row['429s']}"

    def met(row: dict) -> bool:
        return row["fraction"] >= TARGET_FRACTION and row["429s"] == 0

    window = "best 60 s" if seconds >= WINDOW_S else f"pro rata, {seconds:g} s runs"
    figure = f"fraction of the limit ({window}); 429s"
    target = f">= {TARGET_FRACTION}; 0"
    rows = [
        Row(
            f"rate limit {rpm:,} requests/min, 1 worker: {figure}",
            saturation(one),
            "",
            target,
            met(one),
        ),
        Row(
            f"rate limit {rpm:,} requests/min, 2 workers: {figure}",
            saturation(two),
            f"Celery rate_limit='{rpm}/m' per worker, 2 workers: {saturation(celery)}",
            target,
            met(two),
        ),
        Row(
            f"rate limit {rpm:,} requests/min, 2 workers: requests/min over the run",
            f"{two['requests_per_min']:,}",
            f"Celery: {celery['requests_per_min']:,}",
        ),
        Row(
            f"rate limit {tpm:,} tokens/min, 2 workers: {figure}",
            saturation(tok),
            "",
            target,
            met(tok),
        ),
    ]
    raw = {"scenarios": [one, two, celery, tok], "args": vars(args)}
    report("ratelimit", f"rate limits against the simulator's own ({seconds:g} s runs)", rows, raw)


if __name__ == "__main__":
    main()

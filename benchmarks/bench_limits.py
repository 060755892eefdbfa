"""Limits without configuration, and the cookbook's control loop at the same limit.

Announced: the simulator enforces 3,000 requests/min over a sliding 60 s window and says so in
its ``x-ratelimit-limit-requests`` header; the task has no ``rate_limit`` block and one worker
runs at its defaults. Figures from the simulator's log: when the fleet's rate over 10 s first
reached 95% of the limit, the requests accepted in the first minute, and the share answered 429.

Cookbook: the same items through the OpenAI cookbook's ``api_request_parallel_processor.py``
loop (``cookbook.py``, told the limit) and through Mitrailleuse (told nothing), each against a
fresh simulator enforcing the same limit, with more items than a minute's worth. For each:
items that never got an answer, 429s received, the fraction of the limit achieved (answers per
minute over the wall time; above 1 when a burst at the start beat the provider's window), and
the wall time.
"""

from __future__ import annotations

import argparse
import asyncio
import time

from common import BENCH_KEY, Row, bench_env, report, write_questions
from cookbook import process_api_requests

from mitrailleuse.api import Mitrailleuse

#: The fleet's rate over this window is what "reaches the limit" measures.
RATE_WINDOW_S = 10.0
TARGET_FRACTION = 0.95
MAX_429_SHARE = 0.01


def rate_reached_s(accepted: list[float], per_minute: int) -> float | None:
    """Seconds from the first request until a 10 s window held 95% of the limit's share."""
    accepted = sorted(accepted)
    needed = TARGET_FRACTION * per_minute * RATE_WINDOW_S / 60
    start = 0
    for end, t in enumerate(accepted):
        while t - accepted[start] >= RATE_WINDOW_S:
            start += 1
        if end - start + 1 >= needed:
            return round(t - accepted[0], 1)
    return None


def run_mitrailleuse(rpm: int, items: int, name: str) -> dict:
    """A task with no ``rate_limit`` through one worker at its defaults; the simulator's log."""
    with bench_env(f"--rpm={rpm}") as bench:
        bench.simulator.configure(record_log=True)
        bench.worker(name=name)
        source = write_questions(bench.scratch / f"{name}.jsonl", items)
        m = Mitrailleuse()
        task = m.create_task("bench", "openai", name, {}, [source])
        bench.simulator.reset()
        started = time.perf_counter()
        progress = m.submit(task).wait(timeout=1800, poll_s=0.2)
        wall = time.perf_counter() - started
        log = bench.simulator.log()
        limits = task.summary().get("rate_limit")
    return {
        "wall_s": round(wall, 1),
        "unanswered": items - progress.succeeded,
        "log": log,
        "rate_limit": limits,
    }


def run_cookbook(rpm: int, items: int, name: str) -> dict:
    """The cookbook's loop, told the limit, against a fresh simulator enforcing it."""
    with bench_env(f"--rpm={rpm}") as bench:
        bench.simulator.configure(record_log=True)
        source = write_questions(bench.scratch / f"{name}.jsonl", items)
        requests = [
            {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": line}]}
            for line in source.read_text().splitlines()
        ]
        bench.simulator.reset()
        started = time.perf_counter()
        tracker = asyncio.run(
            process_api_requests(
                requests,
                f"{bench.env['OPENAI_BASE_URL']}/chat/completions",
                BENCH_KEY,
                max_requests_per_minute=rpm,
                max_tokens_per_minute=10**9,  # the simulator enforces requests only
            )
        )
        wall = time.perf_counter() - started
        log = bench.simulator.log()
    return {"wall_s": round(wall, 1), "unanswered": tracker.num_tasks_failed, "log": log}


def figures(run: dict, rpm: int) -> dict:
    """What the log says: requests, 429s, the rate achieved over the run against the limit."""
    log = run.pop("log")
    accepted = [e["t"] for e in log if e["status"] == 200]
    first = min(e["t"] for e in log)
    span = max(accepted) - first if accepted else 0.0
    in_first_minute = sum(t - first < 60 for t in accepted)
    return {
        **run,
        "requests": len(log),
        "accepted": len(accepted),
        "429s": sum(e["status"] == 429 for e in log),
        "429_share": round(sum(e["status"] == 429 for e in log) / len(log), 4),
        "fraction_of_limit": round(len(accepted) / max(run["wall_s"], 0.1) * 60 / rpm, 3),
        "first_minute_fraction": round(in_first_minute / rpm, 3) if span >= 60 else None,
        "reached_95_at_s": rate_reached_s(accepted, rpm),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--announced-rpm", type=int, default=3000)
    parser.add_argument("--announced-items", type=int, default=3300)
    parser.add_argument("--cookbook-rpm", type=int, default=600)
    parser.add_argument("--cookbook-items", type=int, default=900)
    args = parser.parse_args()

    announced = figures(
        run_mitrailleuse(args.announced_rpm, args.announced_items, "announced"),
        args.announced_rpm,
    )
    rpm, items = args.cookbook_rpm, args.cookbook_items
    ours = figures(run_mitrailleuse(rpm, items, "ours"), rpm)
    theirs = figures(run_cookbook(rpm, items, "cookbook"), rpm)

    reached = announced["reached_95_at_s"]
    rows = [
        Row(
            f"limits unset, {args.announced_rpm:,} rpm announced: 10-s rate reached 95% after",
            "never" if reached is None else f"{reached} s",
            f"limit {args.announced_rpm:,} rpm; task default before the first answer: 500",
            "<= 60 s",
            reached is not None and reached <= 60,
        ),
        Row(
            "limits unset: requests accepted in the first minute / limit",
            str(announced["first_minute_fraction"]),
            f"in force at the end: {announced['rate_limit']}",
        ),
        Row(
            "limits unset: requests answered 429",
            f"{announced['429s']} of {announced['requests']} ({announced['429_share']:.1%})",
            "",
            "<= 1%",
            announced["429_share"] <= MAX_429_SHARE,
        ),
    ]
    for what, key, show in (
        ("items never answered", "unanswered", str),
        ("429s received", "429s", str),
        ("fraction of the limit achieved", "fraction_of_limit", str),
        ("wall time", "wall_s", lambda s: f"{s} s"),
    ):
        rows.append(
            Row(
                f"vs cookbook, {items} items at {rpm} rpm: {what}",
                show(ours[key]),
                f"{show(theirs[key])} (cookbook api_request_parallel_processor.py, told the limit)",
            )
        )
    raw = {"announced": announced, "mitrailleuse": ours, "cookbook": theirs, "args": vars(args)}
    report("limits", "rate limits: announced limits, and the cookbook loop", rows, raw)


if __name__ == "__main__":
    main()

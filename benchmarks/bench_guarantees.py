"""The guarantees at the defaults, timed: a cached run under a tight limit, and a killed worker.

1. 200 items at ``temperature`` 0 (the response cache is on: ``auto``) under a 600 rpm
   ``rate_limit``, one worker at the default concurrency (64), everything else at its default:
   the wall time from ``submit`` to completed, beside the ideal (200 calls at 10 a second).
2. Two workers at the defaults, 600 items at 50 ms latency; one worker is SIGKILLed after 150
   items (what the OOM killer does): the seconds from the kill to the run completed, beside the
   visibility timeout that was the only way back before (3600 s), and the items sent twice,
   beside the calls the dead worker had running (its threads).
3. Native batch runs one after the other, each of 2 batches: batches created, beside expected.
"""

from __future__ import annotations

import argparse
import signal
import time

from common import Row, bench_env, report, write_questions

from mitrailleuse.api import Mitrailleuse

#: What the test fleet's variables would lift: here the task's ``rate_limit`` rules.
NO_OVERRIDES = {
    f"MITRAILLEUSE_OPENAI_{name}": "" for name in ("REQUESTS_PER_MINUTE", "MAX_IN_FLIGHT")
}


def cached_under_limit(bench, items: int, rpm: int) -> float:
    bench.worker(env=NO_OVERRIDES, name="cached")
    source = write_questions(bench.scratch / "cached.jsonl", items)
    config = {
        "openai": {
            "api_information": {"setting": {"temperature": 0}},
            "rate_limit": {"requests_per_minute": rpm},
        }
    }
    m = Mitrailleuse()
    task = m.create_task("bench", "openai", "cached", config, [source])
    started = time.perf_counter()
    progress = m.submit(task).wait(timeout=600)
    assert progress.state == "completed", progress
    return time.perf_counter() - started


def killed_worker(bench, items: int, threads: int) -> dict:
    bench.simulator.configure(latency_ms=50, record_log=True)
    doomed = bench.worker(concurrency=threads, name="doomed")
    bench.worker(concurrency=threads, name="survivor")
    source = write_questions(bench.scratch / "killed.jsonl", items)
    m = Mitrailleuse()
    task = m.create_task("bench", "openai", "killed", {}, [source])
    run = m.submit(task)
    while run.progress().done < items // 4:
        time.sleep(0.02)
    doomed.stop(signal.SIGKILL)
    killed = time.perf_counter()
    done_at_kill = run.progress().done
    progress = run.wait(timeout=3700)
    recovered_s = time.perf_counter() - killed
    assert progress.state == "completed", progress
    sent: dict[str, int] = {}
    for entry in bench.simulator.log():
        for text in entry["texts"]:
            sent[text] = sent.get(text, 0) + 1
    twice = sum(count > 1 for count in sent.values())
    return {"recovered_s": recovered_s, "done_at_kill": done_at_kill, "sent_twice": twice}


def back_to_back_batches(bench, runs: int) -> dict:
    bench.simulator.configure(batch_duration_s=0.3)
    bench.worker(queues=("mitrailleuse",), name="control")
    bench.beat(poll_s=0.5)
    source = write_questions(bench.scratch / "batches.jsonl", 40)
    batch = {"is_batch_active": True, "batch_size": 20, "batch_check_time": 0.5}
    m = Mitrailleuse()
    before = bench.simulator.stats()["batches_created"]
    for n in range(runs):
        task = m.create_task("bench", "openai", f"b{n}", {"openai": {"batch": batch}}, [source])
        assert m.submit(task).wait(timeout=120).state == "completed"
    created = bench.simulator.stats()["batches_created"] - before
    return {"runs": runs, "created": created, "expected": 2 * runs}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=200)
    parser.add_argument("--rpm", type=int, default=600)
    parser.add_argument("--kill-items", type=int, default=600)
    parser.add_argument("--threads", type=int, default=64)
    parser.add_argument("--runs", type=int, default=20)
    args = parser.parse_args()

    with bench_env() as bench:
        cached_s = cached_under_limit(bench, args.items, args.rpm)
    with bench_env() as bench:
        kill = killed_worker(bench, args.kill_items, args.threads)
    with bench_env() as bench:
        batches = back_to_back_batches(bench, args.runs)

    ideal_s = args.items / (args.rpm / 60)
    rows = [
        Row(
            f"{args.items} items, temperature 0, {args.rpm} rpm, defaults: seconds",
            f"{cached_s:.1f}",
            f"{ideal_s:.0f} ideal ({args.rpm / 60:.0f} calls/s)",
            "about ideal + start-up",
            cached_s <= ideal_s * 1.5 + 10,
        ),
        Row(
            f"1 of 2 workers SIGKILLed at {kill['done_at_kill']}/{args.kill_items}: "
            "seconds from the kill to completed",
            f"{kill['recovered_s']:.1f}",
            "3600 (the visibility timeout, before)",
            "<= 60",
            kill["recovered_s"] <= 60,
        ),
        Row(
            "same: items sent twice",
            str(kill["sent_twice"]),
            f"{args.threads} (the dead worker's threads)",
            f"<= {args.threads}",
            kill["sent_twice"] <= args.threads,
        ),
        Row(
            f"{batches['runs']} back-to-back native batch runs: batches created",
            str(batches["created"]),
            f"{batches['expected']} expected",
            "exactly",
            batches["created"] == batches["expected"],
        ),
    ]
    report(
        "guarantees",
        "Guarantees at the defaults",
        rows,
        {"cached_s": cached_s, "ideal_s": ideal_s, "kill": kill, "batches": batches},
    )


if __name__ == "__main__":
    main()

"""The gRPC service's watchers: 100 ``WatchTask`` streams on one run do not slow the run.

One fleet (a Redis, the simulator at ``--latency-ms``, one worker on ``openai`` and
``mitrailleuse``, limits lifted) and ``mitrailleuse serve grpc`` beside it. Runs of N items
each (prompts of their own: no response cache can help), created and submitted through the
Python API one after the other, alternately unwatched and watched (``--rounds`` pairs, after an
unmeasured warm-up run): items/s from submit to completed, the median of each kind, and their
ratio. A watched run has ``--watchers`` concurrent ``WatchTask`` streams (grpc.aio, in this
process, on one channel), each opened and past its first message (the task's state before it
runs) before the submit, and read until its final message; the server reads the run's progress
once per 0.5 s and fans it out to them all (``ProgressHub``).

Side figures: the progress messages the watchers got, whether every one of them got the final
``completed`` message, and the gRPC server process's CPU seconds during each kind of run.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import threading
import time
from concurrent.futures import Future
from contextlib import nullcontext

import grpc
from common import (
    REPO,
    UNLIMITED_CONFIG,
    UNLIMITED_ENV,
    Row,
    bench_env,
    ratio,
    report,
    write_questions,
)

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.testing import GrpcServiceProcess, cpu_seconds
from mitrailleuse.v1 import mitrailleuse_pb2 as pb
from mitrailleuse.v1 import mitrailleuse_pb2_grpc as pb_grpc

#: How long a run (and its watchers) may take before the bench gives up.
RUN_TIMEOUT_S = 900


class Watchers:
    """``count`` WatchTask streams on one task, on an asyncio loop in a thread of its own."""

    def __init__(self, target: str, task_path: str, count: int) -> None:
        self.target, self.task_path, self.count = target, task_path, count
        self.opened = threading.Event()
        self.loop = asyncio.new_event_loop()
        self.done: Future[list[dict]] = Future()
        self._thread = threading.Thread(target=self._run, name="watchers", daemon=True)

    def __enter__(self) -> Watchers:
        self._thread.start()
        if not self.opened.wait(60):
            raise SystemExit(f"the {self.count} watchers did not all get their first message")
        return self

    def __exit__(self, kind: object, *exc: object) -> None:
        self._thread.join(5 if kind else RUN_TIMEOUT_S)  # a daemon: left behind on an error

    def result(self) -> list[dict]:
        """Per watcher: messages received, the last state, whether it was final."""
        return self.done.result(RUN_TIMEOUT_S)

    def _run(self) -> None:
        try:
            self.done.set_result(self.loop.run_until_complete(self._watch_all()))
        except BaseException as error:  # the main thread reports it
            self.done.set_exception(error)
            self.opened.set()
        finally:
            self.loop.close()

    async def _watch_all(self) -> list[dict]:
        first = asyncio.Barrier(self.count + 1)
        async with grpc.aio.insecure_channel(self.target) as channel:
            stub = pb_grpc.MitrailleuseServiceStub(channel)
            watchers = [asyncio.create_task(self._watch(stub, first)) for _ in range(self.count)]
            await asyncio.wait_for(first.wait(), 60)
            self.opened.set()
            return await asyncio.gather(*watchers)

    async def _watch(self, stub: pb_grpc.MitrailleuseServiceStub, first: asyncio.Barrier) -> dict:
        request = pb.WatchTaskRequest(task_path=self.task_path)
        seen: dict = {"messages": 0, "first_state": None, "state": None, "finished": False}
        async for progress in stub.WatchTask(request, timeout=RUN_TIMEOUT_S):
            seen["messages"] += 1
            seen["state"], seen["finished"] = progress.state, progress.finished
            seen["succeeded"] = progress.counts.succeeded
            if seen["first_state"] is None:
                seen["first_state"] = progress.state
                await first.wait()
        return seen


def run_once(bench, server: GrpcServiceProcess, items: int, name: str, watchers: int) -> dict:
    """One run of ``items``, watched by ``watchers`` streams (0: unwatched), submit -> completed."""
    source = write_questions(bench.scratch / f"{name}.jsonl", items)
    m = Mitrailleuse()
    config = {"openai": {"rate_limit": UNLIMITED_CONFIG}}
    task = m.create_task("bench", "openai", name, config, [source])
    watching = Watchers(server.target, str(task.path), watchers) if watchers else nullcontext()
    with watching:  # every stream past its first message before the submit
        server_cpu = cpu_seconds(server.pid)
        own_cpu = time.process_time()
        started = time.perf_counter()
        progress = m.submit(task).wait(timeout=RUN_TIMEOUT_S, poll_s=0.1)
        wall = time.perf_counter() - started
        server_cpu = cpu_seconds(server.pid) - server_cpu
        own_cpu = time.process_time() - own_cpu
        seen = watching.result() if isinstance(watching, Watchers) else []
    if progress.state != "completed" or progress.succeeded != items:
        raise SystemExit(f"{name}: {progress}")
    return {
        "name": name,
        "watchers": watchers,
        "items": items,
        "wall_s": round(wall, 2),
        "items_per_s": round(items / wall, 1),
        "server_cpu_s": round(server_cpu, 2),
        "bench_process_cpu_s": round(own_cpu, 2),
        "messages": sum(w["messages"] for w in seen),
        "messages_per_watcher": sorted({w["messages"] for w in seen}),
        "first_states": sorted({w["first_state"] for w in seen}),
        "completed_watchers": sum(
            w["finished"] and w["state"] == "completed" and w["succeeded"] == items for w in seen
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=6_000, help="items per run")
    parser.add_argument("--watchers", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3, help="pairs of runs: unwatched, watched")
    parser.add_argument("--latency-ms", type=float, default=40)
    args = parser.parse_args()
    with bench_env(f"--latency-ms={args.latency_ms}") as bench:
        bench.worker(env=UNLIMITED_ENV)
        server = GrpcServiceProcess({**os.environ, **bench.env}, cwd=REPO)
        bench.started.append(server)  # stopped with the fleet
        run_once(bench, server, max(args.items // 10, 50), "warmup", 0)
        runs: list[dict] = []
        for n in range(args.rounds):
            runs.append(run_once(bench, server, args.items, f"unwatched{n}", 0))
            runs.append(run_once(bench, server, args.items, f"watched{n}", args.watchers))
    unwatched = [r for r in runs if not r["watchers"]]
    watched = [r for r in runs if r["watchers"]]
    plain = statistics.median(r["items_per_s"] for r in unwatched)
    seen = statistics.median(r["items_per_s"] for r in watched)
    all_completed = all(r["completed_watchers"] == args.watchers for r in watched)
    messages = [r["messages"] for r in watched]
    per_watcher = sorted({n for r in watched for n in r["messages_per_watcher"]})
    first_states = sorted({s for r in watched for s in r["first_states"]})

    def each(key: str, fmt: str, kind: list[dict]) -> str:
        return ", ".join(format(r[key], fmt) for r in kind)

    rows = [
        Row(
            f"items/s, {args.items:,} items at {args.latency_ms:g} ms, 1 worker: watched by "
            f"{args.watchers} WatchTask streams vs unwatched (median of {args.rounds} each; "
            f"runs: {each('items_per_s', '.0f', watched)} vs "
            f"{each('items_per_s', '.0f', unwatched)})",
            f"{seen:.0f}; ratio {ratio(seen, plain)}",
            f"{plain:.0f} unwatched",
            "ratio >= 0.90",
            seen >= 0.9 * plain,
        ),
        Row(
            f"watchers: progress messages received per watched run ({args.watchers} streams; "
            f"per stream: {', '.join(map(str, per_watcher))}; first state: "
            f"{', '.join(first_states)})",
            ", ".join(f"{n:,}" for n in messages),
            "",
            "every watcher gets the final 'completed'",
            all_completed,
        ),
        Row(
            "gRPC server CPU seconds per run: watched (unwatched)",
            f"{each('server_cpu_s', '.2f', watched)} ({each('server_cpu_s', '.2f', unwatched)})",
            "run wall s: " + each("wall_s", ".1f", watched),
        ),
    ]
    raw = {"args": vars(args), "runs": runs, "median_items_per_s": {"u": plain, "w": seen}}
    report("grpc", f"gRPC: {args.watchers} watchers on one run, {os.cpu_count()} cores", rows, raw)


if __name__ == "__main__":
    main()

"""Native batch end to end: N items through OpenAI's Batch API as the simulator plays it.

Mitrailleuse in batch mode (``batch_size`` 1000, ``combine_batches``: 50,000 lines a batch,
``batch_check_time`` 1 s) with a control worker and beat polling every second
(``MITRAILLEUSE_BATCH_POLL_S``): the wall time from ``submit`` to the run completed with every
record in ``results.jsonl``, and the provider calls the simulator counted (``/_sim/stats``
requests: file uploads, batch creations, polls, downloads, listings).

Baseline, against the same simulator in the same run: a plain openai-SDK script that writes the
same batch files, uploads and creates them, polls each every second until it ends, downloads
its output and writes one result line per item. The simulator takes ``batch_duration_s`` for
every batch; no run can be quicker than that.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import orjson
from common import (
    Row,
    bench_env,
    plain_batch_files,
    plain_create_batch,
    plural,
    report,
    write_questions,
)

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.batch.state import FINAL_RAW

BATCH_SIZE = 1000
#: The simulator's routes, as /_sim/stats names them, and what each is.
CALLS = {
    "POST /v1/files": "uploads",
    "POST /v1/batches": "creates",
    "GET /v1/batches/{batch_id}": "polls",
    "GET /v1/files/{file_id}/content": "downloads",
    "GET /v1/batches": "lists",
}


def calls(stats: dict) -> dict[str, int]:
    """Provider calls by kind, and their total (every route the simulator counted)."""
    requests = stats["requests"]
    out = {kind: requests.get(route, 0) for route, kind in CALLS.items()}
    out["total"] = sum(requests.values())
    return out


def run_pipeline(bench, items: int, check_s: float) -> dict:
    """Submit in batch mode; wait until the run completes."""
    bench.worker(queues=("mitrailleuse",), name="batch-control")
    bench.beat(poll_s=check_s)
    source = write_questions(bench.scratch / "native.jsonl", items)
    batch = {
        "is_batch_active": True,
        "batch_size": BATCH_SIZE,
        "combine_batches": True,
        "batch_check_time": check_s,
    }
    m = Mitrailleuse()
    task = m.create_task("bench", "openai", "native", {"openai": {"batch": batch}}, [source])
    bench.simulator.reset()
    started = time.perf_counter()
    run = m.submit(task)
    # where the time goes: every batch created, seen ended by a poll, collected; the run done
    marks: dict[str, float] = {}
    while not (progress := run.progress()).finished:
        states = run.batches()
        if sum(s.items for s in states if s.retry_of is None) == items:  # every item in one
            reached = {
                "created": all(s.step in ("created", "collected") for s in states),
                "ended": all(s.raw_status in FINAL_RAW for s in states),
                "collected": all(s.step == "collected" for s in states),
            }
            for mark in (mark for mark, now in reached.items() if now and mark not in marks):
                marks[mark] = round(time.perf_counter() - started, 2)
        if time.perf_counter() - started > 1800:
            raise SystemExit(f"native batch run not done after 30 min: {progress}")
        time.sleep(0.2)
    wall = time.perf_counter() - started
    for mark in ("created", "ended", "collected"):  # reached between two looks, at the latest
        marks.setdefault(mark, round(wall, 2))  # when the run completed
    if progress.state != "completed" or progress.succeeded != items:
        raise SystemExit(f"native batch run: {progress}")
    with task.results_path.open("rb") as results:
        lines = sum(1 for _ in results)
    if lines != items:
        raise SystemExit(f"results.jsonl has {lines} lines, not {items}")
    stats = bench.simulator.stats()
    return {
        "wall_s": round(wall, 2),
        "batches": len(run.batches()),
        "seconds_to": marks,
        **calls(stats),
    }


def run_plain(bench, source: Path, check_s: float) -> dict:
    """The baseline: the Batch API by hand with the openai SDK, polling every ``check_s``."""
    import openai

    client = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL, OPENAI_API_KEY: the simulator
    out_dir = bench.scratch / "plain"
    out_dir.mkdir()
    bench.simulator.reset()
    started = time.perf_counter()
    files = plain_batch_files(source, out_dir)
    pending = [plain_create_batch(client, path) for path in files]
    items = 0
    with (out_dir / "results.jsonl").open("wb") as results:
        while pending:
            time.sleep(check_s)
            for batch_id in list(pending):
                batch = client.batches.retrieve(batch_id)
                if batch.status not in FINAL_RAW:
                    continue
                pending.remove(batch_id)
                content = client.files.content(batch.output_file_id).content
                for raw in content.splitlines():
                    entry = orjson.loads(raw)
                    answer = entry["response"]["body"]["choices"][0]["message"]["content"]
                    record = {"id": entry["custom_id"], "output": answer}
                    results.write(orjson.dumps(record) + b"\n")
                    items += 1
    wall = time.perf_counter() - started
    stats = bench.simulator.stats()
    return {"wall_s": round(wall, 2), "batches": len(files), "items": items, **calls(stats)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=100_000)
    parser.add_argument("--batch-duration-s", type=float, default=10.0)
    parser.add_argument("--check-s", type=float, default=1.0, help="beat and batch_check_time")
    args = parser.parse_args()
    duration = args.batch_duration_s
    with bench_env(f"--batch-duration-s={duration}") as bench:
        ours = run_pipeline(bench, args.items, args.check_s)
        plain = run_plain(bench, bench.scratch / "native.jsonl", args.check_s)
    if plain["items"] != args.items:
        raise SystemExit(f"the plain script collected {plain['items']} of {args.items}")

    def breakdown(c: dict) -> str:
        kinds = ", ".join(f"{c[k]} {k}" for k in CALLS.values() if c[k])
        return f"{c['total']} ({kinds})"

    rows = [
        Row(
            f"native batch: {args.items:,} items, submit -> completed "
            f"(simulator batches take {duration:g} s; polls every {args.check_s:g} s)",
            f"{ours['wall_s']:.1f} s ({plural(ours['batches'], 'batch')}; "
            + ", ".join(f"{mark} {t:.1f} s" for mark, t in ours["seconds_to"].items())
            + ")",
            f"{plain['wall_s']:.1f} s, a plain openai SDK script "
            f"({plural(plain['batches'], 'batch')})",
        ),
        Row("native batch: provider calls", breakdown(ours), f"plain script: {breakdown(plain)}"),
    ]
    raw = {"mitrailleuse": ours, "plain_sdk": plain, "args": vars(args)}
    report("native_batch", f"native batch, {args.items:,} items", rows, raw)


if __name__ == "__main__":
    main()

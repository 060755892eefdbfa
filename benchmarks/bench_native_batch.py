"""Native batches end to end: N items through each provider's batch API as the simulator plays it.

For OpenAI (Batch API), Anthropic (Message Batches) and Gemini (Batch Mode): Mitrailleuse in
batch mode (``batch_size`` 1000, ``combine_batches``, ``batch_check_time`` 1 s) with a control
worker and beat polling every second (``MITRAILLEUSE_BATCH_POLL_S``): the wall time from
``submit`` to the run completed with every record in ``results.jsonl``, and the provider calls
the simulator counted (``/_sim/stats`` requests: uploads, creations, polls, downloads, listings).

Baseline, against the same simulator in the same run: a plain script on the provider's SDK
that sends the same requests as one batch (uploaded, or inline), polls it every second until it
ends, reads its results and writes one result line per item. The simulator takes
``batch_duration_s`` for every batch; no run can be quicker than that.
"""

from __future__ import annotations

import argparse
import os
import time
from collections.abc import Callable
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

PROVIDERS = ("openai", "anthropic", "gemini")
BATCH_SIZE = 1000
MODEL = {"anthropic": "claude-haiku-4-5", "gemini": "gemini-2.5-flash"}


def kind_of(route: str) -> str:
    """What a simulator route (as ``/_sim/stats`` names it) is, for a batch's life."""
    method, _, path = route.partition(" ")
    if path.endswith("/results") or "download" in path or path.endswith("/content"):
        return "downloads"
    if method == "POST" and "files" in path:
        return "uploads"
    if method == "POST" and ("batches" in path or "batchGenerateContent" in path):
        return "cancels" if "cancel" in path else "creates"
    if method == "GET" and path.rstrip("/").endswith("}"):
        return "polls"
    return "lists" if method == "GET" else "other"


def calls(stats: dict) -> dict[str, int]:
    """Provider calls by kind, and their total (every route the simulator counted)."""
    out: dict[str, int] = {"total": 0}
    for route, count in stats["requests"].items():
        kind = kind_of(route)
        out[kind] = out.get(kind, 0) + count
        out["total"] += count
    return out


def run_pipeline(bench, provider: str, items: int, check_s: float) -> dict:
    """Submit in batch mode; wait until the run completes."""
    source = write_questions(bench.scratch / f"native-{provider}.jsonl", items)
    batch = {"batch_size": BATCH_SIZE, "combine_batches": True, "batch_check_time": check_s}
    m = Mitrailleuse()
    config = {provider: {"mode": "batch", "batch": batch}}
    task = m.create_task("bench", provider, f"native-{provider}", config, [source])
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
                "ended": all(s.ended for s in states),
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
        raise SystemExit(f"{provider} native batch run: {progress}")
    with task.results_path.open("rb") as results:
        lines = sum(1 for _ in results)
    if lines != items:
        raise SystemExit(f"results.jsonl has {lines} lines, not {items}")
    return {
        "wall_s": round(wall, 2),
        "batches": len(run.batches()),
        "seconds_to": marks,
        "calls": calls(bench.simulator.stats()),
    }


def plain_openai(source: Path, out_dir: Path, check_s: float, results) -> int:
    """The Batch API by hand with the openai SDK."""
    import openai

    client = openai.OpenAI(max_retries=0)  # OPENAI_BASE_URL, OPENAI_API_KEY: the simulator
    pending = [plain_create_batch(client, path) for path in plain_batch_files(source, out_dir)]
    written = 0
    while pending:
        time.sleep(check_s)
        for batch_id in list(pending):
            batch = client.batches.retrieve(batch_id)
            if batch.status not in ("completed", "failed", "expired", "cancelled"):
                continue
            pending.remove(batch_id)
            for raw in client.files.content(batch.output_file_id).content.splitlines():
                entry = orjson.loads(raw)
                answer = entry["response"]["body"]["choices"][0]["message"]["content"]
                results.write(orjson.dumps({"id": entry["custom_id"], "output": answer}) + b"\n")
                written += 1
    return written


def plain_anthropic(source: Path, out_dir: Path, check_s: float, results) -> int:
    """Message Batches by hand with the anthropic SDK."""
    import anthropic

    client = anthropic.Anthropic(max_retries=0)  # ANTHROPIC_BASE_URL, ANTHROPIC_API_KEY
    requests = [
        {
            "custom_id": f"q{n}",
            "params": {
                "model": MODEL["anthropic"],
                "max_tokens": 1024,
                "messages": [{"role": "user", "content": orjson.loads(line)["input_text"]}],
            },
        }
        for n, line in enumerate(source.read_bytes().splitlines())
    ]
    batch = client.messages.batches.create(requests=requests)
    while client.messages.batches.retrieve(batch.id).processing_status != "ended":
        time.sleep(check_s)
    written = 0
    for entry in client.messages.batches.results(batch.id):
        answer = entry.result.message.content[0].text  # type: ignore[union-attr]
        results.write(orjson.dumps({"id": entry.custom_id, "output": answer}) + b"\n")
        written += 1
    return written


def plain_gemini(source: Path, out_dir: Path, check_s: float, results) -> int:
    """Batch Mode by hand with the google-genai SDK, requests inline."""
    from google import genai
    from google.genai import types

    options = types.HttpOptions(base_url=os.environ["GEMINI_BASE_URL"])
    client = genai.Client(http_options=options)  # GEMINI_API_KEY
    src = [
        {"contents": orjson.loads(line)["input_text"], "metadata": {"key": f"q{n}"}}
        for n, line in enumerate(source.read_bytes().splitlines())
    ]
    job = client.batches.create(model=MODEL["gemini"], src=src)  # type: ignore[arg-type]
    ended = {"SUCCEEDED", "FAILED", "CANCELLED", "EXPIRED"}
    while str(client.batches.get(name=job.name or "").state).rpartition("_")[2] not in ended:
        time.sleep(check_s)
    job = client.batches.get(name=job.name or "")
    written = 0
    for response in job.dest.inlined_responses if job.dest else []:
        key = (response.metadata or {}).get("key")
        answer = response.response.text if response.response else None
        results.write(orjson.dumps({"id": key, "output": answer}) + b"\n")
        written += 1
    return written


PLAIN: dict[str, Callable[..., int]] = {
    "openai": plain_openai,
    "anthropic": plain_anthropic,
    "gemini": plain_gemini,
}


def run_plain(bench, provider: str, check_s: float) -> dict:
    """The baseline: the provider's batch API by hand, polling every ``check_s``."""
    out_dir = bench.scratch / f"plain-{provider}"
    out_dir.mkdir()
    bench.simulator.reset()
    started = time.perf_counter()
    with (out_dir / "results.jsonl").open("wb") as results:
        source = bench.scratch / f"native-{provider}.jsonl"
        items = PLAIN[provider](source, out_dir, check_s, results)
    wall = time.perf_counter() - started
    return {"wall_s": round(wall, 2), "items": items, "calls": calls(bench.simulator.stats())}


def breakdown(counted: dict) -> str:
    kinds = ", ".join(f"{n} {kind}" for kind, n in counted.items() if kind != "total" and n)
    return f"{counted['total']} ({kinds})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--items", type=int, default=1000)
    parser.add_argument("--providers", default=",".join(PROVIDERS))
    parser.add_argument("--batch-duration-s", type=float, default=10.0)
    parser.add_argument("--check-s", type=float, default=1.0, help="beat and batch_check_time")
    args = parser.parse_args()
    duration = args.batch_duration_s
    rows, raw = [], {"args": vars(args)}
    with bench_env(f"--batch-duration-s={duration}") as bench:
        bench.worker(queues=("mitrailleuse",), name="batch-control")
        bench.beat(poll_s=args.check_s)
        for provider in args.providers.split(","):
            ours = run_pipeline(bench, provider, args.items, args.check_s)
            plain = run_plain(bench, provider, args.check_s)
            if plain["items"] != args.items:
                raise SystemExit(f"the plain {provider} script got {plain['items']} answers")
            raw[provider] = {"mitrailleuse": ours, "plain_sdk": plain}
            marks = ", ".join(f"{mark} {t:.1f} s" for mark, t in ours["seconds_to"].items())
            rows += [
                Row(
                    f"{provider} native batch: {args.items:,} items, submit -> completed "
                    f"(simulator batches take {duration:g} s; polls every {args.check_s:g} s)",
                    f"{ours['wall_s']:.1f} s ({plural(ours['batches'], 'batch')}; {marks})",
                    f"{plain['wall_s']:.1f} s, a plain {provider} SDK script (1 batch)",
                ),
                Row(
                    f"{provider} native batch: provider calls",
                    breakdown(ours["calls"]),
                    f"plain script: {breakdown(plain['calls'])}",
                ),
            ]
    report("native_batch", f"native batches, {args.items:,} items per provider", rows, raw)


if __name__ == "__main__":
    main()

"""HTTP chat: N concurrent ``/v1/chat/async`` sessions through the fleet vs the same N direct.

One fleet: a Redis, the simulator streaming a chat answer in about ``--generation-s`` (its
``stream_chunk_ms`` is that time divided by the chunks of a typical answer of this bench), two
workers on the ``openai`` queue (threads pool, ``-c`` high enough for every session at once,
limits lifted) and ``mitrailleuse serve http`` beside them.

(a) Through the fleet: ``--sessions`` clients (aiohttp, one asyncio loop in this process),
each ``POST /v1/chat/async`` (time to session id), then ``GET`` its ``stream_url`` read as
Server-Sent Events up to ``data: [DONE]``: time to the first content token and total time,
both from the start of the POST.

(b) Direct: the same prompts with the openai SDK (``AsyncOpenAI`` over its aiohttp client,
``stream=True``, on the same loop) against the simulator: time to the first content token and
total time from the call. The worker always asks the provider for the usage chunk (for the
cost), so the direct calls ask for it too: both read the very same chunks from the simulator.

Both run twice: a burst (every client starts at the same instant) and paced arrivals (the
clients start evenly over ``--arrival-s``: hundreds of users, not one script). Both clients
are aiohttp: httpx's pool costs this loop about 20 CPU-ms per stream at 300 streams, enough
to make the 2-core machine's client, not the server, what the figures measure.

Every session's text must equal the direct answer to the same prompt and the simulator's
``chat_answer``. An unmeasured warm-up (a few sessions) runs first. The issue's target, from the
original system's claim: time to session id p50 <= 50 ms (reported, not asserted).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import statistics
import time
from dataclasses import dataclass
from functools import partial
from typing import Any

import aiohttp
import orjson
from common import BENCH_KEY, REPO, UNLIMITED_ENV, Row, bench_env, report
from openai import AsyncOpenAI, DefaultAioHttpClient

from mitrailleuse.simulator import chat_answer
from mitrailleuse.simulator.openai_api import completion_chunks
from mitrailleuse.testing import HttpServiceProcess, cpu_seconds

#: How long one session (or one direct stream) may take before the bench gives up.
STREAM_TIMEOUT_S = 300
#: The original system's claim, the issue's target: p50 time to session id.
TARGET_SESSION_ID_MS = 50.0


def prompt(tag: str, n: int) -> list[dict[str, str]]:
    """A prompt of its own (no cache can answer it), answered in about twenty chunks."""
    text = f"{tag} session {n}: please tell me in a few plain words what {n} squared is and why"
    return [{"role": "user", "content": text}]


def chunks_of(messages: list[dict[str, str]]) -> int:
    """How many chunks the simulator streams for ``messages`` (with the usage chunk)."""
    answer = chat_answer(messages)
    payload = {
        "id": "x",
        "created": 0,
        "model": "m",
        "choices": [{"message": {"content": answer}, "finish_reason": "stop"}],
        "usage": {},
    }
    return len(completion_chunks(payload, include_usage=True))


def percentile(values: list[float], q: float) -> float:
    """The ``q`` quantile (0..1) of ``values``, nearest rank."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(q * len(ordered) + 0.5) - 1))]


def ms(seconds: float) -> float:
    return round(seconds * 1000, 1)


def content_of(chunk: dict[str, Any]) -> str:
    choices = chunk.get("choices") or []
    return (choices[0].get("delta") or {}).get("content") or "" if choices else ""


async def session(
    http: aiohttp.ClientSession, messages: list[dict[str, str]], delay_s: float
) -> dict[str, Any]:
    """One chat through the fleet: POST, then its SSE stream up to ``[DONE]``."""
    await asyncio.sleep(delay_s)
    started = time.perf_counter()
    body = {"api": "openai", "messages": messages}
    async with http.post("/v1/chat/async", json=body) as response:
        said = await response.read()
    to_id = time.perf_counter() - started
    if response.status != 202:
        return {"error": f"POST {response.status}: {said[:200]!r}", "to_id": to_id}
    stream_url = orjson.loads(said)["stream_url"]
    first: float | None = None
    text: list[str] = []
    ending = None
    event: dict[str, str] = {}
    async with http.get(stream_url) as stream:
        if stream.status != 200:
            return {"error": f"GET {stream.status}: {(await stream.read())[:200]!r}"}
        async for raw in stream.content:
            line = raw.decode().rstrip("\r\n")
            if line.startswith(":"):
                continue
            if line:
                name, _, value = line.partition(":")
                event[name] = value.removeprefix(" ")
                continue
            if not event:
                continue
            data, kind, event = event.get("data", ""), event.get("event"), {}
            if kind is not None or data == "[DONE]":
                ending = data if kind else "[DONE]"
                break
            piece = content_of(orjson.loads(data))
            if piece and first is None:
                first = time.perf_counter() - started
            text.append(piece)
    total = time.perf_counter() - started
    done = ending == "[DONE]"
    return {
        "to_id": to_id,
        "first": first,
        "total": total,
        "text": "".join(text),
        "error": None if done else f"ended with {ending!r}",
    }


async def direct(sdk: AsyncOpenAI, messages: list[dict[str, str]], delay_s: float) -> dict:
    """The same chat with the openai SDK, straight to the simulator."""
    await asyncio.sleep(delay_s)
    started = time.perf_counter()
    first: float | None = None
    text: list[str] = []
    stream = await sdk.chat.completions.create(
        model="gpt-4o-mini",
        messages=messages,
        stream=True,
        stream_options={"include_usage": True},  # as the worker asks it
    )
    async for chunk in stream:
        piece = chunk.choices[0].delta.content if chunk.choices else None
        if piece and first is None:
            first = time.perf_counter() - started
        text.append(piece or "")
    return {"first": first, "total": time.perf_counter() - started, "text": "".join(text)}


@dataclass
class Pass:
    """One way of starting the clients: what each side measured, and its wall times."""

    name: str
    prompts: list[list[dict[str, str]]]
    fleet: list[dict[str, Any]]
    direct: list[dict[str, Any]]
    walls: dict[str, float]


async def measure(api_url: str, sim_url: str, args: argparse.Namespace, tag: str) -> list[Pass]:
    """Warm-up, then for a burst and for paced arrivals: the fleet, then the same direct."""
    timeout = aiohttp.ClientTimeout(total=STREAM_TIMEOUT_S)
    connector = aiohttp.TCPConnector(limit=0)  # as many connections as clients
    passes = []
    async with (
        aiohttp.ClientSession(base_url=api_url, connector=connector, timeout=timeout) as http,
        AsyncOpenAI(
            base_url=f"{sim_url}/v1",
            api_key=BENCH_KEY,
            max_retries=0,
            timeout=STREAM_TIMEOUT_S,
            http_client=DefaultAioHttpClient(timeout=STREAM_TIMEOUT_S),
        ) as sdk,
    ):
        warm = [prompt(f"{tag}-warmup", n) for n in range(args.warmup)]
        await asyncio.gather(*(session(http, m, 0) for m in warm))
        await asyncio.gather(*(direct(sdk, m, 0) for m in warm))
        for name, spread_s in (("burst", 0.0), ("paced", args.arrival_s)):
            prompts = [prompt(f"{tag}-{name}", n) for n in range(args.sessions)]
            delays = [spread_s * n / args.sessions for n in range(args.sessions)]
            walls = {}
            started = time.perf_counter()
            fleet = await asyncio.gather(*map(partial(session, http), prompts, delays))
            walls["fleet_s"] = time.perf_counter() - started
            started = time.perf_counter()
            straight = await asyncio.gather(*map(partial(direct, sdk), prompts, delays))
            walls["direct_s"] = time.perf_counter() - started
            passes.append(Pass(name, prompts, fleet, straight, walls))
    return passes


def cpu_of(pids: dict[str, Any]) -> dict[str, float]:
    """CPU seconds each process (or list of processes) has used so far."""
    return {
        name: sum(map(cpu_seconds, pid if isinstance(pid, list) else [pid]))
        for name, pid in pids.items()
    }


def summary(values: list[float]) -> dict[str, float]:
    return {
        "p50_ms": ms(percentile(values, 0.5)),
        "p99_ms": ms(percentile(values, 0.99)),
        "max_ms": ms(max(values)),
        "mean_ms": ms(statistics.fmean(values)),
    }


def rows_of(run: Pass, setting: str, chunks: str) -> tuple[list[Row], dict[str, Any]]:
    """The table's rows for one pass, and its raw figures."""
    fleet, straight = run.fleet, run.direct
    ok = [r for r in fleet if not r.get("error")]
    expected = [chat_answer(m) for m in run.prompts]
    same = sum(
        not f.get("error") and f["text"] == d["text"] == e
        for f, d, e in zip(fleet, straight, expected, strict=True)
    )
    to_id = summary([r["to_id"] for r in fleet if "to_id" in r])
    first = summary([r["first"] for r in ok if r["first"] is not None]) if ok else {}
    total = summary([r["total"] for r in ok]) if ok else {}
    d_first = summary([r["first"] for r in straight if r["first"] is not None])
    d_total = summary([r["total"] for r in straight])

    def pair(fig: dict, base: dict) -> tuple[str, str]:
        direct = f"{base['p50_ms']:.0f} / {base['p99_ms']:.0f} ms direct (SDK)"
        return (f"{fig['p50_ms']:.0f} / {fig['p99_ms']:.0f} ms" if fig else "-", direct)

    walls = run.walls
    rows = [
        Row(
            f"time to session id p50 / p99 (POST /v1/chat/async), {setting}",
            f"{to_id['p50_ms']:.0f} / {to_id['p99_ms']:.0f} ms",
            "~50 ms claimed by the original system",
            f"p50 <= {TARGET_SESSION_ID_MS:g} ms",
            to_id["p50_ms"] <= TARGET_SESSION_ID_MS,
        ),
        Row(f"time to first token p50 / p99 (from the POST), {setting}", *pair(first, d_first)),
        Row(f"total time p50 / p99 (POST to [DONE]), {setting}", *pair(total, d_total)),
        Row(
            f"sessions ending in [DONE] with the direct answer's text, {setting} "
            f"(wall: fleet {walls['fleet_s']:.1f} s, direct {walls['direct_s']:.1f} s; {chunks})",
            f"{same} / {len(fleet)}",
            "",
            "all",
            same == len(fleet),
        ),
    ]
    raw = {
        "walls_s": {k: round(v, 2) for k, v in walls.items()},
        "fleet": {"time_to_session_id": to_id, "time_to_first_token": first, "total": total},
        "direct": {"time_to_first_token": d_first, "total": d_total},
        "failed": len(fleet) - len(ok),
        "failures": [r["error"] for r in fleet if r.get("error")][:10],
        "same_text": same,
    }
    return rows, raw


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, default=300, help="concurrent sessions")
    parser.add_argument("--workers", type=int, default=2, help="workers on the openai queue")
    parser.add_argument("--generation-s", type=float, default=1.0, help="one answer's streaming")
    parser.add_argument("--arrival-s", type=float, default=3.0, help="paced: the clients' spread")
    parser.add_argument("--warmup", type=int, default=10, help="unmeasured sessions first")
    args = parser.parse_args()
    tag = f"httpchat-{time.time_ns()}"
    chunks = chunks_of(prompt(tag, 0))
    chunk_ms = round(args.generation_s * 1000 / chunks, 1)
    per_worker = -(-args.sessions // args.workers) + 10  # every session streaming at once
    # the simulator's child imports this tree's mitrailleuse, not an installed one (bench_env
    # sets PYTHONPATH only once the simulator runs)
    os.environ["PYTHONPATH"] = str(REPO)
    with bench_env(f"--stream-chunk-ms={chunk_ms}") as bench:
        workers = [
            bench.worker(per_worker, ("openai",), f"chat{n}", env=UNLIMITED_ENV)
            for n in range(args.workers)
        ]
        server = HttpServiceProcess({**os.environ, **bench.env}, cwd=REPO)
        bench.started.append(server)  # stopped with the fleet
        pids = {
            "http server": server.pid,
            "workers": [worker.pid for worker in workers],
            "simulator": bench.simulator.process.pid,
            "redis": bench.redis.process.pid,
        }
        cpu_before = cpu_of(pids)
        client_cpu = time.process_time()
        passes = asyncio.run(measure(server.url, bench.simulator.url, args, tag))
        cpu_s = {k: round(v - cpu_before[k], 2) for k, v in cpu_of(pids).items()}
        cpu_s["bench clients"] = round(time.process_time() - client_cpu, 2)
        sim_stats = bench.simulator.stats()

    n, w, g = args.sessions, args.workers, args.generation_s
    settings = {
        "burst": f"{n} sessions at once, {w} workers, {g:g} s generation",
        "paced": f"{n} sessions over {args.arrival_s:g} s, {w} workers, {g:g} s generation",
    }
    rows: list[Row] = []
    raw: dict[str, Any] = {
        "args": vars(args),
        "chunks_per_answer": chunks,
        "stream_chunk_ms": chunk_ms,
        "worker_concurrency": per_worker,
        "cpu_s_both_passes": cpu_s,
        "simulator": {k: v for k, v in sim_stats.items() if k.startswith("chat")},
    }
    for run in passes:
        found, raw[run.name] = rows_of(
            run, settings[run.name], f"{chunks} chunks at {chunk_ms:g} ms"
        )
        rows += found
    report("http_chat", f"HTTP chat: {n} sessions, {w} workers, {os.cpu_count()} cores", rows, raw)


if __name__ == "__main__":
    main()

"""The response cache: answers by request hash in Redis, shared by the fleet, with a TTL.

A worker looks its items up before calling: a hit becomes a ``cached`` record, with no call and
no cost. A miss's request is claimed with the call's rate grant (``acquire.lua``), so identical
items in flight are sent once: the others wait for the first one's answer, or call themselves if
its worker died. Answers are also queued for the task folder's
``cache/responses.jsonl`` (written by the control queue, which owns the disk); a run on a
Redis that never saw them loads that file first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson
import redis

from mitrailleuse import keys
from mitrailleuse.config import CacheSettings
from mitrailleuse.providers import Answer, Provider

#: How many file-cache lines are loaded into Redis per round trip.
WARM_BATCH = 1000


def cache_enabled(settings: CacheSettings, provider: Provider) -> bool:
    """``auto`` caches what gives the same answer twice (see ``Provider.deterministic``)."""
    return provider.deterministic() if settings.enabled == "auto" else bool(settings.enabled)


def request_hash(provider: Provider, payload: Any) -> str:
    """The hash of everything that shapes the answer: provider, model, settings, request."""
    identity = [provider.name, provider.request_identity(payload)]
    return hashlib.sha256(orjson.dumps(identity, option=orjson.OPT_SORT_KEYS)).hexdigest()


@dataclass(slots=True)
class Lookup:
    """A group's items sorted by what the cache knows of them."""

    #: Ordinal -> the cached answer.
    hits: dict[int, Answer] = field(default_factory=dict)
    #: Messages the cache does not know: the provider is asked.
    misses: list[dict[str, Any]] = field(default_factory=list)
    #: Ordinal -> request hash, for every message looked up.
    hashes: dict[int, str] = field(default_factory=dict)


class ResponseCache:
    """A run's view of the fleet's response cache."""

    def __init__(self, client: redis.Redis, run_id: str, settings: CacheSettings) -> None:
        self.redis = client
        self.run_id = run_id
        self.settings = settings

    def lookup(self, provider: Provider, items: Sequence[dict[str, Any]]) -> Lookup:
        """Hits and misses of a message's items: one round trip."""
        found = Lookup()
        for item in items:
            found.hashes[item["ordinal"]] = request_hash(provider, item["request"])
        entries = self.redis.mget([keys.cache_entry(h) for h in found.hashes.values()])
        for item, entry in zip(items, entries, strict=True):
            if entry is None:
                found.misses.append(item)
            else:
                found.hits[item["ordinal"]] = Answer(**orjson.loads(entry))
        return found

    def put(self, answers: Iterable[tuple[str, Answer]], fresh: bool = True) -> None:
        """Keep answers for ``ttl_s`` (``fresh``: a call's answers), before their claims go.

        Hits come back with ``fresh=False``: they only go to the task's file cache, so that
        the task keeps every answer it used.
        """
        pipe = self.redis.pipeline(transaction=False)
        for digest, answer in answers:
            value = orjson.dumps(
                {"output": answer.output, "response": answer.response, "usage": answer.usage}
            )
            if fresh:
                pipe.set(keys.cache_entry(digest), value, ex=self.settings.ttl_s)
            if self.settings.file:
                pipe.rpush(keys.cache_new(self.run_id), digest.encode() + b" " + value)
        pipe.execute()


def save_new_answers(client: redis.Redis, run_id: str, cache_dir: Path) -> int:
    """Append the run's newly cached answers to ``cache/responses.jsonl`` (control queue)."""
    moved = 0
    while lines := client.lpop(keys.cache_new(run_id), WARM_BATCH):
        cache_dir.mkdir(exist_ok=True)
        with (cache_dir / "responses.jsonl").open("ab") as handle:
            for line in lines:
                digest, value = line.split(b" ", 1)
                handle.write(b'{"hash":"' + digest + b'","answer":' + value + b"}\n")
        moved += len(lines)
    return moved


def load_file_cache(client: redis.Redis, cache_dir: Path, ttl_s: int) -> int:
    """Put the answers of ``cache/responses.jsonl`` into Redis where it has none."""
    path = cache_dir / "responses.jsonl"
    if not path.exists():
        return 0
    loaded = 0
    with path.open("rb") as handle:
        pipe = client.pipeline(transaction=False)
        for line in handle:
            try:
                entry = orjson.loads(line)
            except orjson.JSONDecodeError:
                continue  # a line cut by a crash: the cache only loses that answer
            pipe.set(
                keys.cache_entry(entry["hash"]), orjson.dumps(entry["answer"]), nx=True, ex=ttl_s
            )
            loaded += 1
            if loaded % WARM_BATCH == 0:
                pipe.execute()
        pipe.execute()
    return loaded

"""The similarity check (``general.similarity_check``): near-copies of recent answers.

Each new answer is scored (rapidfuzz ``ratio``, 0-1) against the run's last
``max_recent_responses`` answers, kept in a Redis list shared by the fleet; a score at or above
``similarity_threshold`` marks the record (``similar_to``, ``similarity``). Only the first
:data:`COMPARED_CHARS` characters are compared, which keeps the check to tens of microseconds
per answer against 100 recent ones.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import redis
from rapidfuzz import fuzz, process

from mitrailleuse import keys
from mitrailleuse.config import SimilaritySettings

#: Characters of each answer compared (and kept in Redis).
COMPARED_CHARS = 2000


@dataclass(frozen=True, slots=True)
class Match:
    """The recent answer an answer resembles."""

    similar_to: str
    similarity: float


def check_answers(
    client: redis.Redis,
    run_id: str,
    settings: SimilaritySettings,
    answers: Sequence[tuple[str, str]],
) -> dict[str, Match]:
    """Score ``(item id, text)`` answers against the recent ones, adding them to the recent.

    Returns the matches at or above the threshold, by item id. Answers of one call are also
    compared with each other, in order. Reading the recent answers and adding these is one
    transaction: of two answers scored at the same moment anywhere in the fleet, the later one
    always sees the earlier.
    """
    key = keys.recent_answers(run_id)
    entries = [f"{item_id}\0{text[:COMPARED_CHARS]}" for item_id, text in answers]
    pipe = client.pipeline(transaction=True)
    pipe.lrange(key, 0, settings.max_recent_responses - 1)
    pipe.lpush(key, *entries)
    pipe.ltrim(key, 0, settings.max_recent_responses - 1)
    before, *_ = pipe.execute()
    recent = [entry.decode().split("\0", 1) for entry in before]
    ids = [item_id for item_id, _ in recent]
    texts = [text for _, text in recent]
    cutoff = settings.similarity_threshold * 100
    matches = {}
    for item_id, text in answers:
        text = text[:COMPARED_CHARS]
        # an item asked again is compared with the others, never with its own earlier answer
        others = {n: t for n, t in enumerate(texts) if ids[n] != item_id}
        best = process.extractOne(text, others, scorer=fuzz.ratio, score_cutoff=cutoff)
        if best is not None:
            matches[item_id] = Match(ids[best[2]], round(best[1] / 100, 4))
        ids.insert(0, item_id)
        texts.insert(0, text)
    return matches

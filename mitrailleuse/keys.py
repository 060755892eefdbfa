"""Every Redis key Mitrailleuse uses, in one place (like arq's ``constants.py``).

A run's keys share the ``mtr:run:<run_id>`` prefix so that one ``SCAN`` finds them all and one
``EXPIRE`` sweep can retire a finished run.
"""

from __future__ import annotations

#: Prefix of every key.
PREFIX = "mtr"
#: How long a finished run's state stays in Redis, for ``status`` and re-attaching.
FINISHED_RUN_TTL_S = 7 * 24 * 3600


def run(run_id: str) -> str:
    """Hash: the run's settings, cursor, counts and state."""
    return f"{PREFIX}:run:{run_id}"


def run_config(run_id: str) -> str:
    """String: the task's config as JSON (keys only as ``${VAR}`` references)."""
    return f"{PREFIX}:run:{run_id}:config"


def chunk_records(run_id: str, chunk: int) -> str:
    """Hash: ordinal → record JSON, for the records of one chunk not yet written to disk."""
    return f"{PREFIX}:run:{run_id}:chunk:{chunk}"


def chunks_dispatched(run_id: str) -> str:
    """Bitmap: bit k set once chunk k has been sent to the workers."""
    return f"{PREFIX}:run:{run_id}:dispatched"


def chunk_starts(run_id: str) -> str:
    """Hash: chunk number -> the input cursor its items begin at (to send it again)."""
    return f"{PREFIX}:run:{run_id}:chunk-starts"


def chunks_done(run_id: str) -> str:
    """Bitmap: bit k set once chunk k's records are on disk."""
    return f"{PREFIX}:run:{run_id}:done"


def chunks_carried(run_id: str) -> str:
    """Hash: chunk number -> how many of its records an earlier run left on disk."""
    return f"{PREFIX}:run:{run_id}:carried"


def custom_ids(run_id: str) -> str:
    """Hash: an item's own ``custom_id`` -> the first item that used it ("ordinal id")."""
    return f"{PREFIX}:run:{run_id}:custom-ids"


def feed_lock(run_id: str) -> str:
    """Lock: held by the one feeder of a run."""
    return f"{PREFIX}:run:{run_id}:feed-lock"


def status_lock(run_id: str) -> str:
    """Lock: held while the run's ``status.json`` is read, changed and written again."""
    return f"{PREFIX}:run:{run_id}:status-lock"


def finish_lock(run_id: str) -> str:
    """Lock: taken once, by whoever assembles the finished run."""
    return f"{PREFIX}:run:{run_id}:finish"


def events(run_id: str) -> str:
    """Pub/sub channel: progress and record events of a run."""
    return f"{PREFIX}:run:{run_id}:events"


#: The event that says a chunk's part file is written: ``chunk:<number>``.
CHUNK_WRITTEN = "chunk:"


def run_keys_pattern(run_id: str) -> str:
    """Glob matching every key of a run."""
    return f"{PREFIX}:run:{run_id}*"


def limit(scope: str, budget: str) -> str:
    """A rate-limit budget of one provider and model (``openai:gpt-4o-mini``), fleet-wide."""
    return f"{PREFIX}:limit:{scope}:{budget}"


def rate_counters(scope: str, minute: int) -> str:
    """Hash: requests (``r<second>``) and tokens (``t<second>``) sent in one minute."""
    return f"{PREFIX}:rate:{scope}:{minute}"


def native_batches() -> str:
    """Set: ``<task path>|<batch number>`` of every native batch beat must poll."""
    return f"{PREFIX}:native-batches"


def poll_lock() -> str:
    """Lock: held by the one ``poll_native_batches`` running."""
    return f"{PREFIX}:native-batches:poll-lock"


def item_claim(run_id: str, ordinal: int) -> str:
    """String: ``"<owner> <token>"`` of the one call sending this item right now (a lease)."""
    return f"{PREFIX}:run:{run_id}:claim:{ordinal}"


def reservations(run_id: str) -> str:
    """Hash: a call's holder (``"<owner> <token>"``) -> the worst-case cost it reserved."""
    return f"{PREFIX}:run:{run_id}:reservations"


def alive(owner: str) -> str:
    """String with a TTL: present while the process or broker channel ``owner`` lives."""
    return f"{PREFIX}:alive:{owner}"


def lease(name: str) -> str:
    """String: ``"<owner> <token>"`` of the holder of an exclusive step (a lease)."""
    return f"{PREFIX}:lease:{name}"


def redelivery_lock() -> str:
    """Lock: held by the one worker bringing back the messages of dead channels."""
    return f"{PREFIX}:redelivery-lock"


def cache_entry(request_hash: str) -> str:
    """String: a cached answer, shared by every run of the fleet (expires after its TTL)."""
    return f"{PREFIX}:cache:{request_hash}"


def cache_claim(request_hash: str) -> str:
    """String: ``"<owner> <token>"`` of the call sending this request; identical items wait."""
    return f"{PREFIX}:cache:{request_hash}:claim"


def cache_new(run_id: str) -> str:
    """List: answers cached by the run, not yet appended to the task's ``cache/`` file."""
    return f"{PREFIX}:run:{run_id}:cache-new"


def recent_answers(run_id: str) -> str:
    """List: the run's last answers ("id NUL text"), for the similarity check."""
    return f"{PREFIX}:run:{run_id}:recent"


def serving(queue: str) -> str:
    """Hash: owner of a worker's channel -> the key variables set where it runs (names only).

    Entries of dead workers linger until a reader drops them: an owner counts only while its
    alive key exists.
    """
    return f"{PREFIX}:serving:{queue}"


def chat_session(session_id: str) -> str:
    """Hash: a streamed chat session's user, provider, request, state, usage and cost."""
    return f"{PREFIX}:chat:{session_id}"


def chat_scopes() -> str:
    """Set: the provider:model scopes chat sessions have called (for ``/stats``)."""
    return f"{PREFIX}:chat:scopes"


def chat_spend(user_id: str, day: str) -> tuple[str, str]:
    """Hash (``spent_usd``, ``reserved_usd``) and reservations: a user's chat spend on a day."""
    scope = f"{PREFIX}:chatspend:{day}:{user_id}"
    return scope, f"{scope}:reservations"


def chat_stream(session_id: str) -> str:
    """Stream: a chat session's chunks as the provider sent them, then its end or its error."""
    return f"{PREFIX}:chat:{session_id}:stream"

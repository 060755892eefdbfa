"""Chat sessions streamed through the fleet: a worker relays a provider's chunks into Redis.

The HTTP API opens a session (:func:`open_session`: a hash holding its user and request, both
expiring after :data:`SESSION_TTL_S`) and sends the ``mitrailleuse.chat_stream`` task with the
session id only. The worker (:func:`stream_session`) takes the fleet's rate grant, calls the
provider with ``stream=True`` through its SDK, and appends each chunk, as the provider's JSON,
to the session's Redis Stream, then ``done`` or ``error``. Readers (:func:`relay`) follow that
stream from any server, from the start or after an entry id, so a reconnect loses nothing and
never starts the generation again.

A failure before the first chunk is appended is retried like a pipeline call (the retry
policy, ``Retry-After`` obeyed) and nobody sees it; a failure after it ends the session with a
``stream_cut`` error, and so does a stream that closes before its ``finish_reason`` came: a
half answer is never passed off as a whole one. One worker streams a session at a time (a
:class:`~mitrailleuse.pipeline.liveness.Lease`, free as soon as its holder dies): a message
redelivered while its first worker still streams is dropped; one redelivered after that
worker died finds the session cut (or, with nothing appended yet, streams it).

A session's stream is never trimmed (a reader resuming from the start must find the start):
an answer longer than :data:`MAX_ENTRIES` chunks ends with a ``too_long`` error.

Cost: the session hash records ``usage`` and ``cost_usd``; with ``include_usage`` the usage
chunk carries ``cost_usd`` too (an extra member, which OpenAI's SDK keeps and ignores).
"""

from __future__ import annotations

import logging
import re
import threading
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from typing import Any, NamedTuple

import orjson
import redis
import redis.asyncio

from mitrailleuse import keys
from mitrailleuse.config import Environment, RateLimit, RetryPolicy
from mitrailleuse.cost.limit import CostLimit, Reservation
from mitrailleuse.cost.pricing import cost_usd, price_of, worst_case_usd
from mitrailleuse.credentials import resolve_api_key
from mitrailleuse.pipeline import liveness
from mitrailleuse.pipeline.caller import COST_POLL_S, MOMENT_S, acquire_within
from mitrailleuse.pipeline.liveness import Lease
from mitrailleuse.pipeline.retries import Verdict, after_error
from mitrailleuse.providers import ErrorKind, ProviderError, provider_class
from mitrailleuse.providers.openai import OpenAIProvider
from mitrailleuse.ratelimit import Grant, Limits, RedisLimiter

log = logging.getLogger(__name__)

#: The providers a session can stream from (OpenAI's chunk shape, through OpenAI's SDK).
STREAMING_PROVIDERS = ("openai", "deepseek")
#: How long a session (its request, its chunks) stays readable after it was opened or last grew.
SESSION_TTL_S = 3600
#: The most chunks a session's stream takes (a token or so each); the answer ends there.
MAX_ENTRIES = 100_000
#: The form a session id has (a uuid4's hex): anything else is no session.
SESSION_ID = re.compile(r"[0-9a-f]{32}")
#: What a session's stream says when the provider refused the fleet's key: the provider's own
#: text may quote part of the key, and the reader is not the key's owner.
KEY_REFUSED = "the provider refused this fleet's API key (HTTP {status})"
#: What ends a session that completed, as its last entry and as its last SSE data.
DONE = "[DONE]"
#: The error a reader gets when the session expires while it waits.
EXPIRED = orjson.dumps({"error": {"type": "expired", "message": "the chat session expired"}})
#: The retry policy of a session's call (the pipeline's defaults).
RETRY_POLICY = RetryPolicy()


class Again(NamedTuple):
    """Call again after ``wait_s``, as attempt ``attempt`` (a rate wait uses none)."""

    wait_s: float
    attempt: int


@dataclass(frozen=True, slots=True)
class Entry:
    """One entry of a session's stream: a chunk, the end (``done``) or an ``error``."""

    entry_id: str
    kind: str
    data: bytes


def open_session(client: redis.Redis, user_id: str, provider: str, request: dict[str, Any]) -> str:
    """A new session holding ``request`` (model, messages, settings, include_usage): its id."""
    session_id = uuid.uuid4().hex
    key = keys.chat_session(session_id)
    pipe = client.pipeline()
    pipe.hset(
        key,
        mapping={"user": user_id, "provider": provider, "request": orjson.dumps(request)},
    )
    pipe.expire(key, SESSION_TTL_S)
    pipe.execute()
    return session_id


def session_user(client: redis.Redis, session_id: str) -> str | None:
    """The session's user ("" for anyone's), or None when there is no such session."""
    if not SESSION_ID.fullmatch(session_id):
        return None
    user = client.hget(keys.chat_session(session_id), "user")
    return None if user is None else user.decode()


async def relay(
    client: redis.asyncio.Redis, session_id: str, after: str, block_s: float
) -> AsyncIterator[Entry | None]:
    """The session's entries after entry id ``after``, up to its end; None after each idle wait."""
    key = keys.chat_stream(session_id)
    last = after
    while True:
        reply = await client.xread({key: last}, count=100, block=int(block_s * 1000))
        if not reply:
            if not await client.exists(keys.chat_session(session_id)):
                yield Entry(last, "error", EXPIRED)  # nothing more will come
                return
            yield None
            continue
        for entry_id, fields in reply[0][1]:
            last = entry_id.decode()
            entry = Entry(last, fields[b"kind"].decode(), fields[b"data"])
            yield entry
            if entry.kind != "chunk":
                return


def _append_chunk(client: redis.Redis, session_id: str, data: bytes, first: bool) -> None:
    """Add a chunk to the session's stream: one XADD (the first sets the stream's TTL too)."""
    if first:
        _append(client, session_id, "chunk", data)
    else:
        client.xadd(keys.chat_stream(session_id), {"kind": "chunk", "data": data})


def _append(client: redis.Redis, session_id: str, kind: str, data: bytes, **record: Any) -> None:
    """Add an entry to the session's stream (``record``: hash fields set with it), TTLs renewed."""
    pipe = client.pipeline()
    stream = keys.chat_stream(session_id)
    pipe.xadd(stream, {"kind": kind, "data": data})
    pipe.expire(stream, SESSION_TTL_S)
    if record:
        pipe.hset(keys.chat_session(session_id), mapping=record)
    pipe.expire(keys.chat_session(session_id), SESSION_TTL_S)
    pipe.execute()


def _error(client: redis.Redis, session_id: str, kind: str, message: str) -> None:
    """End the session with an error entry (``{"error": {"type", "message"}}``)."""
    body = orjson.dumps({"error": {"type": kind, "message": message}})
    _append(client, session_id, "error", body, state="error")


_providers: dict[str, OpenAIProvider] = {}
_providers_lock = threading.Lock()


def chat_limiter(client: redis.Redis, provider: str, model: str) -> RedisLimiter:
    """The fleet's budget of ``provider:model`` at the operator's limits, noted for ``/stats``."""
    limiter = RedisLimiter(client, provider, model, Limits.resolve(provider, RateLimit()))
    if limiter.scope not in _scopes_noted:
        client.sadd(keys.chat_scopes(), limiter.scope)
        _scopes_noted.add(limiter.scope)
    return limiter


def chat_limiters(client: redis.Redis) -> list[RedisLimiter]:
    """The budgets chat sessions have drawn from."""
    scopes = sorted(scope.decode() for scope in client.smembers(keys.chat_scopes()))
    return [chat_limiter(client, *scope.split(":", 1)) for scope in scopes]


_scopes_noted: set[str] = set()


def _provider(name: str) -> OpenAIProvider:
    """The provider's SDK client for sessions, one per process (its key: this worker's)."""
    with _providers_lock:
        if name not in _providers:
            cls = provider_class(name)
            section = cls.config_model()
            _providers[name] = cls(section, resolve_api_key(name, section.api_key))
        return _providers[name]


def stream_session(client: redis.Redis, session_id: str, attempt: int) -> Again | None:
    """Stream the session's answer into Redis: None when it is over, else when to try again."""
    lease = Lease(client, f"chat:{session_id}", SESSION_TTL_S)
    if not lease.acquire():
        log.warning("chat session %s is streamed by another worker: not again", session_id)
        return None
    try:
        return _stream_session(client, session_id, attempt)
    finally:
        lease.release()


def _stream_session(client: redis.Redis, session_id: str, attempt: int) -> Again | None:
    """:func:`stream_session`, its lease held."""
    found = client.hmget(keys.chat_session(session_id), ["provider", "request", "user"])
    if found[0] is None:
        log.warning("chat session %s expired before it was streamed", session_id)
        return None
    if client.xlen(keys.chat_stream(session_id)):  # a redelivered task: its stream was cut
        last = client.xrevrange(keys.chat_stream(session_id), count=1)[0][1]
        if last[b"kind"] == b"chunk":
            _error(client, session_id, "stream_cut", "the worker streaming the answer stopped")
        return None
    name, request, user = found[0].decode(), orjson.loads(found[1]), found[2].decode()
    provider = _provider(name)
    model = request.get("model") or provider.model
    price = price_of(name, model)
    budget = CostLimit.of_chats(client, user, _today(), Environment().mitrailleuse_chat_budget_usd)
    units = _cost_units(provider, request)
    worst = worst_case_usd(price, *units) if price and budget.limit_usd else 0.0
    holder = liveness.holder(liveness.heartbeat(client).owner)
    with budget.reserved(worst, holder) as reservation:
        if reservation is Reservation.WAIT:  # sessions in flight hold the rest
            return Again(COST_POLL_S, attempt)
        if reservation is Reservation.EXHAUSTED:
            spent = f"${budget.limit_usd:g} a day for each user"
            _error(client, session_id, "budget", f"the chat budget ({spent}) is spent for today")
            return None
        return _call(client, session_id, attempt, provider, model, request, sum(units), budget)


def _call(
    client: redis.Redis,
    session_id: str,
    attempt: int,
    provider: OpenAIProvider,
    model: str,
    request: dict[str, Any],
    tokens: int,
    budget: CostLimit,
) -> Again | None:
    """Take the rate grant, call the provider, relay its chunks (the cost reserved)."""
    name, timeout_s = provider.name, provider.config.timeout_s
    limiter = chat_limiter(client, name, model)
    turn = acquire_within(limiter, tokens, timeout_s, None, MOMENT_S)
    if not isinstance(turn, Grant):
        return Again(float(turn), attempt)  # the rate budget is spent: no attempt used
    time.sleep(turn.delay_s)
    with limiter.leased(turn) as lease:
        try:
            provider.require_key()
            raw = provider.client.chat.completions.with_raw_response.create(
                model=model,
                messages=request["messages"],
                stream=True,
                stream_options={"include_usage": True},  # for the cost, shown or not
                extra_body=request.get("settings") or None,
                timeout=timeout_s,
            )
        except provider.sdk_error as error:
            return _failed(client, session_id, limiter, provider.classify(error), attempt)
        except ProviderError as error:
            return _failed(client, session_id, limiter, error, attempt)
        limiter.observe(provider.rate_limits(raw.headers))
        with raw.parse() as chunks:
            usage = _relay_chunks(client, session_id, chunks, name, model, request, budget)
        if isinstance(usage, ProviderError):
            return _failed(client, session_id, limiter, usage, attempt)
        lease.tokens = usage.get("total_tokens") if usage else None
    return None


def _relay_chunks(
    client: redis.Redis,
    session_id: str,
    chunks: Iterator[Any],
    provider: str,
    model: str,
    request: dict[str, Any],
    budget: CostLimit,
) -> dict[str, Any] | ProviderError | None:
    """Append the chunks, then ``done``: the usage (None: not given), or an error to retry.

    The answer's cost, once its usage came, is spent from the user's chat ``budget``.

    An error is for retrying only while nothing was appended; after, the session ends cut.
    """
    appended = 0
    finished = False
    usage: dict[str, Any] | None = None
    cost: float | None = None
    try:
        for chunk in chunks:
            body = chunk.to_dict()
            finished = finished or any(c.get("finish_reason") for c in body["choices"])
            if body.get("usage"):
                usage = body["usage"]
                cost = cost_usd(price_of(provider, model), usage)
                body["cost_usd"] = cost
                budget.spend(cost or 0.0)
            if not request.get("include_usage"):
                body.pop("usage", None)
                if not body["choices"]:
                    continue  # the usage chunk the client did not ask for
            if appended == MAX_ENTRIES:
                _error(client, session_id, "too_long", f"the answer is over {MAX_ENTRIES} chunks")
                return None
            _append_chunk(client, session_id, orjson.dumps(body), first=not appended)
            appended += 1
        if not finished:  # closed early: the last choice chunk has the finish_reason
            raise ConnectionError("the provider closed the stream before its finish_reason")
    except Exception as error:  # a cut connection, an error event, an SDK surprise
        if not appended:
            return ProviderError(ErrorKind.RETRY, "stream_cut", _line(error))
        _error(client, session_id, "stream_cut", f"the stream was cut: {_line(error)}")
        return None
    record = {"state": "done", "usage": orjson.dumps(usage), "cost_usd": orjson.dumps(cost)}
    _append(client, session_id, "done", DONE.encode(), **record)
    return usage


def _failed(
    client: redis.Redis,
    session_id: str,
    limiter: RedisLimiter,
    error: ProviderError,
    attempt: int,
) -> Again | None:
    """A call that failed before any chunk: when to make the next attempt, or the end."""
    if error.kind is ErrorKind.RATE_LIMITED:
        limiter.pause(error.retry_after_s or RETRY_POLICY.initial_backoff_s)
    decision = after_error(error, attempt, RETRY_POLICY)
    if decision.verdict is Verdict.RETRY:
        log.info(
            "chat session %s: attempt %d failed (%s), again in %.1fs",
            session_id,
            attempt,
            error.type,
            decision.wait_s,
        )
        return Again(decision.wait_s, attempt + 1)
    refused = error.status_code in (401, 403)
    shown = KEY_REFUSED.format(status=error.status_code) if refused else error.message
    _error(client, session_id, error.type, shown)
    return None


def _cost_units(provider: OpenAIProvider, request: dict[str, Any]) -> tuple[int, int]:
    """The session's prompt tokens and completion budget (its ``max_tokens`` and ``n``, if set)."""
    prompt, default = provider.cost_units([{"messages": request["messages"]}])
    settings = request.get("settings") or {}
    most = settings.get("max_completion_tokens") or settings.get("max_tokens") or default
    return prompt, int(most) * int(settings.get("n") or 1)


def _today() -> str:
    """The UTC day a chat budget counts: ``YYYY-MM-DD``."""
    return time.strftime("%Y-%m-%d", time.gmtime())


def _line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__

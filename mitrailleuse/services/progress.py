"""Runs' progress for the services' streams: one poll per watched run, however many watch it.

gRPC's ``WatchTask`` and the HTTP API's Server-Sent Events both follow a run through
:class:`ProgressHub`: a hundred watchers cost the run what one does. Each event's id is the
time in ms (or one more), so a client that reconnects, to this server or another, resumes
after the last event it got.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncGenerator
from dataclasses import dataclass, field, replace
from pathlib import Path

from mitrailleuse.api import Run
from mitrailleuse.ratelimit import Rates
from mitrailleuse.services.tasks import TaskCounts

#: How often a watched run's progress is read (one read per run, however many watch it).
WATCH_POLL_S = 0.5


@dataclass(frozen=True, slots=True)
class RateView:
    """The fleet's requests and tokens per minute for a provider and model, and its limits."""

    requests_per_minute: float
    tokens_per_minute: float
    requests_per_minute_limit: int
    #: None: no token budget.
    tokens_per_minute_limit: int | None
    #: Calls out now, fleet-wide, and the most there may be.
    in_flight: int
    max_in_flight: int

    @classmethod
    def of(cls, rates: Rates) -> RateView:
        """The limiter's rates over its last seconds, against the limits in force."""
        return cls(
            requests_per_minute=rates.requests_per_minute,
            tokens_per_minute=rates.tokens_per_minute,
            requests_per_minute_limit=rates.limits.requests_per_minute,
            tokens_per_minute_limit=rates.limits.tokens_per_minute,
            in_flight=rates.in_flight,
            max_in_flight=rates.limits.max_in_flight,
        )


@dataclass(frozen=True, slots=True)
class ProgressEvent:
    """A run's progress at one moment: state, counts, spend, rates against limits."""

    #: Grows with every event (the time in ms, or one more).
    event_id: int
    state: str
    counts: TaskCounts
    spent_usd: float
    #: The whole run's cost at the spend per item so far (None before the first record).
    projected_usd: float | None
    rates: RateView
    finished: bool

    @classmethod
    def read(cls, run: Run) -> ProgressEvent:
        """The run's progress now (event id 0: the hub numbers the events it publishes)."""
        progress = run.progress()
        return cls(
            event_id=0,
            state=progress.state,
            counts=TaskCounts.of(progress),
            spent_usd=progress.spent_usd,
            projected_usd=progress.projected_usd,
            rates=RateView.of(run.rates()),
            finished=progress.finished,
        )


@dataclass(slots=True)
class _Watch:
    """A watched run: its latest progress, and the streams waiting for the next."""

    latest: ProgressEvent | None = None
    #: Why the progress can no longer be read (Redis gone): every watcher's stream ends with it.
    error: Exception | None = None
    watchers: int = 0
    changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    poller: asyncio.Task[None] | None = None

    async def after(self, event_id: int, first: bool = False) -> ProgressEvent:
        """The latest progress, once it is newer than ``event_id``.

        A stream's ``first`` event may be an older one when the run has finished: a client
        resuming after the final event (or with a clock ahead) still gets the end.
        """

        def ready() -> bool:
            latest = self.latest
            if self.error is not None:
                return True
            return latest is not None and (
                latest.event_id > event_id or (first and latest.finished)
            )

        async with self.changed:
            await self.changed.wait_for(ready)
            if self.error is not None:
                raise self.error
            assert self.latest is not None
            return self.latest

    async def publish(self, latest: ProgressEvent | None, error: Exception | None = None) -> None:
        """Wake every watcher with a new progress, or the error that ends the watch."""
        async with self.changed:
            self.latest, self.error = latest or self.latest, error
            self.changed.notify_all()


class ProgressHub:
    """One poll of each watched run's progress, fanned out to every stream watching it."""

    def __init__(self, poll_s: float = WATCH_POLL_S) -> None:
        self.poll_s = poll_s
        self._watches: dict[Path, _Watch] = {}

    async def watch(self, run: Run, after_event_id: int = 0) -> AsyncGenerator[ProgressEvent, None]:
        """Each new progress of ``run`` (after ``after_event_id``), the final one last.

        Close it (``contextlib.aclosing``) when the client goes: the run's poll stops with
        its last watcher.
        """
        key = run.folder.path
        watch = self._watches.setdefault(key, _Watch())
        watch.watchers += 1
        if watch.poller is None:
            watch.poller = asyncio.create_task(self._poll(run, watch))
        sent = after_event_id
        try:
            while True:
                latest = await watch.after(sent, first=sent == after_event_id)
                sent = latest.event_id
                yield latest
                if latest.finished:
                    return
        finally:
            watch.watchers -= 1
            if watch.watchers == 0:
                if watch.poller is not None:
                    watch.poller.cancel()
                self._watches.pop(key, None)

    async def _poll(self, run: Run, watch: _Watch) -> None:
        event_id = 0
        while True:
            try:
                event = await asyncio.to_thread(ProgressEvent.read, run)
            except Exception as error:  # the watchers' streams end with it
                await watch.publish(None, error)
                return
            last = watch.latest
            if last is None or replace(event, event_id=last.event_id) != last:
                # the time in ms: ids keep growing across watches and server restarts, so a
                # client that reconnects (here or to another server) resumes after its last
                event_id = max(event_id + 1, time.time_ns() // 1_000_000)
                await watch.publish(replace(event, event_id=event_id))
            if event.finished:
                return
            await asyncio.sleep(self.poll_s)

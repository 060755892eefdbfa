"""The Celery tasks: each a few lines over the feeder, the caller or the assembler.

``call`` runs on a provider queue and talks only to Redis and the provider; ``feed``,
``assemble_chunk`` and ``finish`` run on the control queue and read and write the tasks dir.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from celery import Task, chord
from celery.exceptions import Reject
from kombu.exceptions import OperationalError

from mitrailleuse.batch.create import upload_and_create
from mitrailleuse.batch.poll import cancel_all, poll_all
from mitrailleuse.errors import MitrailleuseError
from mitrailleuse.pipeline import assembler, chat_stream, feeder
from mitrailleuse.pipeline.app import app
from mitrailleuse.pipeline.caller import call_message, context_for
from mitrailleuse.pipeline.chunks import Chunk
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.retries import count_attempts, countdown_s
from mitrailleuse.pipeline.run_state import RunState, redis_client


def run_state(run_id: str) -> RunState:
    """The run, on the fleet's Redis."""
    return RunState(redis_client(app.conf.broker_url), run_id)


@contextmanager
def kept_if_unpublished() -> Iterator[None]:
    """A message whose follow-up cannot be published goes back to its queue, never away.

    Celery rejects a task whose retry it could not publish (Redis gone for longer than
    ``task_publish_retry_policy``) without requeueing it: its items would be lost and their
    chunk never finished. Requeued, the message runs again (or comes back with its channel).
    """
    try:
        yield
    except Reject as rejected:
        raise Reject(rejected.reason, requeue=True) from None
    except OperationalError as error:
        raise Reject(error, requeue=True) from None


@app.task(name="mitrailleuse.call", bind=True, max_retries=None)
def call(self: Task, run_id: str, chunk: int, items: list[dict[str, Any]]) -> int:
    """Call the provider for a message's items; retry later when the outcome asks for it."""
    outcome = call_message(run_state(run_id), chunk, items)
    if outcome.retry_in_s is not None:
        visibility_timeout_s = app.conf.broker_transport_options["visibility_timeout"]
        with kept_if_unpublished():
            raise self.retry(
                args=(run_id, chunk, count_attempts(items, outcome.attempted, outcome.changed)),
                countdown=countdown_s(outcome.retry_in_s, visibility_timeout_s),
                argsrepr=self.request.argsrepr,  # monitoring shows ids, never the requests
                kwargsrepr=self.request.kwargsrepr,
            )
    return outcome.stored


@app.task(name="mitrailleuse.chat_stream", bind=True, max_retries=None, ignore_result=True)
def stream_chat(self: Task, session_id: str, attempt: int = 1) -> None:
    """Stream a chat session's answer into Redis; call again later when it says so."""
    again = chat_stream.stream_session(redis_client(app.conf.broker_url), session_id, attempt)
    if again is not None:
        visibility_timeout_s = app.conf.broker_transport_options["visibility_timeout"]
        with kept_if_unpublished():
            raise self.retry(
                args=(session_id, again.attempt),
                countdown=countdown_s(again.wait_s, visibility_timeout_s),
                argsrepr=self.request.argsrepr,
                kwargsrepr=self.request.kwargsrepr,
            )


def send_chat(session_id: str, provider: str) -> None:
    """Have a worker of the provider's queue stream the session (monitoring shows its id only)."""
    stream_chat.apply_async(
        (session_id,), queue=provider, argsrepr=f"chat={session_id}", kwargsrepr="{}"
    )


@app.task(name="mitrailleuse.feed", ignore_result=True)
def feed(run_id: str, feeder_id: str) -> None:
    """Dispatch a slice of the run's chunks, then hand over to the next slice."""
    run = run_state(run_id)
    try:
        outcome = feeder.feed_slice(run, CeleryDispatcher(), feeder_id)
    except MitrailleuseError as error:
        assembler.fail_run(run, str(error))
        return
    waits = {feeder.Slice.LOCKED: feeder.LOCKED_RETRY_S, feeder.Slice.WATCH: feeder.WATCH_S}
    if outcome is not feeder.Slice.DONE:
        countdown = waits.get(outcome)
        with kept_if_unpublished():
            feed.apply_async((run_id, feeder_id), queue=CONTROL_QUEUE, countdown=countdown)


def start_feeding(run: RunState) -> None:
    """Start a feed chain for the run; one already going (or dead) is superseded."""
    feed.apply_async((run.run_id, run.new_feeder()), queue=CONTROL_QUEUE)


@app.task(name="mitrailleuse.assemble_chunk", ignore_result=True)
def assemble_chunk(run_id: str, chunk: int) -> None:
    """Chord callback: write the chunk's records to disk; assemble the run after the last."""
    run = run_state(run_id)
    assembler.write_chunk(run, chunk)
    assembler.finish_if_complete(run)


@app.task(name="mitrailleuse.create_native_batch", ignore_result=True)
def create_native_batch(run_id: str, number: int) -> None:
    """Upload a written native batch and create it (each step recorded, resumable)."""
    run = run_state(run_id)
    context = context_for(run)
    section = context.config.provider(run.provider)
    upload_and_create(
        run.redis,
        run.folder,
        number,
        context.provider.native_batches(),
        section.batch.completion_window,
        section.batch.batch_check_time,
    )


@app.task(name="mitrailleuse.poll_native_batches", ignore_result=True)
def poll_native_batches() -> int:
    """Beat's entry: follow every native batch whose check time has come."""
    return poll_all(redis_client(app.conf.broker_url))


@app.task(name="mitrailleuse.cancel_native_batches", ignore_result=True)
def cancel_native_batches(run_id: str) -> int:
    """Ask the provider to cancel a cancelled run's batches."""
    run = run_state(run_id)
    return cancel_all(run, run.folder)


class CeleryDispatcher:
    """Sends the feeder's chunks and batches as Celery messages."""

    def send_chunk(self, run: RunState, chunk: Chunk) -> None:
        """A chord of one ``call`` per message, whose callback writes the chunk."""
        callback = assemble_chunk.si(run.run_id, chunk.number).set(queue=CONTROL_QUEUE)
        if not chunk.messages:
            callback.apply_async()
            return
        provider = run.provider
        header = [
            call.si(run.run_id, chunk.number, items).set(
                queue=provider,
                argsrepr=describe(run.run_id, provider, items),
                kwargsrepr="{}",
            )
            for items in chunk.messages
        ]
        chord(header)(callback)

    def send_batch(self, run: RunState, number: int) -> None:
        """Have the control queue upload and create native batch ``number``."""
        create_native_batch.apply_async((run.run_id, number), queue=CONTROL_QUEUE)


def describe(run_id: str, provider: str, items: list[dict[str, Any]]) -> str:
    """What monitoring shows of a call: run, provider and item ids, never the request."""
    ids = ", ".join(item["id"] for item in items[:3])
    more = f" +{len(items) - 3}" if len(items) > 3 else ""
    return f"run={run_id} provider={provider} items=[{ids}{more}]"

"""The workers' broker consumer: Celery's, made to survive Redis going away.

Celery 5.7.0 handles a lost broker connection by collecting the connection (which detaches its
transport) and then closing it. When the loss was seen on the pub/sub socket while a ``BRPOP``
was pending, the first close of the channel fails reading that ``BRPOP``, and the second one
tries to hand the unacknowledged messages back through the detached transport: an
``AttributeError`` that Celery treats as unrecoverable, and the worker exits instead of
reconnecting. Here that close is allowed to fail: the messages stay unacknowledged in Redis and
come back after the visibility timeout, as for a killed worker.
"""

from __future__ import annotations

import logging

from celery.worker.consumer import Consumer as CeleryConsumer
from kombu import Connection

log = logging.getLogger(__name__)


class Consumer(CeleryConsumer):
    """Celery's consumer, closing a lost connection without dying on a detached transport."""

    def on_connection_error_after_connected(self, exc: Exception) -> None:
        """Reconnect as Celery does, with a close that tolerates a detached transport."""
        connection = self.connection
        if connection is not None:
            connection.close = connection.release = lambda: _close_detached(connection)
        super().on_connection_error_after_connected(exc)


def _close_detached(connection: Connection) -> None:
    try:
        Connection.release(connection)
    except AttributeError:
        log.warning("broker connection lost: its unacknowledged messages come back later")

"""How workers and beat log: one line per event that matters, as text or as JSON.

Celery configures the handlers (stderr, or ``--logfile``) and the level; :func:`install` hooks
its ``after_setup_logger`` and ``after_setup_task_logger`` signals to quiet the loggers that
speak once per request or message (httpx, Celery's "received" and "retry: Retry in 0.5s"
lines, which say nothing of why) and, with ``MITRAILLEUSE_LOG_FORMAT=json``, to write every
line as one JSON object. The pipeline's own lines name the run and the items in the message,
and pass them as ``extra`` fields too; never a prompt or a key.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import orjson
from celery.signals import after_setup_logger, after_setup_task_logger

from mitrailleuse.config import Environment

#: Loggers with a line per HTTP request or Celery message; their warnings and errors stay.
#: (The openai SDK sends through httpx, or through its fork httpx2 in some releases.)
QUIET = (
    "httpx",
    "httpcore",
    "httpx2",
    "httpcore2",
    "celery.app.trace",
    "celery.worker.strategy",
)
#: The ``extra`` fields a JSON line carries when a record has them.
FIELDS = (
    "run",
    "items",
    "item",
    "provider",
    "attempt",
    "max_attempts",
    "wait_s",
    "error_type",
    "status_code",
)
#: How many item ids a text line shows before ``+N``.
SHOWN_IDS = 5


class JsonFormatter(logging.Formatter):
    """A record as one JSON object: ``ts``, ``level``, ``logger``, ``message`` and FIELDS."""

    def format(self, record: logging.LogRecord) -> str:
        """The record's line; a traceback is a field, so the line stays one line."""
        entry: dict[str, Any] = {
            "ts": datetime.fromtimestamp(record.created, UTC).isoformat(timespec="milliseconds"),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        entry.update((name, getattr(record, name)) for name in FIELDS if hasattr(record, name))
        if record.exc_info:
            entry["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            entry["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(entry, default=str).decode()


def shown_ids(ids: Sequence[str]) -> str:
    """Item ids for a text line: ``q.jsonl:3,q.jsonl:4``, the rest counted (``+45``)."""
    more = f",+{len(ids) - SHOWN_IDS}" if len(ids) > SHOWN_IDS else ""
    return ",".join(ids[:SHOWN_IDS]) + more


def shortened(text: str, limit: int = 300) -> str:
    """A provider's error message for one log line: one line, and not a page of it."""
    line = " ".join(text.split())
    return line if len(line) <= limit else line[: limit - 1] + "…"


def _configure(logger: logging.Logger, loglevel: int | None = None, **_: Any) -> None:
    """Celery set ``logger`` up: quiet the chatty loggers (unless debugging), format as asked."""
    if loglevel is None or loglevel > logging.DEBUG:
        for name in QUIET:
            logging.getLogger(name).setLevel(logging.WARNING)
    if Environment().mitrailleuse_log_format == "json":
        for handler in logger.handlers:
            handler.setFormatter(JsonFormatter())


def install() -> None:
    """Have every worker and beat process this app runs log as the module says."""
    after_setup_logger.connect(_configure, weak=False, dispatch_uid="mitrailleuse.logs")
    after_setup_task_logger.connect(_configure, weak=False, dispatch_uid="mitrailleuse.logs.task")

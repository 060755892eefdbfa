"""The Celery application: ``celery -A mitrailleuse worker`` finds it as ``mitrailleuse.app``.

Settings come from the top-level ``celeryconfig`` module, so that a deployment can put its own
``celeryconfig.py`` first on the path. Broker and result backend are ``REDIS_URL``, or the
embedded Redis, started when a process first needs the configuration (not when anything is
imported), unless that module sets them. Every worker runs :class:`DeliveryKeeper`, which
brings a dead worker's messages back within seconds.
"""

from __future__ import annotations

from typing import Any

from celery import Celery

from mitrailleuse.broker import resolve_redis_url
from mitrailleuse.pipeline.transport import DeliveryKeeper

app = Celery("mitrailleuse", include=["mitrailleuse.pipeline.tasks"])
app.config_from_object("celeryconfig")
app.steps["consumer"].add(DeliveryKeeper)


@app.on_after_configure.connect
def _use_redis(sender: Celery, source: Any, **_: Any) -> None:
    """Broker and result backend: one Redis, found (or started) once the config is loaded."""
    if not source.broker_url:
        url = resolve_redis_url()
        source.update(broker_url=url, result_backend=source.result_backend or url)

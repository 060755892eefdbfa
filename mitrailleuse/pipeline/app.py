"""The Celery application: ``celery -A mitrailleuse worker`` finds it as ``mitrailleuse.app``.

Settings come from the top-level ``celeryconfig`` module, so that a deployment can put its own
``celeryconfig.py`` first on the path. Every worker runs :class:`DeliveryKeeper`, which brings a
dead worker's messages back within seconds.
"""

from __future__ import annotations

from celery import Celery

from mitrailleuse.pipeline.transport import DeliveryKeeper

app = Celery("mitrailleuse", include=["mitrailleuse.pipeline.tasks"])
app.config_from_object("celeryconfig")
app.steps["consumer"].add(DeliveryKeeper)

"""The Celery application: ``celery -A mitrailleuse worker`` finds it as ``mitrailleuse.app``.

Settings come from the top-level ``celeryconfig`` module, so that a deployment can put its own
``celeryconfig.py`` first on the path.
"""

from __future__ import annotations

from celery import Celery

app = Celery("mitrailleuse", include=["mitrailleuse.pipeline.tasks"])
app.config_from_object("celeryconfig")

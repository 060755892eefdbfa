"""The Celery application: ``celery -A mitrailleuse worker`` finds it as ``mitrailleuse.app``.

Settings come from ``mitrailleuse.celeryconfig``, or from the module that
``MITRAILLEUSE_CELERY_CONFIG`` names (a deployment's own). Broker and result backend are
``REDIS_URL``, or the embedded Redis, started when a process first needs the configuration
(not when anything is imported), unless that module sets them. Every worker runs
:class:`DeliveryKeeper`, which brings a dead worker's messages back within seconds.
"""

from __future__ import annotations

from importlib.util import find_spec
from typing import Any

from celery import Celery

from mitrailleuse import logs
from mitrailleuse.broker import resolve_redis_url
from mitrailleuse.config import Environment
from mitrailleuse.errors import ConfigError
from mitrailleuse.pipeline.transport import DeliveryKeeper


def _settings_module() -> str:
    """The settings module's name, checked now: Celery would import it only on first use."""
    name = Environment().mitrailleuse_celery_config
    try:
        found = find_spec(name) is not None
    except (ImportError, ValueError):
        found = False
    if not found:
        raise ConfigError(f"MITRAILLEUSE_CELERY_CONFIG: no module {name!r} on the Python path")
    return name


app = Celery("mitrailleuse", include=["mitrailleuse.pipeline.tasks"])
app.config_from_object(_settings_module())
app.steps["consumer"].add(DeliveryKeeper)
logs.install()  # the workers' and beat's log lines: quiet, and JSON when asked


@app.on_after_configure.connect
def _use_redis(sender: Celery, source: Any, **_: Any) -> None:
    """Broker and result backend: one Redis, found (or started) once the config is loaded.

    A client of the Python API hands its own Redis (its choice: given, found or started) to
    the app before the config loads (``Mitrailleuse._app_ready``); this finds or starts one
    for the processes that have no client: the fleet's worker, beat and flower.
    """
    if not source.broker_url:
        url = resolve_redis_url()
        source.update(broker_url=url, result_backend=source.result_backend or url)

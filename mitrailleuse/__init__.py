"""Mitrailleuse: push very large numbers of requests through AI provider APIs.

The public Python API is :class:`Mitrailleuse` (create, submit, re-attach) and :class:`Run`.
``celery -A mitrailleuse`` finds the Celery app as ``mitrailleuse.app``; it is imported on first
use so that ``import mitrailleuse`` stays light.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mitrailleuse.errors import (
    BrokerError,
    ConfigError,
    InputError,
    MitrailleuseError,
    TaskNameError,
    TaskNotFound,
)

if TYPE_CHECKING:
    from celery import Celery

    from mitrailleuse.api import Mitrailleuse, Progress, Run
    from mitrailleuse.config import TaskConfig
    from mitrailleuse.taskfolder import TaskFolder

__all__ = [
    "BrokerError",
    "ConfigError",
    "InputError",
    "Mitrailleuse",
    "MitrailleuseError",
    "Progress",
    "Run",
    "TaskConfig",
    "TaskFolder",
    "TaskNameError",
    "TaskNotFound",
    "__version__",
    "app",
]

_LAZY = {
    "Mitrailleuse": "mitrailleuse.api",
    "Run": "mitrailleuse.api",
    "Progress": "mitrailleuse.api",
    "TaskConfig": "mitrailleuse.config",
    "TaskFolder": "mitrailleuse.taskfolder",
    "app": "mitrailleuse.pipeline.app",
}


def __getattr__(name: str) -> Any:
    if name == "__version__":  # importlib.metadata costs a CLI command 45 ms at start
        return _installed_version()
    if name in _LAZY:
        from importlib import import_module

        return getattr(import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'mitrailleuse' has no attribute {name!r}")


def _installed_version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("mitrailleuse")
    except PackageNotFoundError:  # a source tree on the path, not installed
        return "0+unknown"


if TYPE_CHECKING:
    app: Celery
    __version__: str

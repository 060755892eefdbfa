"""Where the Celery app takes its settings: ours, or the module MITRAILLEUSE_CELERY_CONFIG names.

Each probe is a fresh interpreter, since the app reads the variable once, when it is imported.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PROBE = (
    "from mitrailleuse import app; print(app.conf.worker_concurrency, app.conf.broker_transport)"
)
TRANSPORT = "mitrailleuse.pipeline.transport:Transport"


def probe(cwd: Path, **env: str) -> subprocess.CompletedProcess:
    """The app's settings as a process started in ``cwd`` (on its path, like celery's) sees them."""
    base = {
        k: v
        for k, v in os.environ.items()
        if k not in {"MITRAILLEUSE_CELERY_CONFIG", "MITRAILLEUSE_CONCURRENCY"}
    }
    base["PYTHONPATH"] = f"{cwd}{os.pathsep}{REPO}"
    return subprocess.run(
        [sys.executable, "-c", PROBE],
        cwd=cwd,
        env={**base, **env},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_a_users_own_celeryconfig_module_is_not_taken_for_ours(tmp_path):
    (tmp_path / "celeryconfig.py").write_text("worker_concurrency = 7\n")
    shown = probe(tmp_path)
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["64", TRANSPORT]


def test_a_deployment_names_its_own_settings_module(tmp_path):
    own = "from mitrailleuse.celeryconfig import *  # noqa: F403\n\nworker_concurrency = 3\n"
    (tmp_path / "site_settings.py").write_text(own)
    shown = probe(tmp_path, MITRAILLEUSE_CELERY_CONFIG="site_settings")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.split() == ["3", TRANSPORT]


def test_a_settings_module_that_is_not_there_is_named_at_once(tmp_path):
    shown = probe(tmp_path, MITRAILLEUSE_CELERY_CONFIG="mysite.celery_settings")
    assert shown.returncode != 0
    assert "ConfigError: MITRAILLEUSE_CELERY_CONFIG: no module 'mysite.celery_settings'" in (
        shown.stderr
    )

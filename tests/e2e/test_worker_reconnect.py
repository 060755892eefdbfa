"""A worker holding unacknowledged messages survives Redis going away, again and again.

Celery 5.7.0 alone exits on the first restart here ("Unrecoverable error: AttributeError"):
``pipeline.consumer`` is what keeps it alive.
"""

from __future__ import annotations

import signal
import time

import pytest

from mitrailleuse.pipeline.app import app
from mitrailleuse.pipeline.queues import CONTROL_QUEUE
from mitrailleuse.pipeline.tasks import feed
from tests.e2e.helpers import new_task, questions

pytestmark = pytest.mark.e2e

RESTARTS = 10


def test_worker_survives_redis_restarts_and_goes_on_working(
    tmp_path, tasks_dir, sim, start_worker, redis_server
):
    worker = start_worker(concurrency=4)
    for n in range(4):  # held by the worker, unacknowledged, until their countdown
        feed.apply_async((f"no-such-run-{n}", "x"), queue=CONTROL_QUEUE, countdown=3600)
    time.sleep(2)
    for n in range(RESTARTS):
        redis_server.stop(signal.SIGKILL)
        time.sleep(0.5)
        redis_server.start()
        time.sleep(2.5)
        assert worker.process.poll() is None, f"the worker exited at Redis restart {n + 1}"

    m, task = new_task(tmp_path, questions(20))
    progress = m.submit(task).wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 20

    worker.stop()  # hands the held messages back to their queue: no later test gets them
    app.control.purge()

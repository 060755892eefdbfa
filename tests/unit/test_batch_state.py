"""A native batch's state file, as an earlier version wrote it, still reads and resumes."""

from __future__ import annotations

from mitrailleuse.batch.state import BatchState

#: A state file of the version before ``status`` and ``creating_since``.
OLDER = {
    "run_id": "r1",
    "number": 3,
    "items": 20,
    "chunks": [2],
    "step": "collected",
    "batch_id": "batch_1",
    "raw_status": "completed",
}


def test_an_older_ended_batch_reads_as_ended():
    state = BatchState.model_validate(OLDER)
    assert state.status == "completed" and state.ended


def test_an_older_batch_in_progress_reads_as_not_ended():
    state = BatchState.model_validate({**OLDER, "step": "created", "raw_status": "in_progress"})
    assert state.status is None and not state.ended

"""A recognisable key, used for a whole run, then searched for everywhere it must not be."""

from __future__ import annotations

import pytest
import redis

from mitrailleuse.api import Mitrailleuse
from tests.conftest import TEST_KEY
from tests.e2e.helpers import questions, write_jsonl

pytestmark = pytest.mark.e2e


def redis_dump(client: redis.Redis) -> bytes:
    """Every key and value in Redis, as bytes."""
    seen = []
    for key in client.scan_iter(count=1000):
        kind = client.type(key)
        seen.append(key)
        if kind == b"string":
            seen.append(client.get(key) or b"")
        elif kind == b"hash":
            seen += [part for pair in client.hgetall(key).items() for part in pair]
        elif kind == b"list":
            seen += client.lrange(key, 0, -1)
        elif kind == b"set":
            seen += list(client.smembers(key))
        elif kind == b"zset":
            seen += client.zrange(key, 0, -1)
    return b"\n".join(seen)


def test_a_key_given_in_config_is_used_and_found_nowhere(
    tmp_path, tasks_dir, sim, start_worker, redis_server, caplog, capfd
):
    """Searched: the task folder (with its run log), Redis, and every log line of the worker
    (at DEBUG, where Celery, httpx and the SDK say everything) and of this process. What Flower
    shows is searched in ``test_flower.py``."""
    start_worker(extra=("--loglevel", "DEBUG"))
    source = write_jsonl(tmp_path / "q.jsonl", questions(30))
    m = Mitrailleuse()
    config = {"openai": {"api_key": TEST_KEY, "batch": {"batch_size": 10}}}
    task = m.create_task("sec", "openai", "canary", config, [source])
    progress = m.submit(task).wait(timeout=60)
    assert progress.succeeded == 30  # the key reached the provider (the worker's environment)

    secret = TEST_KEY.encode()
    for path in task.path.rglob("*"):
        if path.is_file():
            assert secret not in path.read_bytes(), f"the key is in {path}"
    assert b"${OPENAI_API_KEY}" in task.config_path.read_bytes()
    assert secret not in redis_dump(redis.Redis.from_url(redis_server.url))
    assert TEST_KEY not in caplog.text
    assert task.log_path.exists() and b"submitted" in task.log_path.read_bytes()
    worker_out, worker_err = capfd.readouterr()
    assert "mitrailleuse.call" in worker_err + worker_out, "the worker logged no call at DEBUG"
    assert TEST_KEY not in worker_out + worker_err, "the key is in a log line"

"""Queue names: one per provider (named after it), plus the control queue."""

from __future__ import annotations

import redis
from kombu.transport.redis import PRIORITY_STEPS, Channel

from mitrailleuse.providers import available_providers

#: Feeding, assembling and native-batch polling: these tasks read and write the tasks dir.
CONTROL_QUEUE = "mitrailleuse"


def provider_queues() -> tuple[str, ...]:
    """One queue per registered provider; workers on them talk only to Redis and the provider."""
    return tuple(available_providers())


def all_queues() -> tuple[str, ...]:
    """Every queue: what a worker serves when none are named."""
    return (*provider_queues(), CONTROL_QUEUE)


def queue_depths(client: redis.Redis) -> dict[str, int]:
    """Messages waiting in each queue, counted as kombu's Redis transport keeps them.

    A queue is a Redis list per priority step (the queue's name, then the name, kombu's
    separator and the step): the sum of their ``LLEN``, as kombu's ``Channel._size`` counts.
    Messages delivered and not yet acknowledged are not waiting: kombu keeps them apart.
    """
    names = all_queues()
    pipe = client.pipeline(transaction=False)
    for name in names:
        for step in PRIORITY_STEPS:
            pipe.llen(f"{name}{Channel.sep}{step}" if step else name)
    sizes = iter(pipe.execute())
    return {name: sum(next(sizes) for _ in PRIORITY_STEPS) for name in names}

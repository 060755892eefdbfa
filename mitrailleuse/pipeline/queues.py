"""Queue names: one per provider (named after it), plus the control queue."""

from __future__ import annotations

from mitrailleuse.providers import available_providers

#: Feeding, assembling and native-batch polling: these tasks read and write the tasks dir.
CONTROL_QUEUE = "mitrailleuse"


def provider_queues() -> tuple[str, ...]:
    """One queue per registered provider; workers on them talk only to Redis and the provider."""
    return tuple(available_providers())


def all_queues() -> tuple[str, ...]:
    """Every queue: what a worker serves when none are named."""
    return (*provider_queues(), CONTROL_QUEUE)

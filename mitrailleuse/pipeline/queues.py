"""Queue names: one per provider, plus the control queue for feeding and assembling."""

from __future__ import annotations

#: Feeding, assembling and native-batch polling: these tasks read and write the tasks dir.
CONTROL_QUEUE = "mitrailleuse"
#: The provider queues; workers on them talk only to Redis and the provider.
PROVIDER_QUEUES = ("openai", "deepseek", "deepl")

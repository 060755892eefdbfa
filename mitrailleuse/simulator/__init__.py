"""Loopback fake of the OpenAI and DeepL APIs, for tests and benchmarks.

Run it with ``python -m mitrailleuse.simulator`` or, inside tests, with
``SimulatorThread``; point the real ``openai`` / ``deepl`` SDKs at its URL.
"""

from mitrailleuse.simulator.app import create_app
from mitrailleuse.simulator.deepl_api import translation_of
from mitrailleuse.simulator.openai_api import chat_answer
from mitrailleuse.simulator.server import SimulatorThread, serve
from mitrailleuse.simulator.settings import SimulatorSettings

__all__ = [
    "SimulatorSettings",
    "SimulatorThread",
    "chat_answer",
    "create_app",
    "serve",
    "translation_of",
]

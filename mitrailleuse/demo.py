"""``mitrailleuse demo``: a sample task through the whole pipeline, against the simulator.

It starts the simulator, writes a sample input, and runs it with :func:`run_locally` (embedded
Redis, a real child worker, the real ``openai`` SDK over HTTP), then shows a few results.
"""

from __future__ import annotations

import os
from itertools import islice
from pathlib import Path

import orjson
from rich.console import Console

from mitrailleuse.config import TaskConfig
from mitrailleuse.local import run_locally
from mitrailleuse.pipeline.assembler import read_records
from mitrailleuse.simulator.process import SimulatorProcess

#: Example input line, in the seed's shape.
CAPITALS = ["France", "Japan", "Peru", "Kenya", "Canada", "Norway", "Egypt", "India"]


def write_sample(path: Path, items: int) -> Path:
    """A JSONL file of ``items`` questions with a per-item system prompt."""
    with path.open("wb") as handle:
        for number in range(items):
            country = CAPITALS[number % len(CAPITALS)]
            line = {
                "input_text": f"#{number + 1}: What is the capital of {country}?",
                "instructions": "Provide a brief answer",
            }
            handle.write(orjson.dumps(line) + b"\n")
    return path


def run_demo(scratch: Path, items: int, console: Console) -> int:
    """Run the demo; the exit code follows the CLI's rules."""
    sample = write_sample(scratch / "questions.jsonl", items)
    config = TaskConfig.model_validate(
        {
            "openai": {
                "prompt": "input_text",
                "system_instruction": {"is_dynamic": True, "system_prompt": "instructions"},
                "api_information": {"model": "gpt-4o-mini", "setting": {"temperature": 0}},
                "batch": {"batch_size": 50},
            }
        }
    )
    with SimulatorProcess("--latency-ms", "20") as simulator:
        os.environ["OPENAI_BASE_URL"] = f"{simulator.url}/v1"
        os.environ.setdefault("OPENAI_API_KEY", "sk-demo-simulator")
        console.print(f"simulator at {simulator.url}; {items} items to send")
        folder, progress = run_locally("openai", [sample], config, "demo", "capitals")
        calls = simulator.stats()["chat_requests"]
    console.print(
        f"{progress.state}: {progress.succeeded}/{progress.total} succeeded, {calls} calls"
    )
    console.print(f"results: {folder.results_path}")
    for record in islice(read_records(folder.results_path), 3):
        console.print(f"  {record['id']}: {record['output']!r}", highlight=False)
    return 0 if progress.state == "completed" and progress.failed == 0 else 1

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

from mitrailleuse.api import Progress
from mitrailleuse.config import BatchConfig, TaskConfig
from mitrailleuse.local import local_broker, run_locally
from mitrailleuse.records import read_records
from mitrailleuse.simulator.process import SimulatorProcess
from mitrailleuse.taskfolder import TaskFolder

#: Items of the native batch part of the demo.
BATCH_ITEMS = 300
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
    config, batch_config = _configs()
    with (
        local_broker(),
        SimulatorProcess("--latency-ms", "20", "--batch-duration-s", "3") as simulator,
    ):
        os.environ["OPENAI_BASE_URL"] = f"{simulator.url}/v1"
        os.environ.setdefault("OPENAI_API_KEY", "sk-demo-simulator")
        os.environ.setdefault("MITRAILLEUSE_BATCH_POLL_S", "1")
        console.print(f"simulator at {simulator.url}")
        console.print(f"[bold]live: {items} items through the provider queue")
        folder, progress = run_locally("openai", [sample], config, "demo", "capitals")
        _show(console, folder, progress, f"{simulator.stats()['chat_requests']} calls")
        console.print(
            f"[bold]native batch: {BATCH_ITEMS} items through /v1/batches, polled by beat"
        )
        batch_sample = write_sample(scratch / "batch.jsonl", BATCH_ITEMS)
        batch_folder, batch_progress = run_locally(
            "openai", [batch_sample], batch_config, "demo", "capitals-batch"
        )
        _show(
            console, batch_folder, batch_progress, f"{simulator.stats()['batches_created']} batches"
        )
    ok = all(p.state == "completed" and p.failed == 0 for p in (progress, batch_progress))
    return 0 if ok else 1


def _configs() -> tuple[TaskConfig, TaskConfig]:
    """The live demo's config, and the native batch demo's."""
    config = TaskConfig.model_validate(
        {
            "openai": {
                "prompt": "input_text",
                "system_instruction": {"is_dynamic": True, "system_prompt": "instructions"},
                "api_information": {"model": "gpt-4o-mini", "setting": {"temperature": 0}},
                "batch": {"batch_size": 50},
                # the simulator has no limit; a real account's goes here
                "rate_limit": {
                    "requests_per_minute": 60000,
                    "tokens_per_minute": 10_000_000,
                    "max_in_flight": 256,
                },
            }
        }
    )
    batch_config = config.model_copy(deep=True)
    batch_config.openai.batch = BatchConfig(
        is_batch_active=True, batch_size=100, batch_check_time=1
    )
    return config, batch_config


def _show(console: Console, folder: TaskFolder, progress: Progress, calls: str) -> None:
    console.print(f"{progress.state}: {progress.succeeded}/{progress.total} succeeded, {calls}")
    console.print(f"results: {folder.results_path}")
    for record in islice(read_records(folder.results_path), 3):
        console.print(f"  {record['id']}: {record['output']!r}", highlight=False)

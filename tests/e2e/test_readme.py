"""The README's quickstart block, run as it is written (but for `pip install`: the tree is)."""

from __future__ import annotations

import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import orjson
import pytest

from tests.e2e.helpers import newcomer_env
from tests.e2e.test_cli import REPO

pytestmark = pytest.mark.e2e


def quickstart_block() -> str:
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    section = readme[readme.index("## Quickstart\n") :]
    match = re.search(r"```sh\n(.*?)```", section, re.S)
    assert match, "no sh block in the README's Quickstart"
    return match.group(1)


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_the_readme_quickstart_runs_as_written(tmp_path: Path):
    block = quickstart_block()
    assert block.startswith("pip install mitrailleuse\n")
    port = str(free_port())
    script = block.removeprefix("pip install mitrailleuse\n").replace("8765", port)
    env = newcomer_env()
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env['PATH']}"
    done = subprocess.run(
        ["bash", "-e", "-c", f"trap 'kill $(jobs -p) 2>/dev/null' EXIT\n{script}"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=180,
    )
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    results = Path(tmp_path, done.stdout.strip().splitlines()[-1])
    assert results.is_relative_to(tmp_path / "tasks" / "local")
    records = [orjson.loads(line) for line in results.read_text().splitlines()]
    assert [r["status"] for r in records] == ["succeeded"] * 3
    assert "capital of France" in records[0]["output"]

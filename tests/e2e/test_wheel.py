"""The wheel as a newcomer gets it: built from the tree, installed bare in a clean venv, run.

Bare (no extras) on purpose: the core must work without Flower or the DeepL SDK, and a command
that needs one of them says which extra to install. Everything runs from a directory outside
the repository with no ``PYTHONPATH``, so only what the wheel ships is there.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
import tomllib
import zipfile
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest

from mitrailleuse.testing import free_port
from tests.e2e.helpers import questions, write_jsonl

pytestmark = pytest.mark.e2e
REPO = Path(__file__).resolve().parents[2]
#: What a build reads of the tree (compose/Dockerfile copies the same into its build stage).
SOURCES = ("pyproject.toml", "README.md", "LICENSE", "mitrailleuse")


@dataclass
class Installed:
    """A clean venv with the wheel installed in it."""

    wheel: Path
    bin: Path
    site_packages: Path


def clean_environment() -> dict[str, str]:
    """This process's environment without the repo's setup: no PYTHONPATH, no keys, no Redis.

    Other tests leave ``PYTHONPATH`` pointing at the repository (whose egg-info pip would take
    for an installed mitrailleuse); the build and the install must not see it either.
    """
    prefixes = ("MITRAILLEUSE_", "OPENAI_", "DEEPSEEK_", "DEEPL_", "REDIS_", "VIRTUAL_ENV")
    return {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith(prefixes)}


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Installed:
    """Build the wheel from a copy of the tree (nothing is written into the repository)."""
    root = tmp_path_factory.mktemp("wheel")
    source = root / "source"
    source.mkdir()
    for name in SOURCES:
        if (REPO / name).is_dir():
            ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
            shutil.copytree(REPO / name, source / name, ignore=ignore)
        else:
            shutil.copy2(REPO / name, source / name)
    env = clean_environment()
    pip = [sys.executable, "-m", "pip", "--disable-pip-version-check", "-q"]
    subprocess.run([*pip, "wheel", "--no-deps", "-w", root / "dist", source], env=env, check=True)
    (wheel,) = (root / "dist").glob("mitrailleuse-*.whl")
    venv = root / "venv"
    subprocess.run([sys.executable, "-m", "venv", venv], env=env, check=True)
    python = venv / "bin" / "python"
    install = [python, "-m", "pip", "--disable-pip-version-check", "-q", "install", wheel]
    subprocess.run(install, env=env, check=True, timeout=240)
    purelib = [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"]
    found = subprocess.run(purelib, env=env, check=True, capture_output=True, text=True)
    return Installed(wheel, venv / "bin", Path(found.stdout.strip()))


@dataclass
class Newcomer:
    """Commands of the venv, run in an empty directory with nothing of the repo's setup."""

    installed: Installed
    workdir: Path
    env: dict[str, str]

    def command(self, *args: str) -> list[str | Path]:
        return [self.installed.bin / "mitrailleuse", *args]

    def run(self, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
        return subprocess.run(
            self.command(*args),
            cwd=self.workdir,
            env={**self.env, **(env or {})},
            capture_output=True,
            text=True,
            timeout=180,
        )


@pytest.fixture
def newcomer(installed: Installed, tmp_path: Path) -> Newcomer:
    workdir = tmp_path / "work"
    workdir.mkdir()
    env = clean_environment()
    env["PATH"] = f"{installed.bin}{os.pathsep}{env.get('PATH', '')}"
    return Newcomer(installed, workdir, env)


def test_the_wheel_ships_the_package_data_and_no_top_level_module(installed):
    names = set(zipfile.ZipFile(installed.wheel).namelist())
    data = {
        path.relative_to(REPO).as_posix()
        for pattern in ("*.lua", "*.json", "services/web/*")
        for path in (REPO / "mitrailleuse").rglob(pattern)
    }
    assert {"mitrailleuse/cost/prices.json", "mitrailleuse/services/web/app.js"} <= data
    assert data | {"mitrailleuse/py.typed"} <= names
    assert {name.split("/")[0] for name in names} == {
        "mitrailleuse",
        installed.wheel.name.split("-py")[0] + ".dist-info",
    }
    assert any(name.endswith(".dist-info/licenses/LICENSE") for name in names)
    assert (installed.site_packages / "mitrailleuse" / "py.typed").is_file()
    assert not (installed.site_packages / "celeryconfig.py").exists()
    # bare: the extras' packages are not there, which the two tests below rely on
    assert not list(installed.site_packages.glob("deepl*"))
    assert not list(installed.site_packages.glob("flower*"))


def test_a_newcomer_runs_a_task_against_the_simulator(newcomer):
    version = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    shown = newcomer.run("--version")
    assert shown.returncode == 0, shown.stderr
    assert shown.stdout.strip() == f"mitrailleuse {version}"

    made = newcomer.run("config", "init", "--api-name", "openai")
    assert made.returncode == 0, made.stderr
    assert "openai" in json.loads(made.stdout)
    (newcomer.workdir / "config.json").write_text(made.stdout)
    write_jsonl(newcomer.workdir / "q.jsonl", questions(5))

    port = free_port()
    simulator = subprocess.Popen(
        newcomer.command("simulate", "--port", str(port)),
        cwd=newcomer.workdir,
        env=newcomer.env,
        stderr=subprocess.DEVNULL,
    )
    try:
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            assert simulator.poll() is None, "the simulator exited"
            try:
                httpx.get(f"{url}/_sim/stats", timeout=1).raise_for_status()
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the simulator did not answer"
                time.sleep(0.2)
        keys = {"OPENAI_BASE_URL": f"{url}/v1", "OPENAI_API_KEY": "sk-wheel-test-dummy"}
        args = ("run", "--api-name", "openai", "--input", "q.jsonl", "--config", "config.json")
        done = newcomer.run(*args, env=keys)
    finally:
        simulator.terminate()
        simulator.wait(15)
    assert done.returncode == 0, done.stderr[-2000:]
    results = newcomer.workdir / done.stdout.strip().splitlines()[-1]
    records = [json.loads(line) for line in results.read_text().splitlines()]
    assert len(records) == 5
    assert {record["status"] for record in records} == {"succeeded"}


@pytest.mark.parametrize(
    ("args", "extra"),
    [
        (("create", "--api-name", "deepl", "--user-id", "u", "--task-name", "t"), "deepl"),
        (("flower",), "flower"),
        (("serve", "grpc"), "grpc"),
    ],
)
def test_a_command_that_needs_an_extra_names_it_in_one_line(newcomer, args, extra):
    refused = newcomer.run(*args)
    assert refused.returncode == 2, refused.stderr
    assert len(refused.stderr.strip().splitlines()) == 1, refused.stderr
    assert f"pip install 'mitrailleuse[{extra}]'" in refused.stderr

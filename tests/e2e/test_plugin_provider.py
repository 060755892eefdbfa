"""A provider added from outside the package, by an entry point: no change anywhere else."""

from __future__ import annotations

import os
import sys
import textwrap

import pytest

from mitrailleuse.api import Mitrailleuse
from mitrailleuse.errors import ConfigError
from mitrailleuse.providers import provider_class
from tests.e2e.helpers import results, write_jsonl

pytestmark = pytest.mark.e2e

PLUGIN = """
from mitrailleuse.config import ProviderSection
from mitrailleuse.providers import Answer, CallResult, Provider


class EchoConfig(ProviderSection):
    text: str = "text"
    prefix: str = ""


class EchoProvider(Provider):
    name = "echo"
    config_model = EchoConfig
    key_variables = ("ECHO_API_KEY",)
    max_items_per_call = 4

    @classmethod
    def model_name(cls, config):
        return "echo-1"

    @classmethod
    def build_request(cls, item, config):
        return {"text": item[config.text]}

    def send(self, payloads, timeout_s):
        answers = [Answer(output=self.config.prefix + p["text"], response={}) for p in payloads]
        return CallResult(answers)
"""


@pytest.fixture
def plugin_path(tmp_path, monkeypatch):
    site = tmp_path / "site"
    site.mkdir()
    (site / "echo_provider.py").write_text(textwrap.dedent(PLUGIN))
    dist = site / "echo_provider-0.1.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: echo-provider\nVersion: 0.1\n")
    (dist / "entry_points.txt").write_text(
        "[mitrailleuse.providers]\necho = echo_provider:EchoProvider\n"
    )
    monkeypatch.syspath_prepend(str(site))
    provider_class.cache_clear()
    yield site
    provider_class.cache_clear()
    sys.modules.pop("echo_provider", None)


def test_a_plugin_provider_runs_end_to_end(
    tmp_path, tasks_dir, fleet_env, start_worker, plugin_path
):
    pythonpath = f"{plugin_path}{os.pathsep}{fleet_env['PYTHONPATH']}"
    start_worker(queues=["echo", "mitrailleuse"], env={"PYTHONPATH": pythonpath})
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": f"t{n}"} for n in range(23)])
    m = Mitrailleuse()
    task = m.create_task("plug", "echo", "first", {"echo": {"prefix": ">> "}}, [source])
    progress = m.submit(task).wait(timeout=60)
    assert progress.state == "completed" and progress.succeeded == 23
    records = results(task)
    assert [r["output"] for r in records] == [f">> t{n}" for n in range(23)]
    assert {r["provider"] for r in records} == {"echo"} and {r["model"] for r in records} == {
        "echo-1"
    }


def test_a_plugin_section_is_validated_at_create(tmp_path, tasks_dir, plugin_path):
    source = write_jsonl(tmp_path / "in.jsonl", [{"text": "x"}])
    with pytest.raises(ConfigError, match="echo"):
        Mitrailleuse().create_task(
            "plug", "echo", "bad", {"echo": {"prefix": ["not", "text"]}}, [source]
        )
    with pytest.raises(ConfigError, match="did you mean 'echo'"):
        Mitrailleuse().create_task("plug", "ecko", "bad", {}, [source])

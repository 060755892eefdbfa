"""Commands on config files: ``config init``, ``config schema``, ``config check``."""

from __future__ import annotations

import json
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import typer

from mitrailleuse.atomic import write_atomic
from mitrailleuse.cli.common import app, fail, out
from mitrailleuse.config import ChatProviderConfig, TaskConfig, json_schema, load_config

config_app = typer.Typer(help="Write, describe and check config.json files.", no_args_is_help=True)
app.add_typer(config_app, name="config")


class ExampleApi(StrEnum):
    """The providers ``config init`` has an example for."""

    openai = "openai"
    deepseek = "deepseek"
    deepl = "deepl"
    anthropic = "anthropic"
    gemini = "gemini"


def example_config(api: ExampleApi) -> dict[str, Any]:
    """The fields a newcomer edits, at their defaults; plain items work with it, as they are.

    ``{"input_text": ...}`` for a chat provider (a static system prompt, so items need no other
    field), ``{"text": ..., "target_lang": "DE"}`` for DeepL. Never a key: keys come from the
    environment.
    """
    section = TaskConfig().provider(api.value)
    common = {
        "batch": {"batch_size": section.batch.batch_size},
        "rate_limit": section.rate_limit.model_dump(exclude_none=True),
    }
    if isinstance(section, ChatProviderConfig):
        body = {
            "prompt": section.prompt,
            "system_instruction": {"is_dynamic": False, "system_prompt": "Answer briefly."},
            "api_information": {
                "model": section.api_information.model,
                "setting": {"temperature": 0, "max_tokens": 300},
            },
            **common,
        }
    else:
        body = {"text": section.text, "target_lang": section.target_lang, **common}
    return {api.value: body}


def _json_text(data: dict[str, Any]) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


@config_app.command()
def init(
    api_name: Annotated[
        ExampleApi, typer.Option("--api-name", help="The provider to write an example for.")
    ] = ExampleApi.openai,
    output: Annotated[
        Path | None, typer.Option("--output", help="Write it to this file instead of stdout.")
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="Replace an existing --output.")] = False,
) -> None:
    """An example config.json to start from."""
    text = _json_text(example_config(api_name))
    if output is None:
        typer.echo(text, nl=False)
        return
    if output.exists() and not force:
        fail(f"{output} exists: give --force to replace it")
    try:
        write_atomic(output, text.encode())
    except OSError as error:
        fail(f"{output}: cannot write: {error.strerror}")
    out.print(f"wrote {output}", highlight=False, soft_wrap=True)


@config_app.command()
def schema() -> None:
    """The JSON Schema of config.json, as shipped in mitrailleuse/config.schema.json."""
    typer.echo(_json_text(json_schema()), nl=False)


@config_app.command()
def check(
    path: Annotated[Path, typer.Argument(help="The config.json to check.")],
    strict: Annotated[bool, typer.Option("--strict", help="Refuse unknown keys.")] = False,
) -> None:
    """Validate a config: print ok, or why it is refused (unknown keys: a warning each)."""
    load_config(path, strict=strict)
    out.print("ok")

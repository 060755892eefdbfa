"""Every command and option says what it does, without type noise or raw markup."""

from __future__ import annotations

import typer.main
from typer.testing import CliRunner

from mitrailleuse.cli import app


def commands(group, prefix: tuple[str, ...] = ()):
    """Every (sub)command; typer may vendor click, so groups are known by their commands."""
    for name, command in group.commands.items():
        yield (*prefix, name), command
        if hasattr(command, "commands"):
            yield from commands(command, (*prefix, name))


def test_every_option_and_argument_has_help():
    root = typer.main.get_command(app)
    missing = [
        f"{' '.join(path)} {param.name}"
        for path, command in commands(root)
        for param in command.params
        if not getattr(param, "help", None) and param.name != "help"
    ]
    assert not missing, missing


def test_help_has_no_type_noise_or_raw_backticks():
    root = typer.main.get_command(app)
    runner = CliRunner()
    for path, _ in [((), root), *commands(root)]:
        shown = runner.invoke(app, [*path, "--help"]).output
        for noise in ("<bool>", "<list[", "``"):
            assert noise not in shown, f"{' '.join(path)} --help shows {noise}"


def test_version():
    from mitrailleuse import __version__

    shown = CliRunner().invoke(app, ["--version"])
    assert shown.exit_code == 0 and shown.output.strip() == f"mitrailleuse {__version__}"

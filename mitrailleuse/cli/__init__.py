"""The ``mitrailleuse`` command: parses arguments, calls the Python API, prints.

Exit codes: 0 every item succeeded; 1 the run finished with failed items (or did not finish);
2 bad usage, config or input path (one line, no traceback); 130 interrupted.
One module per family of commands; each registers its commands on :data:`common.app`.
"""

from __future__ import annotations

import logging
import sys

import typer
from rich.markup import escape

from mitrailleuse.cli import broker, config, export, fleet, serve, tasks
from mitrailleuse.cli.common import EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, app, err
from mitrailleuse.errors import MitrailleuseError

__all__ = ["app", "broker", "config", "export", "fleet", "main", "serve", "tasks"]


def main() -> None:
    """Run the CLI with Mitrailleuse's exit codes."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    try:
        code = app(standalone_mode=False)
    except MitrailleuseError as error:
        err.print(f"[red]error:[/red] {escape(str(error))}", highlight=False, soft_wrap=True)
        code = EXIT_USAGE
    except (KeyboardInterrupt, typer.Abort):
        err.print("interrupted")
        code = EXIT_INTERRUPTED
    except Exception as error:
        # click's usage errors (typer may vendor click, so they are recognised by shape)
        if not (hasattr(error, "show") and hasattr(error, "exit_code")):
            raise
        error.show()
        code = EXIT_USAGE
    sys.exit(code or EXIT_OK)

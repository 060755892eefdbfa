"""``python -m mitrailleuse``: the same as the ``mitrailleuse`` command."""

from mitrailleuse.cli import main

main()

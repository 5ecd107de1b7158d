"""``python -m foldloop``: the ``foldloop`` command."""

from foldloop.cli import main

main()

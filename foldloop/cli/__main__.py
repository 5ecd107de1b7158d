"""``python -m foldloop.cli``."""

from foldloop.cli import main

main()

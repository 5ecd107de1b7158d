"""The ``foldloop`` script's entry point: a module outside the package, on purpose.

Importing foldloop is most of the command's start-up. A Ctrl-C during it ends the process
at once with 130 and no traceback, as a Unix tool does: nothing has been opened yet, so
there is nothing to undo. ``foldloop.cli.main`` puts Python's own handler back when the
command starts. (``python -m foldloop`` cannot do this: Python imports the package before
running its ``__main__``.)
"""

import os
import sys

__all__ = ["main"]


def _exit_at_once(signum: int, frame: object) -> None:
    os._exit(130)


def main() -> None:
    """Run the ``foldloop`` command."""
    # _signal, not signal: it is loaded already, while importing signal is itself a window.
    import _signal  # type: ignore[import-not-found]  # noqa: PLC0415

    _signal.signal(_signal.SIGINT, _exit_at_once)
    try:
        from foldloop.cli import main as command  # noqa: PLC0415 - imported under the guard

        command()
    except KeyboardInterrupt:  # landed as the command put Python's own handler back
        sys.exit(130)


if __name__ == "__main__":
    main()

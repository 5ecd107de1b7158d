"""Module loggers that import structlog on first use.

Importing structlog costs about half of ``import foldloop`` (its dev module probes for
rich and colorama); most programs log nothing during startup, so the import waits until
the first log call. Configuration stays the application's (foldloop never configures).
"""

from __future__ import annotations

from typing import Any

__all__ = ["get_logger"]


class _LazyLogger:
    __slots__ = ("_name", "_real")

    def __init__(self, name: str) -> None:
        self._name = name
        self._real: Any = None

    def __getattr__(self, attr: str) -> Any:
        real = self._real
        if real is None:
            import structlog  # noqa: PLC0415 - deferred on purpose (see module docstring)

            real = self._real = structlog.get_logger(self._name)
        return getattr(real, attr)


def get_logger(name: str) -> Any:
    """A structlog logger for ``name``, created when it is first used."""
    return _LazyLogger(name)

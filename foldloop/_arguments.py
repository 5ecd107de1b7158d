"""Checks of what host code passes in that any layer takes (a wait, an interval): one
definition of each rule, so every call refuses the same mistake with the same words."""

from __future__ import annotations

import math

from foldloop.errors import ConfigError

__all__ = ["MAX_WAIT_S", "check_seconds"]

MAX_WAIT_S = 365 * 86_400.0
"""The longest wait a call takes (a year: threading refuses waits past its own limit;
None waits without one)."""


def check_seconds(
    name: str, value: object, most: float, *, none: bool = False, least: float = 0.0
) -> None:
    """Raise ConfigError unless ``value`` is a number of seconds from ``least`` to ``most``
    (or None, when ``none``): threading refuses waits past its own limit."""
    if value is None and none:
        return
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not least <= value <= most
    ):
        also = "None or " if none else ""
        raise ConfigError(
            f"{name} must be {also}a number of seconds from {least:g} to {most:g}; got {value!r}"
        )

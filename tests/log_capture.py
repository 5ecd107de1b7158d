"""Capture foldloop's log events as dicts (as structlog.testing.capture_logs gives them)."""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator
from typing import Any


class _Keep(logging.Handler):
    def __init__(self, into: list[dict[str, Any]]) -> None:
        super().__init__(logging.DEBUG)
        self.into = into

    def emit(self, record: logging.LogRecord) -> None:
        fields = dict(record.msg) if isinstance(record.msg, dict) else {"event": record.msg}
        fields["log_level"] = record.levelname.lower()
        self.into.append(fields)


@contextlib.contextmanager
def capture_logs(level: int = logging.DEBUG) -> Iterator[list[dict[str, Any]]]:
    """Every event foldloop logs at ``level`` and up while the block runs, with its fields."""
    logs: list[dict[str, Any]] = []
    logger, handler = logging.getLogger("foldloop"), _Keep(logs)
    before = logger.level
    logger.addHandler(handler)
    logger.setLevel(level)
    try:
        yield logs
    finally:
        logger.removeHandler(handler)
        logger.setLevel(before)

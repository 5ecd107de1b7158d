"""Module loggers: stdlib ``logging`` records whose message is a structlog-style event dict.

foldloop is quiet until its host configures logging. Records go to
``logging.getLogger("foldloop.<module>")`` and the ``foldloop`` logger holds only a
``NullHandler``, so Python's last-resort handler never prints them (warnings included).
Plain ``logging`` renders a record as ``event key=value ...``; structlog's
``ProcessorFormatter`` receives the event dict itself, as from a structlog logger.
structlog is imported only when a record is actually emitted.
"""

from __future__ import annotations

import logging
import sys
from typing import Any

__all__ = ["EventDict", "Logger", "get_logger"]

ROOT = "foldloop"

# As pykka does: a handler is always found, so nothing reaches stderr unless the host asks.
if not any(isinstance(h, logging.NullHandler) for h in logging.getLogger(ROOT).handlers):
    logging.getLogger(ROOT).addHandler(logging.NullHandler())


class EventDict(dict[str, Any]):
    """An event and its fields; ``str()`` renders them on one line for plain ``logging``."""

    __slots__ = ()

    def __str__(self) -> str:
        fields = (f"{k}={_text(v)}" for k, v in self.items() if k not in ("event", "exc_info"))
        return " ".join((str(self.get("event", "")), *fields))


def _text(value: object) -> str:
    """A field's value, quoted (one line, escapes shown) when it would not read as one token."""
    text = value if isinstance(value, str) else str(value)
    if text and not any(c.isspace() or c in "\"'=" for c in text):
        return text
    return repr(text)


class Logger:
    """``log.info("event_name", key=value)`` onto a stdlib logger; ``bind`` adds fields."""

    __slots__ = ("_context", "_logger")

    def __init__(self, logger: logging.Logger, context: dict[str, Any] | None = None) -> None:
        self._logger = logger
        self._context = context or {}

    @property
    def name(self) -> str:
        return self._logger.name

    def bind(self, **fields: Any) -> Logger:
        """A logger that adds ``fields`` to every event it logs."""
        return Logger(self._logger, {**self._context, **fields})

    def debug(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.DEBUG):
            self._emit(logging.DEBUG, "debug", event, fields)

    def info(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.INFO):
            self._emit(logging.INFO, "info", event, fields)

    def warning(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.WARNING):
            self._emit(logging.WARNING, "warning", event, fields)

    def error(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.ERROR):
            self._emit(logging.ERROR, "error", event, fields)

    def exception(self, event: str, /, **fields: Any) -> None:
        """An error with the exception being handled (its traceback) attached."""
        if self._logger.isEnabledFor(logging.ERROR):
            fields.setdefault("exc_info", True)
            self._emit(logging.ERROR, "exception", event, fields)

    def critical(self, event: str, /, **fields: Any) -> None:
        if self._logger.isEnabledFor(logging.CRITICAL):
            self._emit(logging.CRITICAL, "critical", event, fields)

    def _emit(self, level: int, method: str, event: str, fields: dict[str, Any]) -> None:
        record = EventDict(self._context)
        record.update(fields)
        record["event"] = event
        exc_info = record.pop("exc_info", None)
        if exc_info is True:
            exc_info = sys.exc_info()  # now: a handler may format the record later
        if exc_info:
            record["exc_info"] = exc_info  # structlog renderers read it from the dict
        from structlog.stdlib import ProcessorFormatter  # noqa: PLC0415 - only when emitting

        # structlog's own stdlib hand-off: its ProcessorFormatter then sees the event dict
        args, kwargs = ProcessorFormatter.wrap_for_formatter(self._logger, method, record)
        self._logger.log(
            level,
            *args,
            exc_info=exc_info or None,  # plain formatters read it from the record
            extra=kwargs["extra"],
            stacklevel=3,  # the record's file and line are the call site's, not this file's
        )


def get_logger(name: str) -> Logger:
    """The logger of module ``name`` (pass ``__name__``: ``foldloop.<module>``)."""
    return Logger(logging.getLogger(name))

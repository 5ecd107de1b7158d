"""Foldloop errors as the command reports them: one line on stderr and an exit code."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import NoReturn, TypeAlias

import typer

from foldloop._agent import Agent
from foldloop.cli._exit_codes import EXIT_CORRUPT, EXIT_ERROR, EXIT_NOT_FOUND, EXIT_USAGE
from foldloop.cli._output import err, escape, reader_gone
from foldloop.errors import (
    ApprovalError,
    ConfigError,
    FoldloopError,
    NondeterminismError,
    RunNotFound,
    SchemaChangedError,
    StoreAccessError,
    StoreError,
    StoreNotFound,
)
from foldloop.runtime import Runtime
from foldloop.store._nats_names import is_nats_url, is_other_url

__all__ = ["Location", "errors", "fail", "in_cli_words", "location", "opened"]

Location: TypeAlias = str | Path
"""Where a store is: a directory, or NATS servers (``nats://...``) as typed."""


_CHOSEN: list[Location] = [Path(".foldloop")]


def choose_store(store: Location) -> None:
    """The store this invocation's commands work on (the global ``--store``)."""
    _CHOSEN[0] = store


def chosen_store() -> Location:
    """The store ``choose_store`` set (``.foldloop`` until then)."""
    return _CHOSEN[0]


def location(text: str) -> Location:
    """``--store`` as given: a URL stays as typed (a Path would fold its ``//``, and make
    "" this directory: refused)."""
    if not text.strip() or "\0" in text:
        fail(EXIT_USAGE, f"--store {text!r}: give a store directory or a nats:// URL")
    return text if is_nats_url(text) or is_other_url(text) else Path(text)


def in_cli_words(exc: FoldloopError, hint: str) -> str:
    """An error's message as this CLI says it: its advice to Python callers, if it has
    any, replaced by ``hint``, the command's own."""
    if isinstance(exc, RunNotFound):
        return f"no run {exc.run_id!r} in this store; list runs with `foldloop runs`"
    if not exc.advice:
        return str(exc)
    return f"{exc.fact}; {hint}" if hint else exc.fact


def fail(code: int, message: str) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", soft_wrap=True)
    raise typer.Exit(code)


_EXIT_CODES: tuple[tuple[type[FoldloopError], int], ...] = (
    (RunNotFound, EXIT_NOT_FOUND),
    (StoreNotFound, EXIT_NOT_FOUND),
    (StoreAccessError, EXIT_ERROR),  # the environment, not the store, is at fault
    (StoreError, EXIT_CORRUPT),  # damaged, or not a store this foldloop can read
    (NondeterminismError, EXIT_CORRUPT),
    (SchemaChangedError, EXIT_CORRUPT),
    (ConfigError, EXIT_USAGE),
    (ApprovalError, EXIT_ERROR),
    (FoldloopError, EXIT_ERROR),
)


def _exit_code(exc: FoldloopError) -> int:
    """The exit code that says what kind of failure ``exc`` is."""
    return next(code for cls, code in _EXIT_CODES if isinstance(exc, cls))


@contextmanager
def errors(hint: str = "") -> Iterator[None]:
    """Turn foldloop errors into one line on stderr and an exit code (never a traceback);
    ``hint`` is the command's own advice, said where the library's was for Python."""
    try:
        yield
    except BrokenPipeError:
        reader_gone()
    except FoldloopError as exc:
        fail(_exit_code(exc), in_cli_words(exc, hint))


@contextmanager
def opened(
    store: Location, *, create: bool = False, agents: tuple[Agent, ...] = (), hint: str = ""
) -> Iterator[Runtime]:
    """A runtime on ``store`` whose foldloop errors end the command as ``errors`` says."""
    with (
        errors(hint),
        _stopping() as stopping,
        Runtime.open(store, create=create, agents=agents) as rt,
    ):
        try:
            yield rt
        except KeyboardInterrupt:
            stopping.start()  # the close that follows says so if it takes long
            raise


SLOW_STOP_S = 0.5
"""How long a close after Ctrl-C may take before the command says what it waits for."""


@contextmanager
def _stopping() -> Iterator[threading.Timer]:
    """A timer, started on Ctrl-C, that says on stderr why the command has not ended yet
    (tool calls under way are waited for, up to 10 s); stopped once the close is done."""
    timer = threading.Timer(
        SLOW_STOP_S,
        lambda: err.print(
            "stopping: waiting for the work under way to be recorded (a tool call under "
            "way gets up to 10 s to return); Ctrl-C again to stop now",
            soft_wrap=True,
        ),
    )
    timer.daemon = True
    try:
        yield timer
    finally:
        timer.cancel()

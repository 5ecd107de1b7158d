"""The command's output: fitted to a terminal (ids never cut), whole when piped; untrusted
text escaped; a reader that leaves (``| head``) ends the command quietly."""

from __future__ import annotations

import contextlib
import importlib
import os
import sys
from typing import Annotated, Any, NoReturn

import msgspec
import typer
from rich.console import Console, RenderableType
from rich.measure import Measurement
from rich.table import Table
from rich.text import Text

from foldloop.cli._exit_codes import EXIT_OK
from foldloop.cli._fit import fit
from foldloop.events._named import to_named
from foldloop.events._recorded import Recorded, UnknownEvent

__all__ = [
    "WideOpt",
    "command_line",
    "count",
    "err",
    "escape",
    "event_json",
    "import_lazy_modules",
    "line",
    "out",
    "prose",
    "reader_gone",
    "silence_stdout",
    "summary",
    "table",
    "whole",
]


WideOpt = Annotated[
    bool,
    typer.Option("--wide", help="On a terminal too, show every cell whole (rows may be long)."),
]
"""The ``--wide`` option of the commands that print tables."""


def silence_stdout() -> None:
    """Point stdout at /dev/null: what is still buffered for a reader that left goes
    nowhere, instead of into an "Exception ignored" at exit."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())
    os.close(devnull)


def reader_gone() -> NoReturn:
    """stdout's reader went away (``| head``): stop quietly with 0, as Unix tools do."""
    silence_stdout()
    raise typer.Exit(EXIT_OK)


class _Output(Console):
    """stdout, where a broken pipe ends the command quietly (rich would exit 1)."""

    def on_broken_pipe(self) -> None:
        self.quiet = True
        reader_gone()


out = _Output(highlight=False)
err = Console(stderr=True, highlight=False)

_CONTROL = {c: f"\\x{c:02x}" for c in range(32) if c not in (10,)}
_CONTROL.update({0x7F: "\\x7f"})
_BIDI = {c: f"\\u{c:04x}" for c in (*range(0x202A, 0x202F), *range(0x2066, 0x206A), 0x200E, 0x200F)}


def escape(text: str) -> str:
    """Make untrusted text safe for a terminal: control, ANSI and bidi characters escaped."""
    return text.translate({**_CONTROL, **_BIDI}).replace("[", "\\[")


_UNBOUNDED = 1 << 20


def line(key: str, rest: str = "") -> None:
    """A line of a listing: ``rest`` cut at a terminal's edge (with an ellipsis), ``key``
    (the seq, the type, the run id) never; whole when piped."""
    line = Text.from_markup(key)
    tail = Text.from_markup(rest)
    if out.is_terminal:
        tail.truncate(max(out.width - line.cell_len, 1), overflow="ellipsis")
    out.print(line + tail, soft_wrap=True)


def prose(text: str) -> None:
    """Sentences: wrapped on a terminal, one line each when piped."""
    out.print(text, soft_wrap=not out.is_terminal)


def command_line(text: str) -> None:
    """A command to copy: never broken by a wrap of ours, whatever the output is."""
    out.print(text, soft_wrap=True)


def table(table: Table, *, wide: bool = False) -> None:
    """A table fitted to the terminal (its free columns give way, ids are never cut); at its
    natural width, nothing cut, when piped or ``wide``."""
    if out.is_terminal and not wide:
        whole(table, fit(table, out, out.width))
        return
    whole(table)


def whole(renderable: RenderableType, width: int | None = None) -> None:
    """Render at ``width``, by default the renderable's natural width (Console.print never
    goes past the console's own width, which is 80 when stdout is not a terminal)."""
    if width is None:
        width = Measurement.get(out, out.options.update_width(_UNBOUNDED), renderable).maximum
    wide = _Output(
        file=out.file,
        width=max(width, 1),
        highlight=False,
        force_terminal=out.is_terminal,
        no_color=out.no_color,
    )
    wide.print(renderable)


def event_json(rec: Recorded) -> dict[str, Any]:
    event = rec.event
    named = event if isinstance(event, UnknownEvent) else to_named(event)
    body: dict[str, Any] = msgspec.to_builtins(named)
    if not isinstance(body, dict):
        body = {"type": rec.type}
    body.pop("type", None)
    return {
        "run_id": rec.run_id,
        "seq": rec.seq,
        "position": rec.position,
        "at": rec.at,
        "type": rec.type,
        "data": body,
    }


def count(n: int, noun: str) -> str:
    """``1 step``, ``3 steps``."""
    return f"{n} {noun}" if n == 1 else f"{n} {noun}s"


def summary(rec: Recorded) -> str:
    data = event_json(rec)["data"]
    return escape(", ".join(f"{k}={v!r}" for k, v in data.items() if k not in ("tools", "limits")))


LAZY_MODULES = ("typer._adapters", "lmdb._envid", "email.parser")
"""Imported on first use by a dependency: typer's value adapters (and pydantic) while it
parses, py-lmdb's environment ids and importlib.metadata's parser as a store opens."""


def import_lazy_modules() -> None:
    """Import now what dependencies import later: a Ctrl-C during such an import cannot be
    unwound (Python prints "Exception ignored ... KeyboardInterrupt")."""
    for name in LAZY_MODULES:
        with contextlib.suppress(ImportError):
            importlib.import_module(name)

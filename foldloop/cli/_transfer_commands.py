"""The transfer commands: `foldloop export`, `foldloop import`."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

import typer

from foldloop.cli._errors import chosen_store as _store
from foldloop.cli._errors import errors as _errors
from foldloop.cli._errors import fail as _fail
from foldloop.cli._errors import opened as _runtime
from foldloop.cli._exit_codes import EXIT_ERROR, EXIT_NOT_FOUND, EXIT_USAGE
from foldloop.cli._output import count as _count
from foldloop.cli._output import err, escape
from foldloop.cli._output import prose as _prose
from foldloop.cli._sink import write_whole as _write_whole
from foldloop.errors import ConfigError
from foldloop.events._jsonl import load_export
from foldloop.runtime._rules import check_run_id
from foldloop.store import encode_all
from foldloop.store._nats_names import is_nats_url

__all__ = ["export_run", "import_run"]

RunArg = Annotated[str, typer.Argument(metavar="RUN", help="The run id (see `foldloop runs`).")]


def export_run(
    run: RunArg,
    output: Annotated[
        str | None, typer.Option("-o", "--output", help="File (default, or '-': stdout).")
    ] = None,
    tree: Annotated[
        bool, typer.Option("--tree", help="The run and every child run below it, in one file.")
    ] = False,
) -> None:
    """Export a run's events as JSONL (schema: foldloop.events._jsonl); with --tree, the
    runs below it too (`foldloop import FILE` brings them all back, under their ids)."""
    with _runtime(_store()) as rt:
        lines = list(rt.export(run, tree=tree))
    text = "\n".join(lines) + "\n"
    with _errors():
        if output is None or output == "-":  # as written: ./- names a file
            sys.stdout.write(text)
        else:
            _write_whole(Path(output), text)
            written = _count(len(lines) - 1, "event")
            if tree:  # a header line for the tree, one for each run
                runs = json.loads(lines[0])["runs"]
                written = (
                    f"{_count(runs, 'run')} ({_count(len(lines) - 1 - runs, 'event')}) of the tree"
                )
            err.print(f"wrote {written} of {escape(run)} to {escape(str(output))}")


def import_run(
    given: Annotated[
        str, typer.Argument(metavar="FILE", help="A run exported as JSONL ('-': stdin).")
    ],
    run_id: Annotated[
        str | None, typer.Option("--run-id", help="Import under this id (one run, not a tree).")
    ] = None,
) -> None:
    """Import a run exported as JSONL into the store (created if absent); a tree exported
    with --tree comes back whole, under the ids it was exported with."""
    file = Path("/dev/stdin" if given == "-" else given)  # as written: ./- names a file
    if given != "-" and file.is_dir():
        _fail(EXIT_USAGE, f"{str(file)!r} is a directory; give the file an export was written to")
    elif given != "-" and not file.exists():
        _fail(EXIT_NOT_FOUND, f"no file {str(file)!r}")
    # All checks that need no store come first: a bad file must not leave an empty store.
    try:
        text = file.read_text(encoding="utf-8")  # load_export takes it apart, as the API does
    except UnicodeDecodeError:
        _fail(EXIT_USAGE, f"{str(file)!r} is not text, so not a foldloop export (JSONL)")
    except OSError as exc:
        _fail(EXIT_ERROR, f"cannot read {str(file)!r}: {exc.strerror}")
    with _errors():
        export = load_export(text)
        if export.tree and run_id is not None:
            raise ConfigError(
                "--run-id renames one run; a run tree is imported under the ids it was "
                "exported with (each child's id is derived from its parent's and recorded in "
                "its log)"
            )
        for member in export.runs:
            check_run_id(run_id if run_id is not None else member.header.run_id)
            if not member.events:
                raise ConfigError("the export holds no events")
            for e in member.events:  # what no store can hold, before one is created
                encode_all([e.event], e.at)
    elsewhere = "nats://HOST:PORT/NAMESPACE, another namespace" if is_nats_url(_store()) else "PATH"
    hint = (
        f"import the tree into another store (--store {elsewhere})"
        if export.tree
        else "import it under another id with --run-id ID"
    )
    with _runtime(_store(), create=True, hint=hint) as rt:
        runs_here = export.runs if export.tree else ()
        held = {m.header.run_id for m in runs_here if rt.store.head(m.header.run_id)}
        imported = rt.import_jsonl(text, run_id=run_id)
        if not export.tree:
            _prose(f"imported {escape(imported)}: {_count(rt.store.head(imported), 'event')}")
            return
        added = [m.header.run_id for m in export.runs if m.header.run_id not in held]
        events = _count(sum(rt.store.head(run) for run in added), "event")
        below = len(export.runs) - 1
        runs = f"and {_count(below, 'run')} below it" if below else "with no run below it"
        kept = f" ({_count(len(held), 'run')} already here left as they were)" if held else ""
        _prose(f"imported {escape(imported)} {runs}: {events}{kept}")

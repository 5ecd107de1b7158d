"""``foldloop runs``: the runs in a store, the most recently updated first, as a table."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.table import Table

from foldloop.cli._errors import chosen_store as _store
from foldloop.cli._errors import fail as _fail
from foldloop.cli._errors import opened as _runtime
from foldloop.cli._exit_codes import EXIT_USAGE
from foldloop.cli._fit import free
from foldloop.cli._output import WideOpt, err, escape
from foldloop.cli._output import table as _table
from foldloop.cli._tree_view import listed_roots
from foldloop.core._state import RunStatus

__all__ = ["RUNS_LISTED", "runs"]

RUNS_LISTED = 200
"""Runs ``foldloop runs`` lists unless told otherwise: a table of thousands takes seconds
to draw and nobody reads it."""


def runs(
    status: Annotated[
        str | None, typer.Option(help="Only runs with this status (roots only, unless --all).")
    ] = None,
    agent: Annotated[
        str | None, typer.Option(help="Only runs of this agent (roots only, unless --all).")
    ] = None,
    every: Annotated[
        bool, typer.Option("--all", help="Every run, child runs too, each with its parent.")
    ] = False,
    limit: Annotated[
        int,
        typer.Option(
            min=0, help="List at most this many (the most recently updated); 0: all of them."
        ),
    ] = RUNS_LISTED,
    wide: WideOpt = False,
) -> None:
    """List the runs in the store, the most recently updated first: the roots of run
    trees, each with how many runs are below it (child runs its sub-agent calls started,
    and theirs; the column shows once there are some); `--all` lists every run, with its
    parent. --status and --agent filter the runs listed: the roots, or with --all every
    run. `foldloop tree RUN` draws a tree; `foldloop explain RUN` says what to do with a
    run."""
    try:
        wanted = RunStatus(status) if status is not None else None
    except ValueError:
        known = ", ".join(s.value for s in RunStatus)
        _fail(EXIT_USAGE, f"unknown status {status!r}; the statuses are: {known}")
    with _runtime(_store()) as rt:
        rows = rt.runs()
        listed, below = (rows, {}) if every else listed_roots(rows)
        listed = [
            row
            for row in listed
            if (wanted is None or row.status is wanted) and (agent is None or row.agent == agent)
        ]
        listed.sort(key=lambda row: row.updated_at, reverse=True)
        matching = len(listed)
        if limit:
            del listed[limit:]
        # a store without run trees keeps the narrower table of plain runs
        parents = every and any(row.parent_run_id for row in listed)
        counts = not every and any(below[row.run_id] for row in listed)
        headers = ["run", "agent", "status", "steps"]
        if parents:
            headers.insert(1, "parent")
        elif counts:
            headers.append("below")
        table = Table(*headers, free("reason"))
        for row in listed:
            cells = [escape(row.run_id), escape(row.agent), row.status.value, str(row.steps)]
            if parents:
                cells.insert(1, escape(row.parent_run_id or "-"))
            elif counts:
                cells.append(str(below[row.run_id]))
            table.add_row(*cells, escape(row.reason))
        _table(table, wide=wide)
        if len(listed) < matching:
            err.print(
                f"{len(listed):,} of {matching:,} runs listed (the most recently updated); "
                "--limit 0 lists them all, --status and --agent narrow them",
                soft_wrap=True,
            )

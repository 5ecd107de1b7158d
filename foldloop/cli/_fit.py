"""Tables fitted to a terminal: free text gives way, what a user types next never does.

A column is a key column (a run id, a call id, a status, a number, a time) unless it is
a :class:`FreeColumn` (a reason, a summary, arguments). Fitting keeps every key column at
its longest value and narrows the free ones; when even the key columns do not fit, the
table is wider than the terminal rather than an id cut.
"""

from __future__ import annotations

from dataclasses import dataclass

from rich.console import Console
from rich.measure import Measurement
from rich.table import Column, Table

__all__ = ["FREE_FLOOR", "FreeColumn", "fit", "free"]

FREE_FLOOR = 10
"""A free column is narrowed to this many cells at most (fewer only if its text is)."""

_UNBOUNDED = 1 << 20


@dataclass
class FreeColumn(Column):
    """A column of free text: cut with an ellipsis (or wrapped) on a narrow terminal."""


def free(header: str, *, wrap: bool = False) -> FreeColumn:
    """A free-text column, cut with an ellipsis at its width, or wrapped if ``wrap``."""
    return FreeColumn(header, no_wrap=not wrap, overflow="fold" if wrap else "ellipsis")


def _natural(console: Console, column: Column) -> int:
    options = console.options.update_width(_UNBOUNDED)
    cells = (column.header, *column.cells)
    return max(Measurement.get(console, options, cell).maximum for cell in cells)


def _width(console: Console, table: Table) -> int:
    options = console.options.update_width(_UNBOUNDED)
    return Measurement.get(console, options, table).maximum


def fit(table: Table, console: Console, width: int) -> int:
    """Set ``table``'s columns so that it fits ``width`` if its key columns can; return
    the width to render it at (more than ``width`` when they cannot)."""
    frees: list[tuple[Column, int]] = []
    for column in table.columns:
        natural = _natural(console, column)
        if isinstance(column, FreeColumn):
            frees.append((column, natural))
        else:
            column.no_wrap = True  # and as wide as its longest value: never cut, never wrapped
            column.min_width = natural
    excess = _width(console, table) - width
    rooms = [natural - min(natural, FREE_FLOOR) for _, natural in frees]
    cut = min(max(excess, 0), sum(rooms))
    for (column, natural), room in zip(frees, rooms, strict=True):
        share = min(room, cut)  # the first free columns give way first
        column.max_width = natural - share
        cut -= share
    return _width(console, table)

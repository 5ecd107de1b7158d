"""fold(events): ``reduce(evolve, events, initial)``, computed in one pass.

The same rules as ``evolve`` (``evolve.RULES``), taken by one ``Draft`` for the whole log:
the state, and the history's outer tuple, are built once at the end instead of once per
event, which is what makes a long run's fold cheap.
"""

from __future__ import annotations

import itertools
import operator
from collections.abc import Iterable

from msgspec.structs import replace

from foldloop.core._evolve import INITIAL, Draft
from foldloop.core._state import RunState
from foldloop.events._recorded import AnyEvent, Recorded

__all__ = ["fold", "fold_events"]


def fold(events: Iterable[Recorded], initial: RunState = INITIAL) -> RunState:
    """The state of a run: ``reduce(evolve, events, initial)``."""
    records = iter(events)
    first = next(records, None)
    if first is None:
        return initial
    draft = Draft(initial)
    if not draft.run_id:
        draft.run_id = first.run_id
    draft.take(map(_EVENT_AT, itertools.chain((first,), records)))
    return draft.state()


_EVENT_AT = operator.attrgetter("event", "at")


def fold_events(
    run_id: str, events: Iterable[tuple[AnyEvent, int]], initial: RunState = INITIAL
) -> RunState:
    """``fold`` of run ``run_id``'s records given as ``(event, at)`` pairs, such as
    ``zip(*store.read_events(run_id))``: no Recorded envelope to build or take apart."""
    draft = Draft(initial if initial.run_id else replace(initial, run_id=run_id))
    if not draft.take(events):
        return initial  # no event: no run yet, as ``fold([])``
    return draft.state()

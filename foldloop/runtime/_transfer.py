"""Moving runs between stores: export as JSONL lines, import into this one.

A run is exported alone, or (``tree=True``) with every child run below it. A tree is
imported under the ids it was exported with: a child's id is derived from its parent's
and is written in its parent's log (``child.spawned``, ``child.ended``, the failed call's
error the model read), so renaming a tree would change what its runs recorded.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from foldloop.errors import ConfigError, RunNotFound
from foldloop.events._catalogue import ChildSpawned
from foldloop.events._jsonl import RunExport, dump_run, dump_tree, load_export
from foldloop.events._recorded import Recorded
from foldloop.runtime._queries import Queries
from foldloop.runtime._rules import check_run_id
from foldloop.runtime._writes import RunWrites

__all__ = ["Transfer"]


class Transfer:
    """Export from and import into one runtime's store."""

    def __init__(self, queries: Queries, writes: RunWrites) -> None:
        self._queries = queries
        self._writes = writes

    def export(self, run_id: str, *, tree: bool = False) -> Iterator[str]:
        """The run (with ``tree``, and every run below it) as JSONL lines (schema in
        ``foldloop.events._jsonl``)."""
        records = list(self._queries.events(run_id))
        if not tree:
            return dump_run(run_id, records)
        return dump_tree(run_id, self._subtree(run_id, records))

    def _subtree(self, run_id: str, records: list[Recorded]) -> list[tuple[str, list[Recorded]]]:
        """The run and the runs below it, depth first in the order they started. A run's
        children are those its own exported log started: read parent before child, a tree
        that moves meanwhile is exported as a crash would have left it (a child its parent
        started but the store does not hold yet is started by ``recover()`` after import)."""
        out: list[tuple[str, list[Recorded]]] = []
        seen = {run_id}
        todo = [(run_id, records)]
        while todo:
            member, member_records = todo.pop()
            out.append((member, member_records))
            below = []
            for rec in member_records:
                event = rec.event
                if not isinstance(event, ChildSpawned) or event.run_id in seen:
                    continue
                seen.add(event.run_id)
                try:
                    below.append((event.run_id, list(self._queries.events(event.run_id))))
                except RunNotFound:
                    continue
            todo.extend(reversed(below))
        return out

    def _holds(self, run: RunExport) -> bool:
        """The store holds exactly this exported run (an earlier import of it)."""
        stored = [(r.seq, r.at, r.event) for r in self._queries.events(run.header.run_id)]
        return stored == [(e.seq, e.at, e.event) for e in run.events]

    def import_jsonl(self, lines: Iterable[str] | str, *, run_id: str | None) -> str:
        """Append an exported run (as ``run_id`` if given), or an exported tree under its
        own ids, to this store; returns the (root) run's id."""
        export = load_export(lines)
        if export.tree:
            if run_id is not None:
                raise ConfigError(
                    "a run tree is imported under the run ids it was exported with (each "
                    "child's id is derived from its parent's and recorded in its log), so "
                    "it cannot be renamed",
                    advice="import it with run_id=None, into a store that does not hold it",
                )
            # Each run is its own append: an import cut short (a kill) left the runs before
            # the cut, each whole, and importing the file again adds the rest (a tree there
            # whole, or a run of it there with other events, is refused).
            present: set[str] = set()
            for run in export.runs:
                check_run_id(run.header.run_id)
                if self._queries.exists(run.header.run_id):
                    if not self._holds(run):
                        raise ConfigError(
                            f"run {run.header.run_id!r} of the tree of {export.run_id!r} "
                            "already exists in this store with other events; nothing was "
                            "imported",
                            advice="import the tree into a store that does not hold it",
                        )
                    present.add(run.header.run_id)
            if len(present) == len(export.runs):
                raise ConfigError(
                    f"run {export.run_id!r} of the tree of {export.run_id!r} already exists in "
                    "this store, and every run below it; nothing was imported",
                    advice="import the tree into a store that does not hold it",
                )
            for run in export.runs:
                if run.header.run_id not in present:
                    events = [(e.event, e.at) for e in run.events]
                    self._writes.import_run(run.header.run_id, events)
            return export.run_id
        (run,) = export.runs
        target = run_id if run_id is not None else run.header.run_id
        check_run_id(target)
        if not run.events:
            raise ConfigError("the export holds no events")
        self._writes.import_run(target, [(e.event, e.at) for e in run.events])
        return target

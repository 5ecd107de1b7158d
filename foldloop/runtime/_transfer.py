"""Moving a run between stores: export as JSONL lines, import into this one."""

from __future__ import annotations

from collections.abc import Iterable, Iterator

from foldloop.errors import ConfigError
from foldloop.events._jsonl import dump_run, load_run
from foldloop.runtime._queries import Queries
from foldloop.runtime._rules import check_run_id
from foldloop.runtime._writes import RunWrites

__all__ = ["Transfer"]


class Transfer:
    """Export from and import into one runtime's store."""

    def __init__(self, queries: Queries, writes: RunWrites) -> None:
        self._queries = queries
        self._writes = writes

    def export(self, run_id: str) -> Iterator[str]:
        """The run as JSONL lines (schema in ``foldloop.events._jsonl``)."""
        return dump_run(run_id, self._queries.events(run_id))

    def import_jsonl(self, lines: Iterable[str], *, run_id: str | None) -> str:
        """Append an exported run to this store (as ``run_id`` if given); returns its id."""
        header, exported = load_run(lines)
        target = run_id if run_id is not None else header.run_id
        check_run_id(target)
        if not exported:
            raise ConfigError("the export holds no events")
        self._writes.import_run(target, [(e.event, e.at) for e in exported])
        return target

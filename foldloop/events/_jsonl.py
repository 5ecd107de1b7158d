"""The JSONL export format of a run: stable, documented, one JSON object a line.

    {"foldloop": "run", "format": 1, "run_id": "calc-1", "events": 8}          header
    {"seq": 1, "at": 1795315622516675010, "event": {"type": "run.started", ...}}
    ...

A run tree (a run and every child run below it) is a tree header followed by one such run
export per run, each parent before its children (depth first, in the order they started):

    {"foldloop": "tree", "format": 1, "run_id": "lead-1", "runs": 3}           tree header
    {"foldloop": "run", "format": 1, "run_id": "lead-1", "events": 9}          first run
    ...
    {"foldloop": "run", "format": 1, "run_id": "lead-1.0c2f9a1e", "events": 4} next run
    ...

``event`` is the event by name (``named.to_named``): its ``type`` tag and its fields by
name, defaults left out (the log stores events positionally; an export is for people and
other tools, so it names every field). Positions are not exported (they belong to a
store); seq and at are, so importing a run into any store gives the same fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec

from foldloop.errors import ConfigError
from foldloop.events._catalogue import ChildEnded, KnownEvent, RunStarted
from foldloop.events._named import from_named, to_named
from foldloop.events._recorded import Recorded, UnknownEvent
from foldloop.events._values import as_recorded

__all__ = [
    "FORMAT",
    "Export",
    "ExportHeader",
    "ExportedEvent",
    "RunExport",
    "TreeHeader",
    "dump_run",
    "dump_tree",
    "load_export",
    "load_run",
]

FORMAT = 1


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first line of a run's export."""

    foldloop: str
    format: int
    run_id: str
    events: int


class TreeHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first line of a tree's export: its root, and how many run exports follow."""

    foldloop: str
    format: int
    run_id: str
    runs: int


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event line."""

    seq: int
    at: int
    event: KnownEvent


@dataclass(frozen=True)
class RunExport:
    """One run of an export: its header and its events."""

    header: ExportHeader
    events: tuple[ExportedEvent, ...]


@dataclass(frozen=True)
class Export:
    """An export as read: one run, or (``tree``) a run and the runs below it, each parent
    before its children."""

    run_id: str
    """The run exported (a tree's root)."""
    tree: bool
    runs: tuple[RunExport, ...]


class _Kind(msgspec.Struct, frozen=True, kw_only=True):
    """What a header line says it heads (its other fields are its kind's)."""

    foldloop: str
    format: int


class _Line(msgspec.Struct, frozen=True, kw_only=True):
    """An event line as written and read: the event by name (``ExportedEvent`` holds it typed)."""

    seq: int
    at: int
    event: dict[str, Any]


_ENCODER = msgspec.json.Encoder()
_KIND = msgspec.json.Decoder(_Kind)
_HEADER = msgspec.json.Decoder(ExportHeader)
_TREE = msgspec.json.Decoder(TreeHeader)
_LINE = msgspec.json.Decoder(_Line)


def _check_known(run_id: str, records: Sequence[Recorded]) -> None:
    for rec in records:
        if isinstance(rec.event, UnknownEvent):
            raise ConfigError(
                f"run {run_id!r} seq {rec.seq} holds a {rec.type!r} event from a newer foldloop; "
                "export it with that version"
            )


def dump_run(run_id: str, records: Iterable[Recorded]) -> Iterator[str]:
    """The lines of a run's export (without newlines)."""
    records = list(records)
    _check_known(run_id, records)
    header = ExportHeader(foldloop="run", format=FORMAT, run_id=run_id, events=len(records))
    yield _ENCODER.encode(header).decode()
    for rec in records:
        assert not isinstance(rec.event, UnknownEvent)
        yield _ENCODER.encode(_Line(seq=rec.seq, at=rec.at, event=to_named(rec.event))).decode()


def dump_tree(run_id: str, runs: Sequence[tuple[str, Sequence[Recorded]]]) -> Iterator[str]:
    """The lines of a tree's export: ``runs`` (id and records), the root ``run_id`` first
    and each parent before its children."""
    for member, records in runs:  # all checked before the first line is given
        _check_known(member, records)
    header = TreeHeader(foldloop="tree", format=FORMAT, run_id=run_id, runs=len(runs))
    yield _ENCODER.encode(header).decode()
    for member, records in runs:
        yield from dump_run(member, records)


def load_run(lines: Iterable[str]) -> tuple[ExportHeader, list[ExportedEvent]]:
    """Parse and check a run's export; every problem names its line."""
    export = load_export(lines)
    if export.tree:
        raise ConfigError(
            f"line 1: this is the export of a run tree ({len(export.runs)} runs), not of one "
            "run; import it whole"
        )
    run = export.runs[0]
    return run.header, list(run.events)


def _texts(lines: object) -> Iterator[str]:
    """The lines of an export, each checked to be text (bytes read from a file are not)."""
    if isinstance(lines, bytes | bytearray | memoryview):
        raise ConfigError(
            "the export is bytes; give its text (a str, or its lines): decode it as UTF-8 first"
        )
    try:
        items = iter(lines)  # type: ignore[call-overload]
    except TypeError:
        raise ConfigError(
            f"an export is its text (a str) or its lines; got {type(lines).__name__}"
        ) from None
    for number, line in enumerate(items, start=1):
        if not isinstance(line, str):
            raise ConfigError(f"line {number} of the export is a {type(line).__name__}, not text")
        yield line


def load_export(lines: Iterable[str] | str) -> Export:
    """Parse and check an export, of one run or of a tree, given as its lines or as its
    whole text (split at "\n" only: JSON text may hold U+2028 and the like); every problem
    names its line."""
    if isinstance(lines, str):  # CRLF taken too, and a BOM an editor added
        lines = [line.removesuffix("\r") for line in lines.removeprefix("\ufeff").split("\n")]
    numbered = enumerate(_texts(lines), start=1)
    _, first = next(numbered, (0, ""))
    if not first.strip():
        if not any(line.strip() for _, line in numbered):
            raise ConfigError("the export is empty; expected a foldloop run header line")
        raise ConfigError("line 1 is blank; an export begins with its run header line")
    try:
        kind = _KIND.decode(first)
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"line 1 is not a foldloop run header: {exc}") from None
    rest = ((number, line) for number, line in numbered if line.strip())
    if kind.foldloop == "tree":
        return _load_tree(first, rest)
    header = _run_header(1, first)
    events: list[ExportedEvent] = []
    for number, line in rest:
        events.append(_event(number, line, len(events) + 1))
    if len(events) < header.events:
        raise ConfigError(
            f"the export is truncated: the header promises {header.events} events, "
            f"the file has {len(events)}"
        )
    if len(events) > header.events:
        raise ConfigError(
            f"the file has {len(events)} events, past the {header.events} its header promises: "
            "not an export as foldloop wrote it (edited, or two joined)"
        )
    if events and not isinstance(events[0].event, RunStarted):
        raise ConfigError(
            f"the export of run {header.run_id!r} does not begin with run.started: not a whole run"
        )
    return Export(header.run_id, tree=False, runs=(RunExport(header, tuple(events)),))


def _run_header(number: int, line: str) -> ExportHeader:
    try:
        header = _HEADER.decode(line)
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"line {number} is not a foldloop run header: {exc}") from None
    if header.foldloop != "run" or header.format > FORMAT:
        raise ConfigError(
            f"line {number}: format {header.format} of kind {header.foldloop!r} is not a run "
            f"export this foldloop reads (format <= {FORMAT})"
        )
    return header


def _event(number: int, line: str, seq: int) -> ExportedEvent:
    """Event line ``number``, which must hold the run's event ``seq``."""
    try:
        with as_recorded():  # a log's values, even those checked only since it was written
            line_ = _LINE.decode(line)
            event = ExportedEvent(
                seq=line_.seq, at=line_.at, event=from_named(line_.event, strict=True)
            )
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"line {number}: {exc}") from None
    if event.seq != seq:
        raise ConfigError(f"line {number}: seq {event.seq}, expected {seq}")
    return event


def _is_header(line: str) -> bool:
    try:
        _KIND.decode(line)
    except msgspec.MsgspecError:
        return False
    return True


def _load_tree(first: str, rest: Iterator[tuple[int, str]]) -> Export:
    try:
        tree = _TREE.decode(first)
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"line 1 is not a foldloop tree header: {exc}") from None
    if tree.format > FORMAT or tree.runs < 1:
        raise ConfigError(
            f"line 1: a tree of {tree.runs} runs in format {tree.format} is not a tree export "
            f"this foldloop reads (format <= {FORMAT}, one run or more)"
        )
    runs: list[RunExport] = []
    for _ in range(tree.runs):
        item = next(rest, None)
        if item is None:
            raise ConfigError(
                f"the export is truncated: its tree header promises {tree.runs} runs, "
                f"the file has {len(runs)}"
            )
        header = _run_header(*item)
        events: list[ExportedEvent] = []
        while len(events) < header.events:
            item = next(rest, None)
            if item is None or _is_header(item[1]):
                where = "the file ends" if item is None else f"line {item[0]} starts another"
                raise ConfigError(
                    f"the export is truncated: the header of run {header.run_id!r} promises "
                    f"{header.events} events, {where} after {len(events)}"
                )
            events.append(_event(*item, len(events) + 1))
        runs.append(RunExport(header, tuple(events)))
    extra = next(rest, None)
    if extra is not None:
        raise ConfigError(f"line {extra[0]}: past the {tree.runs} runs the tree header promises")
    _check_tree(tree, runs)
    return Export(tree.run_id, tree=True, runs=tuple(runs))


def _check_tree(tree: TreeHeader, runs: list[RunExport]) -> None:
    """The runs form the tree the header names: its root first, each other run below one
    before it, none twice."""
    if runs[0].header.run_id != tree.run_id:
        raise ConfigError(
            f"the tree header names root {tree.run_id!r}, but the first run is "
            f"{runs[0].header.run_id!r}"
        )
    seen: set[str] = set()
    for run in runs:
        run_id = run.header.run_id
        if run_id in seen:
            raise ConfigError(f"run {run_id!r} is in the tree export twice")
        first = run.events[0].event if run.events else None
        if not isinstance(first, RunStarted):
            raise ConfigError(f"run {run_id!r} of the tree export does not begin with run.started")
        if seen and first.parent_run_id not in seen:
            raise ConfigError(
                f"run {run_id!r} is not below a run before it in the tree export "
                f"(its parent is {first.parent_run_id!r})"
            )
        seen.add(run_id)
    for run in runs:
        ended = {e.event.run_id for e in run.events if isinstance(e.event, ChildEnded)}
        if missing := sorted(ended - seen):  # an ended child's log is part of its parent's story
            raise ConfigError(
                f"the tree of {tree.run_id!r} lacks child run(s) {missing}, which its run "
                f"{run.header.run_id!r} records as ended; nothing was imported",
                advice="export the tree again (rt.export(root, tree=True))",
            )

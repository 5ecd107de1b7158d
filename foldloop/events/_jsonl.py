"""The JSONL export format of a run: stable, documented, one JSON object a line.

    {"foldloop": "run", "format": 1, "run_id": "calc-1", "events": 8}          header
    {"seq": 1, "at": 1795315622516675010, "event": {"type": "run.started", ...}}
    ...

``event`` is the event by name (``named.to_named``): its ``type`` tag and its fields by
name, defaults left out (the log stores events positionally; an export is for people and
other tools, so it names every field). Positions are not exported (they belong to a
store); seq and at are, so importing a run into any store gives the same fold.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import msgspec

from foldloop.errors import ConfigError
from foldloop.events._catalogue import KnownEvent
from foldloop.events._named import from_named, to_named
from foldloop.events._recorded import Recorded, UnknownEvent
from foldloop.events._values import as_recorded

__all__ = ["FORMAT", "ExportedEvent", "ExportHeader", "dump_run", "load_run"]

FORMAT = 1


class ExportHeader(msgspec.Struct, frozen=True, kw_only=True):
    """The first line of an export."""

    foldloop: str
    format: int
    run_id: str
    events: int


class ExportedEvent(msgspec.Struct, frozen=True, kw_only=True):
    """One event line."""

    seq: int
    at: int
    event: KnownEvent


class _Line(msgspec.Struct, frozen=True, kw_only=True):
    """An event line as written and read: the event by name (``ExportedEvent`` holds it typed)."""

    seq: int
    at: int
    event: dict[str, Any]


_ENCODER = msgspec.json.Encoder()
_HEADER = msgspec.json.Decoder(ExportHeader)
_LINE = msgspec.json.Decoder(_Line)


def dump_run(run_id: str, records: Iterable[Recorded]) -> Iterator[str]:
    """The lines of an export (without newlines)."""
    records = list(records)
    for rec in records:
        if isinstance(rec.event, UnknownEvent):
            raise ConfigError(
                f"run {run_id!r} seq {rec.seq} holds a {rec.type!r} event from a newer foldloop; "
                "export it with that version"
            )
    header = ExportHeader(foldloop="run", format=FORMAT, run_id=run_id, events=len(records))
    yield _ENCODER.encode(header).decode()
    for rec in records:
        assert not isinstance(rec.event, UnknownEvent)
        yield _ENCODER.encode(_Line(seq=rec.seq, at=rec.at, event=to_named(rec.event))).decode()


def load_run(lines: Iterable[str]) -> tuple[ExportHeader, list[ExportedEvent]]:
    """Parse and check an export; every problem names its line."""
    it = iter(lines)
    try:
        first = next(it)
    except StopIteration:
        raise ConfigError("the export is empty; expected a foldloop run header line") from None
    try:
        header = _HEADER.decode(first)
    except msgspec.MsgspecError as exc:
        raise ConfigError(f"line 1 is not a foldloop run header: {exc}") from None
    if header.foldloop != "run" or header.format > FORMAT:
        raise ConfigError(
            f"line 1: format {header.format} of kind {header.foldloop!r} is not a run export "
            f"this foldloop reads (format <= {FORMAT})"
        )
    events: list[ExportedEvent] = []
    for number, line in enumerate(it, start=2):
        if not line.strip():
            continue
        try:
            with as_recorded():  # a log's values, even those checked only since it was written
                line_ = _LINE.decode(line)
                event = ExportedEvent(seq=line_.seq, at=line_.at, event=from_named(line_.event))
        except msgspec.MsgspecError as exc:
            raise ConfigError(f"line {number}: {exc}") from None
        if event.seq != len(events) + 1:
            raise ConfigError(f"line {number}: seq {event.seq}, expected {len(events) + 1}")
        events.append(event)
    if len(events) != header.events:
        raise ConfigError(
            f"the export is truncated: the header promises {header.events} events, "
            f"the file has {len(events)}"
        )
    return header, events

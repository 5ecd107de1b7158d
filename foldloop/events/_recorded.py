"""The envelope every stored event travels in, and the stand-in for events from newer writers."""

from __future__ import annotations

import msgspec

from foldloop.events._catalogue import KnownEvent

__all__ = ["AnyEvent", "Recorded", "UnknownEvent"]


class UnknownEvent(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """An event whose tag this version does not know (written by a newer foldloop).

    It is kept byte for byte, skipped by the fold and reported by ``verify``/``doctor``,
    so an older reader never drops or rewrites what a newer writer recorded.
    """

    tag: str
    raw: bytes

    @property
    def type(self) -> str:
        """The unknown tag, e.g. ``"tool.stream_chunk"``."""
        return self.tag


AnyEvent = KnownEvent | UnknownEvent
"""What a decoded record may hold."""


class Recorded(msgspec.Struct, frozen=True, kw_only=True, gc=False):
    """One event as the log stores it.

    ``seq`` is 1-based and gapless per run, ``position`` 1-based and gapless across the
    whole log; ``at`` (unix ns) is the clock reading the decision was made with, recorded
    once and never re-read on replay.
    """

    run_id: str
    seq: int
    position: int
    at: int
    event: AnyEvent

    @property
    def type(self) -> str:
        """The event's tag, e.g. ``"tool.completed"``."""
        return self.event.type

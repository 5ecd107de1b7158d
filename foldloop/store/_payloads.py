"""Events ready to append: encoded, checked against the log's limits, each with its time.

Encoding happens in the caller's thread before a write is queued, so an event the log
cannot hold fails where it was made, with nothing written.
"""

from __future__ import annotations

from collections.abc import Sequence

import msgspec

from foldloop.errors import ConfigError
from foldloop.events._catalogue import KnownEvent
from foldloop.events._codec import encode_event

__all__ = ["MAX_EVENT_BYTES", "Payload", "encode_all"]

MAX_EVENT_BYTES = 1 << 20
"""The largest encoded event the log accepts (tool results are capped well below it)."""

Payload = tuple[KnownEvent, bytes, int]
"""An event ready to append: the event, its encoded bytes, and its ``at`` (unix ns)."""


LATEST_AT = (1 << 63) - 1
"""The latest event time (unix ns) the log takes: two of them in one stored value are kept
as offsets from the first, which a signed 64-bit value must hold."""


def encode_all(events: Sequence[KnownEvent], at: int) -> list[Payload]:
    """Encode events before queueing them, so a bad payload fails in the caller, unwritten."""
    if not 0 <= at <= LATEST_AT:  # an import brings its own times
        raise ConfigError(
            f"an event's time must be unix ns from 0 to 2**63-1; got {at!r} (nothing was written)"
        )
    out: list[Payload] = []
    for event in events:
        try:
            raw = encode_event(event)
        except (msgspec.EncodeError, OverflowError, UnicodeEncodeError, TypeError) as exc:
            raise ConfigError(
                f"cannot store a {event.type} event: {exc}; integers must fit in 64 bits and "
                "text must be valid unicode (nothing was written)"
            ) from None
        if len(raw) > MAX_EVENT_BYTES:
            raise ConfigError(
                f"a {event.type} event of {len(raw):,} bytes is over the {MAX_EVENT_BYTES:,}-byte "
                "limit (nothing was written); keep large data outside the log and record a "
                "reference to it"
            )
        out.append((event, raw, at))
    return out

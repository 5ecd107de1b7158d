"""Bytes <-> events: one cached encoder and decoder, unknown tags kept, old shapes upcast.

Decoding takes the fast typed path first (msgspec validates straight into the tagged
union). Only when that fails, or when an upcaster is registered for the record's
(tag, version), does it look at the raw map: an unknown tag becomes ``UnknownEvent``,
an old shape is carried forward by the registered functions, never rewritten in place.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from foldloop.events.catalogue import Event, KnownEvent
from foldloop.events.recorded import AnyEvent, UnknownEvent

__all__ = [
    "DecodeFailure",
    "KNOWN_TAGS",
    "Upcaster",
    "decode_event",
    "has_upcasters",
    "encode_event",
    "register_upcaster",
    "schema_version_of",
    "storable_text",
    "unpaired_surrogate",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class DecodeFailure(Exception):
    """A record holds a known tag whose payload no longer validates (and no upcaster fixes it)."""


class _TagOnly(msgspec.Struct):
    type: str


def _tags() -> dict[str, type[Event]]:
    tags: dict[str, type[Event]] = {}
    for cls in KnownEvent.__args__:
        tags[cls.__struct_config__.tag] = cls
    return tags


_CLASSES = _tags()
KNOWN_TAGS: frozenset[str] = frozenset(_CLASSES)
"""Every tag this version of foldloop decodes natively."""

_ENCODER = msgspec.msgpack.Encoder()
_DECODER: msgspec.msgpack.Decoder[KnownEvent] = msgspec.msgpack.Decoder(KnownEvent)
_TAG_DECODER = msgspec.msgpack.Decoder(_TagOnly)
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def encode_event(event: Event) -> bytes:
    """Encode one event to msgpack (the stored payload)."""
    return _ENCODER.encode(event)


def unpaired_surrogate(text: str) -> int | None:
    """Index of the first character msgpack cannot carry (a lone surrogate), or None."""
    if text.isascii():
        return None
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        return exc.start
    return None


def storable_text(text: str) -> str:
    """``text`` with each lone surrogate replaced by ``?``: what the log can hold of text that
    came from outside (a model's reply, a tool's result), never a crash."""
    return text if text.isascii() else text.encode("utf-8", "replace").decode("utf-8")


def schema_version_of(event: Event) -> int:
    """The schema version stamped beside an event when it is written."""
    return type(event).schema_version


def has_upcasters() -> bool:
    """True once any upcaster is registered (readers then take the careful decode path)."""
    return bool(_UPCASTERS)


def register_upcaster(tag: str, from_version: int, fn: Upcaster) -> None:
    """Carry records of ``tag`` written at ``from_version`` one version forward at decode time.

    ``fn`` gets the stored map (with its ``"type"``) and returns the next version's map; it
    may change ``"type"`` to rename an event. Chains run until no upcaster matches.
    """
    _UPCASTERS[(tag, from_version)] = fn


def _upcast(raw: bytes, tag: str, version: int) -> AnyEvent:
    data: dict[str, Any] = msgspec.msgpack.decode(raw)
    while (tag, version) in _UPCASTERS:
        data = _UPCASTERS[(tag, version)](data)
        tag = str(data.get("type", tag))
        version += 1
    if tag not in KNOWN_TAGS:
        return UnknownEvent(tag=tag, raw=raw)
    try:
        event: KnownEvent = msgspec.convert(data, KnownEvent)
        return event
    except msgspec.ValidationError as exc:
        raise DecodeFailure(f"{tag} (schema v{version}) after upcasting: {exc}") from None


def decode_event(raw: bytes, version: int = 1) -> AnyEvent:
    """Decode one stored payload; unknown tags become ``UnknownEvent``, old shapes are upcast."""
    if _UPCASTERS:
        try:
            tag = _TAG_DECODER.decode(raw).type
        except msgspec.DecodeError as exc:
            raise DecodeFailure(f"not an event: {exc}") from None
        if (tag, version) in _UPCASTERS:
            return _upcast(raw, tag, version)
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        try:
            tag = _TAG_DECODER.decode(raw).type
        except msgspec.DecodeError:
            raise DecodeFailure(f"not an event: {exc}") from None
        if tag not in KNOWN_TAGS:
            return UnknownEvent(tag=tag, raw=raw)
        raise DecodeFailure(f"{tag}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeFailure(f"not an event: {exc}") from None

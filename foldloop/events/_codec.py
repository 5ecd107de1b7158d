"""Bytes <-> events: one cached encoder and decoder, unknown tags kept, old shapes upcast.

Decoding takes the fast typed path first (msgspec validates straight into the tagged
union of positional events). Only when that fails, or when an upcaster is registered for
the record's (tag, version), does it look closer: an unknown tag becomes ``UnknownEvent``,
an old shape is carried forward by the registered functions, never rewritten in place.
Upcasters see a map of field names (``named``), named by the order its writer used.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec

from foldloop.events._catalogue import Event, KnownEvent
from foldloop.events._named import field_names, from_named
from foldloop.events._recorded import AnyEvent, UnknownEvent
from foldloop.events._values import as_recorded

__all__ = [
    "DecodeFailure",
    "KNOWN_TAGS",
    "Upcaster",
    "decode_event",
    "has_upcasters",
    "encode_event",
    "plain_str",
    "register_upcaster",
    "schema_version_of",
    "storable_text",
    "unpaired_surrogate",
]

Upcaster = Callable[[dict[str, Any]], dict[str, Any]]


class DecodeFailure(Exception):
    """A record holds a known tag whose payload no longer validates (and no upcaster fixes it)."""


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
_UPCASTERS: dict[tuple[str, int], Upcaster] = {}


def encode_event(event: Event) -> bytes:
    """Encode one event to msgpack (the stored payload): its tag, then its fields in order."""
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


def plain_str(text: str) -> str:
    """``text`` as a ``str`` itself: the encoder takes no subclass (numpy's ``str_``, say),
    so the text of one is copied out."""
    return text if type(text) is str else str.__str__(text)


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


class _TagFirst(msgspec.Struct, array_like=True):
    """A positional payload's tag (its other items are skipped, not built)."""

    type: str


_TAG_FIRST = msgspec.msgpack.Decoder(_TagFirst)


def _peek_tag(raw: bytes) -> str:
    """The tag of a stored payload; raises DecodeFailure."""
    try:
        return _TAG_FIRST.decode(raw).type
    except msgspec.MsgspecError as exc:
        raise DecodeFailure(f"not an event: {exc}") from None


def _as_map(raw: bytes, tag: str, version: int) -> dict[str, Any]:
    """A stored payload as the map of field names upcasters take."""
    data = msgspec.msgpack.decode(raw)
    names = field_names(tag, version)
    if names is None:
        raise DecodeFailure(
            f"{tag} (schema v{version}) is stored by position and this foldloop does not "
            "know that version's field order (add it to foldloop.events._named.PAST_FIELDS)"
        )
    return {"type": tag, **dict(zip(names, data[1:], strict=False))}


def _upcast(raw: bytes, tag: str, version: int) -> AnyEvent:
    data = _as_map(raw, tag, version)
    while (tag, version) in _UPCASTERS:
        data = _UPCASTERS[(tag, version)](data)
        tag = str(data.get("type", tag))
        version += 1
    if tag not in KNOWN_TAGS:
        return UnknownEvent(tag=tag, raw=raw)
    try:
        return from_named(data)
    except msgspec.ValidationError as exc:
        raise DecodeFailure(f"{tag} (schema v{version}) after upcasting: {exc}") from None


def _by_field(raw: bytes, tag: str, version: int) -> str | None:
    """Why a stored payload does not validate, naming the field (None if that fails too)."""
    try:
        from_named(_as_map(raw, tag, version))
    except (DecodeFailure, msgspec.MsgspecError) as exc:
        return str(exc)
    return None


def decode_event(raw: bytes, version: int = 1) -> AnyEvent:
    """Decode one stored payload; unknown tags become ``UnknownEvent``, old shapes are upcast."""
    if _UPCASTERS:
        tag = _peek_tag(raw)
        if (tag, version) in _UPCASTERS:
            return _upcast(raw, tag, version)
    try:
        return _DECODER.decode(raw)
    except msgspec.ValidationError as exc:
        tag = _peek_tag(raw)
        if tag not in KNOWN_TAGS:
            return UnknownEvent(tag=tag, raw=raw)
        with as_recorded():  # a value checked only since it was written (a limit of 0) reads back
            try:
                return _DECODER.decode(raw)
            except msgspec.ValidationError:
                pass
        raise DecodeFailure(f"{tag}: {_by_field(raw, tag, version) or exc}") from None
    except msgspec.DecodeError as exc:
        raise DecodeFailure(f"not an event: {exc}") from None

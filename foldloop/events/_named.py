"""Events by field name: the named view of the catalogue, for people and for upcasters.

The log stores an event positionally (its tag, then its fields in declaration order; see
``catalogue``), which keeps a step's records small. Some readers need events by name: the
JSONL export and ``foldloop show`` (JSON people read) and upcasters (functions over a map of
field names). ``to_named`` and ``from_named`` turn one view into the other from the event
classes themselves, so no field is spelled twice; ``from_named`` validates each field
against its declared type.
"""

from __future__ import annotations

import typing
from collections.abc import Mapping
from typing import Any

import msgspec

from foldloop.events._catalogue import Event, KnownEvent

__all__ = ["PAST_FIELDS", "field_names", "from_named", "to_named"]

PAST_FIELDS: dict[tuple[str, int], tuple[str, ...]] = {}
"""Field order of event shapes this version no longer writes, by (tag, schema_version).

A positional record is turned back into names with the field order its writer used: the
current class's for its current ``schema_version``, this table's for older versions. An
event that changes shape (a field renamed, removed or moved) gets a new schema_version,
its old order is added here, and an upcaster carries the old map forward."""

_CLASSES: tuple[type[Event], ...] = KnownEvent.__args__
_BY_TAG: dict[str, type[Event]] = {str(cls.__struct_config__.tag): cls for cls in _CLASSES}


def _positional(cls: type) -> bool:
    """True for a struct type stored as an array (an event, ``Usage``)."""
    return (
        isinstance(cls, type)
        and issubclass(cls, msgspec.Struct)
        and bool(cls.__struct_config__.array_like)
    )


def _default(field: msgspec.structs.FieldInfo) -> Any:
    if field.default_factory is not msgspec.NODEFAULT:
        return field.default_factory()
    return field.default


def _named_value(value: Any) -> Any:
    """``value`` as JSON-ready builtins, positional structs inside it by name."""
    if isinstance(value, msgspec.Struct) and _positional(type(value)):
        return _by_name(value)
    if isinstance(value, tuple | list):
        return [_named_value(v) for v in value]
    return msgspec.to_builtins(value)


def _by_name(value: msgspec.Struct) -> dict[str, Any]:
    """A positional struct's fields by name, those at their default left out."""
    out: dict[str, Any] = {}
    for field in msgspec.structs.fields(value):
        item = getattr(value, field.name)
        if field.required or item != _default(field):
            out[field.name] = _named_value(item)
    return out


def to_named(event: KnownEvent) -> dict[str, Any]:
    """``event`` as ``{"type": tag, field: value, ...}`` (builtins; defaults left out)."""
    return {"type": event.type, **_by_name(event)}


def _from_map(
    cls: type[msgspec.Struct], data: Mapping[str, Any], path: str, *, strict: bool
) -> Any:
    """An instance of the positional struct ``cls`` from a map of its field names; each
    field validated against its type (unknown names are ignored, as msgspec does, unless
    ``strict``: then refused, naming the first)."""
    fields = msgspec.structs.fields(cls)
    if strict:
        unknown = _unknown_name(cls, data, path, top=not path)
        if unknown is not None:
            raise msgspec.ValidationError(
                f"field `{unknown}` is none this foldloop knows (written by a newer one? "
                "read it there)"
            )
    values: dict[str, Any] = {}
    for field in fields:
        name = f"{path}{field.name}"
        if field.name not in data:
            if field.required:
                raise msgspec.ValidationError(f"Object missing required field `{name}`")
            continue
        item, kind = data[field.name], field.type
        if _positional(kind) and isinstance(item, Mapping):
            values[field.name] = _from_map(kind, item, f"{name}.", strict=strict)
            continue
        try:
            values[field.name] = msgspec.convert(item, kind)
        except msgspec.ValidationError as exc:
            raise msgspec.ValidationError(f"field `{name}`: {exc}") from None
    return cls(**values)


def _unknown_name(kind: Any, item: Any, path: str, *, top: bool = False) -> str | None:
    """The first name in ``item`` that ``kind`` (a struct, or a tuple or list or union of
    them, at any depth) has no field for, as a path; None if there is none."""
    if isinstance(kind, type) and issubclass(kind, msgspec.Struct):
        if not isinstance(item, Mapping):
            return None
        fields = {field.name: field.type for field in msgspec.structs.fields(kind)}
        for name, value in item.items():
            if name not in fields:
                if not (top and name == "type"):
                    return f"{path}{name}"
                continue
            found = _unknown_name(fields[name], value, f"{path}{name}.")
            if found is not None:
                return found
        return None
    args = typing.get_args(kind)
    if isinstance(item, list) and typing.get_origin(kind) in (tuple, list) and args:
        for i, element in enumerate(item):  # tuple[X, ...] or list[X]: each element an X
            found = _unknown_name(args[0], element, f"{path.rstrip('.')}[{i}].")
            if found is not None:
                return found
        return None
    for arg in args:  # a union (X | None): the struct it can be
        if isinstance(arg, type) and issubclass(arg, msgspec.Struct):
            return _unknown_name(arg, item, path)
    return None


def from_named(data: Mapping[str, Any], *, strict: bool = False) -> KnownEvent:
    """The event a map of field names holds (with its ``"type"``); raises
    msgspec.ValidationError naming the field when it does not validate, or, ``strict``,
    when it holds a field the event does not have (an import must not drop data)."""
    tag = data.get("type")
    cls = _BY_TAG.get(tag) if isinstance(tag, str) else None
    if cls is None:
        raise msgspec.ValidationError(f"field `type`: no event type {tag!r}")
    event: KnownEvent = _from_map(cls, data, "", strict=strict)
    return event


def field_names(tag: str, version: int) -> tuple[str, ...] | None:
    """The field order records of ``tag`` at schema ``version`` were written with (None
    when this version of foldloop does not know it)."""
    cls = _BY_TAG.get(tag)
    if cls is not None and cls.schema_version == version:
        return cls.__struct_fields__
    return PAST_FIELDS.get((tag, version))

"""Events by field name: the catalogue's named view, for people and for older records.

The log stores an event positionally (its tag, then its fields in declaration order; see
``catalogue``), which keeps a step's records small. Some readers need events by name: the
JSONL export and ``foldloop show`` (JSON people read), upcasters (functions over the
stored map), and records written before store format 4 (maps keyed by field name). Each
event class gets a named twin here, generated from the class itself (same fields, types,
defaults and tag), so msgspec validates and encodes both views and nothing is spelled
twice.
"""

from __future__ import annotations

from typing import Any

import msgspec

from foldloop.events.catalogue import Event, KnownEvent
from foldloop.events.values import Usage

__all__ = [
    "NAMED_UNION",
    "PAST_FIELDS",
    "field_names",
    "from_named",
    "named_from_map",
    "to_named",
]

PAST_FIELDS: dict[tuple[str, int], tuple[str, ...]] = {}
"""Field order of event shapes this version no longer writes, by (tag, schema_version).

A positional record is turned back into names with the field order its writer used: the
current class's for its current ``schema_version``, this table's for older versions. An
event that changes shape (a field renamed, removed or moved) gets a new schema_version,
its old order is added here, and an upcaster carries the old map forward."""


def _twin(cls: type[msgspec.Struct], values: dict[type, type]) -> type[msgspec.Struct]:
    """A map-encoded struct with ``cls``'s fields, defaults and tag; fields holding a
    positional value type (``values``' keys) hold its named twin instead."""
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    for f in msgspec.structs.fields(cls):
        kind = values.get(f.type, f.type)
        default = f.default
        if type(default) in values:
            twin_default = _SHARED.setdefault(default, values[type(default)](**_fields(default)))
            _SHARED.setdefault(twin_default, default)
            default = twin_default
        if f.required:
            fields.append((f.name, kind))
        elif f.default_factory is not msgspec.NODEFAULT:
            fields.append((f.name, kind, msgspec.field(default_factory=f.default_factory)))
        else:
            fields.append((f.name, kind, default))
    tag = cls.__struct_config__.tag
    return msgspec.defstruct(
        cls.__name__,
        fields,
        module=__name__,
        tag=tag if isinstance(tag, str) else None,
        tag_field="type" if isinstance(tag, str) else None,
        kw_only=True,
        omit_defaults=True,
        frozen=True,
        gc=False,
    )


_SHARED: dict[Any, Any] = {}
"""One object per default value and its twin, so that a field at its default is omitted
(msgspec omits a default it is handed, not an equal copy of it)."""


def _fields(value: Any) -> dict[str, Any]:
    return msgspec.structs.asdict(value)


_VALUES: dict[type, type] = {Usage: _twin(Usage, {})}
"""The positional value types events hold, and their named twins. A twin replaces a field
typed exactly as the value type (``usage: Usage``); a field that may also hold something
else (``Usage | None``) would need its union rewritten here too."""
_VALUES_BACK: dict[type, type] = {twin: cls for cls, twin in _VALUES.items()}


def _convert(data: dict[str, Any], types: dict[type, type]) -> dict[str, Any]:
    """``data``'s values of a type in ``types`` turned into its counterpart."""
    for name, value in data.items():
        other = types.get(type(value))
        if other is not None:
            data[name] = _SHARED.get(value) or other(**_fields(value))
    return data


_CLASSES: tuple[type[Event], ...] = KnownEvent.__args__
_TWINS: dict[type[Event], type[msgspec.Struct]] = {cls: _twin(cls, _VALUES) for cls in _CLASSES}
_REAL: dict[type[msgspec.Struct], type[Event]] = {twin: cls for cls, twin in _TWINS.items()}
_CURRENT: dict[str, type[Event]] = {str(cls.__struct_config__.tag): cls for cls in _CLASSES}
NAMED_UNION: Any = _TWINS[_CLASSES[0]]
for _twin_cls in list(_TWINS.values())[1:]:
    NAMED_UNION = NAMED_UNION | _twin_cls
"""The union of the named twins: a decoder type for events written by name."""


def to_named(event: KnownEvent) -> msgspec.Struct:
    """``event``'s named twin: encodes as ``{"type": tag, field: value, ...}``."""
    return _TWINS[type(event)](**_convert(msgspec.structs.asdict(event), _VALUES))


def from_named(named: msgspec.Struct) -> KnownEvent:
    """The event a named twin stands for."""
    fields = _convert(msgspec.structs.asdict(named), _VALUES_BACK)
    event: KnownEvent = _REAL[type(named)](**fields)  # type: ignore[assignment]
    return event


def named_from_map(data: dict[str, Any]) -> KnownEvent:
    """The event a map of field names holds (an upcaster's output); raises
    msgspec.ValidationError when it does not validate."""
    return from_named(msgspec.convert(data, NAMED_UNION))


def field_names(tag: str, version: int) -> tuple[str, ...] | None:
    """The field order records of ``tag`` at schema ``version`` were written with (None
    when this version of foldloop does not know it)."""
    cls = _CURRENT.get(tag)
    if cls is not None and cls.schema_version == version:
        return cls.__struct_fields__
    return PAST_FIELDS.get((tag, version))

"""Argument schemas from type hints and docstrings, with msgspec doing the real work.

A tool's parameters become a msgspec Struct (``forbid_unknown_fields``), so validating
the model's argument text is one ``msgspec.json.decode`` with msgspec's precise messages
(``Expected `int`, got `str` - at `$.a```), and the JSON schema shown to the model comes
from ``msgspec.json.schema_components`` of the same Struct. A hint msgspec cannot handle
is refused when the tool is decorated, not when the model first calls it.
"""

from __future__ import annotations

import inspect
import re
import typing
from collections.abc import Callable
from typing import Annotated, Any

import msgspec

from foldloop.errors import ToolSchemaError

__all__ = ["ArgSchema", "build_arg_schema", "parse_docstring"]

_ARGS_HEADER = re.compile(r"^\s*(Args|Arguments|Parameters)\s*:\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")
_SECTION = re.compile(r"^\s*(Returns|Raises|Yields|Examples?|Notes?)\s*:\s*$")


def parse_docstring(doc: str | None) -> tuple[str, dict[str, str]]:
    """Split a Google-style docstring into (description, {param: description})."""
    if not doc:
        return "", {}
    lines = inspect.cleandoc(doc).splitlines()
    description: list[str] = []
    params: dict[str, str] = {}
    i = 0
    while i < len(lines) and not _ARGS_HEADER.match(lines[i]) and not _SECTION.match(lines[i]):
        description.append(lines[i])
        i += 1
    current: str | None = None
    in_args = False
    for line in lines[i:]:
        if _ARGS_HEADER.match(line):
            in_args = True
            continue
        if _SECTION.match(line):
            in_args = False
            continue
        if not in_args:
            continue
        m = _ARG_LINE.match(line)
        if m and (len(line) - len(line.lstrip())) <= 4:
            current = m.group(1).lstrip("*")
            params[current] = m.group(3).strip()
        elif current and line.strip():
            params[current] = (params[current] + " " + line.strip()).strip()
    return "\n".join(description).strip(), params


class ArgSchema(msgspec.Struct, frozen=True):
    """A tool's argument type and the JSON schema the model sees."""

    struct: type[msgspec.Struct]
    parameters: dict[str, Any]
    names: tuple[str, ...]


def build_arg_schema(
    fn: Callable[..., Any], tool_name: str, param_docs: dict[str, str]
) -> ArgSchema:
    """Derive the argument Struct and JSON schema from ``fn``'s signature."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception as exc:
        raise ToolSchemaError(
            f"tool {tool_name!r}: cannot resolve its type hints ({exc}); make every hint "
            "importable where the function is defined"
        ) from None
    fields: list[tuple[str, Any] | tuple[str, Any, Any]] = []
    names: list[str] = []
    for param in inspect.signature(fn).parameters.values():
        if param.kind in (param.VAR_POSITIONAL, param.VAR_KEYWORD):
            raise ToolSchemaError(
                f"tool {tool_name!r}: *{param.name} / **{param.name} cannot be described to a "
                "model; list each argument with a type hint"
            )
        if param.kind is param.POSITIONAL_ONLY:
            raise ToolSchemaError(
                f"tool {tool_name!r}: positional-only argument {param.name!r} cannot be passed "
                "by name; drop the '/' from the signature"
            )
        if param.name not in hints:
            raise ToolSchemaError(
                f"tool {tool_name!r}: argument {param.name!r} has no type hint; annotate it "
                f"(e.g. `{param.name}: str`) so the model knows what to send"
            )
        hint = hints[param.name]
        doc = param_docs.get(param.name)
        if doc:
            hint = Annotated[hint, msgspec.Meta(description=doc)]
        names.append(param.name)
        if param.default is inspect.Parameter.empty:
            fields.append((param.name, hint))
        else:
            fields.append((param.name, hint, param.default))
    struct_name = re.sub(r"\W", "_", tool_name) + "_args"
    try:
        struct = msgspec.defstruct(struct_name, fields, kw_only=True, forbid_unknown_fields=True)
        msgspec.json.Decoder(struct)
        (ref,), components = msgspec.json.schema_components([struct])
    except (TypeError, ValueError) as exc:
        raise ToolSchemaError(
            f"tool {tool_name!r}: {exc}; use JSON-friendly hints (str, int, float, bool, "
            "list, dict, Literal, msgspec Structs, dataclasses, TypedDicts)"
        ) from None
    top_name = ref["$ref"].rsplit("/", 1)[-1]
    parameters = dict(components.pop(top_name))
    parameters.pop("title", None)
    if components:
        parameters["$defs"] = components
    return ArgSchema(struct=struct, parameters=parameters, names=tuple(names))

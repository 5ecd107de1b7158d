"""Hypothesis strategies for events, recorded logs and runs of commands."""

from __future__ import annotations

from hypothesis import strategies as st

from foldloop.events import (
    KnownEvent,
    Limits,
    ToolCall,
    ToolInfo,
    Usage,
)

# Text that msgpack can carry: no lone surrogates.
text = st.text(st.characters(exclude_categories=("Cs",)), max_size=40)
small = st.integers(min_value=0, max_value=10_000)

st.register_type_strategy(str, text)
# msgpack carries 64-bit integers; NaN never equals itself, so it cannot round-trip by ==.
st.register_type_strategy(int, st.integers(-(2**63), 2**63 - 1))
# JSON (exports, the CLI) has neither NaN nor infinity
st.register_type_strategy(float, st.floats(allow_nan=False, allow_infinity=False))
limits = st.builds(  # the values fl.Limits accepts (tests/test_limits.py holds the rules)
    Limits,
    max_steps=st.none() | st.integers(1, 100),
    max_tokens=st.none() | st.integers(1, 10_000),
    max_seconds=st.none() | st.floats(0, 1e6, exclude_min=True),
    max_cost_usd=st.none() | st.floats(0, 1e3, exclude_min=True),
    no_progress=st.none() | st.integers(2, 10),
    max_children=st.none() | st.integers(1, 10),
    max_depth=st.none() | st.integers(0, 5),
)
usage = st.builds(
    Usage,
    input_tokens=small,
    output_tokens=small,
    cost_usd=st.floats(0, 100, allow_nan=False),
)
tool_call = st.builds(ToolCall, id=text, name=text, args=text)
tool_info = st.builds(
    ToolInfo,
    name=text,
    idempotent=st.booleans(),
    schema_digest=text,
    agent_limits=st.none() | limits,
)
st.register_type_strategy(Limits, limits)
st.register_type_strategy(Usage, usage)
st.register_type_strategy(ToolCall, tool_call)
st.register_type_strategy(ToolInfo, tool_info)

EVENT_TYPES: tuple[type, ...] = KnownEvent.__args__
any_event = st.one_of([st.from_type(cls) for cls in EVENT_TYPES])

__all__ = ["EVENT_TYPES", "KnownEvent", "any_event", "limits", "text", "usage"]

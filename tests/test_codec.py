"""The codec: every event round-trips; unknown tags are kept; old shapes are upcast."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldloop as fl
from foldloop.events import (
    KNOWN_TAGS,
    DecodeFailure,
    ModelRequested,
    ModelResponded,
    RunCompleted,
    RunStarted,
    ToolCompleted,
    ToolRequested,
    UnknownEvent,
    Usage,
    decode_event,
    encode_event,
    register_upcaster,
)
from foldloop.events import _codec as codec_module
from foldloop.events import _named as named_module
from foldloop.events._jsonl import dump_run, load_run
from foldloop.events._named import from_named, to_named
from foldloop.events._recorded import Recorded
from tests.strategies import EVENT_TYPES, any_event


@pytest.mark.parametrize("cls", EVENT_TYPES, ids=lambda c: c.__struct_config__.tag)
@given(data=st.data())
def test_every_event_type_round_trips(cls: type, data: st.DataObject) -> None:
    event = data.draw(st.from_type(cls))
    assert decode_event(encode_event(event)) == event
    assert hash(event) == hash(decode_event(encode_event(event)))


@given(any_event)
def test_decoded_event_keeps_its_tag(event: Any) -> None:
    decoded = decode_event(encode_event(event))
    assert decoded.type == event.type
    assert decoded.type in KNOWN_TAGS


def test_catalogue_tags_are_unique_and_dotted() -> None:
    tags = [cls.__struct_config__.tag for cls in EVENT_TYPES]
    assert len(tags) == len(set(tags)) == 20
    assert all("." in tag for tag in tags)


def test_known_tag_with_a_broken_payload_is_a_decode_failure() -> None:
    raw = msgspec.msgpack.encode(["run.completed", 5])
    with pytest.raises(DecodeFailure, match=r"run.completed: field `output`: Expected `str`"):
        decode_event(raw)


def test_garbage_is_a_decode_failure() -> None:
    with pytest.raises(DecodeFailure):
        decode_event(b"\xc1\xc1")


def test_upcaster_renames_an_old_event_and_reshapes_it() -> None:
    old = msgspec.msgpack.encode(["tool.called", "c1", "add", "{}"])
    try:
        named_module.PAST_FIELDS[("tool.called", 1)] = ("id", "name", "a")
        register_upcaster(
            "tool.called",
            1,
            lambda d: {
                "type": "tool.requested",
                "call_id": d["id"],
                "tool": d["name"],
                "args": d["a"],
                "step": 1,
            },
        )
        assert decode_event(old) == ToolRequested(call_id="c1", tool="add", args="{}", step=1)
        # Records that need no upcasting still take the fast path unchanged.
        fresh = ModelRequested(step=2, prompt_digest="d")
        assert decode_event(encode_event(fresh)) == fresh
    finally:
        codec_module._UPCASTERS.clear()
        named_module.PAST_FIELDS.clear()


def test_upcaster_applies_by_stored_schema_version() -> None:
    stored_v0 = msgspec.msgpack.encode(["run.completed", "old name"])
    try:
        named_module.PAST_FIELDS[("run.completed", 0)] = ("result",)
        register_upcaster(
            "run.completed", 0, lambda d: {"type": "run.completed", "output": d["result"]}
        )
        assert decode_event(stored_v0, version=0) == RunCompleted(output="old name")
        # A record written at version 1 is not upcast again.
        assert decode_event(encode_event(RunCompleted(output="x")), version=1) == RunCompleted(
            output="x"
        )
    finally:
        codec_module._UPCASTERS.clear()
        named_module.PAST_FIELDS.clear()


# Today's field order of every event. Records store fields by position, so this order is
# what every log written since store format 4 means. A new field goes at the END of its
# class with a default (append it here too); moving, renaming or removing one needs a new
# schema_version, the old order in named.PAST_FIELDS and an upcaster (catalogue.py).
FIELD_ORDER = {
    "run.started": (
        "agent",
        "input",
        "limits",
        "tools_digest",
        "parent_run_id",
        "metadata",
        "instructions",
        "tools",
        "parent_call_id",
        "depth",
        "price",
        "tools_bytes",
        "reserves_calls",
    ),
    "model.requested": ("step", "prompt_digest", "max_tokens"),
    "model.responded": (
        "step",
        "text",
        "tool_calls",
        "usage",
        "model",
        "latency_ms",
        "stop_reason",
    ),
    "model.failed": ("step", "error", "retryable", "out_of_time"),
    "tool.requested": ("call_id", "tool", "args", "step"),
    "tool.completed": ("call_id", "result", "duration_ms", "original_chars"),
    "tool.failed": ("call_id", "error", "kind", "original_chars"),
    "approval.requested": ("call_id", "gate", "token_digest", "expires_at", "summary"),
    "approval.decided": ("call_id", "approved", "by", "note"),
    "approval.expired": ("call_id",),
    "run.limit_reached": ("limit", "value", "ceiling", "needed"),
    "run.no_progress": ("window", "detail"),
    "run.completed": ("output",),
    "run.failed": ("error", "kind"),
    "run.cancelled": ("reason",),
    "run.resumed": ("owner", "extended_limits"),
    "run.queued": (),
    "run.admitted": ("owner",),
    "child.spawned": ("call_id", "run_id", "agent", "limits"),
    "child.ended": ("call_id", "run_id", "status", "steps", "usage", "reason"),
}


FIELD_ORDER["Usage"] = ("input_tokens", "output_tokens", "cost_usd")  # stored positionally too


@pytest.mark.parametrize("cls", [*EVENT_TYPES, Usage], ids=lambda c: c.__struct_config__.tag)
def test_stored_field_order_only_grows_at_the_end(cls: type) -> None:
    pinned = FIELD_ORDER[cls.__struct_config__.tag or cls.__name__]
    fields = cls.__struct_fields__
    assert fields[: len(pinned)] == pinned, (
        f"{cls.__name__}'s fields moved: stored records hold {pinned} by position; add new "
        "fields at the end, or give the event a new schema_version (see catalogue.py)"
    )
    assert fields == pinned, f"{cls.__name__} grew {fields[len(pinned) :]}: append them above"


def test_a_payload_by_field_name_is_not_an_event() -> None:
    """One format: the log holds events positionally only (maps were store formats 1-3)."""
    by_name = msgspec.msgpack.encode(to_named(ToolCompleted(call_id="c1", result="4")))
    with pytest.raises(DecodeFailure, match="not an event"):
        decode_event(by_name)


@given(any_event)
def test_the_named_view_round_trips(event: Any) -> None:
    named = to_named(event)
    assert named["type"] == event.type
    assert from_named(msgspec.json.decode(msgspec.json.encode(named))) == event
    assert from_named(msgspec.msgpack.decode(msgspec.msgpack.encode(named))) == event


def test_the_named_view_names_nested_positional_values_and_omits_defaults() -> None:
    event = ModelResponded(step=2, text="hi", usage=Usage(input_tokens=3))
    assert to_named(event) == {
        "type": "model.responded",
        "step": 2,
        "text": "hi",
        "usage": {"input_tokens": 3},
    }
    assert from_named({"type": "model.responded", "step": 2}) == ModelResponded(step=2)


@pytest.mark.parametrize(
    ("data", "why"),
    [
        ({"type": "model.responded", "step": "x"}, "field `step`: Expected `int`, got `str`"),
        ({"type": "model.responded"}, "missing required field `step`"),
        (
            {"type": "model.responded", "step": 1, "usage": {"input_tokens": "z"}},
            "field `usage.input_tokens`: Expected `int`",
        ),
        ({"type": "tool.nope"}, "no event type 'tool.nope'"),
    ],
)
def test_a_bad_named_event_is_refused_naming_the_field(data: dict[str, Any], why: str) -> None:
    with pytest.raises(msgspec.ValidationError, match=why.replace("(", r"\(")):
        from_named(data)


def test_an_export_names_every_field_and_imports_back() -> None:
    events = [
        RunStarted(agent="a", input="go"),  # an export is of a whole run
        ModelRequested(step=1, prompt_digest="d"),
        ToolCompleted(call_id="c1", result="4", duration_ms=0.5),
    ]
    records = [
        Recorded(run_id="r", seq=i, position=i, at=7, event=e) for i, e in enumerate(events, 1)
    ]
    lines = list(dump_run("r", records))
    assert msgspec.json.decode(lines[3])["event"] == {
        "type": "tool.completed",
        "call_id": "c1",
        "result": "4",
        "duration_ms": 0.5,
    }
    _header, loaded = load_run(lines)
    assert [e.event for e in loaded] == events


def test_unknown_positional_tag_decodes_to_unknown_event_and_keeps_bytes() -> None:
    raw = msgspec.msgpack.encode(["tool.stream_chunk", "c1", "x"])
    event = decode_event(raw)
    assert isinstance(event, UnknownEvent)
    assert (event.type, event.raw) == ("tool.stream_chunk", raw)


def test_trailing_fields_of_newer_positional_writers_are_ignored() -> None:
    assert decode_event(msgspec.msgpack.encode(["run.completed", "ok", 0.9])) == RunCompleted(
        output="ok"
    )


def test_upcasters_see_positional_records_by_their_writers_field_names() -> None:
    # A made-up version 0 of tool.completed that stored (id, result) by position.
    stored_v0 = msgspec.msgpack.encode(["tool.completed", "c1", "4"])
    register_upcaster("tool.completed", 0, lambda d: d)
    try:
        with pytest.raises(DecodeFailure, match=r"tool.completed \(schema v0\).*PAST_FIELDS"):
            decode_event(stored_v0, version=0)
    finally:
        codec_module._UPCASTERS.clear()
    seen: list[dict[str, Any]] = []

    def upcast(d: dict[str, Any]) -> dict[str, Any]:
        seen.append(dict(d))
        return {"type": "tool.completed", "call_id": d["id"], "result": d["result"]}

    try:
        named_module.PAST_FIELDS[("tool.completed", 0)] = ("id", "result")
        register_upcaster("tool.completed", 0, upcast)
        assert decode_event(stored_v0, version=0) == ToolCompleted(call_id="c1", result="4")
        assert seen == [{"type": "tool.completed", "id": "c1", "result": "4"}]
        # Today's records (version 1) are read positionally with today's order.
        fresh = ToolCompleted(call_id="c2", result="5")
        assert decode_event(encode_event(fresh), version=1) == fresh
    finally:
        codec_module._UPCASTERS.clear()
        named_module.PAST_FIELDS.clear()


def test_an_export_that_does_not_begin_with_run_started_is_refused() -> None:
    # It imported as a run of agent '' that nothing could resume or verify (a probe).
    first = ModelRequested(step=1, prompt_digest="d")
    records = [Recorded(run_id="r", seq=1, position=1, at=7, event=first)]
    with pytest.raises(fl.ConfigError, match=r"does not begin with run\.started: not a whole run"):
        load_run(list(dump_run("r", records)))

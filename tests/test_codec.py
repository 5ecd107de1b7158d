"""The codec: every event round-trips; unknown tags are kept; old shapes are upcast."""

from __future__ import annotations

from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

from foldloop.events import (
    KNOWN_TAGS,
    DecodeFailure,
    ModelRequested,
    RunCompleted,
    ToolRequested,
    UnknownEvent,
    decode_event,
    encode_event,
    register_upcaster,
)
from foldloop.events import codec as codec_module
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
    assert len(tags) == len(set(tags)) == 16
    assert all("." in tag for tag in tags)


def test_unknown_tag_decodes_to_unknown_event_and_keeps_bytes() -> None:
    raw = msgspec.msgpack.encode({"type": "tool.stream_chunk", "call_id": "c1", "chunk": "x"})
    event = decode_event(raw)
    assert isinstance(event, UnknownEvent)
    assert event.type == "tool.stream_chunk"
    assert event.raw == raw


def test_known_tag_with_a_broken_payload_is_a_decode_failure() -> None:
    raw = msgspec.msgpack.encode({"type": "run.completed", "output": 5})
    with pytest.raises(DecodeFailure, match=r"run.completed.*\$\.output"):
        decode_event(raw)


def test_garbage_is_a_decode_failure() -> None:
    with pytest.raises(DecodeFailure):
        decode_event(b"\xc1\xc1")


def test_new_fields_of_newer_writers_are_ignored() -> None:
    raw = msgspec.msgpack.encode({"type": "run.completed", "output": "ok", "confidence": 0.9})
    assert decode_event(raw) == RunCompleted(output="ok")


def test_upcaster_renames_an_old_event_and_reshapes_it() -> None:
    old = msgspec.msgpack.encode({"type": "tool.called", "id": "c1", "name": "add", "a": "{}"})
    try:
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


def test_upcaster_applies_by_stored_schema_version() -> None:
    stored_v1 = msgspec.msgpack.encode({"type": "run.completed", "result": "old name"})
    try:
        register_upcaster(
            "run.completed", 1, lambda d: {"type": "run.completed", "output": d["result"]}
        )
        assert decode_event(stored_v1, version=1) == RunCompleted(output="old name")
        # A record written at version 2 is not upcast again.
        assert decode_event(encode_event(RunCompleted(output="x")), version=2) == RunCompleted(
            output="x"
        )
    finally:
        codec_module._UPCASTERS.clear()

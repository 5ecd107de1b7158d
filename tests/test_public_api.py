"""The public surface: ``foldloop.__all__`` pinned, moved names that say where they went,
``foldloop.types``, and ToolCall as one value from the host's reply to the log and back."""

from __future__ import annotations

import importlib
import inspect
import json
import pickle
from collections.abc import Sequence

import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldloop as fl
import foldloop.events
import foldloop.types
from foldloop.core._messages import Message, history_digest
from foldloop.events._catalogue import ModelResponded
from foldloop.events._codec import decode_event, encode_event
from tests.test_openai_chat import FakeOpenAI, add, completion

# Changing this list is an API change: note it in README.md ("Types you will meet", "Errors")
# and keep it at 30 names or fewer (a later issue adds RunTree).
PUBLIC = [
    "Agent",
    "AnthropicChat",
    "ApprovalError",
    "ConcurrencyError",
    "ConfigError",
    "FoldloopError",
    "LLM",
    "Limits",
    "McpServer",
    "Message",
    "NondeterminismError",
    "OpenAIChat",
    "Pricing",
    "Reply",
    "RequireApproval",
    "RunLocked",
    "RunNotFound",
    "RunStatus",
    "RunTree",
    "Runtime",
    "SchemaChangedError",
    "ScriptedLLM",
    "StoreError",
    "ToolCall",
    "ToolSchemaError",
    "WorkerPool",
    "projections",
    "run_command",
    "tool",
]

MOVED = {
    "CommandResult": "foldloop.types",
    "PendingApproval": "foldloop.types",
    "ProjectionHandle": "foldloop.types",
    "Recorded": "foldloop.types",
    "RunHandle": "foldloop.types",
    "RunResult": "foldloop.types",
    "RunState": "foldloop.types",
    "RunSummary": "foldloop.types",
    "Tool": "foldloop.types",
    "ToolSpec": "foldloop.types",
    "Usage": "foldloop.types",
    "CorruptRecord": "foldloop.errors",
    "ModelCallError": "foldloop.errors",
    "ProjectionError": "foldloop.errors",
    "WorkerError": "foldloop.errors",
    "Projection": "foldloop.projections",
}
"""Every name foldloop exported before the surface was cut, and where it lives now."""


def test_all_is_pinned_and_small() -> None:
    assert sorted(fl.__all__) == PUBLIC
    assert len(fl.__all__) == len(set(fl.__all__)) <= 30


def test_every_public_name_resolves() -> None:
    for name in fl.__all__:
        assert getattr(fl, name) is not None, name
    namespace: dict[str, object] = {}
    exec("from foldloop import *", namespace)
    assert sorted(k for k in namespace if k != "__builtins__") == PUBLIC


def test_dir_shows_the_public_names_and_namespaces_only() -> None:
    assert dir(fl) == sorted([*PUBLIC, "errors", "events", "types", "__version__"])


def test_types_module_resolves_and_lists_only_its_names() -> None:
    assert foldloop.types.__all__
    for name in foldloop.types.__all__:
        assert inspect.isclass(getattr(foldloop.types, name)), name
    assert dir(foldloop.types) == list(foldloop.types.__all__)
    assert fl.types is foldloop.types and fl.events is foldloop.events


def test_a_moved_name_says_where_it_lives_now() -> None:
    with pytest.raises(AttributeError, match=r"foldloop\.RunResult .*foldloop\.types") as info:
        fl.RunResult  # type: ignore[attr-defined]  # noqa: B018 - the access is the test
    assert "from foldloop.types import RunResult" in str(info.value)
    assert info.value.name == "RunResult"
    assert not hasattr(fl, "RunResult")


@pytest.mark.parametrize(("name", "home"), sorted(MOVED.items()))
def test_every_moved_name_points_to_a_module_that_holds_it(name: str, home: str) -> None:
    with pytest.raises(AttributeError, match=f"lives in {home} "):
        getattr(fl, name)
    assert getattr(importlib.import_module(home), name) is not None


def test_an_unknown_name_is_a_plain_attribute_error() -> None:
    with pytest.raises(AttributeError, match=r"^module 'foldloop' has no attribute 'Nope'$"):
        fl.Nope  # type: ignore[attr-defined]  # noqa: B018


# ToolCall: one concept, one name.

RESPONDED_BEFORE = bytes.fromhex(
    "97af6d6f64656c2e726573706f6e64656402ab7468696e6b696e6720c3a99383a26964a663616c6c5f31a46e"
    "616d65a3616464a461726773ad7b2261223a322c2262223a337d83a26964a0a46e616d65a3616464a46172"
    "6773a77b2261223a203183a26964a0a46e616d65a46e6f6f70a461726773a27b7d930a02cb3fd000000000"
    "0000a87363726970746564cb3ff8000000000000"
)
"""``model.responded`` as foldloop wrote it with two tool-call classes (ToolCall for the host,
ModelToolCall for the log), computed from that code: the one class must write the same bytes
(since, with ``stop_reason`` after them: an array of 8, not 7, ending in an empty string)."""

DIGEST_BEFORE = "31f1796d67d9338a7501f60bd7c5110d"
"""The history digest of the same calls then: prompt digests of logged runs must not move."""


def reply_calls() -> tuple[fl.ToolCall, ...]:
    reply = fl.Reply(
        tool_calls=[
            fl.ToolCall("add", {"b": 3, "a": 2}, id="call_1"),
            fl.ToolCall("add", '{"a": 1'),  # a provider's malformed text, kept verbatim
            fl.ToolCall("noop"),
        ]
    )
    return tuple(reply.tool_calls)  # what the run actor records


def test_a_recorded_reply_encodes_byte_identically_to_before() -> None:
    event = ModelResponded(
        step=2,
        text="thinking é",
        tool_calls=reply_calls(),
        usage=fl.types.Usage(input_tokens=10, output_tokens=2, cost_usd=0.25),
        model="scripted",
        latency_ms=1.5,
    )
    assert encode_event(event) == b"\x98" + RESPONDED_BEFORE[1:] + b"\xa0"
    assert decode_event(RESPONDED_BEFORE) == event  # a reply logged before stop_reason
    messages = [
        Message(role="user", content="2+3?"),
        Message(role="assistant", tool_calls=reply_calls()),
    ]
    assert history_digest(messages) == DIGEST_BEFORE


def test_tool_call_is_written_name_first_and_keeps_args_as_text() -> None:
    call = fl.ToolCall("add", {"b": 3, "a": 2})
    assert (call.name, call.args, call.id) == ("add", '{"a":2,"b":3}', "")
    assert fl.ToolCall("add", '{"a": 1').args == '{"a": 1'
    assert fl.ToolCall("noop").args == "{}"
    assert fl.ToolCall("add", {}, "c9").id == "c9"
    assert call == fl.ToolCall(name="add", args='{"a":2,"b":3}')
    assert hash(call) == hash(fl.ToolCall("add", '{"a":2,"b":3}'))
    assert repr(call) == """ToolCall(name='add', args='{"a":2,"b":3}', id='')"""
    assert list(inspect.signature(fl.ToolCall).parameters) == ["name", "args", "id"]
    assert pickle.loads(pickle.dumps(call)) == call
    assert not hasattr(foldloop.events, "ModelToolCall")


@pytest.mark.parametrize(
    ("make", "match"),
    [
        (lambda: fl.ToolCall("add", ["a", 1]), "args must be a mapping"),  # type: ignore[arg-type]
        (lambda: fl.ToolCall("add", {"a": object()}), "must be JSON values"),
        (lambda: fl.ToolCall(3), "name and id must be str"),  # type: ignore[arg-type]
        (lambda: fl.ToolCall("add", {}, id=None), "name and id must be str"),  # type: ignore[arg-type]
    ],
)
def test_a_bad_tool_call_fails_where_it_is_written(make: object, match: str) -> None:
    with pytest.raises(fl.ConfigError, match=match):
        make()  # type: ignore[operator]


@given(st.dictionaries(st.text(), st.integers() | st.text() | st.booleans()))
def test_mapping_args_become_canonical_json_of_the_same_values(
    args: dict[str, int | str | bool],
) -> None:
    call = fl.ToolCall("f", args)
    assert json.loads(call.args) == args
    assert call == fl.ToolCall("f", json.loads(call.args))


def test_the_call_a_model_made_comes_back_to_it_as_the_same_value(rt: fl.Runtime) -> None:
    seen: list[Message] = []

    def model(messages: Sequence[Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        if len(messages) == 1:
            return fl.Reply(tool_calls=[fl.ToolCall("add", {"b": 3, "a": 2})])
        seen.extend(messages)
        return fl.Reply(text="5")

    agent = fl.Agent(name="calc", llm=fl.ScriptedLLM(model), tools=[add])
    run = rt.spawn(agent, "2+3?")
    assert run.wait(timeout=30).output == "5"
    asked = seen[1].tool_calls
    assert asked == (fl.ToolCall("add", '{"a":2,"b":3}', id="call_1_1"),)
    assert all(type(c) is fl.ToolCall for c in asked)
    responded = next(r.event for r in rt.events(run.id) if r.type == "model.responded")
    assert isinstance(responded, ModelResponded) and responded.tool_calls == asked


def test_a_provider_call_without_an_id_gets_one_from_the_run(rt: fl.Runtime) -> None:
    """An OpenAI-compatible server that sends ``"id": null`` (ToolCall refuses a non-str id)."""
    server = FakeOpenAI()
    try:
        server.responses = [
            completion(calls=[(None, "add", '{"a": 2, "b": 3}')]),  # type: ignore[list-item]
            completion(text="5"),
        ]
        llm = fl.OpenAIChat("gpt-4o-mini", base_url=server.url, timeout=10)
        agent = fl.Agent(name="oa", llm=llm, tools=[add])
        run = rt.spawn(agent, "2+3?")
        assert run.wait(timeout=30).output == "5"
    finally:
        server.close()
    responded = next(r.event for r in rt.events(run.id) if r.type == "model.responded")
    assert isinstance(responded, ModelResponded)
    assert responded.tool_calls == (fl.ToolCall("add", '{"a": 2, "b": 3}', id="call_1_1"),)


def test_a_message_is_built_as_design_writes_it_role_and_content_first() -> None:
    # DESIGN: "messages are fl.Message(role, content, ...)"; a ScriptedLLM function's test
    # builds them so
    said = fl.Message("user", "What is 2+3?")
    assert (said.role, said.content) == ("user", "What is 2+3?")
    assert said == fl.Message(role="user", content="What is 2+3?")
    answer = fl.Message("tool", "5", tool_call_id="c1", name="add")
    assert (answer.tool_call_id, answer.name) == ("c1", "add")

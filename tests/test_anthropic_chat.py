"""AnthropicChat against a real HTTP server on 127.0.0.1 that speaks the messages API."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

import foldloop as fl
from tests.test_openai_chat import FakeOpenAI as FakeServer
from tests.test_openai_chat import add, error


def message(
    *,
    text: str = "",
    uses: list[tuple[str, str, dict[str, Any]]] = (),
    tokens: tuple[int, int] = (40, 8),
) -> tuple[int, dict[str, Any]]:
    content: list[dict[str, Any]] = [{"type": "text", "text": text}] if text else []
    content += [{"type": "tool_use", "id": i, "name": n, "input": a} for i, n, a in uses]
    return 200, {
        "id": "msg_1",
        "type": "message",
        "role": "assistant",
        "model": "claude-haiku-4-5",
        "content": content,
        "stop_reason": "tool_use" if uses else "end_turn",
        "stop_sequence": None,
        "usage": {"input_tokens": tokens[0], "output_tokens": tokens[1]},
    }


@pytest.fixture
def server() -> Iterator[FakeServer]:
    fake = FakeServer()
    fake.url = fake.url.removesuffix("/v1")  # the SDK appends /v1/messages itself
    yield fake
    fake.close()


def agent(server: FakeServer, name: str) -> fl.Agent:
    llm = fl.AnthropicChat("claude-haiku-4-5", base_url=server.url, timeout=10)
    return fl.Agent(name=name, llm=llm, tools=[add], instructions="Use add.")


def test_tool_use_blocks_results_and_usage(rt: fl.Runtime, server: FakeServer) -> None:
    server.responses = [
        message(
            text="adding",
            uses=[("toolu_a", "add", {"a": 2, "b": 3}), ("toolu_b", "add", {"a": 1, "b": 1})],
        ),
        message(text="5 and 2", tokens=(60, 4)),
    ]
    result = rt.spawn(agent(server, "an"), "add things").wait(timeout=30)
    assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "5 and 2")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (100, 12)
    assert result.usage.cost_usd == pytest.approx((100 * 1.00 + 12 * 5.00) / 1e6)
    first, second = server.requests
    assert first["system"] == "Use add."
    assert first["tools"][0]["input_schema"]["required"] == ["a", "b"]
    assert first["max_tokens"] == 4096
    assert [t["role"] for t in second["messages"]] == ["user", "assistant", "user"]
    results = second["messages"][2]["content"]  # both results in one user turn, in order
    assert [(b["type"], b["tool_use_id"], b["content"]) for b in results] == [
        ("tool_result", "toolu_a", "5"),
        ("tool_result", "toolu_b", "2"),
    ]
    uses = [b for b in second["messages"][1]["content"] if b["type"] == "tool_use"]
    assert [b["input"] for b in uses] == [{"a": 2, "b": 3}, {"a": 1, "b": 1}]


def test_rate_limits_and_overloads_are_retried_bad_requests_are_not(
    rt: fl.Runtime, server: FakeServer
) -> None:
    server.responses = [error(429, "rate limited"), error(529, "overloaded"), message(text="ok")]
    run = rt.spawn(agent(server, "retry"), "go")
    assert run.wait(timeout=30).output == "ok"
    assert [r.event.retryable for r in rt.events(run.id) if r.type == "model.failed"] == [
        True,
        True,
    ]

    server.responses = [error(400, "messages: roles must alternate")]
    failed = rt.spawn(agent(server, "refused"), "go").wait(timeout=30)
    assert failed.status is fl.RunStatus.FAILED
    assert "HTTP 400" in failed.reason
    assert "roles must alternate" in failed.reason


@pytest.mark.parametrize(
    ("status", "headers", "retried"),
    [(408, {}, True), (409, {}, True), (529, {"x-should-retry": "false"}, False)],
)
def test_what_the_sdks_own_retries_would_ask_again_is_retried(
    rt: fl.Runtime, server: FakeServer, status: int, headers: dict[str, str], retried: bool
) -> None:
    server.responses = [(*error(status, "later"), headers), message(text="ok")]
    result = rt.spawn(agent(server, f"s{status}"), "go").wait(timeout=30)
    (failed,) = [r.event for r in rt.events(result.run_id) if r.type == "model.failed"]
    assert failed.retryable is retried
    assert (result.output == "ok") is retried


def test_a_missing_key_for_the_real_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("ANTHROPIC_API_KEY", raising=False)
    with pytest.raises(fl.ConfigError, match="needs an API key"):
        fl.AnthropicChat("claude-haiku-4-5")


def test_invalid_tool_input_is_fed_back_as_a_tool_result(
    rt: fl.Runtime, server: FakeServer
) -> None:
    server.responses = [
        message(uses=[("toolu_x", "add", {"a": "two", "b": 3})]),
        message(text="sorry"),
    ]
    run = rt.spawn(agent(server, "bad-input"), "go")
    assert run.wait(timeout=30).output == "sorry"
    assert [r.event.kind for r in rt.events(run.id) if r.type == "tool.failed"] == ["invalid_args"]
    (block,) = server.requests[1]["messages"][-1]["content"]
    assert block["tool_use_id"] == "toolu_x"
    assert "Expected `int`, got `str` - at `$.a`" in block["content"]


@pytest.mark.parametrize(
    "body",
    [
        pytest.param(b'{"id": "msg_1", "content": [', id="cut-short"),
        pytest.param(b"<html>proxy error</html>", id="html"),
        pytest.param({"id": "msg_1", "type": "message"}, id="no-content"),
        pytest.param([1, 2], id="a-list"),
        pytest.param(
            b'{"id": "msg_1", "type": "message", "role": "assistant", "model": "m", "content": '
            b'[{"type": "text", "text": "hi"}], "stop_reason": "end_turn", "usage": '
            b'{"input_tokens": 1e400, "output_tokens": 1}}',
            id="infinite-usage",
        ),
    ],
)
def test_a_reply_that_is_not_a_message_is_retried_with_a_clear_error(
    rt: fl.Runtime, server: FakeServer, body: object
) -> None:
    server.responses = [(200, body), message(text="done")]
    run = rt.spawn(agent(server, "odd"), "go")
    assert run.wait(timeout=30).output == "done"
    (failed,) = [r.event for r in rt.events(run.id) if r.type == "model.failed"]
    assert failed.retryable, failed
    assert failed.error.startswith("claude-haiku-4-5: the response is not"), failed.error


@pytest.mark.parametrize("adapter", [fl.OpenAIChat, fl.AnthropicChat])
@pytest.mark.parametrize(
    ("setting", "value", "says"),
    [
        ("max_tokens", 0, "max_tokens must be a whole number >= 1"),
        ("max_tokens", "big", "max_tokens must be a whole number >= 1"),
        ("max_tokens", True, "max_tokens must be a whole number >= 1"),
        ("timeout", "x", "timeout must be a number of seconds > 0"),
        ("timeout", 0, "timeout must be a number of seconds > 0"),
        ("timeout", -1, "timeout must be a number of seconds > 0"),
        ("timeout", float("nan"), "timeout must be a number of seconds > 0"),
    ],
)
def test_both_adapters_refuse_bad_settings_alike(
    adapter: Any, setting: str, value: object, says: str
) -> None:
    with pytest.raises(fl.errors.ConfigError, match=says):
        adapter("m", base_url="http://127.0.0.1:9", **{setting: value})


@pytest.mark.parametrize("adapter", [fl.OpenAIChat, fl.AnthropicChat])
@pytest.mark.parametrize(
    ("model", "base_url", "says"),
    [
        ("", "http://127.0.0.1:9", "the model must be a name the provider knows"),
        ("  ", None, "the model must be a name the provider knows"),
        ("m", "127.0.0.1:8000/v1", "base_url must be an http:// or https:// URL"),
        ("m", "ftp://example.com", "base_url must be an http:// or https:// URL"),
        ("m", "http://", "base_url must be an http:// or https:// URL"),
        ("m", "http://[::1", "base_url must be an http:// or https:// URL"),
    ],
)
def test_both_adapters_refuse_a_model_or_url_no_call_could_use(
    adapter: Any, model: str, base_url: str | None, says: str
) -> None:
    """Each would fail every call (a URL without a scheme, retried as a connection error)."""
    with pytest.raises(fl.errors.ConfigError, match=says):
        adapter(model, base_url=base_url, api_key="k")


def test_lenient_replies_are_read_as_openai_chat_reads_them(
    rt: fl.Runtime, server: FakeServer
) -> None:
    # Token counts null or as text, a tool_use without a name: read, not a failed run.
    _, odd = message(uses=[("toolu_a", "add", {"a": 1, "b": 1})])
    odd["usage"] = {"input_tokens": None, "output_tokens": "7"}
    del odd["content"][0]["name"]
    server.responses = [(200, odd), message(text="done")]
    run = rt.spawn(agent(server, "lenient"), "go")
    result = run.wait(timeout=30)
    assert result.output == "done", result
    failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
    assert [f.kind for f in failed] == ["invalid_args"]  # the model is told, and answers
    assert not [r for r in rt.events(run.id) if r.type == "model.failed"]
    assert result.usage.output_tokens == 7 + 8

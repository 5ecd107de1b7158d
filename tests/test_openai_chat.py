"""OpenAIChat against a real HTTP server on 127.0.0.1 that speaks chat completions."""

from __future__ import annotations

import json
import select
import socket
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.core._ceilings import PER_CALL, PER_MESSAGE, TOOLS_FRAME
from tests.log_capture import capture_logs
from tests.waiting import wait_until


class _Server(ThreadingHTTPServer):
    request_queue_size = 256  # a burst of concurrent connections is not dropped at accept
    block_on_close = False  # kept-alive connections idle in their threads; do not wait on them


class FakeOpenAI:
    """Serves scripted responses to POST /v1/chat/completions and keeps every request.

    With ``delay_s`` each answer waits that long first; a client that hangs up meanwhile
    gets no answer and sets ``hung_up``. ``received`` is set by every request.
    """

    def __init__(self) -> None:
        # a JSON value, or bytes sent as they are; with a third item, headers to send too
        self.responses: list[tuple[int, Any] | tuple[int, Any, dict[str, str]]] = []
        self.requests: list[dict[str, Any]] = []
        self.arrived: list[float] = []  # time.monotonic() of each request
        self.spends_all = False  # usage: the most a byte tokenizer counts, all of max_tokens
        self.delay_s = 0.0
        self.received = threading.Event()
        self.hung_up = threading.Event()
        self.disconnected = threading.Event()  # a client closed a connection it kept alive
        owner = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"  # keep-alive, as real servers: clients pool connections

            def do_POST(self) -> None:  # - http.server's naming
                length = int(self.headers.get("content-length", 0))
                request = json.loads(self.rfile.read(length))
                owner.requests.append(request)
                owner.arrived.append(time.monotonic())
                status, body, *more = owner.responses.pop(0)
                headers: dict[str, str] = more[0] if more else {}
                if not self.headers.get("content-type", "").startswith("application/json"):
                    status, body = 400, {"error": {"message": "body must be declared JSON"}}
                if owner.spends_all:
                    written = request.get("max_tokens", 500)
                    body["usage"] = {
                        "prompt_tokens": worst_count(request),
                        "completion_tokens": written,
                    }
                owner.received.set()
                if owner.delay_s and self.client_left_within(owner.delay_s):
                    owner.hung_up.set()
                    self.close_connection = True
                    return
                data = body if isinstance(body, bytes) else json.dumps(body).encode()
                self.send_response(status)
                self.send_header("content-type", "application/json")
                self.send_header("content-length", str(len(data)))
                for name, value in headers.items():
                    self.send_header(name, value)
                self.end_headers()
                self.wfile.write(data)

            def client_left_within(self, wait_s: float) -> bool:
                """Wait up to wait_s; True as soon as the client closes the connection."""
                deadline = time.monotonic() + wait_s
                while (left := deadline - time.monotonic()) > 0:
                    if select.select([self.connection], [], [], left)[0]:
                        try:
                            return self.connection.recv(1, socket.MSG_PEEK) == b""
                        except OSError:
                            return True
                return False

            def log_message(self, *args: object) -> None:
                pass

            def finish(self) -> None:
                super().finish()
                owner.disconnected.set()

        self.server = _Server(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/v1"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


def completion(
    *,
    text: str | None = None,
    calls: list[tuple[str, str, str]] = (),
    tokens: tuple[int, int] = (50, 10),
) -> tuple[int, dict[str, Any]]:
    message: dict[str, Any] = {"role": "assistant", "content": text}
    if calls:
        message["tool_calls"] = [
            {"id": cid, "type": "function", "function": {"name": name, "arguments": args}}
            for cid, name, args in calls
        ]
    return 200, {
        "id": "chatcmpl-1",
        "object": "chat.completion",
        "created": 1,
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": message, "finish_reason": "stop"}],
        "usage": {
            "prompt_tokens": tokens[0],
            "completion_tokens": tokens[1],
            "total_tokens": sum(tokens),
        },
    }


def worst_count(request: dict[str, Any]) -> int:
    """What a byte-level tokenizer counts at most in a request as sent: a token a byte of
    every text of its messages and tool specs, a frame a message and the whole."""
    texts: list[str] = []
    for m in request["messages"]:
        texts += [m.get("content") or "", m.get("tool_call_id") or ""]
        for call in m.get("tool_calls") or ():
            texts += [call["id"], call["function"]["name"], call["function"]["arguments"]]
    texts += [json.dumps(t["function"], separators=(",", ":")) for t in request.get("tools", ())]
    frame = PER_CALL + PER_MESSAGE * len(request["messages"])
    return (
        frame + (TOOLS_FRAME if request.get("tools") else 0) + sum(len(t.encode()) for t in texts)
    )


def error(status: int, message: str) -> tuple[int, dict[str, Any]]:
    return status, {"error": {"message": message, "type": "error", "param": None, "code": None}}


@fl.tool(idempotent=True)
def add(a: int, b: int) -> int:
    """Add two integers."""
    return a + b


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def agent(server: FakeOpenAI, name: str) -> fl.Agent:
    llm = fl.OpenAIChat("gpt-4o-mini", base_url=server.url, timeout=10)
    return fl.Agent(name=name, llm=llm, tools=[add], instructions="Use add.")


def test_parallel_tool_calls_usage_and_results_in_order(rt: fl.Runtime, server: FakeOpenAI) -> None:
    server.responses = [
        completion(
            calls=[("call_a", "add", '{"a": 2, "b": 3}'), ("call_b", "add", '{"a": 1, "b": 1}')]
        ),
        completion(text="5 and 2", tokens=(70, 5)),
    ]
    result = rt.spawn(agent(server, "oa"), "add things").wait(timeout=30)
    assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "5 and 2")
    assert (result.usage.input_tokens, result.usage.output_tokens) == (120, 15)
    assert result.usage.cost_usd == pytest.approx((120 * 0.15 + 15 * 0.60) / 1e6)
    first, second = server.requests
    assert first["model"] == "gpt-4o-mini"
    assert first["tools"][0]["function"]["name"] == "add"
    assert first["tools"][0]["function"]["parameters"]["required"] == ["a", "b"]
    assert [m["role"] for m in second["messages"]] == [
        "system",
        "user",
        "assistant",
        "tool",
        "tool",
    ]
    assert [m.get("tool_call_id") for m in second["messages"][3:]] == ["call_a", "call_b"]
    assert [m["content"] for m in second["messages"][3:]] == ["5", "2"]
    assert second["messages"][2]["tool_calls"][0]["function"]["arguments"] == '{"a": 2, "b": 3}'


def test_rate_limits_and_server_errors_are_recorded_and_retried(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    server.responses = [error(429, "slow down"), error(500, "oops"), completion(text="done")]
    run = rt.spawn(agent(server, "rl"), "go")
    assert run.wait(timeout=30).output == "done"
    failed = [r.event for r in rt.events(run.id) if r.type == "model.failed"]
    assert [f.retryable for f in failed] == [True, True]
    assert "429" in failed[0].error
    assert "500" in failed[1].error
    assert len(server.requests) == 3


@pytest.mark.parametrize(
    ("status", "header", "value"), [(429, "retry-after", "1"), (503, "retry-after-ms", "1000")]
)
def test_a_retry_waits_as_long_as_the_server_asks(
    rt: fl.Runtime, server: FakeOpenAI, status: int, header: str, value: str
) -> None:
    """A rate limit (or overload) that says how long to wait is retried after that long,
    not after the run's own first backoff (0.25 s)."""
    server.responses = [(*error(status, "busy"), {header: value}), completion(text="done")]
    run = rt.spawn(agent(server, "patient"), "go")
    assert run.wait(timeout=30).output == "done"
    assert server.arrived[1] - server.arrived[0] >= 1.0
    (failed,) = [r.event for r in rt.events(run.id) if r.type == "model.failed"]
    assert "(retryable, the server asks to wait 1 s)" in failed.error


def test_a_reply_that_is_not_a_chat_completion_is_retried_with_a_clear_error(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    server.responses = [(200, {"choices": "none today"}), completion(text="done")]
    run = rt.spawn(agent(server, "odd"), "go")
    assert run.wait(timeout=30).output == "done"
    failed = [r.event for r in rt.events(run.id) if r.type == "model.failed"]
    assert [f.retryable for f in failed] == [True]
    assert "the response is not a chat completion" in failed[0].error


def test_a_reply_nested_too_deep_to_read_is_retried_with_a_clear_error(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    deep = b"[" * 100_000 + b"]" * 100_000
    body = b'{"choices":[{"message":{"tool_calls":[{"function":{"arguments":{"a":%s}}}]}}]}'
    server.responses = [(200, body % deep), completion(text="done")]
    run = rt.spawn(agent(server, "deep"), "go")
    assert run.wait(timeout=30).output == "done"
    (failed,) = [r.event for r in rt.events(run.id) if r.type == "model.failed"]
    assert failed.retryable and "nested too deep to read" in failed.error


def test_a_refused_connection_is_named_not_called_a_timeout(rt: fl.Runtime) -> None:
    """The SDK says "Request timed out." for a connection refused at once: the recorded
    error carries what the transport said beneath it."""
    with socket.socket() as probe:  # a port nothing listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    llm = fl.OpenAIChat("gpt-4o-mini", base_url=f"http://127.0.0.1:{port}/v1", timeout=10)
    run = rt.spawn(fl.Agent(name="nowhere", llm=llm), "go")
    wait_until(lambda: any(r.type == "model.failed" for r in rt.events(run.id)), 30, "a failure")
    failed = next(r.event for r in rt.events(run.id) if r.type == "model.failed")
    run.cancel()
    assert failed.retryable
    transport = failed.error.lower()  # aiohttp's words, or httpx's
    assert "cannot connect" in transport or "connection attempts failed" in transport, transport


def test_lenient_servers_replies_are_read(rt: fl.Runtime, server: FakeOpenAI) -> None:
    # Arguments as an object, usage as floats or null, a 200 carrying an error: all seen
    # from OpenAI-compatible servers.
    odd_call = completion(calls=[("call_1", "add", "{}")], tokens=(7, 3))
    call = odd_call[1]["choices"][0]["message"]["tool_calls"][0]
    call["function"]["arguments"] = {"a": 2, "b": 3}
    odd_call[1]["usage"] = {"prompt_tokens": 7.0, "completion_tokens": None}
    server.responses = [
        (200, {"error": {"message": "model overloaded, try again"}}),
        odd_call,
        completion(text="5"),
    ]
    run = rt.spawn(agent(server, "lenient"), "go")
    assert run.wait(timeout=30).output == "5"
    events = list(rt.events(run.id))
    [failed] = [r.event for r in events if r.type == "model.failed"]
    assert failed.retryable and "no choices: model overloaded, try again" in failed.error
    [requested] = [r.event for r in events if r.type == "tool.requested"]
    assert requested.args == '{"a":2,"b":3}'
    first_reply = next(r.event for r in events if r.type == "model.responded")
    assert (first_reply.usage.input_tokens, first_reply.usage.output_tokens) == (7, 0)


@pytest.mark.parametrize(
    ("status", "headers", "retried"),
    [
        (408, {}, True),  # request timeout
        (409, {}, True),  # OpenAI's lock timeout
        (400, {"x-should-retry": "true"}, True),  # the server's word overrides the status
        (503, {"x-should-retry": "false"}, False),
        (429, {"x-should-retry": "false"}, False),
    ],
)
def test_what_the_sdks_own_retries_would_ask_again_is_retried(
    rt: fl.Runtime, server: FakeOpenAI, status: int, headers: dict[str, str], retried: bool
) -> None:
    server.responses = [(*error(status, "try later"), headers), completion(text="done")]
    result = rt.spawn(agent(server, f"s{status}"), "go").wait(timeout=30)
    (failed,) = [r.event for r in rt.events(result.run_id) if r.type == "model.failed"]
    assert failed.retryable is retried
    assert f"HTTP {status}" in failed.error and "try later" in failed.error
    if retried:
        assert result.output == "done" and len(server.requests) == 2
    else:
        assert result.status is fl.RunStatus.FAILED and len(server.requests) == 1
        assert "the server says not to ask again (x-should-retry: false)" in result.reason
        assert "fix the request" not in result.reason and "refused" not in result.reason


def test_a_bad_request_fails_the_run_clearly_without_retrying(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    server.responses = [error(400, "tools[0].function.parameters is invalid")]
    result = rt.spawn(agent(server, "bad"), "go").wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED
    assert "refused the request (HTTP 400)" in result.reason
    assert "parameters is invalid" in result.reason
    assert len(server.requests) == 1


def test_malformed_tool_arguments_are_fed_back_to_the_model(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    server.responses = [
        completion(calls=[("call_x", "add", '{"a": 2, "b":')]),
        completion(text="sorry"),
    ]
    run = rt.spawn(agent(server, "mal"), "go")
    assert run.wait(timeout=30).output == "sorry"
    failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
    assert [f.kind for f in failed] == ["invalid_args"]
    fed_back = server.requests[1]["messages"][-1]
    assert fed_back["tool_call_id"] == "call_x"
    assert "not valid JSON" in fed_back["content"]


def test_a_missing_key_for_the_real_api_is_a_clear_error(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    with pytest.raises(fl.ConfigError, match="needs an API key"):
        fl.OpenAIChat("gpt-4o-mini")
    with pytest.raises(fl.ConfigError, match="whitespace or a control character"):
        fl.OpenAIChat("gpt-4o-mini", api_key="sk-from-a-file\n")  # no header could carry it


def test_what_the_transport_says_is_masked_and_cut() -> None:
    """It goes into the log: a credential in it (an h11 header error quotes the header) is
    masked, its length capped, and a context Python was told to hide stays hidden."""
    from foldloop.llm._sdk import CAUSE_CHARS, _with_cause

    try:
        try:
            raise ValueError("Illegal header value b'Bearer sk-SECRET'; x-api-key: sk-2 " * 50)
        except ValueError as cause:
            raise ConnectionError("Connection error.") from cause
    except ConnectionError as exc:
        said = _with_cause(exc)
    assert "sk-SECRET" not in said and "sk-2" not in said and "Bearer ***" in said
    assert len(said) <= len("Connection error. (ValueError: )") + CAUSE_CHARS
    hidden = ConnectionError("Connection error.")  # as `raise ... from None` in an except
    hidden.__context__, hidden.__suppress_context__ = KeyError("unrelated"), True
    assert _with_cause(hidden) == "Connection error."


def test_closing_the_runtime_closes_the_models_pooled_connections(
    store_path: Path, server: FakeOpenAI
) -> None:
    server.responses = [completion(text="hi")]
    oa = agent(server, "oa")
    with fl.Runtime.open(store_path, agents=[oa]) as rt:
        assert rt.spawn(oa, "hello").wait(timeout=30).ok  # through acomplete, kept alive
    wait_until(server.disconnected.is_set, 10, "the runtime's close to close the connection")


def test_a_ceiling_asks_no_more_than_the_models_output_limit(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    server.responses = [completion(text="hi"), completion(text="hi"), completion(text="hi")]
    ceilings = (fl.Limits(max_cost_usd=1.0), fl.Limits(max_tokens=50_000), fl.Limits())
    for i, limits in enumerate(ceilings):
        llm = fl.OpenAIChat("gpt-4o-mini", base_url=server.url)
        assert rt.spawn(fl.Agent(name=f"capped{i}", llm=llm, limits=limits), "go").wait(30).ok
    cost, tokens, none = (r.get("max_tokens") for r in server.requests)
    assert cost == tokens == 16_384  # the model's output limit, not what the budget allows
    assert none is None  # no ceiling: the server's default
    small = fl.OpenAIChat("gpt-4o-mini", base_url=server.url, max_tokens=100)
    server.responses = [completion(text="hi")]
    assert (
        rt.spawn(fl.Agent(name="small", llm=small, limits=fl.Limits(max_tokens=50_000)), "go")
        .wait(timeout=30)
        .ok
    )
    assert server.requests[-1]["max_tokens"] == 100
    with pytest.raises(fl.errors.ConfigError, match="max_tokens must be a whole number"):
        fl.OpenAIChat("gpt-4o-mini", base_url=server.url, max_tokens=0)


def test_requests_as_sent_stay_within_what_each_call_reserved(
    rt: fl.Runtime, server: FakeOpenAI
) -> None:
    """The server counts a token a byte of everything the adapter sends and writes all it
    may: no call counts more than its run reserved, and the run stays within its ceiling."""
    server.spends_all = True
    server.responses = [
        completion(calls=[(f"call_{i}", "add", f'{{"a": {i}, "b": 3}}') for i in range(3)]),
        completion(calls=[("call_x", "add", '{"a": 1, "b": 1}')]),
        completion(text="done"),
    ]
    a = fl.Agent(
        name="sent",
        llm=fl.OpenAIChat("gpt-4o-mini", base_url=server.url, max_tokens=300),
        tools=[add],
        instructions="Use add. " * 20,
        limits=fl.Limits(max_tokens=20_000),
    )
    with capture_logs() as logs:
        result = rt.spawn(a, "add things, ünïcödé 🙂").wait(timeout=30)
    assert result.ok, result
    assert len(server.requests) == 3
    assert not [e for e in logs if e["event"] == "model_usage_over_reserved"]
    assert result.usage.total_tokens <= 20_000

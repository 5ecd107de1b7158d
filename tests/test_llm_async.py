"""The async form of models: async_form, ScriptedLLM.acomplete and the SDK adapters' acomplete.

The adapters run against a real HTTP server on 127.0.0.1 (keep-alive, as real providers),
so connection pools, cancellation and hang-ups are the SDKs' own.
"""

from __future__ import annotations

import asyncio
import email.utils
import importlib
import importlib.util
import json
import threading
import time
from collections.abc import Awaitable, Callable, Coroutine, Iterator, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import pytest

import foldloop as fl
from foldloop.core._messages import Message, ToolSpec
from foldloop.errors import ConfigError, ModelCallError
from foldloop.llm import AsyncComplete, async_form
from foldloop.llm import _sdk as sdk
from tests.test_anthropic_chat import message
from tests.test_openai_chat import FakeOpenAI, add, completion, error

T = TypeVar("T")

MESSAGES = (Message(role="system", content="Use add."), Message(role="user", content="add things"))
TOOLS: tuple[ToolSpec, ...] = (add.spec,)


class SyncOnly:
    """A user model written before the async form: only ``complete``."""

    model = "sync-only"

    def complete(
        self,
        messages: Sequence[Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        return fl.Reply(text="sync")


class PlainAcomplete(SyncOnly):
    """An ``acomplete`` that is a plain ``def`` is not the async form."""

    def acomplete(self, *args: object, **kwargs: object) -> fl.Reply:
        return fl.Reply(text="not awaitable")


def test_async_form_is_the_bound_acomplete_of_an_async_def_only() -> None:
    scripted = fl.ScriptedLLM([fl.Reply(text="hi")], latency_s=0.1)
    assert async_form(scripted) == scripted.acomplete
    # with nothing to wait for, a scripted model is called through complete (awaitable False)
    assert async_form(fl.ScriptedLLM([fl.Reply(text="hi")])) is None
    assert async_form(SyncOnly()) is None
    assert async_form(PlainAcomplete()) is None
    assert isinstance(SyncOnly(), fl.LLM)  # models without the async form stay valid


# ScriptedLLM


def answer(form: AsyncComplete, messages: Sequence[Message] = MESSAGES) -> fl.Reply:
    return asyncio.run(_awaited(form(messages, TOOLS, max_tokens=100)))


async def _awaited(aw: Awaitable[T]) -> T:
    return await aw


def test_scripted_acomplete_answers_what_complete_answers() -> None:
    replies = [fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})]), fl.Reply(text="5")]
    scripted = fl.ScriptedLLM(replies)
    later = (*MESSAGES, Message(role="assistant", content=""), Message(role="tool", content="5"))
    for messages in (MESSAGES, later):
        assert answer(scripted.acomplete, messages) == scripted.complete(messages, TOOLS)
    assert answer(scripted.acomplete, later).text == "5"
    past_the_end = (*later, Message(role="assistant", content="5"))
    with pytest.raises(ModelCallError, match="has 2 replies and this is model call 3"):
        answer(scripted.acomplete, past_the_end)

    def fn(messages: Sequence[Message], tools: Sequence[ToolSpec]) -> fl.Reply:
        return fl.Reply(text=f"{len(messages)} messages, {len(tools)} tools")

    by_fn = fl.ScriptedLLM(fn, latency_s=0.01)
    assert answer(by_fn.acomplete) == by_fn.complete(MESSAGES, TOOLS)
    assert answer(by_fn.acomplete).text == "2 messages, 1 tools"


def test_scripted_latency_is_awaited_so_calls_wait_together_on_one_loop() -> None:
    scripted = fl.ScriptedLLM(lambda m, t: fl.Reply(text="ok"), latency_s=0.2)

    async def many() -> list[fl.Reply]:
        return await asyncio.gather(*(scripted.acomplete(MESSAGES, TOOLS) for _ in range(200)))

    started = time.monotonic()
    replies = asyncio.run(many())
    elapsed = time.monotonic() - started
    assert [r.text for r in replies] == ["ok"] * 200
    assert 0.2 <= elapsed < 5  # a blocking sleep would take 200 x 0.2 s = 40 s


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), 3601, True, "0.1", None])
def test_a_latency_that_is_not_a_sane_number_of_seconds_is_a_config_error(bad: object) -> None:
    with pytest.raises(ConfigError, match=r"latency_s is .*give a number of seconds from 0"):
        fl.ScriptedLLM([fl.Reply(text="ok")], latency_s=bad)  # type: ignore[arg-type]


# OpenAIChat and AnthropicChat


@dataclass(frozen=True)
class Provider:
    name: str
    make: Callable[[str], fl.OpenAIChat | fl.AnthropicChat]
    url_suffix: str
    reply: tuple[int, dict[str, Any]]  # a reply with text, two tool calls and usage
    usage: tuple[int, int]


CALLS = [("call_a", "add", {"a": 2, "b": 3}), ("call_b", "add", {"a": 1, "b": 1})]
PROVIDERS = [
    Provider(
        "openai",
        lambda url: fl.OpenAIChat("gpt-4o-mini", base_url=url, timeout=10),
        "/v1",
        completion(
            text="adding", calls=[(i, n, json.dumps(a)) for i, n, a in CALLS], tokens=(50, 10)
        ),
        (50, 10),
    ),
    Provider(
        "anthropic",
        lambda url: fl.AnthropicChat("claude-haiku-4-5", base_url=url, timeout=10),
        "",
        message(text="adding", uses=CALLS, tokens=(40, 8)),
        (40, 8),
    ),
]


@pytest.fixture(params=PROVIDERS, ids=[p.name for p in PROVIDERS])
def provider(request: pytest.FixtureRequest) -> Provider:
    chosen: Provider = request.param
    return chosen


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def on_a_loop(
    llm: fl.OpenAIChat | fl.AnthropicChat, body: Callable[[], Coroutine[Any, Any, T]]
) -> T:
    """asyncio.run(body()), closing the adapter's client for that loop at the end."""

    async def run() -> T:
        try:
            return await body()
        finally:
            await llm.aclose()

    return asyncio.run(run())


def test_acomplete_sends_and_parses_exactly_as_complete(
    provider: Provider, server: FakeOpenAI
) -> None:
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [provider.reply, provider.reply]
    sync = llm.complete(MESSAGES, TOOLS, max_tokens=100)
    reply = on_a_loop(llm, lambda: llm.acomplete(MESSAGES, TOOLS, max_tokens=100))
    assert reply == sync
    assert server.requests[1] == server.requests[0]
    assert reply.text == "adding"
    assert [(c.id, c.name, c.args) for c in reply.tool_calls] == [
        ("call_a", "add", '{"a": 2, "b": 3}'),
        ("call_b", "add", '{"a": 1, "b": 1}'),
    ]
    assert reply.usage is not None
    assert (reply.usage.input_tokens, reply.usage.output_tokens) == provider.usage


def test_acomplete_maps_errors_as_complete(provider: Provider, server: FakeOpenAI) -> None:
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    for status, retryable in ((429, True), (500, True), (400, False)):
        server.responses = [error(status, "no"), error(status, "no")]
        with pytest.raises(ModelCallError) as sync:
            llm.complete(MESSAGES, TOOLS)
        with pytest.raises(ModelCallError) as async_:
            on_a_loop(llm, lambda: llm.acomplete(MESSAGES, TOOLS))
        assert str(async_.value) == str(sync.value)
        assert async_.value.retryable is sync.value.retryable is retryable
        assert f"HTTP {status}" in str(async_.value)


def test_both_adapters_carry_the_servers_retry_after(
    provider: Provider, server: FakeOpenAI
) -> None:
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [(*error(429, "slow"), {"retry-after": "7"}), error(500, "oops")]
    for said in (7.0, None):
        with pytest.raises(ModelCallError) as failed:
            llm.complete(MESSAGES, TOOLS)
        assert failed.value.retryable and failed.value.retry_after_s == said


@pytest.mark.parametrize(
    ("headers", "seconds"),
    [
        ({"retry-after": "2"}, 2.0),
        ({"retry-after": "0.5"}, 0.5),
        ({"retry-after-ms": "1500", "retry-after": "9"}, 1.5),  # OpenAI's, the finer, first
        ({"retry-after": "-1"}, None),
        ({"retry-after": "soon"}, None),
        ({"retry-after": "inf"}, None),
        ({"retry-after-ms": "nan"}, None),
        ({"retry-after-ms": "soon", "retry-after": "3"}, 3.0),  # one unreadable: the other
        ({"retry-after": "Wed, 21 Oct 2015 07:28:00 GMT"}, 0.0),  # a date gone by: now
        ({}, None),
    ],
)
def test_retry_after_reads_seconds_milliseconds_and_dates(
    headers: dict[str, str], seconds: float | None
) -> None:
    assert sdk.retry_after(headers) == seconds


def test_retry_after_as_a_date_to_come_is_the_seconds_until_it() -> None:
    when = email.utils.formatdate(time.time() + 30, usegmt=True)
    wait = sdk.retry_after({"retry-after": when})
    assert wait is not None and 28 <= wait <= 30


def test_a_cancelled_acomplete_raises_cancelled_and_hangs_up(
    provider: Provider, server: FakeOpenAI
) -> None:
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [provider.reply]
    server.delay_s = 60

    async def cancel() -> float:
        call = asyncio.create_task(llm.acomplete(MESSAGES, TOOLS))
        assert await asyncio.to_thread(server.received.wait, 5)
        started = time.monotonic()
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        return time.monotonic() - started

    assert on_a_loop(llm, cancel) < 5
    assert server.hung_up.wait(5)  # the server sees the connection closed, not a late reader


def test_a_hundred_calls_share_one_pool_on_one_loop(provider: Provider, server: FakeOpenAI) -> None:
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [provider.reply] * 100
    server.delay_s = 0.3

    async def many() -> list[fl.Reply]:
        return await asyncio.gather(*(llm.acomplete(MESSAGES, TOOLS) for _ in range(100)))

    started = time.monotonic()
    replies = on_a_loop(llm, many)
    assert time.monotonic() - started < 5  # one at a time would take 100 x 0.3 s = 30 s
    assert len(replies) == 100
    assert all(r == replies[0] for r in replies)


def test_one_adapter_serves_two_event_loops(provider: Provider, server: FakeOpenAI) -> None:
    """Two runtimes share an agent: each loop gets its own client (an httpx pool is bound to
    the loop it first ran on, and a kept-alive connection from one fails on the other)."""
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [provider.reply] * 3
    other = asyncio.new_event_loop()
    thread = threading.Thread(target=other.run_forever, daemon=True)
    thread.start()
    try:
        first = asyncio.run_coroutine_threadsafe(llm.acomplete(MESSAGES, TOOLS), other).result(10)
        here = on_a_loop(llm, lambda: llm.acomplete(MESSAGES, TOOLS))
        again = asyncio.run_coroutine_threadsafe(llm.acomplete(MESSAGES, TOOLS), other).result(10)
        assert first == here == again
    finally:
        asyncio.run_coroutine_threadsafe(llm.aclose(), other).result(10)
        other.call_soon_threadsafe(other.stop)
        thread.join(10)
        other.close()


@pytest.mark.parametrize("with_aiohttp", [True, False], ids=["aiohttp", "httpx"])
def test_acomplete_goes_over_aiohttp_when_installed_and_httpx_otherwise(
    provider: Provider, server: FakeOpenAI, monkeypatch: pytest.MonkeyPatch, with_aiohttp: bool
) -> None:
    sdk_module = importlib.import_module(provider.name)
    if not with_aiohttp:
        find_spec = importlib.util.find_spec
        monkeypatch.setattr(
            importlib.util,
            "find_spec",
            lambda name, *a: None if name == "aiohttp" else find_spec(name, *a),
        )
    options = sdk.async_options(sdk_module, {"timeout": 10})
    if with_aiohttp:
        assert isinstance(options["http_client"], sdk_module.DefaultAioHttpClient)
    else:
        assert "http_client" not in options
    llm = provider.make(server.url.removesuffix("/v1") + provider.url_suffix)
    server.responses = [provider.reply]
    reply = on_a_loop(llm, lambda: llm.acomplete(MESSAGES, TOOLS, max_tokens=100))
    assert reply.text == "adding"

"""A final reply the model did not finish (cut at its token cap, refused) is no result: the
run does not complete on it. Both adapters say why a reply stopped (``Reply.stop_reason``)."""

from __future__ import annotations

import datetime
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.core import ModelPrice
from foldloop.events import ModelResponded
from tests.test_anthropic_chat import message
from tests.test_openai_chat import FakeOpenAI, completion

CUT = fl.Reply(text="The answer is thr", stop_reason="max_tokens")


def spawn(
    rt: fl.Runtime, *replies: fl.Reply, limits: fl.Limits | None = None
) -> fl.types.RunHandle:
    agent = fl.Agent(name="cut", llm=fl.ScriptedLLM(list(replies)), limits=limits or fl.Limits())
    return rt.spawn(agent, "go")


def responded(rt: fl.Runtime, run_id: str) -> list[ModelResponded]:
    return [r.event for r in rt.events(run_id) if isinstance(r.event, ModelResponded)]


def test_a_final_reply_cut_at_the_models_cap_fails_the_run_resumably(rt: fl.Runtime) -> None:
    run = spawn(rt, CUT, fl.Reply(text="The answer is three."))
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED and result.resumable, result
    assert "cut at its own max_tokens" in result.reason and result.output == ""
    assert [e.stop_reason for e in responded(rt, run.id)] == ["max_tokens"]
    assert rt.resume(run.id).wait(timeout=30).output == "The answer is three."
    rt.verify(run.id)  # the rule replays as it decided


class WritesItsCap:
    """Writes every token it is allowed (its first reply cut there), then answers in full;
    keeps the max_tokens of each call."""

    model = "capped"

    def __init__(self) -> None:
        self.caps: list[int | None] = []

    def complete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        self.caps.append(max_tokens)
        if len(self.caps) == 1:
            assert max_tokens is not None  # a ceiling of the run set it
            usage = fl.types.Usage(input_tokens=40, output_tokens=max_tokens)
            return fl.Reply(text="The answer is thr", stop_reason="max_tokens", usage=usage)
        done = fl.types.Usage(input_tokens=40, output_tokens=5)
        return fl.Reply(text="The answer is three.", usage=done)


@pytest.mark.parametrize(
    ("limits", "extend", "says"),
    [
        (fl.Limits(max_tokens=3000), fl.Limits(max_tokens=20_000), "max_tokens ceiling 3,000"),
        (
            fl.Limits(max_cost_usd=0.05),
            fl.Limits(max_cost_usd=1.0),
            "max_cost_usd ceiling $0.05",
        ),
    ],
    ids=["max_tokens", "max_cost_usd"],
)
def test_a_final_reply_cut_at_the_cap_a_ceiling_set_stops_the_run_at_that_ceiling(
    rt: fl.Runtime, limits: fl.Limits, extend: fl.Limits, says: str
) -> None:
    llm = WritesItsCap()
    pricing = fl.Pricing(
        as_of=datetime.date.today().isoformat(), prices={"capped": ModelPrice(3.0, 15.0)}
    )
    agent = fl.Agent(name="capped", llm=llm, limits=limits, pricing=pricing)
    run = rt.spawn(agent, "go")
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.LIMIT_REACHED, result
    assert says in result.reason, result.reason
    more = rt.resume(run.id, extend=extend).wait(timeout=30)
    assert more.output == "The answer is three.", more
    assert len(llm.caps) == 2 and llm.caps[1] is not None and llm.caps[1] > llm.caps[0]
    rt.verify(run.id)


def test_a_resume_after_a_cut_reply_asks_without_it(rt: fl.Runtime) -> None:
    """A cut reply is no turn: the model is not handed its fragment back to continue
    (Anthropic's newer models refuse a prompt that ends with the assistant's turn)."""
    seen: list[list[str]] = []

    def model(messages: Sequence[fl.Message], tools: object) -> fl.Reply:
        seen.append([m.role for m in messages])
        if len(seen) == 1:
            return CUT
        return fl.Reply(text="The answer is three.")

    agent = fl.Agent(name="cut", llm=fl.ScriptedLLM(model))
    run = rt.spawn(agent, "go")
    assert run.wait(timeout=30).status is fl.RunStatus.FAILED
    assert rt.resume(run.id).wait(timeout=30).output == "The answer is three."
    assert seen[1] == seen[0] and seen[0][-1] == "user"


def test_a_refused_final_reply_fails_the_run_quoting_it(rt: fl.Runtime) -> None:
    run = spawn(rt, fl.Reply(text="I can't help with that.", stop_reason="refusal"))
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED and result.resumable, result
    assert 'refused to answer step 1: "I can\'t help with that."' in result.reason


def test_a_cut_reply_with_tool_calls_goes_on_and_says_it_was_cut(rt: fl.Runtime) -> None:
    @fl.tool
    def noop() -> str:
        """Nothing."""
        return "ok"

    agent = fl.Agent(
        name="cut",
        llm=fl.ScriptedLLM(
            [
                fl.Reply(tool_calls=[fl.ToolCall("noop")], stop_reason="max_tokens"),
                fl.Reply(text="done"),
            ]
        ),
        tools=[noop],
    )
    run = rt.spawn(agent, "go")
    assert run.wait(timeout=30).output == "done"
    assert [e.stop_reason for e in responded(rt, run.id)] == ["max_tokens", ""]


def test_a_stop_reason_no_run_knows_is_an_unusable_reply(rt: fl.Runtime) -> None:
    run = spawn(rt, fl.Reply(text="x", stop_reason="tired"))  # type: ignore[arg-type]
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED, result
    assert "unusable fl.Reply" in result.reason and "'tired'" in result.reason


@pytest.fixture
def server() -> Iterator[FakeOpenAI]:
    fake = FakeOpenAI()
    yield fake
    fake.close()


def finished(finish_reason: str, **message: Any) -> tuple[int, dict[str, Any]]:
    status, body = completion(text="The answer is thr")
    body["choices"][0]["finish_reason"] = finish_reason
    body["choices"][0]["message"].update(message)
    return status, body


@pytest.mark.parametrize(
    ("answer", "stop_reason", "text"),
    [
        (finished("stop"), "", "The answer is thr"),
        (finished("length"), "max_tokens", "The answer is thr"),
        (finished("content_filter"), "refusal", "The answer is thr"),
        (finished("stop", content=None, refusal="I can't."), "refusal", "I can't."),
    ],
    ids=["stop", "length", "content_filter", "refusal"],
)
def test_openai_chat_says_why_a_reply_stopped(
    server: FakeOpenAI, answer: tuple[int, dict[str, Any]], stop_reason: str, text: str
) -> None:
    server.responses = [answer]
    reply = fl.OpenAIChat("gpt-4o-mini", base_url=server.url, api_key="k").complete([], [])
    assert (reply.stop_reason, reply.text) == (stop_reason, text)


@pytest.mark.parametrize(
    ("said", "stop_reason"),
    [
        ("end_turn", ""),
        ("max_tokens", "max_tokens"),
        ("model_context_window_exceeded", "max_tokens"),
        ("refusal", "refusal"),
    ],
)
def test_anthropic_chat_says_why_a_reply_stopped(
    server: FakeOpenAI, said: str, stop_reason: str
) -> None:
    status, body = message(text="The answer is thr")
    body["stop_reason"] = said
    server.responses = [(status, body)]
    base = server.url.removesuffix("/v1")  # the SDK appends /v1/messages itself
    reply = fl.AnthropicChat("claude-haiku-4-5", base_url=base, api_key="k").complete([], [])
    assert (reply.stop_reason, reply.text) == (stop_reason, "The answer is thr")


def test_explain_says_a_reply_was_cut_and_a_long_refusal_is_quoted_cut(
    rt: fl.Runtime, store_path: Path
) -> None:
    cut = spawn(rt, CUT)
    assert cut.wait(timeout=30).status is fl.RunStatus.FAILED
    assert "with its final text, cut at its max_tokens" in str(rt.explain(cut.id))
    long = "No. " * 100
    with fl.Runtime.open(store_path) as other:  # an agent of the same name, other replies
        refused = spawn(other, fl.Reply(text=long, stop_reason="refusal"))
        reason = refused.wait(timeout=30).reason
    assert reason.endswith(f"{long[:200] + '...'!r}"), reason

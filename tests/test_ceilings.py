"""A model call's worst case is held against the run's token and dollar ceilings before the
call is made: its prompt's bound plus its max_tokens (core/_ceilings.py)."""

from __future__ import annotations

import datetime
from collections.abc import Callable, Sequence
from pathlib import Path

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import foldloop as fl
from foldloop.core import CallModel, ExpireApproval, ModelPrice, Resume, RunStatus, evolve
from foldloop.core._ceilings import PER_CALL, PER_MESSAGE, TOOLS_FRAME
from foldloop.core._explain import explain
from foldloop.core._messages import Message, ToolSpec
from foldloop.core._tree import child_finished
from foldloop.events import Limits, ModelRequested, Recorded, RunLimitReached, RunStarted
from foldloop.events._catalogue import RunFailureKind
from foldloop.events._values import Usage
from tests.log_capture import capture_logs
from tests.test_core import Driver, ticket
from tests.tree_models import fans_out


def byte_tokens(messages: tuple[Message, ...], tools_bytes: int = 0) -> int:
    """What the worst byte-level tokenizer counts in a prompt: a token a byte of every text
    the model sees, and a chat format's frame around each message and the whole."""
    total = PER_CALL + tools_bytes
    for m in messages:
        total += PER_MESSAGE + len(m.content.encode("utf-8"))
        for call in m.tool_calls:
            total += len(call.name.encode()) + len(call.args.encode()) + len(call.id.encode())
        total += len((m.tool_call_id or "").encode()) + len((m.name or "").encode())
    return total


def json_bytes(messages: tuple[Message, ...]) -> int:
    return sum(len(msgspec.json.encode(m)) + PER_MESSAGE for m in messages)


def test_each_call_reserves_its_prompts_bound_and_gets_what_is_left_as_max_tokens() -> None:
    d = Driver(Limits(max_tokens=10_000))
    first = d.start()  # the Driver's run offers tools: a provider's tool frame counts too
    bound = PER_CALL + TOOLS_FRAME + len(b'{"role":"user","content":"hi"}') + PER_MESSAGE
    assert first.effects == (CallModel(step=1, max_tokens=10_000 - bound, prompt_bound=bound),)

    d.reply([("add", "{}")], usage=Usage(input_tokens=100, output_tokens=50))
    second = d.finish(d.state.calls[0].call_id)
    # the model's count of the prompt it answered, plus the reply and the result since
    bound = 100 + json_bytes(d.state.messages[1:])
    assert second.effects == (
        CallModel(step=2, max_tokens=10_000 - 150 - bound, prompt_bound=bound),
    )

    d.reply([("add", "{}")], usage=Usage(input_tokens=bound, output_tokens=10_000 - 150 - bound))
    d.finish(d.state.calls[0].call_id)
    assert d.state.status is RunStatus.LIMIT_REACHED  # no room left for any next prompt
    reached = d.log[-1].event
    assert isinstance(reached, RunLimitReached)
    assert (reached.limit, reached.value, reached.ceiling) == ("max_tokens", 10_000, 10_000)
    assert "leaves no room for the next model call" in d.state.reason


def test_a_call_whose_prompt_alone_could_pass_the_ceiling_is_not_made() -> None:
    d = Driver(Limits(max_tokens=3_000))
    d.start()
    d.reply([("add", "{}")], usage=Usage(input_tokens=100, output_tokens=10))
    d.finish(d.state.calls[0].call_id, result="x" * 3_000)  # a long result joins the prompt
    reached = d.log[-1].event
    assert isinstance(reached, RunLimitReached)
    assert reached.value == 110 and reached.value < reached.ceiling
    assert reached.needed == 100 + json_bytes(d.state.messages[1:]) + 1 > 3_000 - 110


def test_a_priced_cost_ceiling_reserves_each_calls_worst_case_in_dollars() -> None:
    per_input, per_output = 1.0, 4.0  # dollars a million tokens
    d = Driver(Limits(max_cost_usd=0.01), price=(per_input, per_output))
    first = d.start()
    (call,) = first.effects
    assert isinstance(call, CallModel) and call.max_tokens is not None
    worst = (call.prompt_bound * per_input + call.max_tokens * per_output) / 1e6
    assert worst <= 0.01 < worst + 2 * per_output / 1e6  # all the room, one token held back


def test_without_a_price_or_ceilings_nothing_is_reserved() -> None:
    assert Driver(Limits(max_cost_usd=0.01)).start().effects == (CallModel(step=1),)
    assert Driver().start().effects == (CallModel(step=1),)


texts = st.text(max_size=60)
replies = st.lists(st.tuples(st.sampled_from(["add", "send"]), texts), max_size=3)


@settings(max_examples=200, deadline=None)
@given(texts, st.lists(st.tuples(texts, replies, texts), min_size=1, max_size=6), st.data())
def test_the_prompt_bound_is_never_below_what_a_byte_tokenizer_counts(
    user: str, steps: list[tuple[str, list[tuple[str, str]], str]], data: st.DataObject
) -> None:
    """Whatever the texts (any Unicode) and however few tokens the model counted in the
    previous prompt, a byte-level tokenizer that counted that many (messages are tokenized
    one by one in a chat format) counts no more in the next prompt than its bound."""
    d = Driver(Limits(max_tokens=10**9, no_progress=10**6))
    decision = d.start(input=user)
    most = byte_tokens(d.state.messages)  # before any count: every byte of the prompt
    for text, calls, result in steps:
        (call,) = decision.effects
        assert isinstance(call, CallModel)
        assert call.prompt_bound >= most
        counted = data.draw(st.integers(0, most))
        asked = len(d.state.messages)
        args = [(name, msgspec.json.encode({"q": arg}).decode()) for name, arg in calls]
        decision = d.reply(args, text=text, usage=Usage(input_tokens=counted))
        if not calls:
            return
        for pending in d.state.calls:
            decision = d.finish(pending.call_id, result=result)
        added = d.state.messages[asked:]  # the reply and the results since that prompt
        most = (counted or byte_tokens(d.state.messages[:asked])) + byte_tokens(added) - PER_CALL


class WorstCaseModel:
    """A real model class that counts a token a byte of every prompt (the most a byte-level
    tokenizer can) and always writes all the max_tokens it is given."""

    model = "worst-case"

    def __init__(
        self, script: Callable[[Sequence[fl.Message], Sequence[object]], fl.Reply]
    ) -> None:
        self.script = script
        self.asked: list[int | None] = []

    def complete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        self.asked.append(max_tokens)
        reply = self.script(messages, tools)
        specs = sum(len(msgspec.json.encode(t)) for t in tools)
        read = byte_tokens(tuple(messages), specs)
        written = 2_000 if max_tokens is None else max_tokens
        usage = Usage(input_tokens=read, output_tokens=written)
        return fl.Reply(text=reply.text, tool_calls=reply.tool_calls, usage=usage)


def busy(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
    """Calls its tool until it has five results, then answers."""
    done = sum(m.role == "tool" for m in messages)
    if done < 5:
        return fl.Reply(tool_calls=[fl.ToolCall("note", {"text": f"result {done}" * 20})])
    return fl.Reply(text="done")


@pytest.mark.parametrize(
    ("ceiling", "limit"),
    [
        pytest.param(fl.Limits(max_tokens=30_000), "max_tokens", id="tokens"),
        pytest.param(fl.Limits(max_cost_usd=0.15), "max_cost_usd", id="dollars"),
    ],
)
def test_a_tree_of_models_that_spend_all_they_may_stays_within_the_roots_ceiling(
    store_path: Path, ceiling: fl.Limits, limit: str
) -> None:
    @fl.tool
    def note(text: str) -> str:
        """Write a note down."""
        return text

    pricing = fl.Pricing(
        as_of=datetime.date.today().isoformat(), prices={"worst-case": ModelPrice(3.0, 15.0)}
    )
    worker = fl.Agent(
        name="worker",
        llm=WorstCaseModel(busy),
        tools=[note],
        pricing=pricing,
        description="Works on a task.",
    )
    lead_model = WorstCaseModel(fans_out(*[("worker", f"task {i}") for i in range(3)]))
    lead = fl.Agent(name="lead", llm=lead_model, agents=[worker], limits=ceiling, pricing=pricing)
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        result = run.wait(timeout=30)
        tree = rt.tree(run.id)
        spent = tree.spent
        nodes = tree.walk()
        stopped = [n for n in nodes if n.status is fl.RunStatus.LIMIT_REACHED]
    assert len(nodes) == 4, nodes  # the lead and its three workers
    assert stopped, "no ceiling was reached: the test would prove nothing"
    assert all(limit in n.reason for n in stopped), [n.reason for n in stopped]
    if limit == "max_tokens":
        assert spent.total_tokens <= 30_000
        assert spent.total_tokens > 30_000 * 0.5  # the ceiling was spent, not avoided
    else:
        assert spent.cost_usd <= 0.15
        assert spent.cost_usd > 0.15 * 0.5
    assert result.status in (fl.RunStatus.COMPLETED, fl.RunStatus.LIMIT_REACHED)


def test_a_reply_under_a_dated_model_name_is_priced_as_the_agents_model(store_path: Path) -> None:
    dated = fl.Reply(
        text="hi", model="gpt-4o-2024-08-06", usage=Usage(input_tokens=1_000, output_tokens=100)
    )
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([dated], model="gpt-4o"))
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        result = rt.spawn(agent, "go").wait(timeout=10)
    assert result.usage.cost_usd == pytest.approx((1_000 * 2.50 + 100 * 10.00) / 1e6)


def test_a_model_that_reports_more_than_its_call_reserved_is_logged(store_path: Path) -> None:
    greedy = fl.Reply(text="hi", usage=Usage(input_tokens=50_000, output_tokens=10))
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([greedy]), limits=fl.Limits(max_tokens=100_000))
    with capture_logs() as logs, fl.Runtime.open(store_path, agents=[agent]) as rt:
        result = rt.spawn(agent, "go").wait(timeout=10)
    assert result.ok and result.usage.input_tokens == 50_000  # recorded as reported
    (over,) = [e for e in logs if e["event"] == "model_usage_over_reserved"]
    assert over["input_tokens"] == 50_000 and 0 < over["prompt_bound"] < 50_000


def test_a_scripted_models_estimated_output_stops_at_max_tokens() -> None:
    model = fl.ScriptedLLM([fl.Reply(text="word " * 400)])
    reply = model.complete([fl.Message(role="user", content="go")], [], max_tokens=7)
    assert reply.usage is not None and reply.usage.output_tokens == 7


def record(d: Driver, *events: object) -> None:
    for event in events:
        at, n = d.now(), len(d.log) + 1
        d.log.append(Recorded(run_id="r", seq=n, position=n, at=at, event=event))
        d.state = evolve(d.state, d.log[-1])


def test_a_run_recorded_before_calls_reserved_goes_on_by_its_own_rule() -> None:
    d = Driver()
    record(  # recorded by an older foldloop: the whole ceiling asked, no reserve
        d,
        RunStarted(agent="a", input="hi", limits=Limits(max_tokens=100)),
        ModelRequested(step=1, prompt_digest="old", max_tokens=100),
    )
    decision = d.send(Resume(now=d.now(), owner="o"))
    assert decision.effects == (CallModel(step=1, max_tokens=100),)  # as it was asked


def test_a_pending_call_that_a_new_ceiling_leaves_no_room_for_is_not_asked_again() -> None:
    d = Driver()  # no token ceiling: the call went out without max_tokens
    d.start()
    d.reply([("add", "{}")], usage=Usage(input_tokens=3_000, output_tokens=2_500))
    d.finish(d.state.calls[0].call_id)  # ... and the runtime stopped while it was out
    decision = d.send(Resume(now=d.now(), owner="o", extend=Limits(max_tokens=5_600)))
    assert not any(isinstance(e, CallModel) for e in decision.effects)  # never unbounded
    assert d.state.status is RunStatus.LIMIT_REACHED
    assert "leaves no room for the next model call" in d.state.reason
    again = d.send(Resume(now=d.now(), owner="o", extend=Limits(max_tokens=50_000)))
    (call,) = again.effects
    assert isinstance(call, CallModel) and call.step == 2
    assert call.max_tokens == 50_000 - 5_500 - call.prompt_bound


def test_a_limit_reason_shows_whole_numbers_and_dollars_as_people_read_them() -> None:
    d = Driver(Limits(max_tokens=3_000_000))
    d.start()
    d.reply([("add", "{}")], usage=Usage(input_tokens=2_999_000, output_tokens=900))
    d.finish(d.state.calls[0].call_id)
    assert d.state.reason.startswith(
        "max_tokens ceiling 3,000,000 leaves no room for the next model call: 2,999,900 spent"
    )
    p = Driver(Limits(max_cost_usd=0.01), price=(3.0, 15.0))
    p.start()
    p.reply([("add", "{}")], usage=Usage(input_tokens=100, output_tokens=10, cost_usd=0.0095))
    p.finish(p.state.calls[0].call_id)
    assert "max_cost_usd ceiling $0.01 leaves no room" in p.state.reason
    assert "$0.0095 spent" in p.state.reason


def test_explain_names_the_ceiling_that_would_let_the_next_call_fit() -> None:
    d = Driver(Limits(max_tokens=3_000_000))
    d.start()
    d.reply([("add", "{}")], usage=Usage(input_tokens=2_999_000, output_tokens=900))
    d.finish(d.state.calls[0].call_id)
    reached = d.log[-1].event
    assert isinstance(reached, RunLimitReached)
    told = explain(d.state, d.log)
    assert told.limit == "max_tokens = 2,999,900 of 3,000,000"
    (step,) = told.next_steps
    least = f"{int(reached.value + reached.needed):,}"
    assert step == (
        f"raise the ceiling to at least {least}: rt.resume(run_id, "
        "extend=fl.Limits(max_tokens=...))"
    )


def test_explain_of_a_run_whose_approval_expired_says_how_to_ask_again() -> None:
    d = Driver()
    d.start()
    d.reply([("send", "{}")], gated=(ticket(index=0),))
    (call,) = d.state.calls
    d.send(ExpireApproval(now=d.now(), call_id=call.call_id))
    assert d.state.status is RunStatus.AWAITING_APPROVAL
    assert explain(d.state, d.log).next_steps == (
        f"the approval requests of {call.call_id} expired: rt.resume('r') asks again with "
        "new tokens",
    )


def test_explain_of_a_child_that_ended_by_itself_says_to_start_anew_from_the_root() -> None:
    d = Driver(Limits(max_steps=1))
    d.start()
    d.state = msgspec.structs.replace(d.state, parent_run_id="lead")
    d.reply([("add", "{}")])
    d.finish(d.state.calls[0].call_id)
    (step,) = explain(d.state, d.log).next_steps
    assert step == (
        "nothing here: it is a sub-agent's child, and its parent lead has its outcome (a "
        "failed call); start a new run with higher ceilings at its root"
    )
    # the command line says the same, not "resume it" (which would be refused)
    from foldloop.cli._hints import advice

    assert advice("r", d.state.status, d.state, d.log) == step
    for status, failure, says in [
        (RunStatus.NO_PROGRESS, None, step),
        (
            RunStatus.FAILED,
            RunFailureKind.MODEL,
            step.removesuffix(" with higher ceilings at its root"),
        ),
        (RunStatus.FAILED, RunFailureKind.ERROR, "start a new run: "),  # nothing to resume
    ]:
        other = msgspec.structs.replace(d.state, status=status, failure=failure)
        (said,) = explain(other, d.log).next_steps
        assert said.startswith(says), (status, said)
        assert advice("r", status, other, d.log).startswith(says), (status, failure)


def test_a_reply_priced_above_what_its_call_reserved_is_logged(store_path: Path) -> None:
    dearer = fl.Reply(
        text="hi", model="gpt-4o", usage=Usage(input_tokens=2_000, output_tokens=1_000)
    )
    agent = fl.Agent(
        name="a",
        llm=fl.ScriptedLLM([dearer], model="gpt-4o-mini"),  # a proxy answered with gpt-4o
        limits=fl.Limits(max_cost_usd=0.002),
    )
    with capture_logs() as logs, fl.Runtime.open(store_path, agents=[agent]) as rt:
        result = rt.spawn(agent, "go").wait(timeout=10)
    assert result.usage.cost_usd == pytest.approx((2_000 * 2.50 + 1_000 * 10.00) / 1e6)
    (over,) = [e for e in logs if e["event"] == "model_usage_over_reserved"]
    assert over["model"] == "gpt-4o" and over["run_id"] == result.run_id
    assert 0 < over["reserved_usd"] < over["cost_usd"]


@settings(max_examples=60, deadline=None)
@given(st.integers(1, 40), st.floats(0.05, 20.0), st.floats(0.1, 80.0))
def test_the_dollar_ceiling_explain_names_lets_the_next_call_fit(
    result_kb: int, per_input: float, per_output: float
) -> None:
    d = Driver(Limits(max_cost_usd=0.05), price=(per_input, per_output))
    d.start()
    d.reply([("add", "{}")], usage=Usage(input_tokens=10, output_tokens=1, cost_usd=0.0499))
    d.finish(d.state.calls[0].call_id, result="x" * result_kb * 1_000)
    reached = d.log[-1].event
    if not isinstance(reached, RunLimitReached):
        return  # the call fit after all
    (step,) = explain(d.state, d.log).next_steps
    shown = step.split("to at least $")[1].split(":")[0]
    resumed = d.send(Resume(now=d.now(), owner="o", extend=Limits(max_cost_usd=float(shown))))
    assert any(isinstance(e, CallModel) for e in resumed.effects), (step, d.state.reason)


def test_an_interrupted_child_is_charged_its_allotment_where_it_caps_and_its_spend_elsewhere() -> (
    None
):
    d = Driver(Limits(max_steps=9))  # an allotment of steps only
    d.start()
    d.state = msgspec.structs.replace(d.state, parent_run_id="lead", parent_call_id="c")
    d.reply([("add", "{}")], usage=Usage(input_tokens=5_000, output_tokens=40, cost_usd=0.02))
    told = child_finished(d.state, d.now(), lambda text: (text, None), interrupted="lost")
    assert told.steps == 9  # the whole allotment: it may be recovered and go on
    assert (told.usage.total_tokens, told.usage.cost_usd) == (5_040, 0.02)  # what it spent

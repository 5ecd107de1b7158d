"""The pure core: fold laws, message order, limits, and a stateful machine over decide()."""

from __future__ import annotations

import functools
import itertools
from typing import Any

import msgspec
import pytest
from hypothesis import given, note, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from foldloop.core import (
    INITIAL,
    ApprovalTicket,
    CallModel,
    CallState,
    Cancel,
    DecideApproval,
    Decision,
    ExpireApproval,
    ModelCallFailed,
    ModelReplied,
    RequestApproval,
    Resume,
    RunState,
    RunStatus,
    RunTools,
    Settle,
    Start,
    ToolFinished,
    decide,
    evolve,
    fold,
    fold_events,
    replay,
)
from foldloop.core._evolve import Draft
from foldloop.core._messages import History, Message
from foldloop.errors import NondeterminismError
from foldloop.events import (
    ApprovalDecided,
    ApprovalExpired,
    ApprovalRequested,
    Limits,
    ModelFailed,
    ModelRequested,
    ModelResponded,
    Recorded,
    RunCompleted,
    RunFailed,
    RunResumed,
    RunStarted,
    ToolCall,
    ToolCompleted,
    ToolFailed,
    ToolInfo,
    ToolRequested,
    Usage,
)
from foldloop.events._catalogue import RunFailureKind
from tests.strategies import any_event

TOOLS = (
    ToolInfo(name="add", idempotent=True, schema_digest="a"),
    ToolInfo(name="send", idempotent=False, schema_digest="s"),
)


def records(events: list[Any], run_id: str = "r", start_seq: int = 1) -> list[Recorded]:
    return [
        Recorded(
            run_id=run_id, seq=start_seq + i, position=start_seq + i, at=1000 * (i + 1), event=e
        )
        for i, e in enumerate(events)
    ]


@given(st.lists(any_event, max_size=30), st.integers(0, 30))
def test_fold_is_a_left_fold_over_any_split(events: list[Any], cut: int) -> None:
    log = records(events)
    cut = min(cut, len(log))
    assert fold(log) == fold(log[cut:], fold(log[:cut]))


@st.composite
def step_shaped_logs(draw: st.DrawFn) -> list[Any]:
    """Logs shaped like real runs (a reply's calls requested, gated, decided, finished in
    any order, in any number), with any other event dropped in now and then: what the
    fold's fast paths and their hand-offs to ``apply`` must get exactly right."""
    ids = st.sampled_from(["c1", "c2", "c3", "zz"])
    text = st.sampled_from(["", "ok", "same", "x" * 40])
    events: list[Any] = [RunStarted(agent="a", input="go", tools=TOOLS)]
    for step in range(1, draw(st.integers(1, 6)) + 1):
        events.append(ModelRequested(step=step, prompt_digest="d"))
        n = draw(st.integers(0, 3))
        calls = tuple(
            ToolCall(id=f"c{i}", name=draw(st.sampled_from(["add", "send"])), args="{}")
            for i in range(1, n + 1)
        )
        usage = Usage(input_tokens=draw(st.integers(0, 9)), cost_usd=draw(st.floats(0, 1)))
        events.append(ModelResponded(step=step, text=draw(text), tool_calls=calls, usage=usage))
        finish = st.one_of(
            st.builds(ToolCompleted, call_id=ids, result=text),
            st.builds(ToolFailed, call_id=ids, error=text, kind=st.sampled_from(KINDS)),
        )
        gate = st.one_of(
            st.builds(
                ApprovalRequested,
                call_id=ids,
                gate=st.just("g"),
                token_digest=st.just("t"),
                expires_at=st.just(9),
            ),
            st.builds(ApprovalDecided, call_id=ids, approved=st.booleans()),
            st.builds(ApprovalExpired, call_id=ids),
        )
        request = st.builds(ToolRequested, call_id=ids, tool=st.just("add"), args=st.just("{}"))
        events += draw(st.lists(st.one_of(finish, finish, request, gate), max_size=8))
        if draw(st.integers(0, 9)) == 0:  # now and then a failure, a parking, a resume...
            events.append(draw(st.one_of(st.just(ModelFailed(step=step, error="e")), any_event)))
    return events


KINDS = ["exception", "timeout", "invalid_args", "interrupted", "denied"]


@settings(max_examples=120)
@given(step_shaped_logs(), st.integers(0, 60))
def test_fold_equals_evolving_event_by_event(events: list[Any], cut: int) -> None:
    log = records(events)
    states = list(itertools.accumulate(log, evolve, initial=INITIAL))
    for n, expected in enumerate(states):  # every prefix: a divergence may heal later on
        assert fold(log[:n]) == expected, n
    cut = min(cut, len(log))
    assert fold(log[cut:], fold(log[:cut])) == states[-1]
    # The same fold from (event, at) pairs, as Runtime.state reads them from the store.
    pairs = [(r.event, r.at) for r in log]
    assert fold_events("r", pairs[cut:], fold_events("r", pairs[:cut])) == states[-1]
    assert fold_events("r", pairs[cut:], states[cut]) == states[-1]


@st.composite
def repetitive_logs(draw: st.DrawFn) -> tuple[list[Any], list[tuple[str, str, str, str]]]:
    """Steps of one or two calls, each requested and then finished in order, drawn from so
    few tools and outcomes that steps often repeat the last one exactly; and every finished
    call's (tool, args, status, result), in order."""
    events: list[Any] = [RunStarted(agent="a", input="go", tools=TOOLS)]
    finished: list[tuple[str, str, str, str]] = []
    for step in range(1, draw(st.integers(1, 8)) + 1):
        calls = [
            (f"c{i}", draw(st.sampled_from(["add", "send"])), draw(st.sampled_from(["ok", "same"])))
            for i in range(1, draw(st.integers(1, 2)) + 1)
        ]
        ok = draw(st.lists(st.booleans(), min_size=len(calls), max_size=len(calls)))
        asked = tuple(ToolCall(id=i, name=tool, args="{}") for i, tool, _ in calls)
        events += [ModelRequested(step=step, prompt_digest="d")]
        events += [ModelResponded(step=step, tool_calls=asked)]
        events += [
            ToolRequested(call_id=i, tool=tool, args="{}", step=step) for i, tool, _ in calls
        ]
        for (call_id, tool, result), done in zip(calls, ok, strict=True):
            if done:
                events.append(ToolCompleted(call_id=call_id, result=result))
            else:
                events.append(ToolFailed(call_id=call_id, error=result, kind="exception"))
            finished.append((tool, "{}", "completed" if done else "failed", result))
    return events, finished


@given(repetitive_logs())
def test_fold_counts_repeated_calls_as_evolve_does(
    drawn: tuple[list[Any], list[tuple[str, str, str, str]]],
) -> None:
    """No-progress detection counts the finished calls at the end of the run that equal
    the last one (tool, args and outcome); the fold's fast path counts exactly that."""
    events, finished = drawn
    log = records(events)
    trailing = len(finished) - next(
        (i + 1 for i in range(len(finished) - 1, -1, -1) if finished[i] != finished[-1]), 0
    )
    state = fold(log)
    assert state == functools.reduce(evolve, log, INITIAL)
    assert (state.repeat_sig, state.repeat_count) == (finished[-1], trailing)


def test_fold_events_names_the_run_only_once_it_has_an_event() -> None:
    assert fold_events("r", []) == INITIAL  # as fold([]): an empty log is no run yet
    state = fold_events("r", [(RunStarted(agent="a", input="go"), 5)])
    assert (state.run_id, state.seq, state.last_at) == ("r", 1, 5)
    assert fold_events("other", [], state) is state  # a state keeps its own run


@given(st.lists(any_event, max_size=30))
def test_evolve_is_total_and_deterministic(events: list[Any]) -> None:
    log = records(events)
    assert fold(log) == fold(log)
    assert fold(log).seq == len(log)


class Driver:
    """Feeds commands to decide() and keeps the log, as a RunActor would."""

    def __init__(self, limits: Limits = Limits(), price: tuple[float, float] | None = None) -> None:
        self.log: list[Recorded] = []
        self.state = RunState(run_id="r")
        self.clock = itertools.count(1_000, 1_000)
        self.limits = limits
        self.price = price

    def send(self, command: Any) -> Decision:
        decision = decide(self.state, command)
        for event in decision.events:
            rec = Recorded(
                run_id="r",
                seq=self.state.seq + 1,
                position=len(self.log) + 1,
                at=command.now,
                event=event,
            )
            self.log.append(rec)
            self.state = evolve(self.state, rec)
        return decision

    def now(self) -> int:
        return next(self.clock)

    def start(self, input: str = "hi") -> Decision:
        return self.send(
            Start(
                now=self.now(),
                agent="a",
                input=input,
                tools=TOOLS,
                limits=self.limits,
                price=self.price,
            )
        )

    def reply(
        self,
        calls: list[tuple[str, str]] = (),
        text: str = "",
        usage: Usage = Usage(),
        gated: tuple[ApprovalTicket, ...] = (),
    ) -> Decision:
        return self.send(
            ModelReplied(
                now=self.now(),
                step=self.state.model_pending,
                text=text,
                tool_calls=tuple(ToolCall(id="", name=n, args=a) for n, a in calls),
                usage=usage,
                gated=gated,
            )
        )

    def finish(self, call_id: str, result: str = "ok", ok: bool = True, kind: str = "") -> Decision:
        return self.send(
            ToolFinished(now=self.now(), call_id=call_id, ok=ok, result=result, kind=kind)
        )


def test_tool_results_reach_the_model_in_the_order_it_asked() -> None:
    d = Driver()
    d.start()
    d.reply([("add", '{"n":1}'), ("add", '{"n":2}'), ("add", '{"n":3}')])
    ids = [c.call_id for c in d.state.calls]
    for call_id in reversed(ids):  # completion order is the reverse
        d.finish(call_id, result=f"r-{call_id}")
    tool_messages = [m for m in d.state.messages if m.role == "tool"]
    assert [m.tool_call_id for m in tool_messages] == ids
    assert [m.content for m in tool_messages] == [f"r-{i}" for i in ids]


@given(st.permutations(range(5)))
def test_message_history_is_independent_of_completion_order(order: list[int]) -> None:
    histories = []
    for permutation in (list(range(5)), order):
        d = Driver()
        d.start()
        d.reply([("add", f'{{"n":{i}}}') for i in range(5)])
        ids = [c.call_id for c in d.state.calls]
        for i in permutation:
            d.finish(ids[i], result=str(i))
        histories.append(d.state.messages)
    assert histories[0] == histories[1]


def test_max_steps_stops_before_the_next_model_call() -> None:
    d = Driver(Limits(max_steps=2))
    d.start()
    d.reply([("add", "{}")])
    d.finish(d.state.calls[0].call_id)
    d.reply([("add", "{}")])
    decision = d.finish(d.state.calls[0].call_id)
    assert d.state.status is RunStatus.LIMIT_REACHED
    assert not any(isinstance(e, CallModel) for e in decision.effects)
    assert "max_steps" in d.state.reason and d.state.resumable
    resumed = d.send(Resume(now=d.now(), owner="o", extend=Limits(max_steps=3)))
    assert d.state.status is RunStatus.RUNNING
    assert d.state.limits.max_steps == 3
    assert any(isinstance(e, CallModel) and e.step == 3 for e in resumed.effects)


def test_max_cost_and_max_seconds_are_checked_before_actions() -> None:
    d = Driver(Limits(max_cost_usd=0.5))
    d.start()
    d.reply([("add", "{}")], usage=Usage(cost_usd=0.6))
    assert d.state.status is RunStatus.LIMIT_REACHED
    assert d.log[-1].event.limit == "max_cost_usd"
    assert all(c.status == "proposed" for c in d.state.calls)  # no tool was requested

    t = Driver(Limits(max_seconds=1))
    t.clock = iter([0, 2_000_000_000, 2_000_000_001])
    t.start()
    t.reply([("add", "{}")])
    assert t.state.status is RunStatus.LIMIT_REACHED
    assert t.log[-1].event.limit == "max_seconds"


def test_a_model_call_cut_at_max_seconds_stops_the_run_there() -> None:
    """The call is told how long the ceiling leaves it; cut there, the run stops at the
    ceiling (not retried), even when the run's own clock says less has passed (the cut
    is the runtime's monotonic clock: an injected clock, or one stepped back)."""
    t = Driver(Limits(max_seconds=1))
    t.clock = iter([0, 200_000_000, 400_000_000])
    started = t.start()
    (call,) = [e for e in started.effects if isinstance(e, CallModel)]
    assert call.within_s == 1.0
    failed = t.send(ModelCallFailed(now=t.now(), step=1, error="e", retryable=True))
    (again,) = [e for e in failed.effects if isinstance(e, CallModel)]
    assert again.within_s == pytest.approx(0.8)  # from the decision: its backoff counts
    cut = ModelCallFailed(now=t.now(), step=1, error="cut", retryable=True, out_of_time=True)
    t.send(cut)
    assert t.state.status is RunStatus.LIMIT_REACHED
    assert [r.type for r in t.log[-2:]] == ["model.failed", "run.limit_reached"]
    assert t.log[-2].event.out_of_time and t.log[-1].event.limit == "max_seconds"
    assert Driver(Limits()).start().effects[0].within_s is None  # no ceiling: not cut


def test_no_progress_stops_after_the_same_result_n_times() -> None:
    d = Driver(Limits(no_progress=3))
    d.start()
    for _ in range(3):
        d.reply([("add", '{"a":1}')])
        d.finish(d.state.calls[0].call_id, result="same")
    assert d.state.status is RunStatus.NO_PROGRESS
    assert "same result 3 times" in d.log[-1].event.detail


def test_three_invalid_args_in_one_step_fail_the_run_with_a_reason() -> None:
    d = Driver()
    d.start()
    d.reply([("add", "x"), ("add", "y"), ("nope", "{}")])
    for call in d.state.calls[:2]:
        d.finish(call.call_id, result="Expected `int`", ok=False, kind="invalid_args")
    assert d.state.status is RunStatus.FAILED
    assert "invalid tool arguments 3 times" in d.state.reason
    assert "no tool named 'nope'" in d.state.calls[2].result


def test_two_invalid_args_are_fed_back_and_the_run_goes_on() -> None:
    d = Driver()
    d.start()
    d.reply([("add", "x"), ("add", "{}")])
    d.finish(d.state.calls[0].call_id, result="bad", ok=False, kind="invalid_args")
    decision = d.finish(d.state.calls[1].call_id)
    assert d.state.status is RunStatus.RUNNING
    assert any(isinstance(e, CallModel) for e in decision.effects)
    assert "error (invalid_args): bad" in [m.content for m in d.state.messages]


def test_resume_reruns_idempotent_and_interrupts_non_idempotent_calls() -> None:
    d = Driver()
    d.start()
    d.reply([("add", "{}"), ("send", "{}")])
    add_id, send_id = (c.call_id for c in d.state.calls)
    decision = d.send(Resume(now=d.now(), owner="o2"))  # the old owner died mid-step
    assert decision.effects == (RunTools(calls=(decision.effects[0].calls[0],)),)
    assert decision.effects[0].calls[0].call_id == add_id
    failed = d.log[-1].event
    assert failed.call_id == send_id and failed.kind == "interrupted"
    assert "unknown" in d.state.messages[-1].content or d.state.calls[1].kind == "interrupted"


def test_resume_reasks_an_unanswered_model_call_with_the_same_prompt() -> None:
    d = Driver()
    first = d.start()
    requested = d.log[-1].event
    decision = d.send(Resume(now=d.now(), owner="o2"))
    assert decision.effects == (CallModel(step=1, max_tokens=first.effects[0].max_tokens),)
    assert d.state.model_pending == 1
    assert requested.prompt_digest  # the digest of what was asked, unchanged in the log


def test_model_failures_retry_with_backoff_then_fail() -> None:
    d = Driver()
    d.start()
    delays = []
    for _ in range(5):
        decision = d.send(ModelCallFailed(now=d.now(), step=1, error="429", retryable=True))
        delays.extend(e.delay_s for e in decision.effects if isinstance(e, CallModel))
    assert delays == sorted(delays) and len(delays) == 4
    assert d.state.status is RunStatus.FAILED and "429" in d.state.reason


@given(asked=st.lists(st.floats(min_value=0, max_value=1e6), min_size=4, max_size=4))
def test_a_retry_waits_what_the_provider_asked_up_to_a_minute(asked: list[float]) -> None:
    """Each retry waits the longer of the run's backoff and the provider's Retry-After,
    never past a minute (and never less than the backoff)."""
    d = Driver()
    d.start()
    for attempt, wait in enumerate(asked, start=1):
        failed = ModelCallFailed(
            now=d.now(), step=1, error="429", retryable=True, retry_after_s=wait
        )
        (call,) = [e for e in d.send(failed).effects if isinstance(e, CallModel)]
        backoff = min(8.0, 0.25 * 2 ** (attempt - 1))
        assert call.delay_s == max(backoff, min(wait, 60.0))


def test_cancel_is_final_and_late_results_are_recorded_but_not_acted_on() -> None:
    d = Driver()
    d.start()
    d.reply([("add", "{}")])
    d.send(Cancel(now=d.now(), reason="user"))
    late = d.finish(d.state.calls[0].call_id)
    assert d.state.status is RunStatus.CANCELLED
    assert late.effects == ()
    assert decide(d.state, Resume(now=d.now(), owner="x")).rejected


def test_replay_detects_a_changed_decision() -> None:
    d = Driver()
    d.start()
    d.reply(text="done")
    assert replay(d.log).status is RunStatus.COMPLETED
    tampered = [
        *d.log[:-1],
        Recorded(run_id="r", seq=4, position=4, at=1, event=RunCompleted(output="other")),
    ]
    with pytest.raises(NondeterminismError, match="seq 4") as info:
        replay(tampered)
    assert info.value.seq == 4
    assert info.value.recorded == RunCompleted(output="other")
    assert info.value.new == RunCompleted(output="done")


def ticket(index: int = -1, call_id: str = "", expires_at: int = 10**18) -> ApprovalTicket:
    return ApprovalTicket(
        index=index,
        call_id=call_id,
        gate="g",
        token_digest=f"d{index}{call_id}",
        expires_at=expires_at,
    )


class RunMachine(RuleBasedStateMachine):
    """Random commands against decide(): the log must always fold and replay to one state.

    ``send`` is gated: every call to it waits for a person before it may run.
    """

    def __init__(self) -> None:
        super().__init__()
        self.d = Driver(Limits(max_steps=6, no_progress=3, max_seconds=1e6))  # cut only
        self.d.start()
        self.executed: dict[tuple[str, str], int] = {}
        self.approved: set[str] = set()
        self.status_before = self.d.state.status

    def perform(self, decision: Decision) -> None:
        before = self.status_before
        self.status_before = self.d.state.status
        if before is RunStatus.RUNNING and self.d.state.status is not RunStatus.RUNNING:
            # Every decision that takes a run out of running hands it back (parks it).
            assert Settle() in decision.effects, decision
        for effect in decision.effects:
            if isinstance(effect, RunTools):
                for call in effect.calls:
                    key = (call.call_id, call.tool)
                    self.executed[key] = self.executed.get(key, 0) + 1

    @precondition(
        lambda self: self.d.state.model_pending and self.d.state.status is RunStatus.RUNNING
    )
    @rule(
        calls=st.lists(
            st.tuples(st.sampled_from(["add", "send", "nope"]), st.sampled_from(["{}", '{"a":1}'])),
            max_size=3,
        ),
        text=st.sampled_from(["", "thinking", "final"]),
    )
    def model_replies(self, calls: list[tuple[str, str]], text: str) -> None:
        gated = tuple(ticket(index=i) for i, (name, _) in enumerate(calls) if name == "send")
        self.perform(
            self.d.send(
                ModelReplied(
                    now=self.d.now(),
                    step=self.d.state.model_pending,
                    text=text,
                    tool_calls=tuple(ToolCall(id="", name=n, args=a) for n, a in calls),
                    gated=gated,
                )
            )
        )

    @precondition(lambda self: any(c.status == "awaiting_approval" for c in self.d.state.calls))
    @rule(data=st.data(), verdict=st.sampled_from(["approve", "deny", "expire"]))
    def a_person_decides(self, data: st.DataObject, verdict: str) -> None:
        waiting = [c for c in self.d.state.calls if c.status == "awaiting_approval"]
        call = data.draw(st.sampled_from(waiting))
        now = self.d.now()
        if verdict == "expire":
            command: Any = ExpireApproval(now=now, call_id=call.call_id)
        else:
            command = DecideApproval(
                now=now, call_id=call.call_id, approved=verdict == "approve", by="p", note="n"
            )
            if verdict == "approve":
                self.approved.add(call.call_id)
        self.perform(self.d.send(command))

    @precondition(
        lambda self: self.d.state.model_pending and self.d.state.status is RunStatus.RUNNING
    )
    @rule(retryable=st.booleans(), out_of_time=st.booleans())
    def model_fails(self, retryable: bool, out_of_time: bool) -> None:
        step = self.d.state.model_pending
        failed = ModelCallFailed(
            now=self.d.now(), step=step, error="e", retryable=retryable, out_of_time=out_of_time
        )
        self.perform(self.d.send(failed))

    @precondition(lambda self: any(c.status == "requested" for c in self.d.state.calls))
    @rule(
        data=st.data(),
        ok=st.booleans(),
        kind=st.sampled_from(["exception", "timeout", "invalid_args"]),
    )
    def tool_finishes(self, data: st.DataObject, ok: bool, kind: str) -> None:
        pending = [c for c in self.d.state.calls if c.status == "requested"]
        call = data.draw(st.sampled_from(pending))
        result = data.draw(st.sampled_from(["1", "2"]))
        self.perform(self.d.finish(call.call_id, result=result, ok=ok, kind="" if ok else kind))

    @rule()
    def crash_and_resume(self) -> None:
        # A resume asks again for expired approvals and for held-back gated calls.
        again = tuple(
            ticket(call_id=c.call_id)
            for c in self.d.state.calls
            if c.tool == "send" and c.status in ("expired", "proposed")
        )
        self.perform(
            self.d.send(
                Resume(now=self.d.now(), owner="o", extend=Limits(max_steps=8), gated=again)
            )
        )

    @rule()
    def cancel(self) -> None:
        self.perform(self.d.send(Cancel(now=self.d.now(), reason="r")))

    @invariant()
    def log_folds_to_the_live_state(self) -> None:
        assert fold(self.d.log, RunState(run_id="r")) == self.d.state
        assert [r.seq for r in self.d.log] == list(range(1, len(self.d.log) + 1))

    @invariant()
    def log_replays_through_decide(self) -> None:
        note(f"log: {[r.type for r in self.d.log]}")
        assert replay(self.d.log) == fold(self.d.log)

    @invariant()
    def non_idempotent_calls_never_run_twice(self) -> None:
        for (call_id, tool), times in self.executed.items():
            if tool == "send":
                assert times == 1, call_id
                assert call_id in self.approved, f"gated {call_id} ran without approval"

    @invariant()
    def steps_never_exceed_the_ceiling(self) -> None:
        assert self.d.state.steps <= self.d.state.limits.steps_ceiling

    @invariant()
    def settled_runs_have_reasons(self) -> None:
        s = self.d.state
        if s.status not in (RunStatus.RUNNING, RunStatus.COMPLETED):
            assert s.reason


TestRunMachine = RunMachine.TestCase


def test_initial_state_is_empty() -> None:
    assert INITIAL.seq == 0 and not INITIAL.started
    assert Settle() == Settle()


def test_a_gated_call_waits_parks_and_is_decided_exactly_once() -> None:
    d = Driver()
    d.start()
    decision = d.reply([("send", '{"to":"x"}'), ("add", "{}")], gated=(ticket(index=0),))
    send_id, add_id = (c.call_id for c in d.state.calls)
    assert [type(e).__name__ for e in decision.events] == [
        "ModelResponded",
        "ApprovalRequested",
        "ToolRequested",
    ]
    assert RequestApproval(call_id=send_id, gate="g") in decision.effects
    assert d.state.status is RunStatus.RUNNING  # add is still running
    parked = d.finish(add_id)
    assert Settle() in parked.effects
    assert d.state.status is RunStatus.AWAITING_APPROVAL
    assert d.state.reason == f"waiting for a person to approve or deny {send_id} (send)"

    approved = d.send(DecideApproval(now=d.now(), call_id=send_id, approved=True, by="alice"))
    assert [c.call_id for e in approved.effects if isinstance(e, RunTools) for c in e.calls] == [
        send_id
    ]
    assert approved.durable  # send is not idempotent: its intent is fsync'd first
    again = decide(d.state, DecideApproval(now=d.now(), call_id=send_id, approved=False))
    assert again.rejected  # decided once
    d.finish(send_id, result="sent")
    assert d.state.status is RunStatus.RUNNING
    assert replay(d.log) == fold(d.log)


def test_a_denied_call_never_runs_and_the_model_hears_the_note() -> None:
    d = Driver()
    d.start()
    d.reply([("send", "{}")], gated=(ticket(index=0),))
    (call,) = d.state.calls
    denied = d.send(
        DecideApproval(now=d.now(), call_id=call.call_id, approved=False, note="too risky")
    )
    assert not any(isinstance(e, RunTools) for e in denied.effects)
    assert any(isinstance(e, CallModel) for e in denied.effects)
    assert d.state.messages[-1].content == "denied by a person: too risky"
    assert d.log[-2].event.kind == "denied"


def test_an_expired_approval_is_asked_again_with_a_fresh_token_on_resume() -> None:
    d = Driver()
    d.start()
    d.reply([("send", "{}")], gated=(ticket(index=0),))
    (call,) = d.state.calls
    d.send(ExpireApproval(now=d.now(), call_id=call.call_id))
    assert d.state.status is RunStatus.AWAITING_APPROVAL
    assert "expired" in d.state.reason
    fresh = ApprovalTicket(call_id=call.call_id, gate="g", token_digest="fresh", expires_at=10**18)
    d.send(Resume(now=d.now(), owner="o", gated=(fresh,)))
    assert d.log[-1].event.token_digest == "fresh"
    assert d.state.calls[0].status == "awaiting_approval"
    assert replay(d.log) == fold(d.log)


@given(st.integers(0, 300), st.integers(0, 5))
def test_a_snapshot_split_into_chunks_restores_the_same_state(n: int, extra: int) -> None:
    from foldloop.core._messages import CHUNK, History, Message, push
    from foldloop.core._snapshot import encode_chunk, full_chunks, restore_state, split_state

    history = push(History(), [Message(role="user", content=f"m{i}") for i in range(n)])
    state = RunState(run_id="r", seq=n + extra, history=history)
    blob, chunks = split_state(state)
    assert len(chunks) == full_chunks(history.chunks) == n // CHUNK
    assert all(len(c) == CHUNK for c in chunks)
    assert restore_state(blob, [encode_chunk(c) for c in chunks]) == state
    # Chunks written before they were deflated still read back.
    plain = [msgspec.msgpack.encode(c) for c in chunks]
    assert restore_state(blob, plain) == state
    if chunks:
        with pytest.raises(msgspec.DecodeError):
            restore_state(blob, [b"z" + b"not deflated"])


@given(
    st.lists(st.tuples(st.integers(0, 70), st.booleans()), max_size=12),
    st.sampled_from([0, 1, 63, 64, 65]),
)
def test_a_history_digest_asked_at_any_point_is_the_digest_of_all_its_messages(
    pushes: list[tuple[int, bool]], snapshot_after: int
) -> None:
    """The digest is computed lazily from a memo that push hands on and a snapshot
    keeps: asked after any pushes, or never until the end, it must be the running digest
    of every message (what prompt digests recorded in older logs were made of)."""
    from foldloop.core._messages import CHUNK, History, Message, flatten, history_digest, push
    from foldloop.core._snapshot import encode_chunk, restore_state, split_state

    history, count = History(), 0
    for size, ask in pushes:
        history = push(
            history, [Message(role="user", content=f"m{count + i}") for i in range(size)]
        )
        count += size
        # Every message once, in order, in chunks all full but the last (none empty).
        assert [m.content for m in flatten(history)] == [f"m{i}" for i in range(count)]
        assert all(len(c) == CHUNK for c in history.chunks[:-1])
        assert all(history.chunks)
        if ask:
            assert history.digest == history_digest(flatten(history))
        if count >= snapshot_after and snapshot_after:
            blob, chunks = split_state(RunState(run_id="r", seq=count, history=history))
            restored = restore_state(blob, [encode_chunk(c) for c in chunks]).history
            assert restored == history
            assert restored.digest_memo == history.digest_memo  # resumes hash only the tail
            history = restored
    assert history.size == count
    assert history.digest == history_digest(flatten(history))
    assert history.digest_memo == (count, history.digest)
    # The memo is no part of equality or of the encoded state.
    fresh = History(history.chunks)
    assert fresh == history and fresh.digest_memo == (0, "")
    assert msgspec.msgpack.encode(fresh) == msgspec.msgpack.encode(history)
    # A memo claiming more messages than there are (a damaged snapshot) is not believed.
    assert History(history.chunks).remember(count + 1, "bogus").digest == history.digest


@settings(max_examples=200)
@given(step_shaped_logs())
def test_a_draft_builds_back_the_state_it_was_made_of(events: list[Any]) -> None:
    """The fold and decide thaw a state into a Draft and build it back: nothing changes."""
    for state in itertools.accumulate(records(events), evolve, initial=INITIAL):
        assert Draft(state).state() == state


def test_a_draft_builds_back_every_field_in_its_place() -> None:
    state = RunState(
        run_id="r",
        seq=2,
        started=True,
        agent="a",
        input="i",
        instructions="s",
        limits=Limits(max_steps=3),
        tools=TOOLS,
        tools_digest="d",
        status=RunStatus.FAILED,
        reason="why",
        output="o",
        steps=4,
        usage=Usage(input_tokens=5, output_tokens=6, cost_usd=7.0),
        model_pending=8,
        model_failures=9,
        calls=(
            CallState(
                call_id="c",
                tool="t",
                args="{}",
                status="failed",
                result="r",
                kind="timeout",
                original_chars=10,
            ),
        ),
        invalid_args_in_step=11,
        repeat_sig=("t", "{}", "failed", "r"),
        repeat_count=12,
        active_since=13,
        active_before_ns=14,
        last_at=15,
        unknown_events=16,
        history=History(((Message(role="user", content="hi"),),)),
        failure=RunFailureKind.MODEL,
    )
    assert Draft(state).state() == state


def test_a_failed_run_is_resumable_by_its_failure_kind_not_its_wording() -> None:
    started = RunStarted(agent="a", input="go")
    model = fold(records([started, RunFailed(kind="model", error="timed out")]))
    assert model.failure is RunFailureKind.MODEL
    assert model.resumable and not model.terminal
    for kind in ("invalid_args", "error", "modelling_went_wrong"):
        state = fold(records([started, RunFailed(kind=kind, error="model call failed")]))
        assert state.status is RunStatus.FAILED and state.failure is not RunFailureKind.MODEL
        assert not state.resumable and state.terminal, kind
    resumed = fold(records([started, RunFailed(kind="model", error="x"), RunResumed(owner="o")]))
    assert resumed.status is RunStatus.RUNNING and resumed.failure is None


def test_a_cut_result_or_error_is_told_with_its_length() -> None:
    d = Driver()
    d.start()
    d.reply([("add", "{}"), ("send", "{}")])
    first, second = (c.call_id for c in d.state.calls)
    d.send(ToolFinished(now=d.now(), call_id=first, ok=True, result="abc", original_chars=10))
    d.send(
        ToolFinished(
            now=d.now(), call_id=second, ok=False, result="boo", kind="exception", original_chars=7
        )
    )
    told = [m.content for m in d.state.messages if m.role == "tool"]
    assert told == [
        "abc\n[cut: the tool returned 10 characters; only the first 3 are shown, 7 were left out]",
        "error (exception): boo\n[cut: the tool returned 7 characters; only the first 3 are "
        "shown, 4 were left out]",
    ]
    assert replay(d.log) == fold(d.log)  # the lengths are recorded and replay


def test_a_log_whose_resume_took_ceilings_todays_rule_would_raise_still_replays() -> None:
    # Before 2026-12-07 an extension below an unset ceiling's default lowered it (max_steps=1
    # on a run at the default 25 recorded 1); such a log must still replay exactly.
    d = Driver(Limits(max_steps=2))
    d.start()
    d.reply([("add", "{}")])
    d.finish(d.state.calls[0].call_id)
    d.reply([("add", "{}")])
    d.finish(d.state.calls[0].call_id)
    assert d.state.status is RunStatus.LIMIT_REACHED
    as_then = Limits(max_steps=3, max_depth=0)  # max_depth unset (3): today it stays 3
    d.send(Resume(now=d.now(), owner="o", recorded=as_then))
    assert d.state.limits == as_then
    assert replay(d.log) == fold(d.log)
    assert Limits(max_steps=2).extended(as_then).depth_ceiling == 3  # what today's rule takes

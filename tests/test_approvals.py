"""Approval gates through the public API: decided exactly once, from any process."""

from __future__ import annotations

import getpass
import hashlib
import math
import os
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop._approvals import PendingApproval
from tests.log_capture import capture_logs
from tests.waiting import wait_until


class Ledger:
    """Effects that really happened (outside the log)."""

    def __init__(self) -> None:
        self.lines: list[str] = []
        self.lock = threading.Lock()

    def add(self, line: str) -> None:
        with self.lock:
            self.lines.append(line)


@pytest.fixture
def ledger() -> Ledger:
    return Ledger()


def make_agent(ledger: Ledger, name: str = "pay", **gate: object) -> fl.Agent:
    @fl.tool(name="pay")
    def pay(to: str, cents: int) -> str:
        """Pay someone (an effect that must not happen twice)."""
        ledger.add(f"pay {to} {cents}")
        return f"paid {to}"

    @fl.tool(name="balance", idempotent=True)
    def balance() -> int:
        """Read the balance."""
        return 100

    def model(messages: object, tools: object) -> fl.Reply:
        msgs = list(messages)  # type: ignore[call-overload]
        if sum(1 for m in msgs if m.role == "assistant") == 0:
            return fl.Reply(
                tool_calls=[
                    fl.ToolCall("pay", {"to": "bob", "cents": 5}),
                    fl.ToolCall("balance", {}),
                ]
            )
        return fl.Reply(text="results: " + " | ".join(m.content for m in msgs if m.role == "tool"))

    return fl.Agent(
        name=name,
        llm=fl.ScriptedLLM(model),
        tools=[pay, balance],
        approvals=fl.RequireApproval({"pay"}, **gate),  # type: ignore[arg-type]
    )


def _await_ready(proc: subprocess.Popen[str]) -> None:
    """Read the child's lines up to READY (its runtime is open); fail if it dies first."""
    assert proc.stdout is not None
    while (line := proc.stdout.readline()).strip() != "READY":
        assert line, f"the child exited ({proc.wait()}) before it was ready"


def completed(rt: fl.Runtime, run_id: str) -> Callable[[], bool]:
    """A predicate: the run has completed."""
    return lambda: rt.state(run_id).status is fl.RunStatus.COMPLETED


def in_log(rt: fl.Runtime, run_id: str, kind: str) -> Callable[[], bool]:
    """A predicate: an event of type ``kind`` is in the run's log."""
    return lambda: any(r.type == kind for r in rt.events(run_id))


def logged(logs: list[dict[str, Any]], event: str) -> Callable[[], bool]:
    """A predicate: ``event`` is among the captured log events."""
    return lambda: any(e["event"] == event for e in logs)


def test_a_gated_call_parks_the_run_and_runs_once_when_approved(
    rt: fl.Runtime, ledger: Ledger
) -> None:
    told: list[PendingApproval] = []
    agent = make_agent(ledger, notify=told.append)
    run = rt.spawn(agent, "pay bob")
    parked = run.wait(timeout=30)
    assert parked.status is fl.RunStatus.AWAITING_APPROVAL
    assert parked.resumable
    assert "pay" in parked.reason
    assert ledger.lines == []  # not before approval
    assert not rt.system.active(run.id)  # parked: no actor, no thread
    (pending,) = rt.pending_approvals()
    assert (pending.run_id, pending.tool, pending.args) == (
        run.id,
        "pay",
        {"to": "bob", "cents": 5},
    )
    assert pending.token is not None
    wait_until(lambda: told, 10, "the notify callback to be told")
    assert told[0].token == pending.token
    requested = next(r.event for r in rt.events(run.id) if r.type == "approval.requested")
    assert pending.token not in requested.token_digest  # only a digest is stored
    record = rt.store.approval(run.id, pending.call_id)
    assert record is not None
    assert (record.tool, record.args_digest) == (
        "pay",
        hashlib.sha256(record.args.encode()).hexdigest(),
    )
    assert pending.token.encode() not in (rt.store.path / "data.mdb").read_bytes()

    rt.approve(pending.token, by="alice", note="ok")
    wait_until(completed(rt, run.id), 10, "the approved run to complete")
    assert ledger.lines == ["pay bob 5"]
    assert rt.pending_approvals() == []
    decided = [r.event for r in rt.events(run.id) if r.type == "approval.decided"]
    assert [(d.approved, d.by, d.note) for d in decided] == [(True, "alice", "ok")]
    decided_seq = next(r.seq for r in rt.events(run.id) if r.type == "approval.decided")
    with pytest.raises(
        fl.ApprovalError, match=rf"already approved by 'alice' at .* \(seq {decided_seq} "
    ):
        rt.approve(pending.token, by="mallory")
    with pytest.raises(fl.ApprovalError, match="unknown or forged"):
        rt.approve("x" * 43)
    assert rt.verify(run.id).status is fl.RunStatus.COMPLETED
    assert ledger.lines == ["pay bob 5"]


def test_a_denied_call_never_runs_and_the_model_hears_why(rt: fl.Runtime, ledger: Ledger) -> None:
    agent = make_agent(ledger)
    run = rt.spawn(agent, "pay bob")
    assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    (pending,) = rt.pending_approvals()
    rt.deny(run_id=run.id, call_id=pending.call_id, by="carol", note="not this month")
    wait_until(completed(rt, run.id), 10, "the run, its call denied, to complete")
    assert ledger.lines == []
    output = rt.state(run.id).output
    assert "denied by a person: not this month" in output
    assert "100" in output  # the ungated call ran and its result reached the model
    failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
    assert [(f.kind, f.error) for f in failed] == [("denied", "not this month")]


def test_a_cancelled_run_leaves_no_request_to_decide(store_path: Path, ledger: Ledger) -> None:
    """A run that ends while it waits closes its requests in the same append: nothing is
    listed, and a decision (here or from another process) is refused, not silently kept."""
    agent = make_agent(ledger)
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        run = rt.spawn(agent, "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
        run.cancel(reason="changed my mind")
        assert run.wait(timeout=30).status is fl.RunStatus.CANCELLED
        assert rt.pending_approvals() == []
        with pytest.raises(fl.ApprovalError, match="no longer waits on call"):
            rt.approve(run_id=run.id, call_id=pending.call_id, by="alice")
        with pytest.raises(fl.ApprovalError, match="no longer waits on call"):
            rt.approve(pending.token, by="alice")
    with fl.Runtime.open(store_path) as other:  # another runtime, without the agent
        assert other.pending_approvals() == []
        with pytest.raises(fl.ApprovalError, match="no longer waits on call"):
            other.deny(run_id=run.id, call_id=pending.call_id, by="bob")
        assert other.state(run.id).status is fl.RunStatus.CANCELLED
    assert ledger.lines == []


@pytest.mark.parametrize("verdict", ["approve", "deny"])
def test_a_decision_a_cancel_overtakes_is_in_the_log_before_the_cancel(
    store_path: Path, ledger: Ledger, verdict: str
) -> None:
    """A decision taken while no runtime with the agent could carry it in, then a cancel:
    the cancel carries the decision into the log first (it was acknowledged: the log, not
    only the approvals table, says who decided), and the call never runs."""
    agent = make_agent(ledger)
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        run = rt.spawn(agent, "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
    with fl.Runtime.open(store_path) as other:  # without the agent: it cannot carry it in
        getattr(other, verdict)(run_id=run.id, call_id=pending.call_id, by="alice")
        other.handle(run.id).cancel(reason="changed my mind")
        events = [r.event for r in other.events(run.id)]
        decided = [e for e in events if isinstance(e, fl.events.ApprovalDecided)]
        assert [(e.call_id, e.approved, e.by) for e in decided] == [
            (pending.call_id, verdict == "approve", "alice")
        ]
        assert isinstance(events[-1], fl.events.RunCancelled)
        times = [r.at for r in other.events(run.id)]
        assert times == sorted(times)  # the cancel is timed after what it carried in
        assert other.state(run.id).status is fl.RunStatus.CANCELLED
        assert other.pending_approvals() == []
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        rt.verify(run.id)  # the decision and the cancel replay as decide() takes them
    assert ledger.lines == []


def test_a_decision_a_cancel_carries_in_that_ends_the_run_is_how_it_ends(
    store_path: Path,
) -> None:
    """The carried denial finishes a step of three invalid-argument calls: the run fails
    (as it would where the decision reached it first), and the cancel after it is moot."""

    @fl.tool(name="pay")
    def pay(to: str) -> str:
        """Pay someone."""
        return "paid " + to

    def model(messages: object, tools: object) -> fl.Reply:
        bad = [fl.ToolCall("pay", {"wrong": i}) for i in range(3)]
        return fl.Reply(tool_calls=[*bad, fl.ToolCall("pay", {"to": "bob"})])

    agent = fl.Agent(
        name="bad-args",
        llm=fl.ScriptedLLM(model),
        tools=[pay],
        approvals=fl.RequireApproval(tools=lambda name, args: "to" in args),
    )
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        run = rt.spawn(agent, "x")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
    with fl.Runtime.open(store_path) as other:
        other.deny(run_id=run.id, call_id=pending.call_id, by="alice")
        other.handle(run.id).cancel(reason="changed my mind")
        types = [r.type for r in other.events(run.id)]
        assert types[-3:] == ["approval.decided", "tool.failed", "run.failed"], types
        assert other.pending_approvals() == []
    with fl.Runtime.open(store_path, agents=[agent]) as rt:
        rt.verify(run.id)


def test_a_limit_reached_while_parked_keeps_the_other_requests_decidable(
    store_path: Path,
) -> None:
    """A limit ends a run resumably: its open requests stay open (only a run nothing can
    continue closes them), so after resume(extend=...) they are listed and can be decided."""

    @fl.tool(name="pay")
    def pay(to: str) -> str:
        """Pay someone."""
        return "paid " + to

    def model(messages: object, tools: object) -> fl.Reply:
        if not any(m.role == "assistant" for m in messages):  # type: ignore[attr-defined]
            return fl.Reply(
                tool_calls=[fl.ToolCall("pay", {"to": "a"}), fl.ToolCall("pay", {"to": "b"})]
            )
        return fl.Reply(text="done")

    agent = fl.Agent(
        name="pay2",
        llm=fl.ScriptedLLM(model),
        tools=[pay],
        approvals=fl.RequireApproval({"pay"}),
        limits=fl.Limits(max_seconds=0.5),
    )
    now = [1_700_000_000 * 10**9]
    with fl.Runtime.open(store_path, agents=[agent], clock=lambda: now[0]) as rt:
        run = rt.spawn(agent, "pay both")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        first, second = sorted(rt.pending_approvals(), key=lambda p: p.call_id)
        now[0] += 10**9  # a second parked: past max_seconds
        rt.approve(first.token, by="alice")
        assert run.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
        assert second.call_id in [p.call_id for p in rt.pending_approvals()]
        rt.resume(run.id, extend=fl.Limits(max_seconds=100))
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        rt.approve(run_id=run.id, call_id=second.call_id, by="alice")  # not refused
        assert second.call_id not in [p.call_id for p in rt.pending_approvals()]


def test_an_expired_request_is_refused_then_asked_again_on_resume(
    store_path: Path, ledger: Ledger
) -> None:
    now = [1_000_000_000_000]
    clock = lambda: now[0]  # noqa: E731 - an injectable clock
    with fl.Runtime.open(store_path, clock=clock) as rt:
        agent = make_agent(ledger, ttl=60)
        run = rt.spawn(agent, "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (first,) = rt.pending_approvals()
        now[0] += 61 * 10**9
        assert rt.pending_approvals() == []
        with pytest.raises(fl.ApprovalError, match="expired at"):
            rt.approve(first.token)
        wait_until(in_log(rt, run.id, "approval.expired"), 10, "approval.expired in the log")
        assert "expired" in rt.state(run.id).reason
        rt.resume(run.id).wait(timeout=30)
        (second,) = rt.pending_approvals()
        assert second.token != first.token
        assert second.call_id == first.call_id
        # The expired token must not decide the request asked again.
        with pytest.raises(fl.ApprovalError, match=r"earlier request.*asked again"):
            rt.approve(first.token, by="mallory")
        assert rt.store.approval(run.id, first.call_id).status == "pending"  # type: ignore[union-attr]
        rt.approve(second.token, by="dave")
        wait_until(completed(rt, run.id), 10, "the run approved on its second request")
        assert ledger.lines == ["pay bob 5"]
        assert rt.verify(run.id).status is fl.RunStatus.COMPLETED


def test_ids_beside_a_token_must_be_the_tokens(store_path: Path, ledger: Ledger) -> None:
    with fl.Runtime.open(store_path) as rt:
        agent = make_agent(ledger)
        a = rt.spawn(agent, "pay bob", run_id="run-a")
        b = rt.spawn(agent, "pay bob", run_id="run-b")
        for run in (a, b):
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        by_run = {p.run_id: p for p in rt.pending_approvals()}
        token_a = by_run["run-a"].token
        with pytest.raises(fl.ApprovalError, match="token is for run 'run-a'"):
            rt.approve(token_a, run_id="run-b", call_id=by_run["run-b"].call_id, by="eve")
        with pytest.raises(fl.ApprovalError, match="token is for run 'run-a'"):
            rt.deny(token_a, run_id="run-a", call_id="no-such-call", by="eve")
        assert {p.run_id for p in rt.pending_approvals()} == {"run-a", "run-b"}  # untouched
        rt.approve(token_a, run_id="run-a", call_id=by_run["run-a"].call_id, by="alice")
        assert a.wait(timeout=30).status is fl.RunStatus.COMPLETED
        assert ledger.lines == ["pay bob 5"]


def test_several_gated_calls_are_decided_each_on_its_own(rt: fl.Runtime, ledger: Ledger) -> None:
    @fl.tool(name="pay")
    def pay(to: str) -> str:
        """Pay."""
        ledger.add(f"pay {to}")
        return f"paid {to}"

    replies = [
        fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": n}) for n in ("a", "b", "c")]),
        fl.Reply(text="done"),
    ]
    agent = fl.Agent(
        name="multi",
        llm=fl.ScriptedLLM(replies),
        tools=[pay],
        approvals=fl.RequireApproval({"pay"}),
    )
    run = rt.spawn(agent, "go")
    assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    pending = {p.args["to"]: p for p in rt.pending_approvals()}
    assert set(pending) == {"a", "b", "c"}
    rt.approve(run_id=run.id, call_id=pending["b"].call_id)
    # The ledger has "pay b" a moment before the run records the call's outcome and parks
    # again: wait for the outcome in the log, then the run must be waiting for a and c.
    wait_until(in_log(rt, run.id, "tool.completed"), 10, "the approved call's outcome")
    assert ledger.lines == ["pay b"]
    assert rt.state(run.id).status is fl.RunStatus.AWAITING_APPROVAL
    rt.deny(pending["a"].token)
    rt.approve(pending["c"].token)
    # the same handle waits through the re-parks until the decisions reach the run
    assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED
    assert sorted(ledger.lines) == ["pay b", "pay c"]
    messages = [m for m in rt.state(run.id).messages if m.role == "tool"]
    assert [m.content for m in messages] == ["denied by a person", "paid b", "paid c"]


def test_a_notify_callback_that_raises_is_logged_and_the_request_stays(
    rt: fl.Runtime, ledger: Ledger
) -> None:
    def broken(pending: PendingApproval) -> None:
        raise RuntimeError("the chat service is down")

    agent = make_agent(ledger, notify=broken)
    with capture_logs() as logs:
        run = rt.spawn(agent, "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        wait_until(logged(logs, "approval_notify_failed"), 10, "approval_notify_failed logged")
    assert len(rt.pending_approvals()) == 1
    rt.approve(rt.pending_approvals()[0].token)
    wait_until(completed(rt, run.id), 10, "the approved run to complete")


def test_a_decision_from_another_process_is_picked_up_while_this_one_runs(
    store_path: Path, ledger: Ledger
) -> None:
    with fl.Runtime.open(store_path) as rt:
        agent = make_agent(ledger)
        run = rt.spawn(agent, "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
        code = textwrap.dedent(
            f"""
            import foldloop as fl
            with fl.Runtime.open({str(store_path)!r}) as other:  # no agent registered there
                other.approve(run_id={run.id!r}, call_id={pending.call_id!r}, by="remote")
            print("APPROVED", flush=True)
            """
        )
        proc = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, timeout=60
        )
        assert "APPROVED" in proc.stdout, proc.stderr
        started = time.monotonic()
        wait_until(completed(rt, run.id), 10, "the poller to carry the remote approval to the end")
        assert time.monotonic() - started < 5  # the poller looks every 100 ms
        assert ledger.lines == ["pay bob 5"]
        assert [r.event.by for r in rt.events(run.id) if r.type == "approval.decided"] == ["remote"]


def test_two_processes_racing_to_decide_have_exactly_one_winner_each_time(
    store_path: Path, ledger: Ledger
) -> None:
    races = 100
    with fl.Runtime.open(store_path) as rt:
        agent = make_agent(ledger)
        runs = [rt.spawn(agent, f"r{i}", run_id=f"race-{i}") for i in range(races)]
        for run in runs:
            assert run.wait(timeout=60).status is fl.RunStatus.AWAITING_APPROVAL
        requests = sorted((p.run_id, p.call_id) for p in rt.pending_approvals())
        assert len(requests) == races
    go = store_path.parent / "go"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        import foldloop as fl
        name = sys.argv[1]
        requests = {requests!r}
        with fl.Runtime.open({str(store_path)!r}) as rt:
            print("READY", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.001)
            for run_id, call_id in requests:
                try:
                    rt.approve(run_id=run_id, call_id=call_id, by=name)
                    print("WON", run_id, flush=True)
                except fl.ApprovalError as exc:
                    assert "already approved by" in str(exc), exc
        """
    )
    procs = [
        subprocess.Popen([sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True)
        for name in ("left", "right")
    ]
    for proc in procs:
        _await_ready(proc)
    go.write_text("go")
    outputs = [proc.communicate(timeout=120)[0] for proc in procs]
    assert all(proc.returncode == 0 for proc in procs)
    wins = [
        {line.split()[1] for line in out.splitlines() if line.startswith("WON")} for out in outputs
    ]
    assert len(wins[0]) + len(wins[1]) == races  # every request decided ...
    assert not wins[0] & wins[1]  # ... by exactly one of them
    with fl.Runtime.open(store_path) as rt:
        for run_id, call_id in requests:
            record = rt.store.approval(run_id, call_id)
            assert record is not None
            assert record.status == "approved"
            assert run_id in wins[0 if record.by == "left" else 1]


def test_one_thread_of_a_runtime_at_a_time_takes_a_run(store_path: Path, ledger: Ledger) -> None:
    """What the approvals desk, resume and cancel rely on: while one thread of a runtime
    holds a run, another is refused at once (or, waiting, gets it once it is given back)."""
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(make_agent(ledger), "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        epoch = rt.system.take(run.id)
        refused: list[BaseException] = []
        other = threading.Thread(target=lambda: _try(lambda: rt.system.take(run.id), refused))
        other.start()
        other.join(timeout=10)
        assert [type(e) for e in refused] == [fl.RunLocked]
        taken: list[int] = []
        waiting = threading.Thread(target=lambda: taken.append(rt.system.take(run.id, wait=30)))
        waiting.start()
        rt.system.give_back(run.id, epoch)
        waiting.join(timeout=30)
        assert taken == [epoch + 1]
        rt.system.give_back(run.id, taken[0])


def _try(fn: Callable[[], object], errors: list[BaseException]) -> None:
    try:
        fn()
    except BaseException as exc:
        errors.append(exc)


def _approve_to_the_end(rt: fl.Runtime, run: fl.types.RunHandle) -> None:
    """Approve the parked run's one request by its token; the run must then complete."""
    (pending,) = [p for p in rt.pending_approvals() if p.run_id == run.id]
    rt.approve(pending.token, by="alice")
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.COMPLETED, (run.id, result.reason)


def test_approving_as_a_run_parks_never_fences_the_run_the_approval_starts(
    store_path: Path, ledger: Ledger
) -> None:
    """The host's approve and the runtime's own poller both carry a decision into its run;
    only one may drive it, or the other fences it off and the run ends interrupted after
    its tool ran, its outcome lost."""
    with fl.Runtime.open(store_path, poll_interval=0.002) as rt:
        agent = make_agent(ledger)
        for i in range(60):
            run = rt.spawn(agent, f"r{i}")
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
            _approve_to_the_end(rt, run)
        assert ledger.lines == ["pay bob 5"] * 60


def test_resuming_as_the_poller_records_an_expiry_then_approving_finishes_every_run(
    store_path: Path, ledger: Ledger
) -> None:
    """expire -> resume -> approve, with the poller carrying the expiry as the host resumes:
    the resume waits for that hand-over (no RunLocked from its own runtime), and the run
    ends completed with its tool run once."""
    now = [1_000_000_000_000]
    with fl.Runtime.open(store_path, poll_interval=0.002, clock=lambda: now[0]) as rt:
        agent = make_agent(ledger, ttl=60)
        for i in range(30):
            run = rt.spawn(agent, f"r{i}")
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
            now[0] += 61 * 10**9
            wait_until(in_log(rt, run.id, "approval.expired"), 10, f"approval.expired in {run.id}")
            handle = rt.resume(run.id)
            assert handle.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
            _approve_to_the_end(rt, handle)
        assert ledger.lines == ["pay bob 5"] * 30


def test_two_processes_with_the_agent_racing_to_approve_finish_every_run_once(
    store_path: Path, tmp_path: Path
) -> None:
    """Both deciders drive what they approve: one wins each decision (the loser's write
    commits nothing), exactly one of them carries it into the run, and every run ends
    completed with its tool run once."""
    ledger = tmp_path / "ledger"
    ledger.touch()
    env = {**os.environ, "FOLDLOOP_TEST_LEDGER": str(ledger)}
    sys.path.insert(0, str(Path(__file__).parent))
    try:
        from pool_agents import payer
    finally:
        sys.path.pop(0)
    runs = 60
    with fl.Runtime.open(store_path) as rt:
        for i in range(runs):
            parked = rt.spawn(payer, f"t{i}", run_id=f"pay-{i}").wait(timeout=30)
            assert parked.status is fl.RunStatus.AWAITING_APPROVAL
        requests = sorted((p.run_id, p.call_id) for p in rt.pending_approvals())
    go = tmp_path / "go"
    code = textwrap.dedent(
        f"""
        import os, sys, time
        sys.path.insert(0, {str(Path(__file__).parent)!r})
        import foldloop as fl
        from pool_agents import payer
        with fl.Runtime.open({str(store_path)!r}, agents=[payer]) as rt:
            print("READY", flush=True)
            while not os.path.exists({str(go)!r}):
                time.sleep(0.001)
            for run_id, call_id in {requests!r}:
                try:
                    rt.approve(run_id=run_id, call_id=call_id, by=sys.argv[1])
                except fl.ApprovalError:
                    pass
            deadline = time.monotonic() + 60
            while time.monotonic() < deadline and not all(
                rt.state(r).terminal for r, _c in {requests!r}
            ):
                time.sleep(0.01)
        """
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, name], stdout=subprocess.PIPE, text=True, env=env
        )
        for name in ("left", "right")
    ]
    for proc in procs:
        _await_ready(proc)
    go.write_text("go")
    for proc in procs:
        proc.communicate(timeout=120)
        assert proc.returncode == 0
    assert sorted(ledger.read_text().split()) == sorted(f"t{i}" for i in range(runs))
    with fl.Runtime.open(store_path, agents=[payer]) as rt:
        for run_id, _call_id in requests:
            state = rt.verify(run_id)
            assert state.status is fl.RunStatus.COMPLETED, (run_id, state.reason)


def _threads_outside_pools() -> int:
    """Live threads, less the model and tool pools' workers: those are bounded by their
    pools' limits, and how many a burst of runs starts depends on timing."""
    pools = ("foldloop-model-", "foldloop-tool-", "foldloop-notify-")
    return sum(1 for t in threading.enumerate() if not t.name.startswith(pools))


def test_pending_requests_cost_no_thread(rt: fl.Runtime, ledger: Ledger) -> None:
    agent = make_agent(ledger)
    rt.spawn(agent, "warm").wait(timeout=30)
    # At rest: the warm run is no longer active (the shards', gate's and tools' actors live on).
    wait_until(lambda: rt.system.active_count() == 0, 10, "the warm run to deactivate")
    before = _threads_outside_pools()
    handles = [rt.spawn(agent, f"p{i}") for i in range(50)]
    assert {h.wait(timeout=60).status for h in handles} == {fl.RunStatus.AWAITING_APPROVAL}
    assert len(rt.pending_approvals()) == 51
    assert not any(rt.system.active(h.id) for h in handles)
    # Fifty parked runs: none is active, and no thread was started for any of them.
    assert rt.system.active_count() == 0
    assert _threads_outside_pools() == before


def test_a_notify_callback_that_hangs_is_logged_and_the_run_is_untouched(
    rt: fl.Runtime, ledger: Ledger
) -> None:
    release = threading.Event()
    agent = make_agent(ledger, notify=lambda pending: release.wait(30), notify_timeout=0.2)
    try:
        with capture_logs() as logs:
            run = rt.spawn(agent, "pay bob")
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
            wait_until(logged(logs, "approval_notify_timed_out"), 10, "the notify timeout logged")
        rt.approve(rt.pending_approvals()[0].token)
        wait_until(completed(rt, run.id), 10, "the approved run to complete")
    finally:
        release.set()


def test_every_notify_runs_before_close_returns(store_path: Path, ledger: Ledger) -> None:
    """A host that closes the runtime as soon as wait() says a run is parked still gets
    every token: the notify handed to the gate runs before close returns (a slow one too,
    within its notify_timeout)."""
    told: list[str] = []

    def notify(pending: PendingApproval) -> None:
        time.sleep(0.005)  # a chat message takes a moment
        assert pending.token is not None
        told.append(pending.run_id)

    agent = make_agent(ledger, notify=notify)
    for i in range(40):
        with fl.Runtime.open(store_path) as rt:
            run = rt.spawn(agent, "pay bob", run_id=f"park-{i}")
            assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        assert told == [f"park-{k}" for k in range(i + 1)]


def test_a_parked_run_outlives_its_runtime_and_continues_elsewhere(
    store_path: Path, ledger: Ledger
) -> None:
    spawner = textwrap.dedent(
        f"""
        import sys
        sys.path.insert(0, {str(Path(__file__).parent.parent)!r})
        import foldloop as fl
        from tests.test_approvals import Ledger, make_agent
        with fl.Runtime.open({str(store_path)!r}) as rt:
            run = rt.spawn(make_agent(Ledger()), "pay bob", run_id="orphan")
            print(run.wait(timeout=30).status.value, flush=True)
        """
    )
    out = subprocess.run(
        [sys.executable, "-c", spawner], capture_output=True, text=True, timeout=60
    )
    assert "awaiting_approval" in out.stdout.splitlines(), out.stderr
    with fl.Runtime.open(store_path) as bystander:  # no agent: it can only decide
        (pending,) = bystander.pending_approvals()
        assert pending.token is None  # issued by another runtime: only its ids are known
        bystander.approve(run_id="orphan", call_id=pending.call_id, by="ops")
        assert bystander.state("orphan").status is fl.RunStatus.AWAITING_APPROVAL
    with fl.Runtime.open(store_path, agents=[make_agent(ledger)]) as rt:
        wait_until(completed(rt, "orphan"), 10, "the orphan, approved elsewhere, to complete")
    assert ledger.lines == ["pay bob 5"]


def test_the_cli_lists_and_decides_approvals(store_path: Path, ledger: Ledger) -> None:
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(make_agent(ledger), "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [sys.executable, "-m", "foldloop.cli", "--store", str(store_path), *args],
                capture_output=True,
                text=True,
                timeout=60,
            )

        listed = cli("approvals")
        assert listed.returncode == 0
        assert pending.call_id in listed.stdout
        assert "pay" in listed.stdout
        assert cli("approve").returncode == 2  # neither a token nor --run/--call
        forged = cli("approve", "not-a-token")
        assert forged.returncode == 3  # not found
        assert "unknown or forged" in forged.stderr
        nobody = cli("approve", "--run", run.id, "--call", pending.call_id, "--by", " ")
        assert nobody.returncode == 2
        assert "--by is empty" in nobody.stderr
        huge = cli("approve", "--run", run.id, "--call", pending.call_id, "--note", "n" * 70_000)
        assert huge.returncode == 2
        assert "over the 65,536 a decision may carry" in huge.stderr
        assert "expired" not in huge.stderr  # the hint for a request that is not waiting
        assert rt.pending_approvals() == [pending]  # neither was recorded
        denied = cli("deny", "--run", run.id, "--call", pending.call_id, "--note", "no")
        assert denied.returncode == 0, denied.stderr
        again = cli("approve", "--run", run.id, "--call", pending.call_id, "--by", "cli")
        assert again.returncode == 1
        # no --by: who decided is this user's login name, not ''
        assert f"already denied by {getpass.getuser()!r}" in again.stderr
        wait_until(completed(rt, run.id), 10, "our poller to carry the denial to the end")
    assert ledger.lines == []


@pytest.mark.parametrize(
    ("how", "says"),
    [
        pytest.param({"note": 123}, "note must be a str; got int", id="note-int"),
        pytest.param({"by": None}, "by must be a str; got NoneType", id="by-none"),
        pytest.param({"note": "x" * 2_000_000}, "over the 65,536 a decision", id="note-huge"),
        pytest.param({"note": "caf\udce9"}, "unpaired surrogate", id="note-surrogate"),
        pytest.param({"token": 123}, "token must be a str", id="token-int"),
        pytest.param({"run_id": 123, "call_id": "c"}, "run_id must be", id="run-id-int"),
        pytest.param({"call_id": 7}, "call_id must be a str", id="call-id-int"),
    ],
)
def test_a_bad_decision_is_refused_before_anything_is_written(
    store_path: Path, ledger: Ledger, how: dict[str, object], says: str
) -> None:
    # A note of 123 was stored and made every later read of the store fail as corrupt; one
    # over 1 MiB left its run waiting for ever, no decision possible.
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(make_agent(ledger), "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
        given: dict[str, object] = {"run_id": run.id, "call_id": pending.call_id, **how}
        if "token" in how:
            given = {"token": how["token"]}
        with pytest.raises(fl.ConfigError, match=says):
            rt.deny(**given)  # type: ignore[arg-type]
        assert [p.call_id for p in rt.pending_approvals()] == [pending.call_id]
        assert rt.runs()[0].status is fl.RunStatus.AWAITING_APPROVAL
        rt.approve(run_id=run.id, call_id=pending.call_id, by="alice", note="fine")
        assert run.wait(timeout=30, through_approvals=True).ok
    assert ledger.lines == ["pay bob 5"]


def test_the_cli_refuses_a_note_that_is_not_utf_8_as_a_usage_error(
    store_path: Path, ledger: Ledger
) -> None:
    with fl.Runtime.open(store_path) as rt:
        run = rt.spawn(make_agent(ledger), "pay bob")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = rt.pending_approvals()
    command = [sys.executable, "-m", "foldloop.cli", "--store", str(store_path), "deny"]
    command += ["--run", run.id, "--call", pending.call_id, "--note"]
    done = subprocess.run(
        [os.fsencode(a) for a in command] + [b"caf\xe9"], capture_output=True, timeout=60
    )
    assert done.returncode == 2, done.stderr
    assert b"unpaired surrogate" in done.stderr and b"Traceback" not in done.stderr
    with fl.Runtime.open(store_path) as rt:
        assert [p.call_id for p in rt.pending_approvals()] == [pending.call_id]


def test_a_run_imported_parked_at_an_approval_is_decidable_there(tmp_path: Path) -> None:
    """Export and import move a parked run's requests with it, decidable by ids in the new
    store; the token issued where it came from decides nothing there (a copy re-exported
    holds the original's digest: a token that travelled could decide another run)."""
    from tests.pool_agents import gated

    with fl.Runtime.open(tmp_path / "a", agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (asked,) = rt.pending_approvals()
        lines = list(rt.export(run.id))
    assert asked.token is not None
    with fl.Runtime.open(tmp_path / "b", agents=[gated]) as there:
        there.import_jsonl(lines)
        copy = there.import_jsonl(lines, run_id="copy")
        listed = {(p.run_id, p.call_id) for p in there.pending_approvals()}
        assert listed == {(run.id, asked.call_id), (copy, asked.call_id)}
        with pytest.raises(fl.ApprovalError, match="unknown or forged"):
            there.approve(asked.token, by="carried")
        there.approve(run_id=run.id, call_id=asked.call_id, by="ids")
        assert there.handle(run.id).wait(timeout=30).output == "2"  # carried in
        assert [(p.run_id, p.call_id) for p in there.pending_approvals()] == [(copy, asked.call_id)]
        back = list(there.export(copy))  # the copy, home again under its own id
    with fl.Runtime.open(tmp_path / "a", agents=[gated]) as rt:
        rt.import_jsonl(back)
        with pytest.raises(fl.ApprovalError):  # the original's token is not the copy's
            rt.approve(asked.token, run_id=copy, call_id=asked.call_id)
        rt.approve(asked.token, by="original")  # and still decides the original
        assert rt.handle(run.id).wait(timeout=30).output == "2"
        assert rt.state(copy).status is fl.RunStatus.AWAITING_APPROVAL


def test_a_request_missing_beside_its_log_says_how_to_restore_it(store_path: Path) -> None:
    """What a crash between a JetStream write's log and its records leaves (made here by
    removing the record): approving by ids says the log waits, and what restores it."""
    from foldloop.store._approvals import approval_key
    from tests.pool_agents import gated

    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (asked,) = rt.pending_approvals()
        key = approval_key(run.id, asked.call_id)
        rt.store.submit(lambda w: w.txn.delete(key, db=rt.store.tables.approvals)).wait()
        with pytest.raises(
            fl.ApprovalError, match=r"its log says it waits.*rt.resume\(.*\) restores the request"
        ):
            rt.approve(run_id=run.id, call_id=asked.call_id)


def test_two_agents_policies_on_the_default_gate_each_tell_their_own_notify(
    tmp_path: Path,
) -> None:
    told: dict[str, list[str]] = {"ops": [], "billing": []}
    done = threading.Semaphore(0)

    def teller(who: str) -> Callable[[PendingApproval], None]:
        def notify(p: PendingApproval) -> None:
            told[who].append(p.run_id)
            done.release()

        return notify

    @fl.tool
    def charge(amount: int) -> str:
        """Charge a card."""
        return "charged"

    def gated(name: str) -> fl.Agent:
        llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("charge", {"amount": 5})])])
        policy = fl.RequireApproval({"charge"}, notify=teller(name))
        return fl.Agent(name=name, llm=llm, tools=[charge], approvals=policy)

    ops, billing = gated("ops"), gated("billing")
    with fl.Runtime.open(tmp_path / "s", agents=[ops, billing]) as rt:
        first, second = rt.spawn(ops, "go"), rt.spawn(billing, "go")
        assert done.acquire(timeout=30) and done.acquire(timeout=30)
        assert told == {"ops": [first.id], "billing": [second.id]}
        for run in (first, second):
            run.cancel()


@pytest.mark.parametrize(
    ("setting", "says"),
    [
        ({"ttl": math.inf}, "ttl must be a number of seconds > 0 and at most"),
        ({"ttl": 1e12}, "ttl must be a number of seconds > 0 and at most"),
        ({"ttl": True}, "ttl must be a number of seconds > 0 and at most"),
        ({"ttl": 0}, "ttl must be a number of seconds > 0 and at most"),
        ({"notify": 5}, "notify must be None or a callable"),
        ({"notify_timeout": -1}, "notify_timeout must be a number of seconds"),
        ({"gate": ""}, "gate must be a non-empty name"),
    ],
)
def test_a_policy_no_request_could_keep_is_refused_where_it_is_written(
    setting: dict[str, object], says: str
) -> None:
    with pytest.raises(fl.ConfigError, match=says):
        fl.RequireApproval({"charge"}, **setting)  # type: ignore[arg-type]

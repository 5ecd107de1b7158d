"""``run.wait()``: where it returns by default (at the end or at a park), how
``through_approvals=True`` waits on to the end whoever decides or resumes, and timeouts."""

from __future__ import annotations

import inspect
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.events._catalogue import ApprovalDecided

TESTS = Path(__file__).resolve().parent
HEAD_START = 0.2
"""Seconds a decider lets a blocked wait() run first: a wait that stopped at parks would
have returned by then, so only one that waits through them sees the run end."""


@fl.tool(name="pay")
def pay(to: str) -> str:
    """Pay someone."""
    return f"paid {to}"


def gated(name: str, payments: int, ttl: float = 3600.0) -> fl.Agent:
    """An agent that pays ``payments`` people one step at a time, each payment gated, so
    its run parks once per payment; then it says done."""

    def model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        paid = sum(1 for m in messages if m.role == "tool")
        if paid < payments:
            return fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": f"p{paid}"})])
        return fl.Reply(text=f"done after {paid}")

    return fl.Agent(
        name=name,
        llm=fl.ScriptedLLM(model),
        tools=[pay],
        approvals=fl.RequireApproval({"pay"}, ttl=ttl),
    )


ONCE = gated("once", 1)
EXPIRING = gated("expiring", 1, ttl=1.0)


def wait_until(predicate: Callable[[], object], timeout: float, what: str) -> None:
    """Return once ``predicate()`` is true; fail naming ``what`` after ``timeout`` s."""
    deadline = time.monotonic() + timeout
    while not predicate():
        assert time.monotonic() < deadline, f"waited {timeout} s for {what}"
        time.sleep(0.01)


def decisions(rt: fl.Runtime, run_id: str) -> list[tuple[bool, str]]:
    """(approved, by) of each approval.decided in the run's log."""
    return [
        (r.event.approved, r.event.by)
        for r in rt.events(run_id)
        if isinstance(r.event, ApprovalDecided)
    ]


def parked(rt: fl.Runtime, agent: fl.Agent) -> tuple[fl.types.RunHandle, fl.types.PendingApproval]:
    """A run of ``agent`` parked at its first gate, and the request it waits on."""
    run = rt.spawn(agent, "pay")
    result = run.wait(timeout=30)  # by default wait() returns at a park
    assert result.status is fl.RunStatus.AWAITING_APPROVAL, result
    assert result.resumable
    (pending,) = rt.pending_approvals()
    return run, pending


def test_wait_through_approvals_returns_the_end_when_another_thread_approves(
    rt: fl.Runtime,
) -> None:
    run, pending = parked(rt, ONCE)
    decider = threading.Timer(HEAD_START, rt.approve, [pending.token], {"by": "alice"})
    decider.start()
    result = run.wait(timeout=30, through_approvals=True)
    decider.join()
    assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done after 1")
    assert decisions(rt, run.id) == [(True, "alice")]


def test_wait_through_approvals_rides_out_a_run_that_parks_again_twice(
    rt: fl.Runtime,
) -> None:
    agent = gated("thrice", 3)
    run, _first = parked(rt, agent)
    approved: list[str] = []

    def decide_each_as_it_comes() -> None:
        while len(approved) < 3:
            wait_until(
                lambda: any(p.call_id not in approved for p in rt.pending_approvals()),
                30,
                "the next approval request",
            )
            time.sleep(HEAD_START)  # the run is parked and wait() has seen so: then decide
            (pending,) = [p for p in rt.pending_approvals() if p.call_id not in approved]
            rt.approve(pending.token, by="bob")
            approved.append(pending.call_id)

    decider = threading.Thread(target=decide_each_as_it_comes)
    decider.start()
    result = run.wait(timeout=60, through_approvals=True)
    decider.join(timeout=30)
    assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done after 3")
    types = [r.type for r in rt.events(run.id)]
    assert types.count("approval.requested") == types.count("approval.decided") == 3


def test_wait_through_approvals_sees_a_decision_made_by_another_process(
    store_path: Path,
) -> None:
    with fl.Runtime.open(store_path, agents=[ONCE]) as rt:
        run, pending = parked(rt, ONCE)
        code = textwrap.dedent(
            f"""
            import sys, time
            import foldloop as fl
            with fl.Runtime.open({str(store_path)!r}) as other:  # it knows no agent
                print("READY", flush=True)
                sys.stdin.readline()
                time.sleep({HEAD_START})
                other.approve(run_id={run.id!r}, call_id={pending.call_id!r}, by="remote")
            """
        )
        with subprocess.Popen(
            [sys.executable, "-c", code], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
        ) as proc:
            assert proc.stdin is not None and proc.stdout is not None
            while (line := proc.stdout.readline()).strip() != "READY":
                assert line, "the other process exited before it was ready"
            proc.stdin.write("go\n")
            proc.stdin.flush()
            result = run.wait(timeout=60, through_approvals=True)
            assert proc.wait(timeout=60) == 0
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done after 1")
        assert decisions(rt, run.id) == [(True, "remote")]


def test_wait_through_approvals_follows_an_expiry_and_a_resume_by_another_process(
    store_path: Path,
) -> None:
    """The request expires here; another process (with the agent) resumes the run, which
    asks again and parks, approves it and drives the run to its end: this wait sees it."""
    with fl.Runtime.open(store_path, agents=[EXPIRING]) as rt:
        run, pending = parked(rt, EXPIRING)
        code = textwrap.dedent(
            f"""
            import sys
            sys.path.insert(0, {str(TESTS.parent)!r})
            import foldloop as fl
            from tests.test_wait import EXPIRING, wait_until
            with fl.Runtime.open({str(store_path)!r}, agents=[EXPIRING]) as other:
                expired = lambda: any(c.status == "expired" for c in other.state({run.id!r}).calls)
                wait_until(expired, 30, "the request to expire")
                other.handle({run.id!r}).wait(timeout=30)
                taken = []
                def resumed():  # once the runtime that wrote the expiry let the run go
                    try:
                        taken.append(other.resume({run.id!r}))
                    except fl.errors.RunLocked:
                        return False
                    return True
                wait_until(resumed, 10, "the run's lease to be let go")
                again = taken[0]
                other.approve(run_id={run.id!r}, call_id={pending.call_id!r}, by="elsewhere")
                print(again.wait(timeout=30, through_approvals=True).status.value, flush=True)
            """
        )
        with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
            result = run.wait(timeout=60, through_approvals=True)
            out, _ = p.communicate(timeout=60)
        assert "completed" in out.splitlines(), out
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done after 1")
        types = [r.type for r in rt.events(run.id)]
        assert types.count("approval.requested") == 2
        assert "approval.expired" in types and "run.resumed" in types


def test_wait_through_approvals_returns_the_park_when_the_timeout_passes(rt: fl.Runtime) -> None:
    run, _pending = parked(rt, ONCE)
    started = time.monotonic()
    result = run.wait(timeout=0.3, through_approvals=True)
    took = time.monotonic() - started
    assert 0.3 <= took < 5, took
    assert result.status is fl.RunStatus.AWAITING_APPROVAL
    assert "waiting for a person to approve or deny" in result.reason
    assert result.resumable
    rt.approve(run_id=run.id, call_id=_pending.call_id)
    assert run.wait(timeout=30, through_approvals=True).output == "done after 1"


@pytest.mark.parametrize("through_approvals", [False, True])
def test_wait_returns_a_running_run_as_running_when_the_timeout_passes(
    rt: fl.Runtime, through_approvals: bool
) -> None:
    release = threading.Event()

    @fl.tool(name="hold", timeout=60)
    def hold() -> str:
        """Block until the test releases it."""
        release.wait(30)
        return "released"

    agent = fl.Agent(
        name="holder",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("hold", {})]), fl.Reply(text="ok")]),
        tools=[hold],
    )
    run = rt.spawn(agent, "hold on")
    started = time.monotonic()
    result = run.wait(timeout=0.2, through_approvals=through_approvals)
    assert time.monotonic() - started >= 0.2
    assert result.status is fl.RunStatus.RUNNING
    assert result.reason == "still running"
    release.set()
    assert run.wait(timeout=30, through_approvals=through_approvals).output == "ok"


def test_wait_by_default_returns_at_the_park_and_again_at_the_end(rt: fl.Runtime) -> None:
    """Without through_approvals a wait stops at each park; once a decision is taken, a
    wait waits for it to reach the run rather than return the park it already saw."""
    run, pending = parked(rt, ONCE)
    rt.approve(pending.token)
    assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED


def test_the_readme_says_what_the_docstring_says() -> None:
    def words(text: str) -> str:
        return " ".join(text.replace("``", "").replace("`", "").split())

    doc = words(inspect.getdoc(fl.types.RunHandle.wait) or "")
    promise = doc[doc.index("By default") :]
    assert promise.endswith("with a reason saying so).")
    assert promise in words((TESTS.parent / "README.md").read_text())


def test_a_runtime_keeps_only_the_latest_settlements_and_their_handles_keep_their_own(
    rt: fl.Runtime, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(rt.system, "KEEP_SETTLED", 3)
    agent = fl.Agent(name="short", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    runs = [rt.spawn(agent, f"task {i}") for i in range(10)]
    for run in runs:
        run.wait(timeout=30)
    kept = [run.id for run in runs if rt.system.settlement(run.id) is not None]
    assert len(kept) == 3
    reads: list[str] = []
    read_state = rt._queries.state
    monkeypatch.setattr(
        rt._queries, "state", lambda run_id: reads.append(run_id) or read_state(run_id)
    )
    for run in runs:  # each handle keeps how its run ended: no read of the log
        result = run.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED and result.output == "ok", result
    assert reads == []
    assert all(run._ending is None for run in runs)  # the result kept, not the final state
    for run in runs:  # new handles of forgotten runs read them back from the store
        result = rt.handle(run.id).wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED and result.output == "ok", result
    assert sorted(set(reads)) == sorted(run.id for run in runs if run.id not in kept)


def test_a_run_resumed_by_another_runtime_after_its_limit_is_waited_to_its_new_end(
    rt: fl.Runtime, store_path: Path
) -> None:
    """The settlement this runtime recorded (limit_reached) is stale once another runtime
    resumed the run: the handle's wait follows the log to where the run ends now."""
    agent = fl.Agent(
        name="stepper",
        llm=fl.ScriptedLLM(
            [fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": "a"})]), fl.Reply(text="paid")]
        ),
        tools=[pay],
        limits=fl.Limits(max_steps=1),
    )
    rt.register(agent)
    run = rt.spawn(agent, "pay a")
    assert run.wait(timeout=30).status is fl.RunStatus.LIMIT_REACHED
    with fl.Runtime.open(store_path, agents=[agent]) as other:
        other.resume(run.id, extend=fl.Limits(max_steps=5))
        for handle in (run, rt.handle(run.id)):
            result = handle.wait(timeout=30)
            assert result.status is fl.RunStatus.COMPLETED and result.output == "paid", result


def test_a_run_a_short_lived_runtime_took_up_and_left_is_taken_up_again_by_the_wait(
    rt: fl.Runtime, store_path: Path
) -> None:
    """Approving through a second runtime with the agent drives the run there; when that
    one closes mid-run, the first runtime's wait takes it up and sees it end, the approved
    call performed once. A runtime without the agent says nobody drives it."""
    slow = fl.Agent(
        name="slow-after-approval",
        llm=fl.ScriptedLLM(
            [fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": "a"})]), fl.Reply(text="paid a")],
            latency_s=0.3,  # the run is still going when the approving runtime closes
        ),
        tools=[pay],
        approvals=fl.RequireApproval({"pay"}),
    )
    rt.register(slow)
    run, pending = parked(rt, slow)
    with fl.Runtime.open(store_path, agents=[slow]) as approver:
        approver.approve(run_id=pending.run_id, call_id=pending.call_id, by="bob")
    with fl.Runtime.open(store_path) as bystander:  # no agents: cannot take it up
        left = bystander.handle(run.id).wait(timeout=30)
    assert left.status is fl.RunStatus.INTERRUPTED and left.resumable, left
    assert left.reason == "no runtime is driving it"
    result = run.wait(timeout=30)
    assert result.status is fl.RunStatus.COMPLETED and result.output == "paid a", result
    paid = [r for r in rt.events(run.id) if r.type == "tool.completed"]
    assert len(paid) == 1, "\n".join(f"{r.type} {r.event}" for r in rt.events(run.id))


def test_runs_a_closed_runtime_left_queued_are_taken_up_by_a_wait(store_path: Path) -> None:
    """Queued behind max_active_runs when their runtime closed: a wait in a runtime with the
    agent queues them there (as recover() would) and sees them end."""
    agent = fl.Agent(
        name="queued-then-left", llm=fl.ScriptedLLM([fl.Reply(text="done")], latency_s=0.2)
    )
    with fl.Runtime.open(store_path, agents=[agent], max_active_runs=1) as first:
        runs = [first.spawn(agent, f"job {i}") for i in range(3)]
        assert [first.state(r.id).status for r in runs[1:]] == [fl.RunStatus.QUEUED] * 2
    with fl.Runtime.open(store_path, agents=[agent]) as second:
        results = [second.handle(r.id).wait(timeout=30) for r in reversed(runs)]
        assert [r.status for r in results] == [fl.RunStatus.COMPLETED] * 3, results
        for run in runs:
            assert [r.type for r in second.events(run.id)].count("run.completed") == 1


def test_queued_runs_a_closed_runtime_left_are_taken_up_in_spawn_order_by_any_wait(
    store_path: Path,
) -> None:
    """The first wait is on the last of five queued runs: all five are taken up with it and
    admitted in the order they were spawned, as recover() would."""
    agent = fl.Agent(name="fifo", llm=fl.ScriptedLLM([fl.Reply(text="done")], latency_s=0.2))
    with fl.Runtime.open(store_path, agents=[agent], max_active_runs=1) as first:
        runs = [first.spawn(agent, f"job {i}") for i in range(6)]
        assert [first.state(r.id).status for r in runs[1:]] == [fl.RunStatus.QUEUED] * 5
    queued = runs[1:]
    with fl.Runtime.open(store_path, agents=[agent], max_active_runs=1) as second:
        for run in reversed(queued):
            assert second.handle(run.id).wait(timeout=60).status is fl.RunStatus.COMPLETED
        admitted = sorted(
            (r.position, run.id)
            for run in queued
            for r in second.events(run.id)
            if r.type == "run.admitted"
        )
    assert [run_id for _, run_id in admitted] == [run.id for run in queued]


def test_many_waits_on_runs_driven_elsewhere_share_a_budget_of_looks(
    store_path: Path, tmp_path: Path
) -> None:
    """500 threads wait on runs another process drives: between them they look at the log
    about FOLLOW_LOOKS_PER_S times a second (each on its own would look 50 times a second,
    25,000 between them: on two busy cores ~8,000), and every wait sees its run end."""
    from foldloop.runtime._waiting import FOLLOW_LOOKS_PER_S

    runs, release = 500, tmp_path / "release"
    code = textwrap.dedent(
        f"""
        import os, time
        import foldloop as fl

        @fl.tool(idempotent=True, concurrency=4, timeout=120)
        def hold(x: str) -> str:
            '''Hold until the test releases the runs.'''
            while not os.path.exists({str(release)!r}):
                time.sleep(0.01)
            return "held"

        def script(messages, tools):
            if messages[-1].role == "tool":
                return fl.Reply(text="done")
            return fl.Reply(tool_calls=[fl.ToolCall("hold", {{"x": "1"}})])

        agent = fl.Agent(name="holder", llm=fl.ScriptedLLM(script), tools=[hold])
        with fl.Runtime.open({str(store_path)!r}, agents=[agent]) as rt:
            handles = rt.spawn_many(agent, ["go"] * {runs})
            print(" ".join(h.id for h in handles), flush=True)
            for h in handles:
                h.wait(timeout=120)
        """
    )
    with subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True) as p:
        assert p.stdout is not None
        ids = p.stdout.readline().split()
        assert len(ids) == runs
        with fl.Runtime.open(store_path) as rt:  # it has no agent: it follows the log
            looks = [0]
            head = rt.store.head  # type: ignore[attr-defined]

            def counted(run_id: str) -> int:
                looks[0] += 1
                return int(head(run_id))

            rt.store.head = counted  # type: ignore[attr-defined]
            results: list[fl.types.RunResult] = []
            waits = [
                threading.Thread(target=lambda i=i: results.append(rt.handle(i).wait(timeout=120)))
                for i in ids
            ]
            for wait in waits:
                wait.start()
            wait_until(lambda: looks[0] >= 20 * runs, 60, "every wait to back off")
            start, since = looks[0], time.monotonic()
            wait_until(lambda: looks[0] >= start + 3_000, 60, "3,000 more looks")
            rate = (looks[0] - start) / (time.monotonic() - since)
            release.touch()
            for wait in waits:
                wait.join(120)
        assert p.wait(timeout=120) == 0
    assert rate <= 1.5 * FOLLOW_LOOKS_PER_S, f"{rate:.0f} looks a second"
    assert len(results) == runs and all(r.status is fl.RunStatus.COMPLETED for r in results)


def test_a_run_another_runtime_took_over_is_waited_to_its_end_there(store_path: Path) -> None:
    """A runtime that lost a run it drove (its owner key lapsed, as a JetStream server's
    outage longer than owner_ttl makes every key lapse; here its lock is let go) is fenced
    off at its next append: a wait on its handle follows the run to where the runtime that
    took it over drives it, rather than calling it interrupted with the fencing message."""

    def steps(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        paid = sum(1 for m in messages if m.role == "tool")
        if paid < 4:
            return fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": f"p{paid}"})])
        return fl.Reply(text=f"done after {paid}")

    agent = fl.Agent(name="taken", llm=fl.ScriptedLLM(steps, latency_s=0.3), tools=[pay])
    with (
        fl.Runtime.open(store_path, agents=[agent]) as here,
        fl.Runtime.open(store_path, agents=[agent]) as there,
    ):
        run = here.spawn(agent, "pay")
        wait_until(lambda: here.state(run.id).steps >= 2, 30, "two steps here")
        here._owner_hold.release()  # white-box: its owner lapses while it lives
        assert [h.id for h in there.recover()] == [run.id]
        result = run.wait(timeout=30)
        assert result.status is fl.RunStatus.COMPLETED, result
        assert result.output == "done after 4"

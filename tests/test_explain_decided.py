"""Explaining a parked run whose approval is decided but not yet carried into its log.

A decision made from a process that does not drive the run is recorded in the store's
approvals table; the run's log gets it only when a runtime with the agent drives the run
next. Until then ``explain`` must say the call is decided (by whom, when) and what carries
the decision in, not that it waits for a person (whose ``approve`` would then fail).
Processes are real: one parks the run and exits, the CLI decides and resumes.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.core._batch import fold
from foldloop.core._explain import DecidedApproval, explain, parked_reason
from foldloop.events import ApprovalDecided
from tests.pool_agents import gated
from tests.waiting import inside, wait_until

TESTS = Path(__file__).resolve().parent
AGENT = "pool_agents:gated"
"""Asks for add(1, 1) behind an approval gate (call_1_1), then answers "2"."""

PARK = textwrap.dedent(
    """
    import sys
    import foldloop as fl
    import pool_agents

    with fl.Runtime.open(sys.argv[1], agents=[pool_agents.gated]) as rt:
        run = rt.spawn(pool_agents.gated, "one and one", run_id=sys.argv[2])
        print(run.wait(timeout=60).status.value, flush=True)
        if sys.argv[3] == "stay":  # the runtime stays up, driving the run through its park
            print(run.wait(timeout=60, through_approvals=True).status.value, flush=True)
    """
)


def _env() -> dict[str, str]:
    # The tests dir holds the agents module, as it would for a user's own project.
    path = os.pathsep.join(p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p)
    return {**os.environ, "PYTHONPATH": path}


def foldloop_cli(store: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """The ``foldloop`` command, a real process run from the tests dir (so that
    ``--agent pool_agents:...`` imports)."""
    return subprocess.run(
        [sys.executable, "-m", "foldloop", "--store", str(store), *args],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=TESTS,
        env=_env(),
    )


def park(store: Path, run_id: str) -> None:
    """A process parks ``run_id`` at its approval gate and exits (nothing drives it now)."""
    proc = subprocess.run(
        [sys.executable, "-c", PARK, str(store), run_id, "exit"],
        capture_output=True,
        text=True,
        timeout=60,
        env=_env(),
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.split() == ["awaiting_approval"], proc.stdout


def _line(stdout: str, prefix: str) -> str:
    (line,) = [line for line in stdout.splitlines() if line.startswith(prefix)]
    return line


@pytest.fixture
def decided(tmp_path: Path) -> Path:
    """A store whose run R is parked and approved by 'me' from the CLI, not carried in."""
    store = tmp_path / "store"
    park(store, "R")
    approved = foldloop_cli(store, "approve", "--run", "R", "--call", "call_1_1", "--by", "me")
    assert approved.returncode == 0, approved.stderr
    return store


def test_cli_explain_says_the_call_is_decided_not_waiting(decided: Path) -> None:
    proc = foldloop_cli(decided, "explain", "R")
    assert proc.returncode == 0, proc.stderr
    why = _line(proc.stdout, "why: ")
    assert "waiting for a person" not in proc.stdout, proc.stdout
    assert "decided, not yet carried into the run's log" in why, why
    assert "call_1_1 (add) approved by 'me' at 20" in why, why
    assert "rt." not in proc.stdout, proc.stdout  # the CLI words no Python advice


def test_cli_explain_and_show_name_the_resume_command(decided: Path) -> None:
    for command in ("explain", "show"):
        proc = foldloop_cli(decided, command, "R")
        assert proc.returncode == 0, proc.stderr
        nxt = _line(proc.stdout, "next: ")
        assert "foldloop resume R --agent MODULE:ATTR" in nxt, nxt
        assert "foldloop approve" not in nxt, nxt
        assert "waiting for a person" not in proc.stdout, proc.stdout


def test_python_explain_says_decided_then_cli_resume_completes(decided: Path) -> None:
    with fl.Runtime.open(decided) as rt:  # no agents: it cannot carry the decision in
        why = rt.explain("R")
        assert why.status is fl.RunStatus.AWAITING_APPROVAL  # the log is the truth
        (d,) = why.decided
        assert (d.call_id, d.outcome, d.by) == ("call_1_1", "approved", "me")
        assert d.at > 0
        assert "approved by 'me'" in why.reason and "waiting for a person" not in why.reason
        (step,) = why.next_steps
        assert "rt.resume('R')" in step and "rt.recover()" in step, step
        (listed,) = rt.runs()  # a listing says the same as explain
        assert listed.reason == why.reason
        assert "agent 'gated' registered" in step and "poller" in step, step
        assert "next: nothing to decide for call_1_1" in str(why)
        assert rt.state("R").status is fl.RunStatus.AWAITING_APPROVAL  # explain wrote nothing

    resumed = foldloop_cli(decided, "resume", "R", "--agent", AGENT)
    assert resumed.returncode == 0, resumed.stderr
    assert "R: completed 2" in resumed.stdout, resumed.stdout

    after = foldloop_cli(decided, "explain", "R")
    assert after.returncode == 0, after.stderr
    assert after.stdout.startswith("run R is completed after 2 step"), after.stdout
    with fl.Runtime.open(decided) as rt:
        assert rt.explain("R").decided == ()
        decisions = [r.event for r in rt.events("R") if isinstance(r.event, ApprovalDecided)]
        assert [(e.approved, e.by) for e in decisions] == [(True, "me")]


def test_a_denial_with_a_note_is_explained_too(tmp_path: Path) -> None:
    store = tmp_path / "store"
    park(store, "D")
    denied = foldloop_cli(
        store, "deny", "--run", "D", "--call", "call_1_1", "--by", "bob", "--note", "not today"
    )
    assert denied.returncode == 0, denied.stderr
    with fl.Runtime.open(store) as rt:
        why = rt.explain("D")
    assert [(d.outcome, d.by, d.note) for d in why.decided] == [("denied", "bob", "not today")]
    assert "call_1_1 (add) denied by 'bob'" in why.reason
    assert "(note: 'not today')" in why.reason


def test_the_pure_explain_counts_only_decisions_on_calls_the_log_still_waits_on(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    park(store, "P")
    with fl.Runtime.open(store) as rt:
        parked = list(rt.events("P"))
    state = fold(parked)
    decision = DecidedApproval(call_id="call_1_1", outcome="approved", by="me", at=10**18)
    stranger = DecidedApproval(call_id="call_9_9", outcome="denied", by="me", at=10**18)

    assert explain(state, parked, decided=[stranger]) == explain(state, parked)
    why = explain(state, parked, decided=[decision, stranger])
    assert why.decided == (decision,)
    assert why.reason == (
        "decided, not yet carried into the run's log: "
        "call_1_1 (add) approved by 'me' at 2001-09-09T01:46:40+00:00"
    )
    assert parked_reason(state, [decision]) == why.reason
    assert parked_reason(state, [stranger]) == state.reason
    # Once a runtime carried it in, the log says so and the table's record counts no more.
    resumed = foldloop_cli(store, "approve", "--run", "P", "--call", "call_1_1")
    assert resumed.returncode == 0, resumed.stderr
    assert foldloop_cli(store, "resume", "P", "--agent", AGENT).returncode == 0
    with fl.Runtime.open(store) as rt:
        done = list(rt.events("P"))
    carried = explain(fold(done), done, decided=[decision])
    assert carried.status is fl.RunStatus.COMPLETED and carried.decided == ()


def test_a_live_runtime_with_the_agent_carries_the_decision_in_by_itself(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    driver = subprocess.Popen(
        [sys.executable, "-c", PARK, str(store), "L", "stay"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(),
    )
    try:
        assert driver.stdout is not None
        assert driver.stdout.readline().strip() == "awaiting_approval"
        approved = foldloop_cli(store, "approve", "--run", "L", "--call", "call_1_1")
        assert approved.returncode == 0, approved.stderr
        with fl.Runtime.open(store) as rt:
            # Right now it is either decided-not-yet-carried or already moving on; never
            # "waiting for a person" (whose approve would fail).
            why = rt.explain("L")
            if why.status is fl.RunStatus.AWAITING_APPROVAL:
                assert [d.call_id for d in why.decided] == ["call_1_1"], why
                assert "poller" in why.next_steps[0]
            # The driver's poller carries it in and the run ends with no resume by anyone.
            assert driver.stdout.readline().strip() == "completed"
            assert driver.wait(timeout=30) == 0
            done = rt.explain("L")
        assert done.status is fl.RunStatus.COMPLETED and done.decided == ()
        assert done.next_steps[0].startswith("nothing")
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait()


def test_in_process_approval_by_ids_moves_the_run_on_at_once(store_path: Path) -> None:
    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one", run_id="I")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        rt.approve(run_id="I", call_id="call_1_1", by="me")
        why = rt.explain("I")  # carried into the log before approve returned
        assert why.status is not fl.RunStatus.AWAITING_APPROVAL and why.decided == ()
        assert run.wait(timeout=30).status is fl.RunStatus.COMPLETED
        assert rt.explain("I").decided == ()


def test_a_request_past_its_deadline_is_listed_and_explained_as_expired(store_path: Path) -> None:
    """Nobody recorded its expiry yet (no runtime with the agent was open): the listing and
    explain say it expired, as pending_approvals does, and do not ask anyone to decide it."""
    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one", run_id="E")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    ttl_s = gated.approvals.ttl if gated.approvals is not None else 0
    later = time.time_ns() + int((ttl_s + 60) * 1e9)
    with fl.Runtime.open(store_path, clock=lambda: later) as elsewhere:
        assert elsewhere.pending_approvals() == []
        (row,) = elsewhere.runs()
        assert "call_1_1 (add) expired undecided" in row.reason, row
        why = elsewhere.explain("E")
        assert [d.outcome for d in why.decided] == ["expired"]
        assert not any(step.startswith("decide") for step in why.next_steps), why


@pytest.mark.parametrize(
    "how", ["decided, then waited", "waiting through, then decided"], ids=["then", "through"]
)
def test_a_wait_where_nothing_can_carry_a_decision_in_returns(store_path: Path, how: str) -> None:
    """Decided in a runtime without the agent, with none open that has it: the wait (even
    without a timeout, even waiting through approvals) returns the run parked, as runs()
    lists it (the decision taken, not yet carried in), instead of waiting for ever; a
    runtime with the agent then carries the decision in by itself."""
    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one", run_id="W")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    through = how.startswith("waiting through")
    with fl.Runtime.open(store_path) as elsewhere:
        if not through:
            elsewhere.approve(run_id="W", call_id="call_1_1", by="alice")
        waited: list[fl.RunResult] = []
        waiter = threading.Thread(
            target=lambda: waited.append(elsewhere.handle("W").wait(through_approvals=through))
        )
        waiter.start()
        if through:
            wait_until(lambda: inside(waiter, "_moved"), 10, "the wait to wait through")
            elsewhere.approve(run_id="W", call_id="call_1_1", by="alice")
        waiter.join(30)
        assert waited, "wait() did not return"
        (result,) = waited
        assert result.status is fl.RunStatus.AWAITING_APPROVAL and result.resumable
        assert result.reason.startswith("decided, not yet carried into the run's log")
        assert "approved by 'alice'" in result.reason
        (listed,) = elsewhere.runs()
        assert listed.reason == result.reason
    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        assert rt.handle("W").wait(timeout=30).output == "2"


def test_a_wait_that_times_out_on_a_decided_run_says_it_was_decided(store_path: Path) -> None:
    """Before the follow's grace for carrying it in is over, the timeout came first: the
    reason is still the one runs() lists, not "waiting for a person"."""
    with fl.Runtime.open(store_path, agents=[gated]) as rt:
        run = rt.spawn(gated, "one and one", run_id="T")
        assert run.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
    with fl.Runtime.open(store_path) as elsewhere:
        elsewhere.approve(run_id="T", call_id="call_1_1", by="alice")
        result = elsewhere.handle("T").wait(timeout=0.2)
        assert result.status is fl.RunStatus.AWAITING_APPROVAL
        assert result.reason.startswith("decided, not yet carried into the run's log"), result
        (listed,) = elsewhere.runs()
        assert listed.reason == result.reason

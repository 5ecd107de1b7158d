"""Closed means closed: after ``rt.close()`` every public method of the runtime and of the
handles it gave out raises the same ConfigError, never a store's raw error."""

from __future__ import annotations

import inspect
import logging
import signal
import subprocess
import sys
import threading
import traceback
from collections.abc import Callable, Iterator
from pathlib import Path
from types import FrameType

import pytest

import foldloop as fl
from foldloop.projections import RunMetrics
from foldloop.runtime import _commands as commands_module
from tests.log_capture import capture_logs
from tests.signal_close_worker import CANCEL_CASE, CASES, POOL_CASE
from tests.waiting import logged, wait_until

CLOSED = r"this runtime is closed; open a new one with fl\.Runtime\.open\(\)"


def _agent() -> fl.Agent:
    return fl.Agent(name="closing", llm=fl.ScriptedLLM([fl.Reply(text="done")]))


AGENT = _agent()

RUNTIME_CALLS: dict[str, Callable[[fl.Runtime, str, list[str]], object]] = {
    "agent_named": lambda rt, run, lines: rt.agent_named("closing"),
    "approve": lambda rt, run, lines: rt.approve(run_id=run, call_id="call_1_1"),
    "attach": lambda rt, run, lines: rt.attach(RunMetrics()),
    "check_open": lambda rt, run, lines: rt.check_open(),
    "deny": lambda rt, run, lines: rt.deny(run_id=run, call_id="call_1_1"),
    "events": lambda rt, run, lines: rt.events(run),
    "explain": lambda rt, run, lines: rt.explain(run),
    "tree": lambda rt, run, lines: rt.tree(run),
    "export": lambda rt, run, lines: rt.export(run),
    "handle": lambda rt, run, lines: rt.handle(run),
    "import_jsonl": lambda rt, run, lines: rt.import_jsonl(lines, run_id="copy"),
    "pending_approvals": lambda rt, run, lines: rt.pending_approvals(),
    "read_all": lambda rt, run, lines: rt.read_all(),
    "recover": lambda rt, run, lines: rt.recover(),
    "register": lambda rt, run, lines: rt.register(_agent()),
    "resume": lambda rt, run, lines: rt.resume(run),
    "runs": lambda rt, run, lines: rt.runs(),
    "spawn": lambda rt, run, lines: rt.spawn(AGENT, "again"),
    "spawn_many": lambda rt, run, lines: rt.spawn_many(AGENT, ["again"]),
    "state": lambda rt, run, lines: rt.state(run),
    "subscribe": lambda rt, run, lines: rt.subscribe(lambda rec: None),
    "verify": lambda rt, run, lines: rt.verify(run),
}
"""One call of each public method; ``close`` and ``closed`` work on a closed runtime."""

HANDLE_CALLS: dict[str, Callable[[fl.types.RunHandle], object]] = {
    "cancel": lambda handle: handle.cancel("late"),
    "state": lambda handle: handle.state,
    "wait": lambda handle: handle.wait(timeout=1),
}


def public_members(cls: type) -> set[str]:
    """Public methods and properties of ``cls`` (classmethods such as ``open`` need no
    instance, so no open one)."""
    return {
        name
        for name, member in inspect.getmembers(cls)
        if not name.startswith("_") and (inspect.isfunction(member) or isinstance(member, property))
    }


def test_every_public_method_of_the_runtime_is_in_the_table() -> None:
    assert public_members(fl.Runtime) - {"close", "closed"} == set(RUNTIME_CALLS), (
        "a public Runtime method was added or removed: list a call of it in RUNTIME_CALLS"
    )
    assert public_members(fl.types.RunHandle) == set(HANDLE_CALLS)


@pytest.fixture
def closed(store_path: Path) -> tuple[fl.Runtime, fl.types.RunHandle, list[str]]:
    """A runtime that ran one run and was closed, the run's handle and its export."""
    rt = fl.Runtime.open(store_path, agents=[AGENT])
    run = rt.spawn(AGENT, "hi")
    assert run.wait(timeout=30).ok
    lines = list(rt.export(run.id))
    rt.close()
    return rt, run, lines


@pytest.mark.parametrize("name", sorted(RUNTIME_CALLS))
def test_a_closed_runtime_refuses_every_call_with_one_clear_error(
    closed: tuple[fl.Runtime, fl.types.RunHandle, list[str]], name: str
) -> None:
    rt, run, lines = closed
    with pytest.raises(fl.ConfigError, match=CLOSED):
        RUNTIME_CALLS[name](rt, run.id, lines)


@pytest.mark.parametrize("name", sorted(HANDLE_CALLS))
def test_a_handle_of_a_closed_runtime_refuses_every_call(
    closed: tuple[fl.Runtime, fl.types.RunHandle, list[str]], name: str
) -> None:
    _rt, run, _lines = closed
    with pytest.raises(fl.ConfigError, match=CLOSED):
        HANDLE_CALLS[name](run)


def test_a_projection_handle_of_a_closed_runtime_refuses_catch_up(store_path: Path) -> None:
    """The handles attach and subscribe gave out answer as the runtime's own: catch_up on a
    closed runtime is its ConfigError, not the store's; what they hold stays readable."""
    rt = fl.Runtime.open(store_path, agents=[AGENT])
    metrics = rt.attach(RunMetrics())
    seen: list[str] = []
    subscription = rt.subscribe(lambda rec: seen.append(rec.type))
    assert rt.spawn(AGENT, "hi").wait(timeout=30).ok
    reached = metrics.catch_up()
    subscription.catch_up()
    rt.close()
    for handle in (metrics, subscription):
        with pytest.raises(fl.ConfigError, match=CLOSED):
            handle.catch_up()
        handle.detach()  # a no-op, as close() is
    assert metrics.position == reached and metrics.state.runs_by_status == {"completed": 1}
    assert "run.completed" in seen


def test_a_call_the_close_cuts_short_says_the_runtime_closed(
    closed: tuple[fl.Runtime, fl.types.RunHandle, list[str]], store_path: Path
) -> None:
    """Any public call a close cuts short (here an import whose lines close the runtime
    as they run out, so its write meets the closed store) ends with the closed runtime's
    ConfigError, not the store's own error."""
    _, _, lines = closed
    rt = fl.Runtime.open(store_path, agents=[AGENT])

    def lines_then_a_close() -> Iterator[str]:
        yield from lines
        closing = threading.Thread(target=rt.close)
        closing.start()
        closing.join(30)

    with pytest.raises(fl.ConfigError, match=CLOSED):
        rt.import_jsonl(lines_then_a_close(), run_id="copy")


def test_a_read_all_begun_before_the_close_says_the_runtime_closed(store_path: Path) -> None:
    """Its pages are read as it is iterated: the next one, after the close, is a call on a
    closed runtime like any other (not the store's own error)."""
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM(lambda messages, tools: fl.Reply(text="x")))
    rt = fl.Runtime.open(store_path, agents=[agent])
    for handle in rt.spawn_many(agent, [f"run {i}" for i in range(400)]):
        assert handle.wait(timeout=30).ok
    records = rt.read_all()
    first = next(records)  # one page read; the log holds more than one
    rt.close()
    with pytest.raises(fl.ConfigError, match=CLOSED):
        for _ in records:
            pass
    assert first.position == 1


def test_a_read_all_of_a_short_log_read_on_after_the_close_says_so(store_path: Path) -> None:
    """All of it came in its first page: the records left of it are not handed out as if
    the runtime were open (a host would think it read the whole log)."""
    agent = fl.Agent(name="one", llm=fl.ScriptedLLM([fl.Reply(text="x")]))
    rt = fl.Runtime.open(store_path, agents=[agent])
    assert rt.spawn(agent, "go").wait(timeout=30).ok
    records = rt.read_all()
    assert next(records).position == 1
    rt.close()
    with pytest.raises(fl.ConfigError, match=CLOSED):
        next(records)


def test_close_and_closed_still_answer(
    closed: tuple[fl.Runtime, fl.types.RunHandle, list[str]],
) -> None:
    rt, _run, _lines = closed
    assert rt.closed
    rt.close()  # a second close is a no-op
    with rt:  # and so is leaving a with block
        pass
    assert rt.closed


def test_a_wait_on_a_run_of_a_runtime_closed_under_it_returns_it_interrupted(
    tmp_path: Path,
) -> None:
    """The wait returns how the run stands (interrupted: its runtime closed), not 'running'."""
    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x"), latency_s=60))
    rt = fl.Runtime.open(tmp_path / "s", agents=[slow])
    handle = rt.spawn(slow, "go")
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(handle.wait(timeout=60)))
    thread.start()

    def waiting() -> bool:  # the wait is on the run's settlement
        frame = sys._current_frames().get(thread.ident or 0)
        return any(f.name == "_settle" for f in traceback.extract_stack(frame)) if frame else False

    wait_until(waiting, 10, "the wait to wait on the run")
    rt.close()
    thread.join(20)
    assert not thread.is_alive() and len(outcome) == 1
    result = outcome[0]
    assert isinstance(result, fl.types.RunResult)
    assert result.status is fl.RunStatus.INTERRUPTED and result.resumable
    assert "closed" in result.reason


def test_a_close_from_a_signal_handler_inside_spawn_many_does_not_wait_for_it(
    tmp_path: Path,
) -> None:
    """A server's SIGTERM handler closing the runtime while the main thread is in spawn_many:
    the close cannot wait for that call (it resumes only once the handler returns)."""
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x")))
    rt = fl.Runtime.open(tmp_path / "s", agents=[agent])
    closed: list[bool] = []

    def handler(signum: int, frame: FrameType | None) -> None:
        rt.close(timeout=1)
        closed.append(True)

    previous = signal.signal(signal.SIGALRM, handler)
    try:
        with capture_logs(logging.WARNING) as logs:
            signal.setitimer(signal.ITIMER_REAL, 0.05)
            # some runs started (SpawnError), or, on a slow machine, none before the close
            # (the first failure itself: the runtime is closed): either way the call ends
            with pytest.raises((fl.errors.SpawnError, fl.errors.ConfigError)):
                rt.spawn_many(agent, ["go"] * 50_000)
            rt.close()  # returns once the handler's close is done
        assert closed == [True]
        assert not [e for e in logs if e.get("event") == "spawns_unfinished_at_close"]
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


@pytest.mark.parametrize("case", [*sorted(CASES), POOL_CASE])
def test_a_signal_handlers_close_where_the_call_it_interrupted_holds_what_it_needs_returns(
    tmp_path: Path, case: str
) -> None:
    """The handler runs on the thread of the call it interrupted, which may hold what the
    close needs (the actor system's lock, a page's read of the log, the closed mark) until
    the handler returns: the close goes on on a thread of its own, and the call ends once
    it sees it."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.signal_close_worker", str(tmp_path / "s"), case],
        capture_output=True,
        text=True,
        timeout=30,  # a close that waits for what its own thread holds never returns
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "closed True", done.stdout


def test_a_signal_handlers_cancel_over_a_call_holding_the_system_lock_returns(
    tmp_path: Path,
) -> None:
    """A handler's cancel interrupting spawn_many where it holds the actor system's lock
    goes on on a thread of its own (it waited for that lock for ever): the run is
    cancelled once the handler and the call it interrupted returned."""
    done = subprocess.run(
        [sys.executable, "-m", "tests.signal_close_worker", str(tmp_path / "s"), CANCEL_CASE],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=Path(__file__).parent.parent,
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[-1] == "cancelled True", done.stdout


def late_wait_through_close(
    rt: fl.Runtime, handle: fl.types.RunHandle, monkeypatch: pytest.MonkeyPatch
) -> object:
    """Close ``rt`` while a wait on ``handle`` waits for the run's settlement, the wait
    reading nothing from the store until the close has run to its end (as on a busy machine
    a thread may get the interpreter only then); what the wait returned or raised."""
    from foldloop.runtime._queries import Queries

    closed, outcome = threading.Event(), list[object]()
    read = Queries.state

    def late_read(self: Queries, run_id: str) -> fl.types.RunState:
        if threading.current_thread() is thread:
            closed.wait(20)
        return read(self, run_id)

    monkeypatch.setattr(Queries, "state", late_read)

    def waits() -> None:
        try:
            outcome.append(handle.wait(timeout=60))
        except fl.FoldloopError as exc:
            outcome.append(exc)

    thread = threading.Thread(target=waits)
    thread.start()

    def waiting() -> bool:
        frame = sys._current_frames().get(thread.ident or 0)
        return any(f.name == "_settle" for f in traceback.extract_stack(frame)) if frame else False

    wait_until(waiting, 10, "the wait to wait on the run")
    rt.close()
    closed.set()
    thread.join(30)
    assert not thread.is_alive() and len(outcome) == 1
    return outcome[0]


def test_a_wait_woken_by_the_close_reads_nothing_from_the_closing_store(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The close tells the wait how the run stood: a wait that only gets the interpreter
    once the store has closed (a busy machine) still returns it interrupted."""
    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x"), latency_s=60))
    rt = fl.Runtime.open(tmp_path / "s", agents=[slow])
    handle = rt.spawn(slow, "go")
    result = late_wait_through_close(rt, handle, monkeypatch)  # before: "this runtime is closed"
    assert isinstance(result, fl.types.RunResult), result
    assert result.status is fl.RunStatus.INTERRUPTED and "closed" in result.reason


def test_a_wait_on_a_run_whose_last_commit_landed_as_the_close_began_returns_it_ended(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The wait returns the run as its log holds it once the close stored what it wrote:
    completed, not interrupted with the completed run's output."""
    from foldloop.actors._system import ActorSystem

    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="done")]))
    landed = threading.Event()
    # the shard never hears that the settling commit landed: the close comes right then
    monkeypatch.setattr(ActorSystem, "proceed", lambda self, actor, then: landed.set())
    rt = fl.Runtime.open(tmp_path / "s", agents=[agent])
    handle = rt.spawn(agent, "go")
    outcome: list[object] = []
    thread = threading.Thread(target=lambda: outcome.append(handle.wait(timeout=30)))
    thread.start()
    assert landed.wait(10)
    rt.close()
    thread.join(30)
    assert len(outcome) == 1
    result = outcome[0]
    assert isinstance(result, fl.types.RunResult)
    assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done")  # before: interrupted
    with fl.Runtime.open(tmp_path / "s") as again:
        assert again.state(handle.id).status is fl.RunStatus.COMPLETED


def test_a_late_wait_on_a_parent_parked_for_its_children_returns_it_interrupted(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A run parked for its children has no actor: its wait too is told at close."""
    from tests.tree_models import fans_out

    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x"), latency_s=60))
    lead = fl.Agent(name="lead", llm=fl.ScriptedLLM(fans_out(("slow", "a"))), agents=[slow])
    rt = fl.Runtime.open(tmp_path / "s", agents=[lead])
    rt.system.park_after_s = 0.05
    handle = rt.spawn(lead, "go")
    wait_until(lambda: rt.system.parked(handle.id), 20, "the lead to park")
    result = late_wait_through_close(rt, handle, monkeypatch)  # before: "this runtime is closed"
    assert isinstance(result, fl.types.RunResult), result
    assert result.status is fl.RunStatus.INTERRUPTED and "closed" in result.reason


def test_a_cancel_meeting_a_hand_over_as_its_runtime_closes_says_the_runtime_is_closed(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A probe's cancel racing close() once got RunLocked ("wait() for it first"): the run's
    # hand-over to an actor (admission's) held it as the close began. Held here on purpose.
    release = threading.Event()

    def holds(messages: object, tools: object) -> fl.Reply:
        release.wait(30)
        return fl.Reply(text="ok")

    agent = fl.Agent(name="a", llm=fl.ScriptedLLM(holds))
    rt = fl.Runtime.open(tmp_path / "s", agents=[agent], max_active_runs=1)
    try:
        rt.spawn(agent, "first")  # holds the one slot
        queued = rt.spawn(agent, "queued")
        assert rt.state(queued.id).status is fl.RunStatus.QUEUED
        rt.system.claim(queued.id)  # a hand-over of it under way on another thread
        monkeypatch.setattr(commands_module, "HANDOVER_WAIT", 0.1)  # the cancel's wait for it
        rt._commands.stop_spawns()  # what a close does first
        with pytest.raises(fl.ConfigError, match="this runtime is closed"):
            queued.cancel()
        rt.system.unclaim(queued.id)
    finally:
        release.set()
        rt.close()


def test_a_model_retry_whose_delay_ends_during_the_close_is_not_made(tmp_path: Path) -> None:
    # The drain starts no model call (README); a retry's timer firing during it did.
    release, holding = threading.Event(), threading.Event()
    calls: list[int] = []

    @fl.tool(idempotent=True, timeout=30)
    def hold() -> str:
        """Hold the close's drain until the test lets go."""
        holding.set()
        release.wait(30)
        return "held"

    def throttled(messages: object, tools: object) -> fl.Reply:
        calls.append(1)
        raise fl.errors.ModelCallError("HTTP 429", retryable=True)  # retried after 0.25 s

    holder = fl.Agent(
        name="holder",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("hold", {})]), fl.Reply(text="ok")]),
        tools=[hold],
    )
    retrier = fl.Agent(name="retrier", llm=fl.ScriptedLLM(throttled))
    with capture_logs() as logs:
        rt = fl.Runtime.open(tmp_path / "s", agents=[holder, retrier])
        closer = threading.Thread(target=rt.close)
        try:
            rt.spawn(holder, "go")
            assert holding.wait(10)
            run = rt.spawn(retrier, "go")
            wait_until(
                lambda: any(r.type == "model.failed" for r in rt.events(run.id)), 10, "a failure"
            )
            closer.start()  # its drain waits for the held tool call
            wait_until(lambda: logged(logs, "model_call_dropped", closing=True), 10, "the retry")
            assert len(calls) == 1
        finally:
            release.set()
            if closer.ident is None:
                rt.close()
            closer.join(30)


def test_a_close_inside_a_call_into_another_runtime_is_the_whole_close(tmp_path: Path) -> None:
    """Only a close over a call into the same runtime goes on on a thread of its own: one
    made in a call into another (an input generator it consumes) waits for the tool under
    way and records its outcome before it returns, as any close does."""
    started, release = threading.Event(), threading.Event()

    @fl.tool(idempotent=True)
    def slow() -> str:
        """Take a moment."""
        started.set()
        release.wait(0.5)
        return "done"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("slow", {})]), fl.Reply(text="x")])
    busy = fl.Agent(name="busy", llm=llm, tools=[slow])
    other = fl.Runtime.open(tmp_path / "other", agents=[busy])
    run = other.spawn(busy, "go").id
    assert started.wait(30)

    def inputs() -> Iterator[str]:
        other.close()
        yield "go"

    with fl.Runtime.open(tmp_path / "s", agents=[AGENT]) as rt:
        rt.spawn_many(AGENT, inputs())
    with fl.Runtime.open(tmp_path / "other") as reopened:  # free: the close was done
        assert "tool.completed" in [r.type for r in reopened.events(run)]

"""The shared work queue of a JetStream store: spawns from any host are queued there, and
runtimes opened with the agent take them (a real nats-server)."""

from __future__ import annotations

import asyncio
import collections
import gc
import os
import subprocess
import sys
import threading
import time
import traceback
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.store._nats_bridge import LoopThread
from tests.nats_servers import start_server
from tests.waiting import wait_until


def counter(name: str = "calc") -> fl.Agent:
    @fl.tool(idempotent=True)
    def add(a: int, b: int) -> int:
        """Add two numbers."""
        return a + b

    def plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 2, "b": 3})])
        return fl.Reply(text=f"{messages[0].content}={messages[-1].content}")

    return fl.Agent(name=name, llm=fl.ScriptedLLM(plan), tools=[add])


def test_a_host_without_the_agent_enqueues_and_a_worker_with_it_drives(nats_url: str) -> None:
    agent = counter()
    with fl.Runtime.open(nats_url) as host:
        handle = host.spawn(agent, "a")  # nobody takes it yet: queued, held by no one
        (summary,) = host.runs()
        assert summary.status is fl.RunStatus.QUEUED
        assert host.store.lease(handle.id) == fl.store.Lease("", 1)
        with fl.Runtime.open(nats_url, agents=[counter()]) as worker:
            result = handle.wait(timeout=30)
            assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "a=5"), (
                result,
                [r.type for r in host.events(handle.id)],
                host.store.lease(handle.id),
            )
            assert [r.type for r in worker.events(handle.id)][:3] == [
                "run.started",
                "run.queued",
                "run.admitted",
            ]


def test_workers_share_the_queue_and_each_run_is_driven_once(nats_url: str) -> None:
    agent = counter()
    with (
        fl.Runtime.open(nats_url) as host,
        fl.Runtime.open(nats_url, agents=[agent]) as one,
        fl.Runtime.open(nats_url, agents=[agent]) as two,
    ):
        handles = host.spawn_many(agent, [f"n{i}" for i in range(40)])
        results = [h.wait(timeout=60) for h in handles]
        assert [r.output for r in results] == [f"n{i}=5" for i in range(40)]
        admitted = collections.Counter(
            r.event.owner  # type: ignore[union-attr]
            for h in handles
            for r in host.events(h.id)
            if r.type == "run.admitted"
        )
        assert sum(admitted.values()) == 40 and set(admitted) <= {one.owner, two.owner}
        assert all(
            [r.type for r in host.events(h.id)].count("tool.completed") == 1 for h in handles
        )


def test_a_queued_run_cancelled_before_anyone_takes_it_stays_cancelled(nats_url: str) -> None:
    agent = counter()
    with fl.Runtime.open(nats_url) as host:
        handle = host.spawn(agent, "x")
        handle.cancel()
        assert handle.wait(timeout=30).status is fl.RunStatus.CANCELLED
        with fl.Runtime.open(nats_url, agents=[agent]) as worker:
            later = worker.spawn(agent, "y")  # taken after the cancelled one
            assert later.wait(timeout=30).status is fl.RunStatus.COMPLETED
        assert [r.type for r in host.events(handle.id)] == [
            "run.started",
            "run.queued",
            "run.cancelled",
        ]


def test_a_runtime_takes_only_the_agents_it_was_opened_with(nats_url: str) -> None:
    calc, other_agent = counter(), counter("other")
    with (
        fl.Runtime.open(nats_url) as host,
        fl.Runtime.open(nats_url, agents=[other_agent]) as other,
    ):
        mine = host.spawn(calc, "x")
        theirs = host.spawn(other_agent, "y")
        assert theirs.wait(timeout=30).status is fl.RunStatus.COMPLETED
        assert host.state(mine.id).status is fl.RunStatus.QUEUED  # no runtime drives "calc"
        other.register(calc)  # now it does
        wait_until(lambda: host.state(mine.id).status is fl.RunStatus.COMPLETED, 30, "mine to run")


def test_a_worker_supervisor_whose_workers_cannot_start_stops_with_their_error(
    tmp_path: Path,
) -> None:
    server = start_server(tmp_path, jetstream=False)
    try:
        command = [sys.executable, "-m", "foldloop", "worker", f"{server.url}/w"]
        command += ["--agents", "tests.failover_agents:payer", "--processes", "2"]
        proc = subprocess.run(
            command,
            capture_output=True,
            text=True,
            timeout=60,
            cwd=Path(__file__).resolve().parent.parent,
            env={**os.environ, "FOLDLOOP_TEST_LEDGER": str(tmp_path / "ledger")},
        )
    finally:
        server.stop()
    assert proc.returncode == 1 and proc.stdout == ""
    assert "does not have JetStream enabled" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_wait_on_a_queued_run_ends_when_its_runtime_closes(nats_url: str) -> None:
    rt = fl.Runtime.open(nats_url)  # no agents: nobody takes the run
    handle = rt.spawn(counter(), "x")
    outcome: list[object] = []

    def waiting() -> None:
        try:
            outcome.append(handle.wait(timeout=None))
        except fl.FoldloopError as exc:
            outcome.append(exc)

    def following() -> bool:  # the waiter is in its loop over the log, past its first read
        frame = sys._current_frames().get(thread.ident or 0)
        return any(f.name == "_follow" for f in traceback.extract_stack(frame)) if frame else False

    thread = threading.Thread(target=waiting)
    thread.start()
    wait_until(following, 10, "the wait to follow the run")
    time_in_loop = time.monotonic() + 0.3
    wait_until(lambda: time.monotonic() > time_in_loop, 5, "a few rounds of its loop")
    rt.close()
    thread.join(20)
    assert not thread.is_alive() and len(outcome) == 1
    assert isinstance(outcome[0], fl.ConfigError) and "this runtime is closed" in str(outcome[0])


def test_runs_a_close_cuts_spawn_many_short_on_are_all_in_the_work_queue(nats_url: str) -> None:
    """Closed while its starts are being acknowledged: every run that started is put in the
    work queue before the store closes, so a runtime with the agent drives them all after a
    recover() (none left queued where neither it nor the work queue looks)."""
    agent = counter()
    rt = fl.Runtime.open(nats_url, agents=[agent])
    outcome: list[list[fl.types.RunHandle]] = []

    def spawning() -> None:
        try:
            outcome.append(rt.spawn_many(agent, [f"q{i}" for i in range(150)]))
        except fl.errors.SpawnError as exc:
            outcome.append(list(exc.started))

    thread = threading.Thread(target=spawning)
    thread.start()
    wait_until(lambda: rt.store.last_position() > 0, 30, "the first start")
    rt.close()
    thread.join(60)
    assert not thread.is_alive() and len(outcome) == 1 and outcome[0]
    with fl.Runtime.open(nats_url, agents=[agent]) as again:
        again.recover()  # what the closed runtime held (taken from the queue, or driving)
        results = [again.handle(h.id).wait(timeout=60) for h in outcome[0]]
    assert {r.status for r in results} == {fl.RunStatus.COMPLETED}


def test_a_queued_run_the_work_queue_lost_is_taken_up_by_a_wait_once_stranded(
    nats_url: str,
) -> None:
    """Its spawner died between its start and putting it in the queue (here: it is taken
    out of the queue and acknowledged): past STRANDED_AFTER_S, a wait in a runtime with
    its agent takes it up, as recover() would, instead of following it for ever."""
    from foldloop.runtime._queries import STRANDED_AFTER_S

    agent = counter()
    with fl.Runtime.open(nats_url) as host:  # no agents: it only queues
        run_id = host.spawn(agent, "lost").id
        store = host.store
        assert isinstance(store, fl.store.WorkQueue)
        (item,) = store.take_work([agent.name], 1, 5.0)
        item.done()  # gone from the queue, held by no one
    later = time.time_ns() + int((STRANDED_AFTER_S + 1) * 1e9)
    with fl.Runtime.open(nats_url, agents=[agent], clock=lambda: later) as rt:
        result = rt.handle(run_id).wait(timeout=20)
    assert result.status is fl.RunStatus.COMPLETED, result


def test_waits_on_runs_a_closed_runtime_left_take_them_up_without_a_grace_each(
    nats_url: str,
) -> None:
    """Runs interrupted by a close, their logs still for longer than the workers' grace:
    each wait in a runtime with their agent takes its run up at once (waits one after
    another on many such runs would each give workers 30 s)."""
    from foldloop.runtime._waiting import SHARED_RECOVERY_GRACE_S

    slow = fl.Agent(name="calc", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x"), latency_s=60))
    with fl.Runtime.open(nats_url, agents=[slow]) as first:
        handles = first.spawn_many(slow, ["a", "b", "c"])
        wait_until(
            lambda: all(first.state(h.id).status is fl.RunStatus.RUNNING for h in handles),
            30,
            "the runs to be driven",
        )
    fast = fl.Agent(name="calc", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="done")))
    later = time.time_ns() + int(SHARED_RECOVERY_GRACE_S * 1e9) + 10**9
    with fl.Runtime.open(nats_url, agents=[fast], clock=lambda: later) as rt:
        results = [rt.handle(h.id).wait(timeout=20) for h in handles]
    assert [r.status for r in results] == [fl.RunStatus.COMPLETED] * 3, results


def pays(ledger: list[str], where: str) -> fl.Agent:
    """A gated payment; its tool says which runtime's agent object ran it."""

    @fl.tool(name="pay")
    def pay(cents: int) -> str:
        """Pay (an effect that leaves the process)."""
        ledger.append(where)
        return "paid"

    def plan(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("pay", {"cents": 5})])
        return fl.Reply(text=messages[-1].content)

    return fl.Agent(
        name="payer", llm=fl.ScriptedLLM(plan), tools=[pay], approvals=fl.RequireApproval({"pay"})
    )


def test_a_host_without_the_agent_approves_and_the_worker_runs_the_call(nats_url: str) -> None:
    # A runtime opened without agents enqueues and approves; spawning registered the agent
    # with it, so its approval ran the gated tool in the host, not in the worker (a probe).
    ledger: list[str] = []
    with (
        fl.Runtime.open(nats_url) as host,
        fl.Runtime.open(nats_url, agents=[pays(ledger, "worker")]) as worker,
    ):
        handle = host.spawn(pays(ledger, "host"), "go")
        assert handle.wait(timeout=30).status is fl.RunStatus.AWAITING_APPROVAL
        (pending,) = host.pending_approvals()
        host.approve(run_id=handle.id, call_id=pending.call_id, by="alice")
        result = handle.wait(timeout=30, through_approvals=True)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "paid"), result
        assert worker.state(handle.id).status is fl.RunStatus.COMPLETED
    assert ledger == ["worker"]


def test_a_work_item_settled_after_its_store_closed_is_a_store_error_and_nothing_dangles() -> None:
    """The taker acknowledges items as the store closes: the ack is a StoreError it logs (the
    item is offered again), not a coroutine that never runs (a RuntimeWarning at exit)."""
    loop = LoopThread("closing")
    loop.close(asyncio.sleep(0))

    async def ack() -> None:
        raise AssertionError("never run")

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(fl.errors.StoreError, match="the store is closed"):
            loop.submit(ack())
        gc.collect()
    assert not [w for w in caught if "never awaited" in str(w.message)]


def test_coroutines_handed_to_the_store_loop_as_it_closes_each_run_or_are_cancelled() -> None:
    """Submits racing the close: each is refused (StoreError) or its future ends, ran or
    cancelled; none waits for ever on a loop that stopped before its first step."""
    for attempt in range(20):
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            futures = submit_while_closing(LoopThread(f"racing{attempt}"), 50 * (attempt % 3))
            assert all(f.done() for f in futures), "a future left pending by the stopped loop"
            gc.collect()
        assert not [w for w in caught if "never awaited" in str(w.message)]


def submit_while_closing(loop: LoopThread, before: int) -> list[Any]:
    """Close ``loop`` once ``before`` coroutines were handed to it by a thread that goes on
    handing them over until refused; the futures it got."""
    futures: list[Any] = []
    refused = threading.Event()

    async def ack() -> None:
        await asyncio.sleep(0)

    def submits() -> None:
        while not refused.is_set():
            try:
                futures.append(loop.submit(ack()))
            except fl.errors.StoreError:
                refused.set()

    thread = threading.Thread(target=submits)
    thread.start()
    wait_until(lambda: len(futures) > before, 10, "submits under way")
    loop.close(asyncio.sleep(0))
    thread.join(10)
    assert refused.is_set()
    return futures

"""Runs in flight hold no thread: async model calls and tools on the runtime's loop, runs on
a fixed set of shards; a cancel cancels what a run awaits."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Sequence
from pathlib import Path

import pytest

import foldloop as fl
from tests.log_capture import capture_logs
from tests.waiting import logged, wait_until


class Hanging:
    """An async model whose call never ends by itself; it says when it was cancelled."""

    model = "hanging"

    def __init__(self) -> None:
        self.started = threading.Event()
        self.cancelled = threading.Event()

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("a model with acomplete is awaited, not called on a thread")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        self.started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            self.cancelled.set()
            raise
        return fl.Reply(text="never")


class Held:
    """An async model holding every call until released, counting the calls in flight."""

    model = "held"

    def __init__(self) -> None:
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.now = 0

    def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
        raise AssertionError("a model with acomplete is awaited, not called on a thread")

    async def acomplete(
        self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
    ) -> fl.Reply:
        with self.lock:
            self.now += 1
        while not self.release.is_set():
            await asyncio.sleep(0.02)
        return fl.Reply(text="ok")


def test_a_cancel_during_an_async_model_call_ends_the_call(tmp_path: Path) -> None:
    model = Hanging()
    agent = fl.Agent(name="hang", llm=model)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert model.started.wait(10)
        run.cancel(reason="enough")
        assert run.wait(timeout=10).status is fl.RunStatus.CANCELLED
        assert model.cancelled.wait(10), "the model call in flight was not cancelled"
        assert [r.type for r in rt.events(run.id)][-2:] == ["model.requested", "run.cancelled"]


def test_a_cancel_during_an_async_tool_call_cancels_its_task(tmp_path: Path) -> None:
    started, cancelled = threading.Event(), threading.Event()

    @fl.tool
    async def fetch(url: str) -> str:
        """Fetch a page (forever)."""
        started.set()
        try:
            await asyncio.sleep(600)
        except asyncio.CancelledError:
            cancelled.set()
            raise
        return "page"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("fetch", {"url": "x"})])])
    agent = fl.Agent(name="fetcher", llm=llm, tools=[fetch])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert started.wait(10)
        run.cancel(reason="enough")
        assert run.wait(timeout=10).status is fl.RunStatus.CANCELLED
        assert cancelled.wait(10), "the tool's task was not cancelled"


def test_runs_in_flight_hold_no_thread_each(tmp_path: Path) -> None:
    model = Held()
    agent = fl.Agent(name="many", llm=model)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        model.release.set()
        assert rt.spawn(agent, "warm").wait(timeout=30).ok  # shards, loop and writer started
        model.release.clear()
        model.now = 0
        before = threading.active_count()
        runs = [rt.spawn(agent, f"r{i}") for i in range(300)]
        try:
            wait_until(lambda: model.now == 300, 60, "300 model calls in flight at once")
            assert rt.system.active_count() == 300
            assert threading.active_count() <= before + 2  # a thread per run would be +300
        finally:
            model.release.set()
        assert all(run.wait(timeout=60).ok for run in runs)


def test_a_cancel_that_reaches_a_run_as_it_parks_is_not_lost(tmp_path: Path) -> None:
    # The cancel is told while the run's parking decision is being committed (on_state runs
    # then, on the run's shard), so it waits in the run's mailbox behind a decision that ends
    # the run's activation: it must still cancel the parked run.
    @fl.tool
    def pay(amount: int) -> str:
        """Pay."""
        return "paid"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("pay", {"amount": 5})])])
    agent = fl.Agent(name="payer", llm=llm, tools=[pay], approvals=fl.RequireApproval({"pay"}))
    told: list[str] = []
    holder: list[fl.Runtime] = []

    def on_state(state: fl.types.RunState) -> None:
        if state.status is fl.RunStatus.AWAITING_APPROVAL and not told:
            told.append(state.run_id)
            holder[0].handle(state.run_id).cancel(reason="changed my mind")

    with fl.Runtime.open(tmp_path / "s", agents=[agent], on_state=on_state) as rt:
        holder.append(rt)
        run = rt.spawn(agent, "go")
        wait_until(
            lambda: rt.state(run.id).status is fl.RunStatus.CANCELLED,
            10,
            "the parked run to be cancelled",
        )
        assert told == [run.id]
        assert rt.state(run.id).reason.endswith("changed my mind")
        assert rt.pending_approvals() == []


def test_an_instant_models_step_is_one_store_write(tmp_path: Path) -> None:
    # A tool result's events wait for the instant model's reply and ride in its append.
    @fl.tool(idempotent=True)
    def noop(i: int) -> str:
        """Nothing."""
        return "ok"

    replies = [fl.Reply(tool_calls=[fl.ToolCall("noop", {"i": i})]) for i in range(20)]
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([*replies, fl.Reply(text="done")]), tools=[noop])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        assert rt.spawn(agent, "warm").wait(timeout=30).ok
        writer = rt.store.writer  # type: ignore[attr-defined]
        before = writer.ops
        assert rt.spawn(agent, "go").wait(timeout=30).ok
        assert writer.ops - before <= 22  # 21 model calls (+ the start); 42 if each split in two


@pytest.mark.parametrize("kind", ["sync", "async"])
def test_a_tools_timeout_does_not_count_its_wait_for_a_slot(tmp_path: Path, kind: str) -> None:
    # Six calls of a one-at-a-time tool that takes 0.2 s, timeout 1 s: the last waits ~1 s
    # for its slot, yet none of them is past its timeout.
    ran: list[str] = []

    @fl.tool(concurrency=1, timeout=1)
    def pay_sync(key: str) -> str:
        """Pay (not idempotent)."""
        ran.append(key)
        time.sleep(0.2)
        return "paid"

    @fl.tool(concurrency=1, timeout=1)
    async def pay_async(key: str) -> str:
        """Pay (not idempotent)."""
        ran.append(key)
        await asyncio.sleep(0.2)
        return "paid"

    tool = pay_sync if kind == "sync" else pay_async
    llm = fl.ScriptedLLM(
        lambda messages, tools: (
            fl.Reply(text="done")
            if messages[-1].role == "tool"
            else fl.Reply(tool_calls=[fl.ToolCall(tool.name, {"key": messages[-1].content})])
        )
    )
    agent = fl.Agent(name="payer", llm=llm, tools=[tool])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        runs = [rt.spawn(agent, f"k{i}") for i in range(6)]
        assert all(run.wait(timeout=30).ok for run in runs)
        kinds = [r.type for run in runs for r in rt.events(run.id) if r.type.startswith("tool.")]
    assert kinds.count("tool.completed") == 6 and "tool.failed" not in kinds
    assert sorted(ran) == [f"k{i}" for i in range(6)]  # each once


def pays_once() -> fl.ScriptedLLM:
    """A model that calls ``pay`` with its task as the key, then says done."""
    return fl.ScriptedLLM(
        lambda messages, tools: (
            fl.Reply(text="done")
            if messages[-1].role == "tool"
            else fl.Reply(tool_calls=[fl.ToolCall("pay", {"key": messages[-1].content})])
        )
    )


def test_a_sync_call_still_waiting_for_its_thread_never_runs_once_its_run_is_cancelled(
    tmp_path: Path,
) -> None:
    release, started = threading.Event(), threading.Event()
    ran: list[str] = []

    @fl.tool(concurrency=1, timeout=30)
    def pay(key: str) -> str:
        """Pay (not idempotent)."""
        ran.append(key)
        started.set()
        release.wait(30)
        return "paid"

    agent = fl.Agent(name="payer", llm=pays_once(), tools=[pay])
    with capture_logs() as logs, fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        first = rt.spawn(agent, "first")
        assert started.wait(10)  # holds the tool's only thread
        second = rt.spawn(agent, "second")
        # The pool's queue, not the log: a cancel told between the call's record and its
        # dispatch keeps it from being dispatched at all, and nothing is dropped then.
        pool = rt.system.tool_runner(agent, "pay").pool
        wait_until(lambda: not pool.has_room(), 10, "the second call to queue behind the first")
        second.cancel(reason="never mind")
        assert second.wait(timeout=10).status is fl.RunStatus.CANCELLED
        release.set()
        assert first.wait(timeout=10).ok
        wait_until(
            lambda: logged(logs, "tool_call_not_started", run_id=second.id),
            10,
            "the queued call to be dropped",
        )
    assert ran == ["first"]


def test_a_queued_sync_call_never_starts_once_cancel_returns(tmp_path: Path) -> None:
    """The slot frees right after cancel() returns, before the run's shard may have handled
    the cancel: the waiting call must not start all the same (tried 20 times)."""
    releases: dict[str, threading.Event] = {}
    ran: list[str] = []

    @fl.tool(concurrency=1, timeout=30)
    def pay(key: str) -> str:
        """Pay (not idempotent)."""
        ran.append(key)
        releases.setdefault(key, threading.Event()).wait(30)
        return "paid"

    agent = fl.Agent(name="payer", llm=pays_once(), tools=[pay])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        pool = rt.system.tool_runner(agent, "pay").pool
        for i in range(20):
            holder = rt.spawn(agent, f"hold{i}")
            wait_until(lambda i=i: f"hold{i}" in ran, 10, "the slot to be taken")
            queued = rt.spawn(agent, f"queued{i}")
            wait_until(lambda: not pool.has_room(), 10, "the second call to queue")
            queued.cancel(reason="never mind")
            releases.setdefault(f"hold{i}", threading.Event()).set()  # the slot frees now
            assert holder.wait(timeout=10).ok
            assert queued.wait(timeout=10).status is fl.RunStatus.CANCELLED
        assert not [key for key in ran if key.startswith("queued")]


def test_runs_lists_no_live_run_as_interrupted(tmp_path: Path) -> None:
    # runs() folds the states in batches, then checks who holds each run: a run that
    # settled in between must show settled, not orphaned.
    @fl.tool(idempotent=True)
    def noop(i: int) -> str:
        """Nothing."""
        return "ok"

    def script(messages: Sequence[fl.Message], tools: object) -> fl.Reply:
        turns = sum(1 for m in messages if m.role == "assistant")
        if turns < 2:
            return fl.Reply(tool_calls=[fl.ToolCall("noop", {"i": turns})])
        return fl.Reply(text="done")

    agent = fl.Agent(name="lister", llm=fl.ScriptedLLM(script, latency_s=0.05), tools=[noop])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        runs = [rt.spawn(agent, f"r{i}") for i in range(300)]
        seen: set[fl.RunStatus] = set()
        statuses: list[fl.RunStatus] = []
        deadline = time.monotonic() + 60
        while statuses.count(fl.RunStatus.COMPLETED) < len(runs):
            assert time.monotonic() < deadline, "the runs did not complete within 60 s"
            summaries = rt.runs()
            statuses = [s.status for s in summaries]
            seen |= set(statuses)
            wrong = [s for s in summaries if s.status is fl.RunStatus.INTERRUPTED]
            assert not wrong, f"a live run listed as interrupted: {wrong[0]}"
        assert all(run.wait(timeout=30).ok for run in runs)
        assert fl.RunStatus.RUNNING in seen  # it did look while runs were going


def test_spawn_many_starts_every_run_in_order_sharing_commits(tmp_path: Path) -> None:
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        writer = rt.store.writer  # type: ignore[attr-defined]
        commits = writer.commits
        handles = rt.spawn_many(agent, [f"q{i}" for i in range(500)], metadata={"batch": "1"})
        durable = writer.commits - commits
        assert all(h.wait(timeout=30).ok for h in handles)
        inputs = [rt.state(h.id).messages[-2].content for h in handles]
        assert inputs == [f"q{i}" for i in range(500)]  # each handle is its input's run
        started = next(iter(rt.events(handles[0].id))).event
        assert dict(started.metadata) == {"batch": "1"}  # type: ignore[attr-defined]
    assert durable < 100  # one spawn at a time commits once each: 500


def test_recover_resumes_many_runs_sharing_commits(tmp_path: Path) -> None:
    """A fleet's host that died with its runs in flight: one at a time, each run's resume
    would wait on its own commits (its lease, its resume): ~3 a run."""
    slow = fl.Agent(
        name="fleet", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="ok"), latency_s=60)
    )
    rt = fl.Runtime.open(tmp_path / "s", agents=[slow])
    rt.spawn_many(slow, ["go"] * 200)
    rt.close()
    fast = fl.Agent(name="fleet", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="done")))
    with fl.Runtime.open(tmp_path / "s", agents=[fast]) as again:
        writer = again.store.writer  # type: ignore[attr-defined]
        commits = writer.commits
        handles = again.recover()
        resumed = writer.commits - commits
        assert len(handles) == 200 and all(h.wait(timeout=30).output == "done" for h in handles)
    assert resumed < 150  # one run at a time: ~600


def test_spawn_many_from_a_thread_of_the_host_shares_commits(tmp_path: Path) -> None:
    """Off the main thread (a server's handler, a pool's worker) too: a thread that commits
    its own writes would commit each start on its own."""
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        writer = rt.store.writer  # type: ignore[attr-defined]
        counted: list[int] = []
        ok: list[bool] = []

        def spawning() -> None:
            commits = writer.commits
            handles = rt.spawn_many(agent, [f"q{i}" for i in range(500)])
            counted.append(writer.commits - commits)
            ok.extend(h.wait(timeout=30).ok for h in handles)

        thread = threading.Thread(target=spawning)
        thread.start()
        thread.join(60)
        assert not thread.is_alive() and ok == [True] * 500
    assert counted[0] < 100  # one commit a start: 500


def test_spawn_many_refuses_a_bad_input_before_writing_anything(tmp_path: Path) -> None:
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.ConfigError):
            rt.spawn_many(agent, ["fine", 42, "fine too"])  # type: ignore[list-item]
        with pytest.raises(fl.ConfigError, match=r"inputs\[1\]: input is 2,000,000 bytes"):
            rt.spawn_many(agent, ["fine", "x" * 2_000_000, "fine too"])
        assert rt.runs() == []


class Text(str):
    """A str subclass, as numpy's str_ or markupsafe's Markup are."""


def test_spawn_many_refuses_an_input_its_run_started_cannot_hold_before_writing_anything(
    tmp_path: Path,
) -> None:
    """Under the limit alone, over it with the instructions its run.started records too."""
    agent = fl.Agent(
        name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]), instructions="i" * 600_000
    )
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.ConfigError, match=r"inputs\[2\]: input is 600,000 bytes; with wha"):
            rt.spawn_many(agent, ["fine", "fine too", "x" * 600_000])
        assert rt.runs() == []
        with pytest.raises(fl.ConfigError, match=r"run\.started event of 1,200"):
            rt.spawn(agent, "x" * 600_000)
        assert rt.runs() == []
        with pytest.raises(fl.ConfigError, match=r"without its input .* no input fits"):
            rt.spawn_many(agent, ["a", "b"], metadata={"k": "m" * 500_000})  # not inputs[0]'s
        assert rt.runs() == []
        room = 1_048_576 - 600_000 - 400  # what a run.started holds besides, with margin
        assert rt.spawn_many(agent, ["fine", "y" * room])[1].wait(timeout=30).ok


def test_inputs_and_metadata_of_a_str_subclass_are_recorded_as_text(tmp_path: Path) -> None:
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="ok")))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        one = rt.spawn(agent, Text("one"), metadata={Text("k"): Text("v")})
        many = rt.spawn_many(agent, [Text("two"), "three"], metadata={"k": Text("w")})
        for handle in (one, *many):
            assert handle.wait(timeout=30).ok
        started = [next(iter(rt.events(h.id))).event for h in (one, *many)]
    assert [(s.input, s.metadata) for s in started] == [
        ("one", (("k", "v"),)),
        ("two", (("k", "w"),)),
        ("three", (("k", "w"),)),
    ]
    assert all(type(s.input) is str for s in started)


def test_spawn_many_past_the_cap_queues_the_rest_in_order(tmp_path: Path) -> None:
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")], latency_s=0.05))
    with fl.Runtime.open(tmp_path / "s", agents=[agent], max_active_runs=2) as rt:
        handles = rt.spawn_many(agent, [f"q{i}" for i in range(8)])
        assert all(h.wait(timeout=30).ok for h in handles)
        admitted = sorted(
            (r.position, h.id) for h in handles for r in rt.events(h.id) if r.type == "run.admitted"
        )
        queued = [h.id for h in handles if "run.queued" in [r.type for r in rt.events(h.id)]]
    assert len(queued) == 6 and [run_id for _, run_id in admitted] == queued  # FIFO


def test_a_blocking_async_model_is_reported(tmp_path: Path) -> None:
    class Blocking:
        """An acomplete that blocks the loop (time.sleep): what the README forbids."""

        model = "blocking"

        def complete(self, messages: Sequence[fl.Message], tools: object, **_: object) -> fl.Reply:
            raise AssertionError("awaited, not called")

        async def acomplete(
            self, messages: Sequence[fl.Message], tools: object, *, max_tokens: int | None = None
        ) -> fl.Reply:
            time.sleep(2.5)
            return fl.Reply(text="late")

    agent = fl.Agent(name="blocker", llm=Blocking())
    with capture_logs() as logs, fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        assert rt.spawn(agent, "go").wait(timeout=30).ok
        wait_until(lambda: logged(logs, "event_loop_blocked"), 10, "the blocked loop reported")
    [warning] = [e for e in logs if e.get("event") == "event_loop_blocked"]
    assert warning["late_s"] >= 2.0 and warning["log_level"] == "warning"


def test_spawn_many_refuses_one_str_for_its_inputs(tmp_path: Path) -> None:
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.ConfigError, match="list of str inputs; got a str"):
            rt.spawn_many(agent, "hello")
        with pytest.raises(fl.ConfigError, match="list of str inputs; got a int"):
            rt.spawn_many(agent, 42)  # type: ignore[arg-type]
        with pytest.raises(fl.ConfigError, match=r"inputs\[1\]: input must be a str"):
            rt.spawn_many(agent, ["fine", 3])  # type: ignore[list-item]
        with pytest.raises(fl.ConfigError, match=r"^inputs\[0\]: input must be a str"):
            rt.spawn_many(agent, [3])  # type: ignore[list-item]  # one input: named all the same
        with pytest.raises(fl.ConfigError, match=r"^input must be a str"):
            rt.spawn(agent, 3)  # type: ignore[arg-type]  # spawn's one input has no index
        with pytest.raises(fl.ConfigError, match=r"^inputs\[0\]: input is 2,000,000 bytes"):
            rt.spawn_many(agent, ["x" * 2_000_000])
        with pytest.raises(fl.ConfigError, match=r"^input is 2,000,000 bytes"):
            rt.spawn(agent, "x" * 2_000_000)
        assert rt.runs() == []


def test_a_ctrl_c_during_spawn_many_leaves_every_written_run_driven(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # The host's Ctrl-C lands while it waits for the second start to be durable: the starts
    # under way still land and are driven or queued; no claim or slot is left behind.
    from foldloop.runtime._writes import RunWrites

    real = RunWrites.started
    calls = [0]

    def interrupted_once(run_id: str, pending: object) -> int:
        calls[0] += 1
        if calls[0] == 2:
            raise KeyboardInterrupt
        return real(run_id, pending)  # type: ignore[arg-type]

    monkeypatch.setattr(RunWrites, "started", staticmethod(interrupted_once))
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")], latency_s=0.05))
    with fl.Runtime.open(tmp_path / "s", agents=[agent], max_active_runs=2) as rt:
        with pytest.raises(KeyboardInterrupt):
            rt.spawn_many(agent, [f"q{i}" for i in range(5)])
        ids = [s.run_id for s in rt.runs()]
        assert len(ids) == 5
        assert all(rt.handle(run_id).wait(timeout=30).ok for run_id in ids)
        # nothing leaked: the cap's two slots serve new runs, which complete
        assert all(h.wait(timeout=30).ok for h in rt.spawn_many(agent, ["a", "b", "c"]))


def test_spawn_many_that_the_store_fails_part_way_says_which_runs_started(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime._writes import RunWrites

    real = RunWrites.start
    calls = [0]

    def fails_from_the_fourth(self: RunWrites, *args: object, **kwargs: object) -> object:
        calls[0] += 1
        if calls[0] == 4:
            raise fl.errors.StoreError("the disk is full")
        return real(self, *args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(RunWrites, "start", fails_from_the_fourth)
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.errors.SpawnError, match="3 of 10 runs started") as caught:
            rt.spawn_many(agent, [f"q{i}" for i in range(10)])
        error = caught.value
        assert isinstance(error.__cause__, fl.errors.StoreError)
        assert error.missing == tuple(range(3, 10))
        assert all(h.wait(timeout=30).ok for h in error.started)
        inputs = [rt.state(h.id).messages[-2].content for h in error.started]
        assert inputs == ["q0", "q1", "q2"]  # in input order
        assert sorted(s.run_id for s in rt.runs()) == sorted(h.id for h in error.started)


def test_a_start_the_store_failed_to_confirm_but_wrote_counts_as_started_and_is_taken_up(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The store fails after the commit of the second start (a JetStream ack lost, say):
    its run is in the log, so it is not missing; its lease is let go, and a wait takes it up."""
    from foldloop.runtime._writes import RunWrites

    real = RunWrites.started
    calls = [0]

    def unconfirmed_second(run_id: str, pending: object) -> int:
        calls[0] += 1
        epoch = real(run_id, pending)  # type: ignore[arg-type]
        if calls[0] == 2:
            raise fl.errors.StoreError("the store did not confirm the write")
        return epoch

    monkeypatch.setattr(RunWrites, "started", staticmethod(unconfirmed_second))
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        with pytest.raises(fl.errors.SpawnError, match="all 3 runs started") as caught:
            rt.spawn_many(agent, ["a", "b", "c"])
        assert caught.value.missing == () and len(caught.value.started) == 3
        assert all(h.wait(timeout=30).ok for h in caught.value.started)


def test_spawn_many_under_a_run_id_in_use_names_the_runs_on_either_side(tmp_path: Path) -> None:
    from foldloop.runtime._facade import spawn_named

    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        assert rt.spawn(agent, "first", run_id="taken").wait(timeout=30).ok
        with pytest.raises(fl.errors.SpawnError, match="2 of 3 runs started") as caught:
            spawn_named(rt, agent, ["a", "b", "c"], ["run-a", "taken", "run-c"], None)
        error = caught.value
        assert error.started == ("run-a", "run-c") and error.missing == (1,)
        assert "already exists" in str(error.__cause__)
        assert all(rt.handle(run_id).wait(timeout=30).ok for run_id in error.started)


def test_spawn_many_that_closes_under_it_after_writing_every_run_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime import _commands

    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    store = tmp_path / "s"
    real = _commands.drive
    driven = [0]

    def closing_after_two(*args: object, **kwargs: object) -> None:
        driven[0] += 1
        if driven[0] > 2:
            raise fl.ConfigError("this runtime closed while the run started")
        real(*args, **kwargs)  # type: ignore[arg-type]

    monkeypatch.setattr(_commands, "drive", closing_after_two)
    with fl.Runtime.open(store, agents=[agent]) as rt:
        with pytest.raises(fl.errors.SpawnError, match="all 5 runs started, but not all") as caught:
            rt.spawn_many(agent, [f"q{i}" for i in range(5)])
        handles = caught.value.started
        assert len(handles) == 5 and caught.value.missing == ()
    monkeypatch.setattr(_commands, "drive", real)
    with fl.Runtime.open(store, agents=[agent]) as rt:
        assert len(rt.recover()) >= 3  # the three left behind (and any close() interrupted)
        assert all(rt.handle(h.id).wait(timeout=30).ok for h in handles)


def _spawn_many_racing_close(
    rt: fl.Runtime, agent: fl.Agent, inputs: list[str]
) -> tuple[list[str], tuple[int, ...], bool]:
    """spawn_many while another thread closes ``rt`` once the first start commits: the run
    ids handed out, the missing indices, and whether the close began before it returned."""
    first, closing = threading.Event(), threading.Event()
    rt.subscribe(lambda rec: first.set(), types=["run.started"])

    def close_after_the_first_start() -> None:
        first.wait(30)
        closing.set()
        rt.close()

    closer = threading.Thread(target=close_after_the_first_start)
    closer.start()
    try:
        handed, missing = [h.id for h in rt.spawn_many(agent, inputs)], ()
    except fl.errors.SpawnError as exc:
        handed, missing = [h.id for h in exc.started], exc.missing
    raced = closing.is_set()
    closer.join(30)
    return handed, missing, raced


def test_spawn_many_that_loses_the_race_with_close_hands_out_every_run_it_wrote(
    tmp_path: Path,
) -> None:
    # Every run whose start is in the log comes back with a handle: from spawn_many (the
    # close let the starts it began finish), or from its SpawnError (it stopped starting).
    agent = fl.Agent(name="many", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    inputs = [f"q{i}" for i in range(1000)]
    for attempt in range(10):
        store = tmp_path / f"s{attempt}"
        handed, missing, raced = _spawn_many_racing_close(
            fl.Runtime.open(store, agents=[agent]), agent, inputs
        )
        with fl.Runtime.open(store, agents=[agent]) as after:
            assert set(handed) == {s.run_id for s in after.runs()}
            assert len(handed) + len(missing) == len(inputs)
            assert all(h.wait(timeout=60).ok for h in after.recover())
            started = [
                next(m.content for m in after.state(run_id).messages if m.role == "user")
                for run_id in handed
            ]
        assert started == [text for i, text in enumerate(inputs) if i not in set(missing)]
        if raced:
            return  # the close began while spawn_many was under way
    pytest.fail("close() never began while spawn_many was under way")


def test_a_hung_sync_call_past_its_timeout_does_not_hold_up_the_calls_behind_it(
    tmp_path: Path,
) -> None:
    release = threading.Event()
    ran: list[str] = []

    @fl.tool(concurrency=1, timeout=0.3)
    def lookup(key: str) -> str:
        """Look up (the first call hangs until the test ends)."""
        ran.append(key)
        if key == "first":
            release.wait(30)
        return f"value of {key}"

    llm = fl.ScriptedLLM(
        lambda messages, tools: (
            fl.Reply(text=messages[-1].content)
            if messages[-1].role == "tool"
            else fl.Reply(tool_calls=[fl.ToolCall("lookup", {"key": messages[-1].content})])
        )
    )
    agent = fl.Agent(name="looker", llm=llm, tools=[lookup])
    try:
        with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
            first = rt.spawn(agent, "first")
            wait_until(lambda: ran == ["first"], 10, "the first call to hang in the tool")
            second = rt.spawn(agent, "second")
            # the first is past its timeout: its thread no longer counts, the second runs
            assert second.wait(timeout=10).output == "value of second"
            assert "did not finish" in first.wait(timeout=10).output
    finally:
        release.set()


@pytest.mark.parametrize(
    "usage", [fl.types.Usage(input_tokens=-5), fl.types.Usage(output_tokens=10**30)]
)
def test_a_model_reporting_impossible_usage_fails_the_run_clearly(
    tmp_path: Path, usage: fl.types.Usage
) -> None:
    llm = fl.ScriptedLLM([fl.Reply(text="hi", usage=usage)])
    agent = fl.Agent(name="odd", llm=llm)
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        result = rt.spawn(agent, "go").wait(timeout=30)
    assert result.status is fl.RunStatus.FAILED
    assert "which is not a usage to record" in result.reason

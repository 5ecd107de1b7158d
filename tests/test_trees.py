"""Run trees: sub-agents offered as tools, child runs, their answers back in the parent,
fan-out bounded by max_children, max_depth, cancel cascade, one budget for the tree."""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import foldloop as fl
from foldloop.actors._system import ActorSystem
from foldloop.core._commands import Cancel, ChildFinished, Command, ModelReplied, Start
from foldloop.core._decide import decide
from foldloop.core._effects import CallModel, SpawnChild
from foldloop.core._state import RunState
from foldloop.core._tree import child_finished, child_run_id, ended_for_parent
from foldloop.errors import RunLocked
from foldloop.events import Limits, ToolCall, ToolInfo, Usage
from foldloop.tools._decorator import DEFAULT_MAX_RESULT_CHARS
from tests.log_capture import capture_logs
from tests.tree_models import answers, fans_out
from tests.waiting import logged, wait_until


def holding(name: str, release: threading.Event, **kw: Any) -> fl.Agent:
    """An agent whose one tool call (``hold``) waits until ``release`` is set."""

    @fl.tool(timeout=30)
    def hold(task: str) -> str:
        """Wait for the test."""
        release.wait(20)
        return "held"

    def holds(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("hold", {"task": "x"})])
        return fl.Reply(text="done")

    return fl.Agent(name=name, llm=fl.ScriptedLLM(holds), tools=[hold], **kw)


def busy_worker() -> fl.Agent:
    """An agent that calls a trivial tool every step until a limit stops it."""

    def busy(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        turn = sum(1 for m in messages if m.role == "assistant")
        return fl.Reply(tool_calls=[fl.ToolCall("noop", {"i": turn})])

    @fl.tool(idempotent=True)
    def noop(i: int) -> str:
        """Do nothing new."""
        return f"ok {i}"

    return fl.Agent(name="worker", llm=fl.ScriptedLLM(busy), tools=[noop])


def researcher(name: str = "researcher", **kw: object) -> fl.Agent:
    return fl.Agent(
        name=name, llm=fl.ScriptedLLM(answers("found")), description="Finds things out.", **kw
    )


def test_sub_agents_are_offered_as_tools_and_their_answers_come_back_in_order(
    store_path: Path,
) -> None:
    seen: list[list[str]] = []

    def lead_model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
        seen.append([t.name for t in tools])
        return fans_out(("researcher", "cats"), ("researcher", "dogs"), ("writer", "a poem"))(
            messages, tools
        )

    writer = fl.Agent(name="writer", llm=fl.ScriptedLLM(answers("wrote")))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(lead_model),
        agents=[researcher(), writer],
        limits=fl.Limits(max_steps=30),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        result = run.wait(timeout=30)
        assert result.ok, result
        # the model's order, whatever order the children ended in
        assert result.output == "found: cats | found: dogs | wrote: a poem"
        assert seen[0] == ["researcher", "writer"]
        types = [r.type for r in rt.events(run.id)]
        assert types.count("child.spawned") == types.count("child.ended") == 3
        children = [s for s in rt.runs() if s.parent_run_id == run.id]
        assert len(children) == 3
        assert all(s.status is fl.RunStatus.COMPLETED for s in children)
        tree = rt.tree(run.id)
        assert (tree.run_id, tree.agent, tree.status) == (run.id, "lead", fl.RunStatus.COMPLETED)
        assert [(c.agent, c.status) for c in tree.children] == [
            ("researcher", fl.RunStatus.COMPLETED),
            ("researcher", fl.RunStatus.COMPLETED),
            ("writer", fl.RunStatus.COMPLETED),
        ]
        assert tree.spent_steps == 2 + 3
        # each child's id is its parent's and call's: a second start could not make another
        assert [c.run_id for c in tree.children] == [
            child_run_id(run.id, 1, c.call_id, c.agent) for c in tree.children
        ]


def test_a_child_that_does_not_complete_is_a_failed_call_saying_how_it_ended(
    store_path: Path,
) -> None:
    def loops(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        turn = sum(1 for m in messages if m.role == "assistant")
        return fl.Reply(tool_calls=[fl.ToolCall("noop", {"i": turn})])

    @fl.tool(idempotent=True)
    def noop(i: int) -> str:
        """Do nothing."""
        return "ok"

    stuck = fl.Agent(
        name="stuck", llm=fl.ScriptedLLM(loops), tools=[noop], limits=fl.Limits(max_steps=2)
    )
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("stuck", "try"))),
        agents=[stuck],
        limits=fl.Limits(max_steps=20),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        result = run.wait(timeout=30)
        assert result.ok, result
        failed = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
        assert len(failed) == 1
        assert "ended limit_reached" in failed[0].error
        assert "max_steps ceiling 2" in failed[0].error
        assert "error (exception): sub-agent run" in result.output


def test_a_call_id_the_model_uses_again_in_a_later_step_starts_a_new_child(
    store_path: Path,
) -> None:
    def reuses(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        asked = sum(1 for m in messages if m.role == "tool")
        if asked < 2:
            return fl.Reply(tool_calls=[fl.ToolCall("researcher", {"input": f"q{asked}"}, id="c0")])
        return fl.Reply(text=" | ".join(m.content for m in messages if m.role == "tool"))

    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(reuses),
        agents=[researcher()],
        limits=fl.Limits(max_steps=30),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        result = rt.spawn(lead, "go").wait(timeout=30)
        assert result.output == "found: q0 | found: q1", result
        assert len({c.run_id for c in rt.state(result.run_id).children}) == 2


def test_max_children_runs_them_a_few_at_a_time_in_the_models_order(store_path: Path) -> None:
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(*[("researcher", f"t{i}") for i in range(5)])),
        agents=[researcher()],
        limits=fl.Limits(max_steps=30, max_children=2),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        result = run.wait(timeout=30)
        assert result.output == " | ".join(f"found: t{i}" for i in range(5))
        running = 0
        for rec in rt.events(run.id):
            running += {"child.spawned": 1, "child.ended": -1}.get(rec.type, 0)
            assert running <= 2
        spawned = [r.event.run_id for r in rt.events(run.id) if r.type == "child.spawned"]
        assert len(spawned) == 5


def test_max_depth_stops_a_tree_growing_past_it(store_path: Path) -> None:
    offered: dict[str, list[str]] = {}

    def chain(level: int, below: fl.Agent | None) -> fl.Agent:
        if below is None:
            return fl.Agent(name=f"a{level}", llm=fl.ScriptedLLM(answers(f"a{level}")))
        ask = fans_out((below.name, "deeper"))

        def model(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
            offered[f"a{level}"] = [t.name for t in tools]
            return ask(messages, tools)

        return fl.Agent(name=f"a{level}", llm=fl.ScriptedLLM(model), agents=[below])

    bottom = chain(4, None)
    agents = [bottom]
    for level in (3, 2, 1):
        agents.append(chain(level, agents[-1]))
    root = fl.Agent(
        name="a0",
        llm=fl.ScriptedLLM(fans_out(("a1", "deeper"))),
        agents=[agents[-1]],
        limits=fl.Limits(max_steps=40, max_depth=2),
    )
    with fl.Runtime.open(store_path, agents=[root]) as rt:
        run = rt.spawn(root, "go")
        result = run.wait(timeout=30)
        assert result.ok, result
        tree = rt.tree(run.id)
        depths = [len(tree.walk())]
        assert depths == [3]  # a0 -> a1 -> a2; a2's call of a3 was refused
        (a2,) = tree.children[0].children
        failed = [r.event for r in rt.events(a2.run_id) if r.type == "tool.failed"]
        assert "max_depth=2" in failed[0].error
        assert failed[0].kind == "exception"  # the tree's shape, not the model's arguments
        assert offered["a2"] == []  # a run at max_depth is not offered its sub-agents


def test_a_parents_children_start_sharing_commits(store_path: Path) -> None:
    """They start on a thread of the runtime's: one commit a child if each committed its own."""
    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(answers("late"), latency_s=60))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(*[("slow", f"t{i}") for i in range(200)])),
        agents=[slow],
        limits=fl.Limits(max_steps=1000, max_children=200),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        writer = rt.store.writer  # type: ignore[attr-defined]
        commits = writer.commits
        run = rt.spawn(lead, "go")
        wait_until(lambda: len(rt.runs()) == 201, 30, "the lead's 200 children to start")
        started = writer.commits - commits
        run.cancel(reason="enough")
        assert run.wait(timeout=30).status is fl.RunStatus.CANCELLED
    assert started < 60  # one commit a child: over 200


def test_cancelling_a_parent_cancels_its_whole_subtree(store_path: Path) -> None:
    release = threading.Event()
    leaf = holding("leaf", release)
    middle = fl.Agent(
        name="middle", llm=fl.ScriptedLLM(fans_out(("leaf", "a"), ("leaf", "b"))), agents=[leaf]
    )
    root = fl.Agent(
        name="root",
        llm=fl.ScriptedLLM(fans_out(("middle", "m"))),
        agents=[middle],
        limits=fl.Limits(max_steps=40),
    )
    try:
        with fl.Runtime.open(store_path, agents=[root]) as rt:
            run = rt.spawn(root, "go")
            wait_until(lambda: len(rt.runs()) == 4, 20, "the tree to grow to four runs")
            assert rt.explain(run.id).next_steps[0].startswith("wait: it waits for its child runs")
            run.cancel(reason="enough")
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            others = [s.run_id for s in rt.runs() if s.run_id != run.id]
            for run_id in others:
                wait_until(
                    lambda run_id=run_id: rt.state(run_id).status is fl.RunStatus.CANCELLED,
                    20,
                    f"{run_id} to be cancelled",
                )
                cancelled = [r.event for r in rt.events(run_id) if r.type == "run.cancelled"]
                assert cancelled[0].reason == "parent cancelled"
            # the root's log ended before its child's end reached it: explain does not call
            # the child running, as the tree beside it says it is cancelled
            (child,) = [line for line in rt.explain(run.id).budget if "child" in line]
            assert "running" not in child and "its own log says how it ended" in child, child
            release.set()  # else the close waits out its drain for the held calls
    finally:
        release.set()


def test_the_tree_spends_no_more_steps_than_the_roots_ceiling(store_path: Path) -> None:
    worker = busy_worker()
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(*[("worker", f"w{i}") for i in range(3)])),
        agents=[worker],
        limits=fl.Limits(max_steps=12),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        result = run.wait(timeout=30)
        tree = rt.tree(run.id)
        allotted = [
            r.event.limits.max_steps for r in rt.events(run.id) if r.type == "child.spawned"
        ]
        assert allotted == [2, 3, 3]  # even shares of what is left, one share kept back
        assert [c.steps for c in tree.children] == allotted  # each used its whole allotment
        assert all(c.status is fl.RunStatus.LIMIT_REACHED for c in tree.children)
        assert result.ok, result  # the lead had a step left to answer with
        assert tree.spent_steps == 1 + 8 + 1 <= 12
        explained = rt.explain(run.id)  # where the tree's budget went
        assert [line for line in explained.budget if line.startswith("child ")] == [
            f"child {c.run_id} (worker, call {c.call_id}) allotted {c.steps} steps: spent "
            f"{c.steps} steps, {c.usage.total_tokens:,} tokens, ended limit_reached"
            for c in tree.children
        ]
        tokens = tree.spent.total_tokens
        assert explained.budget[-1] == (
            f"counted against its ceilings (12 steps): 10 steps, {tokens:,} tokens"
        )


@pytest.mark.parametrize(
    ("agents", "says"),
    [
        pytest.param(lambda: ["not an agent"], "is not an fl.Agent", id="not-an-agent"),
        pytest.param(
            lambda: [researcher("dup"), researcher("dup")], "has the name of another", id="twice"
        ),
    ],
)
def test_bad_sub_agents_are_refused_with_a_clear_error(
    agents: Callable[[], list[object]], says: str
) -> None:
    with pytest.raises(fl.ConfigError, match=says):
        fl.Agent(name="lead", llm=fl.ScriptedLLM([]), agents=agents())  # type: ignore[arg-type]


TREE_WORKER = Path(__file__).with_name("tree_worker.py")


def tree_worker(store: Path, ledger: Path, *extra: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, str(TREE_WORKER), str(store), "--ledger", str(ledger), *extra],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONUNBUFFERED": "1"},
        start_new_session=True,
    )


def expect_line(proc: subprocess.Popen[str], marker: str, timeout: float = 60) -> str:
    assert proc.stdout is not None
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = proc.stdout.readline()
        if not line:
            err = proc.stderr.read() if proc.stderr else ""
            raise AssertionError(f"the tree worker exited before {marker!r}: {err[-2000:]}")
        if line.startswith(marker):
            return line.strip()
    raise AssertionError(f"no {marker!r} within {timeout} s")


def test_kill_loop_over_a_run_tree_starts_each_child_once_and_charges_each_leaf_once(
    tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    kills = max(4, int(request.config.getoption("--kills")) // 6)
    rng = random.Random(int(request.config.getoption("--kills")))
    store, ledger = tmp_path / "fl", tmp_path / "ledger"
    park = ("--park-after", "0.02")  # parents park and are taken up again as children end
    proc = tree_worker(store, ledger, "--spawn", "tree", *park)
    expect_line(proc, "READY")
    for _ in range(kills):
        time.sleep(rng.uniform(0.0, 0.4))
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        proc = tree_worker(store, ledger, "--recover", *park)
        expect_line(proc, "READY")
    done = expect_line(proc, "DONE", timeout=120)
    proc.communicate(timeout=30)

    leaves = [f"t.{i}.{j}" for i in range(3) for j in range(3)]
    assert done.startswith("DONE completed ")
    with fl.Runtime.open(store) as rt:
        runs = rt.runs()
        assert len(runs) == 1 + 3 + 9  # every child started exactly once
        by_id = {s.run_id: s for s in runs}
        for s in runs:
            assert s.status is fl.RunStatus.COMPLETED, s
            started = [r for r in rt.events(s.run_id) if r.type == "run.started"]
            assert len(started) == 1
            if s.parent_run_id is not None:
                parent = rt.state(s.parent_run_id)
                links = [c for c in parent.children if c.run_id == s.run_id]
                assert len(links) == 1 and links[0].status == "completed"
                assert by_id[s.parent_run_id]
        # none, when every leaf's charge was cut by a kill before it ran (a busy machine)
        charged = ledger.read_text().splitlines() if ledger.exists() else []
        assert sorted(set(charged)) == sorted(set(charged) & set(leaves))
        assert len(charged) == len(set(charged))  # a non-idempotent tool never ran twice
        resumed = [
            s.run_id for s in runs if any(r.type == "run.resumed" for r in rt.events(s.run_id))
        ]
        assert resumed, "no kill landed while the tree ran"
        tree = rt.tree("tree")
        for node in tree.walk():  # the budget: no subtree spent past its run's ceiling
            limits = rt.state(node.run_id).limits
            assert node.spent_steps <= limits.steps_ceiling
            assert limits.max_tokens is not None and limits.max_cost_usd is not None
            assert node.spent.total_tokens <= limits.max_tokens
            assert node.spent.cost_usd <= limits.max_cost_usd
        assert tree.spent.cost_usd > 0  # priced: the dollar ceiling was in play
        answers = [leaf for mid in tree.children for leaf in mid.children]
        assert len(answers) == 9
        for leaf in answers:
            state = rt.state(leaf.run_id)
            ran = state.input in charged
            # charged and told so, or cut by a kill and told the outcome is unknown
            assert state.output in (state.input, f"{state.input}?")
            assert ran or state.output == f"{state.input}?"


# -- the budget invariant, on the pure core ---------------------------------------------

CHILD_INFO = ToolInfo(name="helper", idempotent=False, schema_digest="d")


class TreeSim:
    """Runs of one tree driven by ``decide`` alone, in whatever order hypothesis picks:
    model replies and children's ends. A model counts no more input tokens than its call's
    prompt bound (no byte-level tokenizer does: test_ceilings.py) and writes no more than
    its max_tokens; a call costs its tokens at ``price`` (dollars a million tokens)."""

    PRICE = (2.0, 8.0)

    def __init__(self, root: Limits, child: Limits) -> None:
        self.info = msgspec.structs.replace(CHILD_INFO, agent_limits=child)
        self.states: dict[str, RunState] = {}
        self.pending: list[tuple[str, object]] = []  # (run id, CallModel | ChildFinished)
        self.now = 1
        self.start("root", root, parent=None, call_id="", depth=0)

    def start(
        self, run_id: str, limits: Limits, *, parent: str | None, call_id: str, depth: int
    ) -> None:
        command = Start(
            now=self.tick(),
            agent="helper" if parent else "root",
            input="go",
            limits=limits,
            tools=(self.info,),
            tools_digest="x",
            parent_run_id=parent,
            parent_call_id=call_id,
            depth=depth,
            price=self.PRICE,
        )
        self.apply(RunState(run_id=run_id), command)

    def tick(self) -> int:
        self.now += 1_000
        return self.now

    def apply(self, state: RunState, command: Command) -> None:
        decision = decide(state, command)
        assert not decision.rejected, decision.rejected
        assert decision.state is not None
        state = decision.state
        self.states[state.run_id] = state
        for effect in decision.effects:
            if isinstance(effect, CallModel):
                self.pending.append((state.run_id, effect))
            elif isinstance(effect, SpawnChild):
                self.start(
                    effect.run_id,
                    effect.limits,
                    parent=state.run_id,
                    call_id=effect.call_id,
                    depth=effect.depth,
                )
        if state.settled and state.parent_run_id and ended_for_parent(state):
            answer = child_finished(state, self.tick(), lambda text: (text, None))
            self.pending.append((state.parent_run_id, answer))

    def step(self, data: st.DataObject) -> None:
        run_id, what = self.pending.pop(data.draw(st.integers(0, len(self.pending) - 1)))
        state = self.states[run_id]
        if isinstance(what, ChildFinished):
            self.apply(state, what)
            return
        assert isinstance(what, CallModel)
        most = 400 if what.max_tokens is None else what.max_tokens
        written = data.draw(st.just(most) | st.integers(0, most))  # often all it may
        read = data.draw(st.just(what.prompt_bound) | st.integers(0, what.prompt_bound or 400))
        per_input, per_output = self.PRICE
        cost = (read * per_input + written * per_output) / 1e6
        usage = Usage(input_tokens=read, output_tokens=written, cost_usd=cost)
        calls = data.draw(st.integers(0, 3))
        reply = ModelReplied(
            now=self.tick(),
            step=what.step,
            text="done",
            tool_calls=tuple(ToolCall("helper", {"input": f"t{i}"}) for i in range(calls)),
            usage=usage,
        )
        self.apply(state, reply)

    def spent(self) -> tuple[int, int, float]:
        """Steps, tokens and dollars of every run of the tree, each counted once, by its
        own run."""
        return (
            sum(s.steps for s in self.states.values()),
            sum(s.usage.total_tokens for s in self.states.values()),
            sum(s.usage.cost_usd for s in self.states.values()),
        )


@settings(max_examples=150, deadline=None)
@given(
    st.integers(1, 30),
    st.none() | st.integers(1, 6_000),
    st.none() | st.floats(0.0005, 0.05),
    st.none() | st.integers(1, 20),
    st.none() | st.integers(1, 3_000),
    st.integers(1, 3),
    st.integers(0, 3),
    st.data(),
)
def test_a_tree_never_spends_more_steps_tokens_or_dollars_than_its_roots_ceilings(
    root_steps: int,
    root_tokens: int | None,
    root_dollars: float | None,
    child_steps: int | None,
    child_tokens: int | None,
    max_children: int,
    max_depth: int,
    data: st.DataObject,
) -> None:
    root = Limits(
        max_steps=root_steps,
        max_tokens=root_tokens,
        max_cost_usd=root_dollars,
        max_children=max_children,
        max_depth=max_depth,
    )
    sim = TreeSim(root, Limits(max_steps=child_steps, max_tokens=child_tokens))
    while sim.pending:
        sim.step(data)
        steps, tokens, dollars = sim.spent()
        assert steps <= root_steps
        if root_tokens is not None:
            assert tokens <= root_tokens
        if root_dollars is not None:
            assert dollars <= root_dollars
    root_state = sim.states["root"]
    assert root_state.settled  # nothing left in flight: the tree ended
    assert all(s.settled for s in sim.states.values())
    assert max(s.depth for s in sim.states.values()) <= max_depth
    for state in sim.states.values():  # what a parent recorded is what its children spent
        for link in state.children:
            child = sim.states[link.run_id]
            assert not link.running
            assert link.steps == child.steps + sum(c.steps for c in child.children)


def test_a_parent_hears_the_end_of_a_child_another_runtime_recovered(tmp_path: Path) -> None:
    from tests.tree_worker import build

    for attempt in range(8):
        store, ledger = tmp_path / f"fl{attempt}", tmp_path / f"ledger{attempt}"
        proc = tree_worker(store, ledger, "--spawn", "tree")
        expect_line(proc, "READY")
        time.sleep(0.1 + attempt * 0.03)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        root = build(ledger)
        with fl.Runtime.open(store, agents=[root], poll_interval=0.05) as here:
            here.system.park_after_s = 0.01  # parked, the root still hears its children
            state = here.state("tree")
            if state.settled or not any(c.running for c in state.children):
                continue  # the kill came too early or too late: try again
            here.resume("tree")  # the root is driven here ...
            with fl.Runtime.open(store, agents=[root]) as there:
                assert "tree" not in there.recover()  # ... its children there
                result = here.handle("tree").wait(timeout=20)
                assert result.ok, result
                assert result.output.count("t.") == 9
            return
    pytest.fail("no kill landed while the tree's middle runs were running")


def killed_mid_tree(tmp_path: Path) -> tuple[Path, Path]:
    """A store whose tree (tree_worker.py) was SIGKILLed while its middle runs ran."""
    for attempt in range(8):
        store, ledger = tmp_path / f"fl{attempt}", tmp_path / f"ledger{attempt}"
        proc = tree_worker(store, ledger, "--spawn", "tree")
        expect_line(proc, "READY")
        time.sleep(0.1 + attempt * 0.03)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate(timeout=30)
        with fl.Runtime.open(store) as rt:
            state = rt.state("tree")
            if not state.settled and any(c.running for c in state.children):
                return store, ledger
    pytest.fail("no kill landed while the tree's middle runs were running")


def running_below(rt: fl.Runtime, run_id: str) -> list[str]:
    """The runs below ``run_id`` not ended (as the tree shows them: running, or interrupted
    when nothing drives them; a child whose start a crash cut short has no log of its own)."""
    return [
        node.run_id
        for node in rt.tree(run_id).walk()[1:]
        if node.status in (fl.RunStatus.RUNNING, fl.RunStatus.INTERRUPTED)
    ]


def test_cancelling_a_parent_no_runtime_drives_cancels_its_subtree(tmp_path: Path) -> None:
    from tests.tree_worker import build

    store, ledger = killed_mid_tree(tmp_path)
    with fl.Runtime.open(store, agents=[build(ledger)]) as rt:
        assert running_below(rt, "tree")  # orphans, driven by nobody
        rt.handle("tree").cancel(reason="stop")
        wait_until(lambda: not running_below(rt, "tree"), 20, "the subtree to be cancelled")
        for node in rt.tree("tree").walk()[1:]:  # a child the kill cut short has no log
            assert node.status in (fl.RunStatus.COMPLETED, fl.RunStatus.CANCELLED), node
            if node.status is fl.RunStatus.CANCELLED:
                assert node.reason in (
                    "cancelled by the host: parent cancelled",
                    "never started: its parent ended before the child's start was written",
                ), node


def test_recover_finishes_a_cancel_cascade_a_crash_cut_short(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime._cancels import Cancels
    from tests.tree_worker import build

    store, ledger = killed_mid_tree(tmp_path)
    root = build(ledger)
    with monkeypatch.context() as patched, fl.Runtime.open(store, agents=[root]) as rt:
        patched.setattr(Cancels, "cancel_children", lambda *args: None)  # the crash
        rt.handle("tree").cancel(reason="stop")
        assert rt.state("tree").status is fl.RunStatus.CANCELLED
        cut = running_below(rt, "tree")
        assert cut  # the cascade never ran: the children still run, driven by nobody
    with fl.Runtime.open(store, agents=[root]) as rt:
        resumed = rt.recover()
        assert not set(resumed) & set(cut)  # not resumed: cancelled
        wait_until(lambda: not running_below(rt, "tree"), 20, "recover() to finish the cascade")
        nodes = {node.run_id: node for node in rt.tree("tree").walk()}
        for run_id in cut:
            assert nodes[run_id].status is fl.RunStatus.CANCELLED


def test_a_cascade_started_just_before_close_is_finished_by_close(tmp_path: Path) -> None:
    from tests.tree_worker import build

    store, ledger = killed_mid_tree(tmp_path)
    root = build(ledger)
    with fl.Runtime.open(store, agents=[root]) as rt:
        below = running_below(rt, "tree")
        rt.handle("tree").cancel(reason="stop")
    with fl.Runtime.open(store) as rt:  # no agents: nothing here could carry on a cascade
        assert running_below(rt, "tree") == []
        # as the tree shows them: a child whose start the kill cut short has no log to read
        nodes = {node.run_id: node for node in rt.tree("tree").walk()}
        for run_id in below:
            assert nodes[run_id].status is fl.RunStatus.CANCELLED, nodes[run_id]


def test_a_child_resumes_only_within_its_allotment_and_while_its_parent_waits(
    store_path: Path,
) -> None:
    worker = busy_worker()
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("worker", "w"))),
        agents=[worker],
        limits=fl.Limits(max_steps=6),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        assert run.wait(timeout=30).ok
        (child,) = rt.tree(run.id).children
        assert child.status is fl.RunStatus.LIMIT_REACHED  # resumable, as any run is
        with pytest.raises(fl.ConfigError, match="cannot be extended"):
            rt.resume(child.run_id, extend=fl.Limits(max_steps=40))
        with pytest.raises(fl.ConfigError, match="no longer waits for"):
            rt.resume(child.run_id)
        assert rt.tree(run.id).spent_steps <= 6


def test_resuming_only_the_root_of_a_killed_tree_finishes_the_tree(tmp_path: Path) -> None:
    from tests.tree_worker import build

    store, ledger = killed_mid_tree(tmp_path)
    with fl.Runtime.open(store, agents=[build(ledger)]) as rt:
        rt.resume("tree")  # not recover(): its orphaned children are taken up as it follows them
        result = rt.handle("tree").wait(timeout=30)
        assert result.ok, result
        assert result.output.count("t.") == 9


def test_recover_cancels_a_parked_child_whose_parent_was_cancelled(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime._cancels import Cancels

    ran: list[str] = []

    @fl.tool
    def publish(text: str) -> str:
        """Publish: not idempotent, gated."""
        ran.append(text)
        return "published"

    def publishes(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        if not any(m.role == "tool" for m in messages):
            return fl.Reply(tool_calls=[fl.ToolCall("publish", {"text": "x"})])
        return fl.Reply(text="done")

    gated = fl.Agent(
        name="gated",
        llm=fl.ScriptedLLM(publishes),
        tools=[publish],
        approvals=fl.RequireApproval({"publish"}),
    )
    lead = fl.Agent(name="lead", llm=fl.ScriptedLLM(fans_out(("gated", "g"))), agents=[gated])
    with monkeypatch.context() as patched, fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        wait_until(rt.pending_approvals, 20, "the child to park at its gate")
        # the crash: no cascade is carried, neither by the runtime nor by the root's actor
        patched.setattr(Cancels, "_cancel_running_children", lambda *args: None)
        patched.setattr(rt.system, "on_cancel_children", None)
        run.cancel()
        assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
        (child,) = rt.tree(run.id).children
        assert child.status is fl.RunStatus.AWAITING_APPROVAL
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        rt.recover()
        wait_until(
            lambda: rt.state(child.run_id).status is fl.RunStatus.CANCELLED,
            20,
            "the child cancelled",
        )
        assert rt.pending_approvals() == []
    assert ran == []


def test_closing_right_after_cancelling_a_live_tree_leaves_nothing_below_it_running(
    store_path: Path,
) -> None:
    release = threading.Event()
    leaf = holding("leaf", release)
    middle = fl.Agent(
        name="middle", llm=fl.ScriptedLLM(fans_out(("leaf", "a"), ("leaf", "b"))), agents=[leaf]
    )
    root = fl.Agent(name="root", llm=fl.ScriptedLLM(fans_out(("middle", "m"))), agents=[middle])
    try:
        with fl.Runtime.open(store_path, agents=[root]) as rt:
            run = rt.spawn(root, "go")
            wait_until(lambda: len(rt.runs()) == 4, 20, "the tree to grow to four runs")
            run.cancel()
            rt.close(timeout=0.5)  # the leaves' calls are still held: a short drain
        release.set()
        with fl.Runtime.open(store_path) as rt:
            statuses = {node.run_id: node.status for node in rt.tree(run.id).walk()}
            assert set(statuses.values()) == {fl.RunStatus.CANCELLED}, statuses
    finally:
        release.set()


def test_children_whose_parent_is_cancelled_as_they_start_are_cancelled(store_path: Path) -> None:
    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(answers("late"), latency_s=5.0))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(*[("slow", f"t{i}") for i in range(12)])),
        agents=[slow],
        limits=fl.Limits(max_steps=200, max_children=12),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        cancelling: list[threading.Thread] = []
        ids: list[str] = []

        def on_spawned(record: fl.types.Recorded) -> None:  # the cancel races the starts
            if not cancelling:
                cancelling.append(threading.Thread(target=lambda: rt.handle(ids[0]).cancel()))
                cancelling[0].start()

        rt.subscribe(on_spawned, types={"child.spawned"})
        run = rt.spawn(lead, "go")
        ids.append(run.id)
        assert run.wait(timeout=30).status is fl.RunStatus.CANCELLED
        wait_until(lambda: cancelling and not cancelling[0].is_alive(), 10, "the cancel to return")
        spawned = [r.event.run_id for r in rt.events(run.id) if r.type == "child.spawned"]
        wait_until(
            lambda: all(
                rt.state(c).status is fl.RunStatus.CANCELLED for c in spawned if rt.store.head(c)
            ),
            10,
            "every child that started to be cancelled",
        )


def test_a_cancel_reaches_a_child_another_runtime_drives(store_path: Path) -> None:
    release = threading.Event()
    gated = holding("gated", release, approvals=fl.RequireApproval({"hold"}))
    lead = fl.Agent(name="lead", llm=fl.ScriptedLLM(fans_out(("gated", "g"))), agents=[gated])
    try:
        # here drives the root and never polls; there carries the approval in and so drives
        # the child
        with (
            fl.Runtime.open(store_path, agents=[lead], poll_interval=3600) as here,
            fl.Runtime.open(store_path, agents=[lead], poll_interval=0.05) as there,
        ):
            run = here.spawn(lead, "go")
            wait_until(here.pending_approvals, 20, "the child to park at its gate")
            (pending,) = here.pending_approvals()
            there.approve(run_id=pending.run_id, call_id=pending.call_id, by="test")
            wait_until(
                lambda: any(r.type == "tool.requested" for r in there.events(pending.run_id)),
                20,
                "the child to run its tool there",
            )
            run.cancel()
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            wait_until(
                lambda: there.state(pending.run_id).status is fl.RunStatus.CANCELLED,
                20,
                "the child driven there to be cancelled",
            )
            assert there.state(pending.run_id).reason == "cancelled by the host: parent cancelled"
            release.set()  # else the close waits out its drain for the held call
    finally:
        release.set()


def test_a_child_whose_reply_cannot_be_recorded_fails_and_its_parent_goes_on(
    store_path: Path,
) -> None:
    huge = fl.Agent(name="huge", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="é" * 700_000)))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("huge", "go"))),
        agents=[huge],
        limits=fl.Limits(max_steps=30),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        result = rt.spawn(lead, "go").wait(timeout=20)
        assert result.ok, result  # its model heard how the child ended, and answered
        (failed,) = [r.event for r in rt.events(result.run_id) if r.type == "tool.failed"]
        assert "ended failed" in failed.error
        assert "1,400,000 bytes, over the" in failed.error  # why: too big to record
        (child,) = rt.tree(result.run_id).children
        assert child.status is fl.RunStatus.FAILED  # not left running for recover() to re-ask


def test_a_childs_long_answer_is_cut_as_a_tools_result_is(store_path: Path) -> None:
    long = fl.Agent(name="long", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x" * 300_000)))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("long", "go"))),
        agents=[long],
        limits=fl.Limits(max_steps=30),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        result = rt.spawn(lead, "go").wait(timeout=20)
        assert result.ok, result
        (done,) = [r.event for r in rt.events(result.run_id) if r.type == "tool.completed"]
        assert done.original_chars == 300_000
        assert len(done.result) == DEFAULT_MAX_RESULT_CHARS
        rt.verify(result.run_id)  # the cut replays


def test_a_parent_waiting_long_on_its_children_parks_and_goes_on_when_they_end(
    store_path: Path,
) -> None:
    release = threading.Event()
    slow = [holding(f"slow{i}", release) for i in range(3)]
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(*[(a.name, f"t{i}") for i, a in enumerate(slow)])),
        agents=slow,
    )
    try:
        with fl.Runtime.open(store_path, agents=[lead]) as rt:
            rt.system.park_after_s = 0.05
            run = rt.spawn(lead, "go")
            wait_until(lambda: rt.system.parked(run.id), 20, "the lead to park")
            assert not rt.system.active(run.id)  # no actor, no state held: only the lease
            (summary,) = [s for s in rt.runs() if s.run_id == run.id]
            assert summary.status is fl.RunStatus.RUNNING  # not orphaned: its lease is here
            assert rt.explain(run.id).next_steps[0].startswith("wait: it waits for its child")
            release.set()
            result = run.wait(timeout=20)
            assert result.ok, result
            assert result.output == "done | done | done"
            assert not rt.system.parked(run.id)
            rt.verify(run.id, tree=True)
    finally:
        release.set()


def test_cancelling_a_parked_parent_cancels_it_and_its_children(store_path: Path) -> None:
    release = threading.Event()
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("slow", "a"), ("slow", "b"))),
        agents=[holding("slow", release)],
    )
    try:
        with fl.Runtime.open(store_path, agents=[lead]) as rt:
            rt.system.park_after_s = 0.05
            run = rt.spawn(lead, "go")
            wait_until(lambda: rt.system.parked(run.id), 20, "the lead to park")
            run.cancel(reason="enough")
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            for child in rt.tree(run.id).children:
                wait_until(
                    lambda c=child.run_id: rt.state(c).status is fl.RunStatus.CANCELLED,
                    20,
                    "its children to be cancelled",
                )
            release.set()  # else the close waits out its drain for the held calls
    finally:
        release.set()


def test_a_child_its_runtime_cannot_go_on_with_is_its_parents_failed_call(
    store_path: Path,
) -> None:
    slow = fl.Agent(name="slow", llm=fl.ScriptedLLM(answers("late"), latency_s=0.5))
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("slow", "go"))),
        agents=[slow],
        limits=fl.Limits(max_tokens=100_000),
    )
    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        wait_until(lambda: len(rt.runs()) == 2, 10, "the child to start")
        (child,) = [s.run_id for s in rt.runs() if s.parent_run_id == run.id]
        # its lease taken over (a new epoch) while its model call is out: its next append
        # is fenced off, and the actor driving it cannot go on
        rt.store.acquire_lease(child, rt.owner).wait()
        result = run.wait(timeout=20)
        assert result.ok, result  # the lead heard how its child ended, and answered
        (failed,) = [r.event for r in rt.events(run.id) if r.type == "tool.failed"]
        assert "ended interrupted" in failed.error
        # it may be recovered and spend on: its whole allotment stays charged
        (spawned,) = [r.event for r in rt.events(run.id) if r.type == "child.spawned"]
        (ended,) = [r.event for r in rt.events(run.id) if r.type == "child.ended"]
        assert ended.steps == spawned.limits.steps_ceiling
        assert ended.usage.total_tokens == spawned.limits.max_tokens
        rt.verify(run.id, tree=True)  # the charge agrees with the allotment


def test_commands_racing_to_a_parked_parent_are_all_handled_in_order(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime._writes import RunWrites

    release = threading.Event()
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("quick", "a"), ("slow", "b"))),
        agents=[
            fl.Agent(name="quick", llm=fl.ScriptedLLM(answers("quick"), latency_s=0.3)),
            holding("slow", release),
        ],
    )
    append = RunWrites.append_decisions

    def slow_append(self: RunWrites, *args: Any, **kwargs: Any) -> Any:
        time.sleep(0.2)  # widens the window between a take-up's start and its actor
        return append(self, *args, **kwargs)

    try:
        with fl.Runtime.open(store_path, agents=[lead]) as rt:
            rt.system.park_after_s = 0.01
            run = rt.spawn(lead, "go")
            wait_until(lambda: rt.system.parked(run.id), 20, "the lead to park")
            monkeypatch.setattr(RunWrites, "append_decisions", slow_append)
            # the quick child ends (its end takes the lead up), and a cancel comes meanwhile
            quick = next(c.run_id for c in rt.tree(run.id).children if c.agent == "quick")
            wait_until(
                lambda: rt.state(quick).status is fl.RunStatus.COMPLETED,
                20,
                "the quick child to end (its end now takes the lead up, slowly)",
            )
            run.cancel(reason="enough")
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            release.set()  # else the close waits out its drain for the held call
    finally:
        release.set()


def test_close_finishes_a_cancel_waiting_behind_a_commit_that_lands_late(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    release = threading.Event()
    lead = fl.Agent(
        name="lead", llm=fl.ScriptedLLM(fans_out(("leaf", "a"))), agents=[holding("leaf", release)]
    )
    held: list[Callable[[], None]] = []

    def lands_late(rt: fl.Runtime) -> None:
        wait_until(lambda: rt.closed, 20, "close() to begin")
        time.sleep(0.5)  # a slow disk: the child's commit lands after close began
        held[0]()

    try:
        with fl.Runtime.open(store_path, agents=[lead]) as rt:
            proceed = rt.system.proceed

            def late(actor: Any, then: Callable[[], bool]) -> None:
                if actor.state.parent_call_id and not held:  # the child's tool call, committed
                    held.append(lambda: proceed(actor, then))
                    return
                proceed(actor, then)

            monkeypatch.setattr(rt.system, "proceed", late)
            run = rt.spawn(lead, "go")
            wait_until(lambda: held, 20, "the child's tool call to be committed")
            run.cancel()  # the child's cancel waits in its mailbox until that commit lands
            landing = threading.Thread(target=lands_late, args=(rt,))
            landing.start()
        landing.join()
        with fl.Runtime.open(store_path) as rt:
            statuses = {node.run_id: node.status for node in rt.tree(run.id).walk()}
            assert set(statuses.values()) == {fl.RunStatus.CANCELLED}, statuses
            assert len(statuses) == 2
    finally:
        release.set()


def test_recover_leaves_children_that_ended_under_a_finished_lead_as_they_ended(
    store_path: Path,
) -> None:
    @fl.tool(idempotent=True)
    def look(i: int) -> str:
        """Look again."""
        return f"seen {i}"

    def looks(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        turn = sum(1 for m in messages if m.role == "assistant")
        return fl.Reply(tool_calls=[fl.ToolCall("look", {"i": turn})])

    def repeats(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        return fl.Reply(tool_calls=[fl.ToolCall("look", {"i": 0})])

    def breaks(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        raise ValueError("the model broke")

    children = [
        fl.Agent(
            name="looper", llm=fl.ScriptedLLM(looks), tools=[look], limits=Limits(max_steps=2)
        ),
        fl.Agent(name="stuck", llm=fl.ScriptedLLM(repeats), tools=[look]),
        fl.Agent(name="broken", llm=fl.ScriptedLLM(breaks)),
    ]
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("looper", "a"), ("stuck", "b"), ("broken", "c"))),
        agents=children,
    )

    def ends(rt: fl.Runtime, run_id: str) -> dict[str, tuple[fl.RunStatus, str, int]]:
        return {
            c.agent: (c.status, c.reason, len(list(rt.events(c.run_id))))
            for c in rt.tree(run_id).children
        }

    with fl.Runtime.open(store_path, agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        assert run.wait(timeout=30).ok  # each child's end was the lead's failed call
        before = ends(rt, run.id)
        assert {agent: end[0] for agent, end in before.items()} == {
            "looper": fl.RunStatus.LIMIT_REACHED,
            "stuck": fl.RunStatus.NO_PROGRESS,
            "broken": fl.RunStatus.FAILED,
        }
    with fl.Runtime.open(store_path, agents=[lead]) as rt:  # a host recovers at every start
        assert rt.recover() == []
        assert ends(rt, run.id) == before  # nothing can move them: they stay as they ended


def test_a_cancel_that_comes_while_a_parked_parent_is_taken_up_starts_nothing_new(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.runtime._writes import RunWrites

    release, taking_up, cancelled = threading.Event(), threading.Event(), threading.Event()
    asked: list[int] = []
    joins = fans_out(("leaf", "a"))

    def lead_model(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        asked.append(len(messages))
        return joins(messages, tools)

    lead = fl.Agent(name="lead", llm=fl.ScriptedLLM(lead_model), agents=[holding("leaf", release)])
    append = RunWrites.append_decisions

    def held_append(self: RunWrites, state: RunState, *args: Any, **kwargs: Any) -> Any:
        if state.run_id == run.id and not taking_up.is_set():  # the child's end takes it up
            taking_up.set()
            assert cancelled.wait(20)
        return append(self, state, *args, **kwargs)

    tell = ActorSystem.tell

    def noting_tell(self: ActorSystem, run_id: str, message: object) -> bool:
        told = tell(self, run_id, message)  # type: ignore[arg-type]
        if type(message) is Cancel and run_id == run.id:
            cancelled.set()  # queued for the lead being taken up: let the take-up go on
        return told

    try:
        with fl.Runtime.open(store_path, agents=[lead]) as rt:
            rt.system.park_after_s = 0.01
            run = rt.spawn(lead, "go")
            wait_until(lambda: rt.system.parked(run.id), 20, "the lead to park")
            monkeypatch.setattr(RunWrites, "append_decisions", held_append)
            monkeypatch.setattr(ActorSystem, "tell", noting_tell)
            release.set()  # the child ends: its end takes the lead up
            assert taking_up.wait(20)
            # reaches the lead once it is taken up, behind the child's end; returns once
            # the cancel is in the log, so from a thread of its own
            canceller = threading.Thread(target=run.cancel)
            canceller.start()
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            canceller.join(20)
            assert not canceller.is_alive()
        assert len(asked) == 1  # the child's answer did not ask the lead's model again
    finally:
        release.set()
        cancelled.set()


def test_a_child_whose_start_never_landed_shows_cancelled_once_its_parent_ended(
    tmp_path: Path,
) -> None:
    # A crash between the parent's child.spawned and the child's run.started leaves a child
    # with no log: running while its parent could still start it (recover() does), cancelled
    # once the parent ended; a child whose log is elsewhere (an imported run) shows what the
    # parent recorded of it.
    lead = fl.Agent(
        name="lead",
        llm=fl.ScriptedLLM(fans_out(("researcher", "cats"))),
        agents=[researcher()],
        limits=fl.Limits(max_steps=10),
    )
    with fl.Runtime.open(tmp_path / "a", agents=[lead]) as rt:
        run = rt.spawn(lead, "go")
        assert run.wait(timeout=30).ok
        lines = list(rt.export(run.id))
    spawned_at = next(i for i, line in enumerate(lines) if '"child.spawned"' in line)
    header = json.loads(lines[0])
    header["events"] = spawned_at  # the export's lines after its header, up to child.spawned
    with fl.Runtime.open(tmp_path / "b") as rt:  # knows no agent: drives nothing
        cut = rt.import_jsonl([json.dumps(header), *lines[1 : spawned_at + 1]], run_id="cut")
        tree = rt.tree(cut)
        assert tree.status is fl.RunStatus.INTERRUPTED  # as rt.runs() shows it: nothing drives it
        (child,) = tree.children
        assert child.status is fl.RunStatus.INTERRUPTED  # recover() with the agents starts both
        rt.handle(cut).cancel(reason="stop")
        assert rt.state(cut).status is fl.RunStatus.CANCELLED
        (child,) = rt.tree(cut).children
        assert child.status is fl.RunStatus.CANCELLED  # before: running, for ever
        assert child.reason.startswith("never started: its parent ended")
        whole = rt.import_jsonl(lines, run_id="whole")
        (child,) = rt.tree(whole).children
        assert child.status is fl.RunStatus.COMPLETED and child.steps >= 1


def test_a_child_status_this_version_does_not_know_reads_as_failed() -> None:
    from foldloop.runtime._queries import _status

    assert _status("completed") is fl.RunStatus.COMPLETED
    assert _status("paused-by-a-newer-version") is fl.RunStatus.FAILED  # not a ValueError


def test_verifying_a_tree_whose_child_is_missing_from_the_store_says_so(tmp_path: Path) -> None:
    # A root exported alone and imported elsewhere: its tree's verify blamed a code change
    # ("today's code decides ChildEnded(steps=0)") for a log that is simply not there.
    worker = fl.Agent(name="worker", llm=fl.ScriptedLLM(answers("done")))
    lead = fl.Agent(name="lead", llm=fl.ScriptedLLM(fans_out(("worker", "a"))), agents=[worker])
    with fl.Runtime.open(tmp_path / "ran", agents=[lead]) as rt:
        run_id = rt.spawn(lead, "go").wait(timeout=30).run_id
        alone = list(rt.export(run_id))
    with fl.Runtime.open(tmp_path / "elsewhere", agents=[lead]) as rt:
        rt.import_jsonl(alone)
        rt.verify(run_id)  # the root's own log replays
        with pytest.raises(fl.errors.FoldloopError, match="holds no log of that child") as info:
            rt.verify(run_id, tree=True)
        assert not isinstance(info.value, fl.errors.NondeterminismError)


def test_a_cancel_whose_take_up_of_a_parked_parent_fails_is_carried_at_once(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Taking up a parked parent can fail (another thread holds its claim past the
    hand-over wait, the store away). The cancel that came for it is carried all the same,
    cancel() returns once it is in the log, not after waiting out its bound (nor does the
    run stay taken up for ever, every later tell lost), and a wait() on it hears of it."""
    release = threading.Event()
    lead = fl.Agent(
        name="lead", llm=fl.ScriptedLLM(fans_out(("leaf", "a"))), agents=[holding("leaf", release)]
    )
    take = ActorSystem.take
    failed: list[str] = []

    def take_failing_once(self: ActorSystem, run_id: str, *, wait: float = 0.0) -> int:
        if threading.current_thread().name.startswith("foldloop-children") and not failed:
            failed.append(run_id)
            raise RunLocked(f"run {run_id!r} is claimed by another thread here")
        return take(self, run_id, wait=wait)

    try:
        with capture_logs() as logs, fl.Runtime.open(store_path, agents=[lead]) as rt:
            rt.system.park_after_s = 0.01
            run = rt.spawn(lead, "go")
            wait_until(lambda: rt.system.parked(run.id), 20, "the lead to park")
            monkeypatch.setattr(ActorSystem, "take", take_failing_once)
            run.cancel("enough")
            assert failed == [run.id]  # the take-up did fail
            assert rt.state(run.id).status is fl.RunStatus.CANCELLED
            assert not logged(logs, "cancel_not_yet_recorded")
            monkeypatch.undo()
            settled = rt.system.settlement(run.id)  # what a wait() on the run waits for
            assert settled is not None
            wait_until(settled.event.is_set, 10, "the waits on the run to hear of its end")
            assert run.wait(timeout=20).status is fl.RunStatus.CANCELLED
            release.set()  # the cancelled leaf's tool: the close waits for it
    finally:
        release.set()

"""Host code the runtime runs on its own threads (a projection, a subscriber, a model, an
approval's notify) that raises ``SystemExit`` or ``KeyboardInterrupt`` fails only itself:
pykka stops every actor of the process on those, which left every run of the runtime hanging
and its close raising."""

from __future__ import annotations

import sys
import threading
from collections.abc import Callable, Sequence
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.types import ToolSpec

ESCAPES = [
    pytest.param(lambda: SystemExit("done"), "SystemExit", id="SystemExit"),
    pytest.param(KeyboardInterrupt, "KeyboardInterrupt", id="KeyboardInterrupt"),
]


def plain(name: str = "plain") -> fl.Agent:
    return fl.Agent(name=name, llm=fl.ScriptedLLM([fl.Reply(text="ok")]))


def still_serves(rt: fl.Runtime, agent: fl.Agent) -> None:
    assert rt.spawn(agent, "after").wait(timeout=10).ok


@pytest.mark.parametrize(("make", "name"), ESCAPES)
@pytest.mark.parametrize("how", ["attach", "subscribe"])
def test_a_projection_or_subscriber_raising_it_stops_only_itself(
    tmp_path: Path, make: Callable[[], BaseException], name: str, how: str
) -> None:
    def boom(*_: object) -> int:
        raise make()

    agent = plain()
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        earlier = rt.spawn_many(agent, ["a", "b", "c"])
        if how == "attach":
            handle = rt.attach(fl.projections.Projection("boom", initial=int, apply=boom))
        else:
            handle = rt.subscribe(boom)
            rt.spawn(agent, "seen by the subscriber")
        with pytest.raises(fl.errors.ProjectionError, match=f"apply raised {name}"):
            handle.catch_up(timeout=10)
        assert all(h.wait(timeout=10).ok for h in earlier)
        still_serves(rt, agent)


class Exits:
    """A sync-only model whose ``complete`` exits (a CLI library's argparse, say)."""

    model = "exits"

    def __init__(self, make: Callable[[], BaseException]) -> None:
        self.make = make

    def complete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        raise self.make()


@pytest.mark.parametrize(("make", "name"), ESCAPES)
@pytest.mark.parametrize("where", ["shard", "pool"])
def test_a_sync_model_raising_it_fails_its_call_and_the_runtime_serves_on(
    tmp_path: Path, make: Callable[[], BaseException], name: str, where: str
) -> None:
    def exits(messages: object, tools: object) -> fl.Reply:
        raise make()

    # a ScriptedLLM function is called on the run's shard; a model's complete on the pool
    llm: fl.LLM = fl.ScriptedLLM(exits) if where == "shard" else Exits(make)
    failing, other = fl.Agent(name="failing", llm=llm), plain()
    with fl.Runtime.open(tmp_path / "s", agents=[failing, other]) as rt:
        result = rt.spawn(failing, "go").wait(timeout=10)
        assert result.status is fl.RunStatus.FAILED, result
        assert f"complete raised {name}" in result.reason
        still_serves(rt, other)
        assert rt.spawn(failing, "again").wait(timeout=10).status is fl.RunStatus.FAILED


@fl.tool(idempotent=True)
def pay(amount: int) -> str:
    """Pay."""
    return f"paid {amount}"


def test_an_approval_notify_raising_it_leaves_the_run_waiting_for_its_decision(
    tmp_path: Path,
) -> None:
    called = threading.Event()

    def notify(pending: object) -> None:
        called.set()
        sys.exit("the notifier quit")

    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("pay", {"amount": 5})]), fl.Reply(text="done")]
    )
    agent = fl.Agent(
        name="payer", llm=llm, tools=[pay], approvals=fl.RequireApproval({"pay"}, notify=notify)
    )
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        run = rt.spawn(agent, "go")
        assert called.wait(10)
        (pending,) = rt.pending_approvals()
        rt.approve(run_id=pending.run_id, call_id=pending.call_id, by="test")
        assert run.wait(timeout=10, through_approvals=True).ok
        still_serves(rt, plain())

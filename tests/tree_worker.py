"""A real process for the tree kill loop: a run tree (depth 2, fan-out 3) on a store, driven
until it is SIGKILLed, or recovered and driven to its end.

    tree_worker.py STORE --ledger FILE --spawn RUN_ID   start the tree, print READY, drive it
    tree_worker.py STORE --ledger FILE --recover        recover(), READY, drive; DONE at the end

Every leaf charges once through a non-idempotent tool that writes an external ledger line
(O_APPEND + fsync) before it returns, and sleeps a little so that kills land mid-tree.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence
from datetime import date
from pathlib import Path

import foldloop as fl
from foldloop.core import ModelPrice

FAN_OUT = 3
ROOT_LIMITS = fl.Limits(max_steps=200, max_tokens=400_000, max_cost_usd=1.0)


def ledger_write(path: Path, line: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, (line + "\n").encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def fans_out(messages: Sequence[fl.Message], tools: Sequence[fl.types.ToolSpec]) -> fl.Reply:
    """Ask the one sub-agent FAN_OUT times at once, then join the answers."""
    task = next(m.content for m in messages if m.role == "user")
    if not any(m.role == "tool" for m in messages):
        name = tools[0].name
        return fl.Reply(
            tool_calls=[fl.ToolCall(name, {"input": f"{task}.{i}"}) for i in range(FAN_OUT)]
        )
    return fl.Reply(text="[" + ",".join(m.content for m in messages if m.role == "tool") + "]")


def build(ledger: Path) -> fl.Agent:
    @fl.tool(timeout=30)
    def charge(ref: str) -> str:
        """Charge once for ``ref``: not idempotent."""
        ledger_write(ledger, ref)
        time.sleep(0.1)
        return f"charged {ref}"

    def leaf_model(messages: Sequence[fl.Message], tools: Sequence[object]) -> fl.Reply:
        task = next(m.content for m in messages if m.role == "user")
        results = [m for m in messages if m.role == "tool"]
        if not results:
            return fl.Reply(tool_calls=[fl.ToolCall("charge", {"ref": task})])
        return fl.Reply(text=task if results[0].content.startswith("charged") else f"{task}?")

    priced = fl.Pricing(as_of=date.today().isoformat(), prices={"scripted": ModelPrice(1, 2)})
    leaf = fl.Agent(
        name="leaf",
        llm=fl.ScriptedLLM(leaf_model, latency_s=0.05),
        tools=[charge],
        pricing=priced,
    )
    mid = fl.Agent(
        name="mid", llm=fl.ScriptedLLM(fans_out, latency_s=0.05), agents=[leaf], pricing=priced
    )
    return fl.Agent(
        name="root",
        llm=fl.ScriptedLLM(fans_out, latency_s=0.05),
        agents=[mid],
        limits=ROOT_LIMITS,
        pricing=priced,
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--ledger", required=True)
    parser.add_argument("--spawn")
    parser.add_argument("--recover", action="store_true")
    parser.add_argument("--park-after", type=float, help="seconds before a waiting parent parks")
    args = parser.parse_args()
    root = build(Path(args.ledger))
    with fl.Runtime.open(args.store, agents=[root]) as rt:
        if args.park_after is not None:
            rt.system.park_after_s = args.park_after
        if args.spawn:
            run_id = rt.spawn(root, "t", run_id=args.spawn).id
        else:
            rt.recover()
            run_id = next(s.run_id for s in rt.runs() if s.parent_run_id is None)
        print("READY", flush=True)
        state = wait_root(rt, run_id)
        print(f"DONE {state.status.value} {state.output}", flush=True)
    sys.exit(0)


def wait_root(rt: fl.Runtime, run_id: str) -> fl.types.RunState:
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        state = rt.state(run_id)
        if state.settled:
            return state
        time.sleep(0.1)
    raise SystemExit(f"the root {run_id} did not settle within 60 s")


if __name__ == "__main__":
    main()

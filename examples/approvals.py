"""Approval gates: a run parks until a person decides; one call approved, one denied.

    python examples/approvals.py

The decision may come from any process that opens the store (``foldloop approve``);
here host code decides by run and call id.

Its store stays in ``.foldloop-examples/approvals`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/approvals")
deleted: list[str] = []


@fl.tool
def delete_file(path: str) -> str:
    """Delete a file."""
    deleted.append(path)
    return f"deleted {path}"


llm = fl.ScriptedLLM(
    [
        fl.Reply(
            tool_calls=[
                fl.ToolCall("delete_file", {"path": "/tmp/old.log"}),
                fl.ToolCall("delete_file", {"path": "/etc/passwd"}),
            ]
        ),
        fl.Reply(text="Deleted the old log; I was not allowed to touch /etc/passwd."),
    ]
)
asked: list[fl.types.PendingApproval] = []
agent = fl.Agent(
    name="janitor",
    llm=llm,
    tools=[delete_file],
    approvals=fl.RequireApproval({"delete_file"}, ttl=600, notify=asked.append),
)

if __name__ == "__main__":
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[agent]) as rt:
        run = rt.spawn(agent, "Clean up.")
        parked = run.wait(timeout=60)
        print(parked.status.value, "-", parked.reason)
        assert parked.status is fl.RunStatus.AWAITING_APPROVAL
        assert not deleted
        for p in rt.pending_approvals():
            print("waiting:", p.tool, p.args)
            if p.args["path"].startswith("/tmp/"):
                rt.approve(p.token, by="alice")  # the token notify= received
            else:
                rt.deny(run_id=p.run_id, call_id=p.call_id, by="alice", note="never system files")
        result = run.wait(timeout=60)
        print(result.status.value, "-", result.output)
        assert deleted == ["/tmp/old.log"]
        assert len(asked) == 2
        assert result.status is fl.RunStatus.COMPLETED
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))

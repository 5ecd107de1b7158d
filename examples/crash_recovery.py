"""Crash recovery: a process is SIGKILLed inside a non-idempotent tool; another recovers the run.

    python examples/crash_recovery.py

The child process starts a run whose tool ``charge_card`` hangs (as if the process died
mid-payment). The parent kills it with SIGKILL, opens the same store and calls
``recover()``: the log shows the charge was requested but not finished, and because the
tool is not idempotent it is *not* run again: the model is told the outcome is unknown.

Its store stays in ``.foldloop-examples/crash_recovery`` (replaced on each run) for the
``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import os
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/crash_recovery")


@fl.tool(timeout=60)  # idempotent=False: must never run twice
def charge_card(amount: int) -> str:
    """Charge the customer's card."""
    with Path(os.environ["LEDGER"]).open("a") as ledger:
        ledger.write(f"charged {amount}\n")
    if os.environ.get("HANG"):
        time.sleep(3600)  # the process will be killed here
    return "ok"


llm = fl.ScriptedLLM(
    [
        fl.Reply(tool_calls=[fl.ToolCall("charge_card", {"amount": 42})]),
        fl.Reply(text="I could not confirm the charge; please check before retrying."),
    ]
)
agent = fl.Agent(name="billing", llm=llm, tools=[charge_card])


def child(store: str) -> None:
    with fl.Runtime.open(store, agents=[agent]) as rt:
        rt.spawn(agent, "Charge 42.", run_id="order-1")
        time.sleep(3600)


if __name__ == "__main__":
    if len(sys.argv) > 1:
        child(sys.argv[1])
        sys.exit(0)
    shutil.rmtree(STORE, ignore_errors=True)
    with tempfile.TemporaryDirectory() as tmp:
        ledger = Path(tmp) / "ledger"
        ledger.touch()
        env = {**os.environ, "LEDGER": str(ledger), "HANG": "1"}
        proc = subprocess.Popen([sys.executable, __file__, str(STORE)], env=env)
        while not ledger.read_text():  # wait until the card is being charged
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print("child killed inside charge_card; ledger:", ledger.read_text().strip())
        os.environ["LEDGER"] = str(ledger)
        with fl.Runtime.open(STORE, agents=[agent]) as rt:
            for handle in rt.recover():
                result = handle.wait(timeout=60)
                print(handle.id, result.status.value, "-", result.output)
            kinds = [r.type for r in rt.events("order-1")]
            for rec in rt.events("order-1"):
                print(rec.seq, rec.type, getattr(rec.event, "kind", ""))
        assert ledger.read_text().count("charged") == 1, "the card was charged twice"
        assert "tool.failed" in kinds
        assert "tool.completed" not in kinds
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))

"""Crash recovery: a process is SIGKILLed inside a non-idempotent tool; another recovers the run.

    python examples/crash_recovery.py

The child process starts a run whose tool ``charge_card`` hangs (as if the process died
mid-payment). The parent kills it with SIGKILL, opens the same store and calls
``recover()``: the log shows the charge was requested but not finished, and because the
tool is not idempotent it is *not* run again: the model is told the outcome is unknown.
"""

from __future__ import annotations

import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import structlog

import foldloop as fl


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
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    if len(sys.argv) > 1:
        child(sys.argv[1])
        sys.exit(0)
    with tempfile.TemporaryDirectory() as tmp:
        store, ledger = Path(tmp) / "store", Path(tmp) / "ledger"
        ledger.touch()
        env = {**os.environ, "LEDGER": str(ledger), "HANG": "1"}
        proc = subprocess.Popen([sys.executable, __file__, str(store)], env=env)
        while not ledger.read_text():  # wait until the card is being charged
            time.sleep(0.05)
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        print("child killed inside charge_card; ledger:", ledger.read_text().strip())
        os.environ["LEDGER"] = str(ledger)
        with fl.Runtime.open(store, agents=[agent]) as rt:
            for handle in rt.recover():
                result = handle.wait(timeout=60)
                print(handle.id, result.status.value, "-", result.output)
            kinds = [r.type for r in rt.events("order-1")]
            for rec in rt.events("order-1"):
                print(rec.seq, rec.type, getattr(rec.event, "kind", ""))
        assert ledger.read_text().count("charged") == 1, "the card was charged twice"
        assert "tool.failed" in kinds
        assert "tool.completed" not in kinds

"""Move a run between stores as JSONL; the imported run folds to the same state.

python examples/export_import.py

The imported copy stays in ``.foldloop-examples/export_import`` (replaced on each run) for
the ``foldloop`` command to read; the last line it prints is the command.
"""

from __future__ import annotations

import shlex
import shutil
import sys
import tempfile
from pathlib import Path

import foldloop as fl

STORE = Path(".foldloop-examples/export_import")
llm = fl.ScriptedLLM([fl.Reply(text="hello")])
agent = fl.Agent(name="greeter", llm=llm)

if __name__ == "__main__":
    with tempfile.TemporaryDirectory() as tmp:
        with fl.Runtime.open(Path(tmp) / "a", agents=[agent]) as rt:
            run = rt.spawn(agent, "Say hello.")
            run.wait(timeout=60)
            lines = list(rt.export(run.id))
            original = rt.state(run.id)
        print(lines[0])  # the header: format, run id, event count
    shutil.rmtree(STORE, ignore_errors=True)
    with fl.Runtime.open(STORE, agents=[agent]) as other:
        run_id = other.import_jsonl(lines)
        copy = other.state(run_id)
        other.verify(run_id)  # the copy replays identically
    print(run_id, copy.status.value, copy.output)
    assert copy == original
    print(f"\nthe store stays in {STORE}; list its runs with:")
    print(" ", shlex.join([sys.executable, "-m", "foldloop.cli", "--store", str(STORE), "runs"]))

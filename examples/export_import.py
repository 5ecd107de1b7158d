"""Move a run between stores as JSONL; the imported run folds to the same state.

python examples/export_import.py
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import structlog

import foldloop as fl

llm = fl.ScriptedLLM([fl.Reply(text="hello")])
agent = fl.Agent(name="greeter", llm=llm)

if __name__ == "__main__":
    structlog.configure(wrapper_class=structlog.make_filtering_bound_logger(logging.ERROR))
    with tempfile.TemporaryDirectory() as tmp:
        with fl.Runtime.open(Path(tmp) / "a", agents=[agent]) as rt:
            run = rt.spawn(agent, "Say hello.")
            run.wait(timeout=60)
            lines = list(rt.export(run.id))
            original = rt.state(run.id)
        print(lines[0])  # the header: format, run id, event count
        with fl.Runtime.open(Path(tmp) / "b", agents=[agent]) as other:
            run_id = other.import_jsonl(lines)
            copy = other.state(run_id)
            other.verify(run_id)  # the copy replays identically
        print(run_id, copy.status.value, copy.output)
        assert copy == original

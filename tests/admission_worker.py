"""A real process for the admission crash test: queues runs, then waits to be SIGKILLed.

    python tests/admission_worker.py STORE --ids z0,y1,x2 --cancel y1

It opens a runtime with ``max_active_runs=1`` on a model that never answers, spawns runs
with the ids given, in that order (the first is admitted, the others are queued; each
run's input is its id), cancels ``--cancel`` while it is queued, and prints ``QUEUED`` once
all that is durable and ``IN_MODEL <id>`` when the first run's model call is in flight.
Then it waits for SIGKILL.
"""

from __future__ import annotations

import argparse
import sys
import threading
from collections.abc import Sequence

import foldloop as fl

AGENT = "queue"


def agent(llm: fl.LLM) -> fl.Agent:
    """The agent the test recovers with (the same name; its own model)."""
    return fl.Agent(name=AGENT, llm=llm)


class Stuck:
    """A model (sync only, so it runs on the model pool) that never answers."""

    model = "stuck"

    def complete(
        self,
        messages: Sequence[fl.Message],
        tools: Sequence[fl.types.ToolSpec],
        *,
        max_tokens: int | None = None,
    ) -> fl.Reply:
        user = next(m.content for m in messages if m.role == "user")
        print(f"IN_MODEL {user}", flush=True)
        threading.Event().wait()
        raise AssertionError("unreachable")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("store")
    parser.add_argument("--ids", required=True, help="run ids, comma-separated, in spawn order")
    parser.add_argument("--cancel", default="")
    args = parser.parse_args()
    queue = agent(Stuck())
    rt = fl.Runtime.open(args.store, agents=[queue], max_active_runs=1)
    for run_id in args.ids.split(","):
        rt.spawn(queue, run_id, run_id=run_id)
    if args.cancel:
        rt.handle(args.cancel).cancel("not wanted")
    print("QUEUED", flush=True)
    threading.Event().wait()


if __name__ == "__main__":
    sys.exit(main())

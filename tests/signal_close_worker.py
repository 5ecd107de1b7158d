"""A process whose SIGUSR1 handler calls ``rt.close()`` (or a run's ``cancel()``) while the
main thread is inside the runtime at a chosen place (``sys.settrace`` raises the signal
there, once): the handler runs on the thread it interrupted, which may hold what the close
(or the cancel) needs.

    python -m tests.signal_close_worker STORE CASE

Prints what the interrupted call ended with, then ``closed True`` once a later close
returned and the runtime is closed. A close that waits for its own thread never gets there.
"""

from __future__ import annotations

import inspect
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from types import CodeType, FrameType
from typing import Any

import foldloop as fl
from foldloop.actors._system import ActorSystem
from foldloop.runtime._lifecycle import Lifecycle
from foldloop.runtime._pool import WorkerPool
from foldloop.store._log_reader import LogReader

AGENT = fl.Agent(name="many", llm=fl.ScriptedLLM(lambda m, t: fl.Reply(text="x")))


def _holds_its_lock(frame: FrameType) -> bool:
    return bool(frame.f_locals["self"]._lock.locked())


def _anywhere(frame: FrameType) -> bool:
    return True


Action = Callable[[fl.Runtime], Callable[[], Any]]
"""Given the runtime, what the main thread then does with the signal armed."""

# case: (where the signal lands, when there, what the main thread does)
CASES: dict[str, tuple[CodeType, Callable[[FrameType], bool], Action]] = {
    "spawn_many-in-claim": (
        ActorSystem.claim.__code__,
        _holds_its_lock,
        lambda rt: lambda: rt.spawn_many(AGENT, ["go"] * 20),
    ),
    "read_all-reading-a-page": (
        LogReader.read_all.__code__,
        _anywhere,
        lambda rt: lambda: sum(1 for _ in rt.read_all()),
    ),
    "catch_up-reading-the-head": (
        LogReader.last_position.__code__,
        _anywhere,
        lambda rt: rt.subscribe(lambda record: None).catch_up,
    ),
    "close-marking-it-closed": (
        Lifecycle.close.__code__,
        _holds_its_lock,
        lambda rt: rt.close,
    ),
}


POOL_CASE = "pool-replace_dead-holding-its-lock"
CANCEL_CASE = "cancel-over-spawn_many-in-claim"
SLOW = fl.Agent(name="slow", llm=fl.ScriptedLLM([fl.Reply(text="late")], latency_s=30))


def arm(code: CodeType, ready: Callable[[FrameType], bool]) -> list[bool]:
    """Raise SIGUSR1 once, at the first line of ``code`` where ``ready`` holds (this
    thread); the list it returns says whether it did."""
    raised: list[bool] = []

    def there(frame: FrameType, event: str, arg: object) -> Any:
        if event == "line" and not raised and ready(frame):
            raised.append(True)
            signal.raise_signal(signal.SIGUSR1)
        return there

    sys.settrace(lambda frame, event, arg: there if frame.f_code is code else None)
    return raised


def pool_main(store: str) -> None:
    """The same for a WorkerPool whose replace_dead holds the pool's lock."""
    sys.path.insert(0, str(Path(__file__).parent))  # the workers import pool_agents
    pool = WorkerPool(store, agents=["pool_agents:calc"], processes=1)
    signal.signal(signal.SIGUSR1, lambda signum, frame: pool.close(timeout=5))
    raised = arm(inspect.unwrap(WorkerPool.replace_dead).__code__, _holds_its_lock)
    try:
        print("returned", type(pool.replace_dead()).__name__, flush=True)
    finally:
        sys.settrace(None)
    deadline = time.monotonic() + 10
    while not pool.closed and time.monotonic() < deadline:  # the handed-off close began
        time.sleep(0.001)
    pool.close()  # returns once the handler's close, handed to a thread, is done
    print("closed", raised == [True] and pool.closed and pool.runtime.closed, flush=True)


def cancel_main(store: str) -> None:
    """A handler that cancels a run (not closes) over spawn_many holding the system's lock:
    the cancel goes on on a thread of its own, the run ends cancelled."""
    rt = fl.Runtime.open(store, agents=[AGENT, SLOW])
    slow = rt.spawn(SLOW, "slow")
    while "model.requested" not in [r.type for r in rt.events(slow.id)]:
        time.sleep(0.001)
    signal.signal(signal.SIGUSR1, lambda signum, frame: slow.cancel("from a handler"))
    code, ready, _ = CASES["spawn_many-in-claim"]
    raised = arm(code, ready)
    try:
        print("returned", len(rt.spawn_many(AGENT, ["go"] * 20)), flush=True)
    finally:
        sys.settrace(None)
    ended = slow.wait(timeout=30).status
    rt.close()
    print("cancelled", raised == [True] and ended is fl.RunStatus.CANCELLED, flush=True)


def main() -> None:
    store, case = sys.argv[1], sys.argv[2]
    if case == POOL_CASE:
        pool_main(store)
        return
    if case == CANCEL_CASE:
        cancel_main(store)
        return
    code, ready, act = CASES[case]
    rt = fl.Runtime.open(store, agents=[AGENT])
    for handle in rt.spawn_many(AGENT, ["first"] * 3):
        handle.wait(timeout=30)
    action = act(rt)
    signal.signal(signal.SIGUSR1, lambda signum, frame: rt.close(timeout=1))
    raised = arm(code, ready)
    try:
        print("returned", type(action()).__name__, flush=True)
    except fl.FoldloopError as exc:
        print("raised", type(exc).__name__, flush=True)
    finally:
        sys.settrace(None)
    rt.close()
    print("closed", raised == [True] and rt.closed, flush=True)


if __name__ == "__main__":
    main()

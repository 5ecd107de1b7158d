"""The small concurrency parts the actors stand on: timers, tool slots, the loop pool."""

from __future__ import annotations

import threading
import time

from foldloop.actors.loops import ActorLoops
from foldloop.actors.timers import Timers
from foldloop.actors.tool_actor import Slots
from tests.peak import Peak


def test_cancelled_timers_do_not_pile_up() -> None:
    # A tool timeout is armed and cancelled on every step; with a 120 s timeout the heap
    # would otherwise hold every step of the last two minutes.
    timers = Timers()
    try:
        fired: list[int] = []
        for _ in range(10_000):
            timers.call_later(120, lambda: fired.append(0)).cancel()
        assert timers.held() <= 2 * 1024 + 1
        timers.call_later(0.01, lambda: fired.append(-1))
        deadline = time.monotonic() + 5
        while not fired and time.monotonic() < deadline:
            time.sleep(0.005)
        assert fired == [-1]  # only the live timer ran
    finally:
        timers.stop()


def test_slots_bound_concurrent_holders_and_wake_waiters() -> None:
    slots = Slots(2)
    peak = Peak()

    def worker() -> None:
        for _ in range(50):
            if not slots.try_take():
                slots.take()
            with peak:
                time.sleep(0.0005)
            slots.give()

    threads = [threading.Thread(target=worker) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=30)
    assert not any(t.is_alive() for t in threads)  # nobody left waiting for a slot
    assert peak.most == 2
    assert slots.try_take() and slots.try_take() and not slots.try_take()


def test_actor_loops_reuse_idle_threads_and_let_them_go() -> None:
    loops = ActorLoops(keep_idle_s=0.3)
    seen: list[threading.Thread] = []
    done = threading.Semaphore(0)

    def loop() -> None:
        seen.append(threading.current_thread())
        done.release()

    for _ in range(50):  # one after another: one thread serves them all
        loops.run(loop)
        assert done.acquire(timeout=5)
        deadline = time.monotonic() + 5
        while loops.counts()[0] and time.monotonic() < deadline:
            time.sleep(0.001)
    assert len(seen) == 50 and len(set(seen)) == 1
    gate = threading.Event()

    def held() -> None:
        gate.wait(5)
        done.release()

    for _ in range(5):  # five at once need five threads
        loops.run(held)
    time.sleep(0.05)
    assert loops.counts() == (5, 0)
    gate.set()
    for _ in range(5):
        assert done.acquire(timeout=5)
    deadline = time.monotonic() + 5
    while loops.counts() != (0, 0) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert loops.counts() == (0, 0)  # idle threads ended after keep_idle_s
    seen[0].join(timeout=5)  # (by thread, not name: the process's own pool names alike)
    assert not seen[0].is_alive()

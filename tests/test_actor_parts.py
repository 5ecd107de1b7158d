"""The small concurrency parts the actors stand on: timers, tool slots, the loop pool."""

from __future__ import annotations

import threading
import time

from foldloop.actors._loops import ActorLoops
from foldloop.actors._timers import Timers
from foldloop.actors._tool_actor import Slots
from tests.peak import Peak
from tests.waiting import wait_until


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
        wait_until(lambda: fired, 5, "the live timer to fire")
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
        wait_until(lambda: loops.counts() == (0, 1), 5, "the loop's thread to go idle")
    assert len(seen) == 50 and len(set(seen)) == 1
    gate = threading.Event()
    started = threading.Semaphore(0)

    def held() -> None:
        started.release()
        gate.wait(5)
        done.release()

    for _ in range(5):  # five at once need five threads
        loops.run(held)
    for _ in range(5):
        assert started.acquire(timeout=5)  # all five are running now, side by side
    assert loops.counts() == (5, 0)
    gate.set()
    for _ in range(5):
        assert done.acquire(timeout=5)
    wait_until(lambda: loops.counts() == (0, 0), 5, "idle threads to end after keep_idle_s")
    seen[0].join(timeout=5)  # (by thread, not name: the process's own pool names alike)
    assert not seen[0].is_alive()

"""The small concurrency parts the actors stand on: timers, per-run mailboxes, shards, the
runtime's event loop."""

from __future__ import annotations

import asyncio
import random
import threading
import time
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from foldloop.actors._event_loop import EventLoop
from foldloop.actors._mailboxes import Mailboxes
from foldloop.actors._own_threads import outcome_in_hand
from foldloop.actors._shard import Activate, Barrier, Continue, Deliver, Shard
from foldloop.actors._timers import Timers
from foldloop.actors._workers import LAZY_S, Workers
from tests.log_capture import capture_logs
from tests.waiting import inside, wait_until


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


@pytest.mark.parametrize("far", [1e10, float("inf")])
def test_a_timer_due_past_what_one_wait_takes_leaves_the_others_running(far: float) -> None:
    """A tool timeout or a run's max_seconds of centuries is accepted: waiting for it must not
    end the timer thread (every tool timeout and retry of the runtime is on it)."""
    timers = Timers()
    try:
        fired: list[str] = []
        timers.call_later(far, lambda: fired.append("far"))
        timers.call_later(0, lambda: fired.append("first"))
        wait_until(lambda: fired, 5, "the first timer to fire")
        thread = timers._thread  # next, it waits for the far one
        wait_until(lambda: inside(thread, "wait") or not thread.is_alive(), 5, "the far wait")
        timers.call_later(0.01, lambda: fired.append("near"))
        wait_until(lambda: len(fired) == 2, 5, "the near timer to fire")
        assert fired == ["first", "near"]
    finally:
        timers.stop()


class MailboxMachine(RuleBasedStateMachine):
    """Mailboxes against a model: per key, a FIFO of posted messages and one in hand."""

    def __init__(self) -> None:
        super().__init__()
        self.boxes: Mailboxes[int, int] = Mailboxes()
        self.model: dict[int, list[int]] = {}  # per busy key: in hand first, then queued
        self.handled: dict[int, list[int]] = {}
        self.posted: dict[int, list[int]] = {}
        self.dropped: dict[int, list[int]] = {}
        self.serial = 0

    @rule(key=st.integers(0, 4))
    def post(self, key: int) -> None:
        self.serial += 1
        message = self.serial
        self.posted.setdefault(key, []).append(message)
        now = self.boxes.post(key, message)
        if key in self.model:
            assert now is None  # a message is in hand: this one waits
            self.model[key].append(message)
        else:
            assert now == message
            self.model[key] = [message]
            self.handled.setdefault(key, []).append(message)

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def finish(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        following = self.boxes.done(key)
        self.model[key].pop(0)
        if self.model[key]:
            assert following == self.model[key][0]
            self.handled[key].append(following)
        else:
            assert following is None
            del self.model[key]

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def drop(self, data: st.DataObject) -> None:
        key = data.draw(st.sampled_from(sorted(self.model)))
        assert self.boxes.drop(key) == self.model[key][1:]
        self.dropped.setdefault(key, []).extend(self.model.pop(key)[1:])

    @invariant()
    def one_in_hand_and_in_order(self) -> None:
        for key, posted in self.posted.items():
            assert self.boxes.busy(key) == (key in self.model)
            assert self.boxes.queued(key) == max(0, len(self.model.get(key, [])) - 1)
            # handed out in the order posted, and nothing lost: every message was handed
            # out, dropped with its run, or still waits
            waiting = self.model.get(key, [])[1:]
            seen = self.handled.get(key, []) + self.dropped.get(key, []) + waiting
            assert sorted(seen) == posted
            assert self.handled.get(key, []) == sorted(self.handled.get(key, []))


MailboxMachine.TestCase.settings = settings(max_examples=200, stateful_step_count=60)
test_mailboxes = MailboxMachine.TestCase


class _Run:
    """A hosted run that records when it handles what, and sometimes waits (as a run whose
    durable append is on its way) for another thread to let it go on."""

    def __init__(self, run_id: str, resume: Callable[[str, Callable[[], bool]], None]) -> None:
        self.run_id = run_id
        self.finished = False
        self.inside = 0
        self.most_inside = 0
        self.handled: list[int] = []
        self._resume = resume
        self._rng = random.Random(run_id)

    def receive(self, message: int) -> bool:
        self.inside += 1
        self.most_inside = max(self.most_inside, self.inside)
        if self._rng.random() < 0.3:  # waits: comes back on another thread, later

            def later() -> None:
                time.sleep(self._rng.random() / 1000)
                self._resume(self.run_id, lambda: self._end(message))

            threading.Thread(target=later).start()
            return False
        return self._end(message)

    def _end(self, message: int) -> bool:
        self.handled.append(message)
        self.inside -= 1
        return True

    def idle(self) -> None:
        assert self.inside == 0

    def activated(self, post: Callable[[object], None]) -> None:
        pass

    def stopping(self) -> None:
        pass


def started_shard(
    on_deactivated: Callable[[Any], None] = lambda run: None,
    on_dropped: Callable[[str, list[Any]], None] = lambda run_id, left: None,
) -> Shard:
    shard = Shard(on_deactivated, on_dropped)
    shard.start_here()
    return shard


def test_a_shard_hands_each_run_its_messages_one_at_a_time_in_order() -> None:
    # Twenty runs on two shards, each told 60 messages from four threads at once, two of
    # them pool threads that may handle their message themselves; some messages wait (as on
    # a durable commit) and resume from yet another thread, a pool thread too.
    shards = [started_shard() for _ in range(2)]
    try:

        def resume(run_id: str, then: Callable[[], bool]) -> None:
            with outcome_in_hand():
                shards[int(run_id[1:]) % 2].post(Continue(by_id[run_id], then))

        runs = [_Run(f"r{i}", resume) for i in range(20)]
        by_id = {run.run_id: run for run in runs}
        for i, run in enumerate(runs):
            shards[i % 2].post(Activate(run))
        sent: dict[str, list[int]] = {run.run_id: [] for run in runs}
        lock = threading.Lock()

        def teller(seed: int) -> None:
            rng = random.Random(seed)
            for n in range(300):
                run = rng.choice(runs)
                with lock:  # the order a run's messages are told in is the order to keep
                    message = seed * 1000 + n
                    sent[run.run_id].append(message)
                    if seed % 2:
                        with outcome_in_hand():
                            shards[int(run.run_id[1:]) % 2].post(Deliver(run.run_id, message))
                    else:
                        shards[int(run.run_id[1:]) % 2].post(Deliver(run.run_id, message))

        threads = [threading.Thread(target=teller, args=(s,)) for s in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        wait_until(
            lambda: all(len(r.handled) == len(sent[r.run_id]) for r in runs),
            30,
            "every message to be handled",
        )
        for run in runs:
            assert run.handled == sent[run.run_id]  # in order, none lost, none twice
            assert run.most_inside == 1  # never two of a run's messages at once
        assert max(r.most_inside for r in runs) == 1
    finally:
        for shard in shards:
            shard.actor_ref.stop()


class _Ending(_Run):
    """A hosted run that finishes on the message ``"end"``."""

    def receive(self, message: object) -> bool:
        if message == "end":
            self.finished = True
            return True
        if message == "wait":
            return False  # waits for a Continue that the test sends
        self.handled.append(message)  # type: ignore[arg-type]
        return True


def test_a_shard_reports_what_a_run_leaves_unhandled_and_keeps_activations_apart() -> None:
    left: list[object] = []
    dropped: list[tuple[str, list[object]]] = []
    shard = started_shard(left.append, lambda run_id, messages: dropped.append((run_id, messages)))
    try:
        first = _Ending("r1", lambda run_id, then: None)
        shard.post(Activate(first))
        for message in ("wait", 1, "end", 2):  # 1, "end", 2 queue behind the wait
            shard.post(Deliver("r1", message))
        shard.post(Continue(first, lambda: True))  # the wait is over: 1, then the end
        shard.post(Deliver("r1", 3))  # arrives once the run is gone
        wait_until(lambda: len(dropped) == 2, 5, "the unhandled messages to be reported")
        assert left == [first]
        assert dropped == [("r1", [2]), ("r1", [3])]
        assert first.handled == [1]
        second = _Ending("r1", lambda run_id, then: None)  # the same run, activated again
        shard.post(Activate(second))
        shard.post(Continue(first, lambda: first.handled.append(99) or True))  # stale
        shard.post(Deliver("r1", 4))
        wait_until(lambda: second.handled == [4], 5, "the new activation to get its message")
        assert first.handled == [1]  # the old activation's continuation was not run
    finally:
        shard.actor_ref.stop()


class _Where(_Ending):
    """A hosted run that notes the thread handling each message; ``"block"`` holds the
    handling thread until ``release`` is set."""

    def __init__(self, run_id: str) -> None:
        super().__init__(run_id, lambda run_id, then: None)
        self.threads: list[str] = []
        self.blocking = threading.Event()
        self.release = threading.Event()

    def receive(self, message: object) -> bool:
        self.threads.append(threading.current_thread().name)
        if message == "block":
            self.blocking.set()
            assert self.release.wait(10)
        return super().receive(message)


def test_a_pool_thread_handles_its_message_itself_only_when_the_shard_is_idle() -> None:
    shard = started_shard()
    run = _Where("r1")
    shard.post(Activate(run))
    shard.actor_ref.ask(Barrier(), timeout=10)  # the activation handled: the shard idle
    posted: list[str] = []

    def from_a_pool_thread(message: object) -> None:
        with outcome_in_hand():
            shard.post(Deliver("r1", message))
        posted.append(threading.current_thread().name)

    try:
        idle = threading.Thread(target=from_a_pool_thread, args=(1,), name="pool-a")
        idle.start()
        idle.join(10)
        assert run.threads == ["pool-a"]  # handled on the posting thread, before post returned
        shard.post(Deliver("r1", "block"))  # the shard's own thread holds this one
        assert run.blocking.wait(10)
        busy = threading.Thread(target=from_a_pool_thread, args=(2,), name="pool-b")
        busy.start()
        busy.join(10)
        assert posted == ["pool-a", "pool-b"] and run.handled == [1]  # 2 waits its turn
        run.release.set()
        wait_until(lambda: run.handled == [1, "block", 2], 10, "the queued message")
        assert run.threads[1] == run.threads[2] != "pool-b"  # on the shard's own thread
    finally:
        run.release.set()
        shard.actor_ref.stop()


class _Scripted:
    """A hosted run driven by the state machine: each message is handled at once, waits for
    a Continue, or ends the run, as the message itself says."""

    def __init__(self, run_id: str, generation: int) -> None:
        self.run_id = run_id
        self.generation = generation
        self.finished = False
        self.handled: list[int] = []
        self.waiting: int | None = None  # the message in hand, until a Continue

    def receive(self, message: tuple[int, str]) -> bool:
        serial, kind = message
        assert self.waiting is None, "a message handed over while another was in hand"
        assert not self.finished, "a message handed to a run that ended"
        if kind == "wait":
            self.waiting = serial
            return False
        self.handled.append(serial)
        if kind == "end":
            self.finished = True
        return True

    def go_on(self) -> bool:
        assert self.waiting is not None
        self.handled.append(self.waiting)
        self.waiting = None
        return True

    def idle(self) -> None:
        assert self.waiting is None

    def activated(self, post: Callable[[object], None]) -> None:
        pass

    def stopping(self) -> None:
        pass


class ShardMachine(RuleBasedStateMachine):
    """The Shard's scheduling, called synchronously, against a model of per-run mailboxes:
    each activation gets its run's messages in order, one at a time; nothing reaches an
    activation that ended; what a run leaves unhandled is reported, nothing else lost."""

    def __init__(self) -> None:
        super().__init__()
        self.left: list[object] = []
        self.dropped: list[tuple[str, list[object]]] = []
        self.shard = Shard(
            self.left.append, lambda run_id, messages: self.dropped.append((run_id, messages))
        )
        self.active: dict[str, _Scripted] = {}
        self.ended: list[_Scripted] = []
        self.queue: dict[str, list[tuple[int, str]]] = {}  # model: told, not yet handled
        self.serial = 0
        self.generations = 0

    @rule(run=st.sampled_from(["a", "b", "c"]))
    def activate(self, run: str) -> None:
        if run in self.active:
            return
        self.generations += 1
        hosted = _Scripted(run, self.generations)
        self.active[run] = hosted
        self.queue[run] = []
        self.shard.on_receive(Activate(hosted))

    @rule(run=st.sampled_from(["a", "b", "c"]), kind=st.sampled_from(["do", "do", "wait", "end"]))
    def deliver(self, run: str, kind: str) -> None:
        self.serial += 1
        message = (self.serial, kind)
        hosted = self.active.get(run)
        dropped_before = len(self.dropped)
        self.shard.on_receive(Deliver(run, message))
        if hosted is None:
            assert self.dropped[dropped_before:] == [(run, [message])]
            return
        self.queue[run].append(message)
        self._settle(run)

    @precondition(lambda self: any(h.waiting is not None for h in self.active.values()))
    @rule(data=st.data())
    def go_on(self, data: st.DataObject) -> None:
        run = data.draw(st.sampled_from(sorted(r for r, h in self.active.items() if h.waiting)))
        hosted = self.active[run]
        self.shard.on_receive(Continue(hosted, hosted.go_on))
        self._settle(run)

    @precondition(lambda self: bool(self.ended))
    @rule(data=st.data())
    def stale_continue(self, data: st.DataObject) -> None:
        old = data.draw(st.sampled_from(self.ended))
        self.shard.on_receive(Continue(old, lambda: pytest.fail("a stale Continue ran")))

    def _settle(self, run: str) -> None:
        """Bring the model up to what the shard must have done for ``run``."""
        hosted = self.active[run]
        handled = set(hosted.handled) | ({hosted.waiting} if hosted.waiting else set())
        self.queue[run] = [m for m in self.queue[run] if m[0] not in handled]
        if hosted.finished:
            assert self.left[-1] is hosted
            rest = self.queue.pop(run)
            if rest:
                assert self.dropped[-1] == (run, rest)
            self.ended.append(self.active.pop(run))

    @invariant()
    def in_order_one_at_a_time(self) -> None:
        for hosted in [*self.active.values(), *self.ended]:
            assert hosted.handled == sorted(hosted.handled)
        for run, hosted in self.active.items():
            # messages wait only while one is in hand; an idle run has none queued
            assert bool(self.queue[run]) <= (hosted.waiting is not None)


ShardMachine.TestCase.settings = settings(max_examples=150, stateful_step_count=50)
test_shard_scheduling = ShardMachine.TestCase


def test_loop_calls_from_many_threads_each_answer_once() -> None:
    loop = EventLoop()
    results: list[int] = []
    lock = threading.Lock()

    def keep(value: int) -> None:
        with lock:
            results.append(value)

    async def echo(value: int) -> int:
        await asyncio.sleep(random.random() / 100)
        return value

    def hand_over(base: int) -> None:
        for i in range(500):
            loop.start(echo(base + i), keep)

    try:
        threads = [threading.Thread(target=hand_over, args=(k * 1000,)) for k in range(4)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wait_until(lambda: len(results) == 2000, 10, "every call's result")
        assert sorted(results) == [k * 1000 + i for k in range(4) for i in range(500)]
    finally:
        loop.close()


def test_a_loop_call_cancelled_before_it_starts_never_runs() -> None:
    loop = EventLoop()
    held, early_ran, later_done = threading.Event(), threading.Event(), threading.Event()

    async def hold() -> None:
        held.wait(10)  # blocks the loop: the next call is handed over but cannot start yet

    async def mark(event: threading.Event) -> None:
        event.set()

    try:
        loop.start(hold())
        early = loop.start(mark(early_ran))
        assert not early.done()  # handed over, not started
        early.cancel()
        held.set()
        loop.start(mark(threading.Event()), lambda _: later_done.set())  # after ``early``
        wait_until(later_done.is_set, 10, "the call handed over after it to finish")
        assert early.done()
        assert not early_ran.is_set()
    finally:
        loop.close()


def test_a_loop_call_that_raises_is_logged_and_gives_no_result() -> None:
    loop = EventLoop()
    results: list[object] = []

    async def broken() -> int:
        raise ValueError("bad model")

    try:
        with capture_logs() as logs:
            call = loop.start(broken(), results.append)
            wait_until(call.done, 10, "the call to end")
            wait_until(
                lambda: any(e["event"] == "loop_call_failed" for e in logs), 10, "the log line"
            )
        assert results == []
        assert "bad model" in next(e for e in logs if e["event"] == "loop_call_failed")["error"]
    finally:
        loop.close()


def test_a_closed_loop_refuses_new_calls() -> None:
    loop = EventLoop()

    async def nothing() -> None:
        return None

    loop.start(nothing())
    loop.close()
    coro = nothing()
    with pytest.raises(RuntimeError, match="closed"):
        loop.start(coro)
    assert coro.cr_frame is None  # closed, not left to warn "never awaited"


def test_a_job_a_pool_thread_submits_runs_next_on_it_unless_another_waits() -> None:
    pool = Workers(2, "slot")
    ran: list[tuple[str, str]] = []
    done = threading.Event()

    def note(what: str) -> None:
        ran.append((what, threading.current_thread().name))

    def second() -> None:
        note("second")
        done.set()

    def first() -> None:
        note("first")
        with outcome_in_hand():
            pool.submit(second)
        time.sleep(0.05)  # a second thread would start the second job meanwhile
        note("first ends")

    pool.submit(first)
    assert done.wait(10)
    assert [what for what, _ in ran] == ["first", "first ends", "second"]
    assert len({thread for _, thread in ran}) == 1

    # A job's own submissions otherwise go to another thread: it may wait for them.
    waited = threading.Event()

    def waits_for_its_own() -> None:
        inner = threading.Event()
        pool.submit(inner.set)
        if inner.wait(10):
            waited.set()

    pool.submit(waits_for_its_own)
    assert waited.wait(15)
    pool.shutdown()

    # With a job waiting for a thread, the submitted one goes behind it (first come).
    pool = Workers(1, "fifo")
    ran.clear()
    release = threading.Event()
    both = threading.Barrier(2)

    def its_own() -> None:
        note("its own")
        both.wait(10)

    def holding() -> None:
        release.wait(10)
        pool.submit(its_own)

    pool.submit(holding)
    pool.submit(lambda: note("waited first"))
    release.set()
    both.wait(10)
    assert [what for what, _ in ran] == ["waited first", "its own"]
    pool.shutdown()


def _threads_named(prefix: str) -> int:
    return sum(t.name.startswith(prefix) for t in threading.enumerate())


class Looks:
    """A lazy pool's looks, armed by it and run by the test, each when due or later."""

    def __init__(self) -> None:
        self.armed: list[tuple[float, Callable[[], None]]] = []

    def call_later(self, delay_s: float, look: Callable[[], None]) -> None:
        self.armed.append((time.monotonic() + delay_s, look))

    def __len__(self) -> int:
        return len(self.armed)

    def run(self, late_s: float = 0.0) -> None:
        """Run the look armed last, ``late_s`` past its due time."""
        due, look = self.armed.pop()
        time.sleep(max(0.0, due + late_s - time.monotonic()))
        look()

    def run_until(self, done: Callable[[], bool], timeout: float = 10) -> None:
        """Run each look as it falls due until ``done()`` (a look re-arms while it waits)."""
        deadline = time.monotonic() + timeout
        while not done():
            assert time.monotonic() < deadline, "the looks never served the job"
            if self.armed:
                self.run()
            else:
                time.sleep(0.01)


def test_a_lazy_pool_leaves_jobs_to_its_awake_thread_until_that_one_is_long_in_a_job() -> None:
    looks = Looks()
    pool = Workers(8, "lazy-", call_later=looks.call_later)
    release, started, second_ran = threading.Event(), threading.Event(), threading.Event()
    ran: list[tuple[int, str]] = []

    def blocks() -> None:
        started.set()
        release.wait(30)

    pool.submit(blocks)
    assert started.wait(10)
    for i in range(5):
        pool.submit(lambda i=i: ran.append((i, threading.current_thread().name)))
    assert _threads_named("lazy-") == 1, "a thread started for jobs the awake one reaches"
    assert len(looks) == 1  # one look armed for them all
    release.set()
    wait_until(lambda: len(ran) == 5, 10, "the queued jobs to run")
    assert [i for i, _ in ran] == [0, 1, 2, 3, 4]
    assert len({name for _, name in ran}) == 1
    looks.run()  # nothing waits, nothing starts
    assert _threads_named("lazy-") == 1

    # Behind a thread LAZY_S into one job (blocked), a look on time starts a thread for the
    # next (each look runs when due: late ones wait longer, below).
    started.clear()
    release.clear()
    pool.submit(blocks)
    assert started.wait(10)
    pool.submit(second_ran.set)
    looks.run_until(second_ran.is_set)
    assert _threads_named("lazy-") == 2
    release.set()
    pool.shutdown()


def test_a_late_look_counts_a_job_blocked_only_past_twice_its_lateness() -> None:
    # A look run late says the process's threads wait that long for the interpreter lock:
    # a thread in its job for less than LAZY_S past twice that may be one of them.
    looks = Looks()
    pool = Workers(8, "late-", call_later=looks.call_later)
    release, started, second_ran = threading.Event(), threading.Event(), threading.Event()

    def blocks() -> None:
        started.set()
        release.wait(30)

    pool.submit(blocks)
    assert started.wait(10)
    pool.submit(second_ran.set)
    looks.run(late_s=1.0)  # its job is ~1 s old then: under LAZY_S + 2 x 1 s
    assert _threads_named("late-") == 1, "a late look took a thread waiting its turn as blocked"
    assert len(looks) == 1  # it looks again
    looks.run_until(second_ran.is_set)  # on time, the blocked job is served
    release.set()
    pool.shutdown()


def test_a_lazy_pool_leaves_jobs_to_a_thread_handing_its_outcome_on_however_long() -> None:
    looks = Looks()
    pool = Workers(8, "handing-", call_later=looks.call_later)
    handing, release, queued_ran = threading.Event(), threading.Event(), threading.Event()

    def hands_on_slowly() -> None:
        with pool.handing_on():  # a run's step, a lock of the runtime's: not a blocked call
            handing.set()
            release.wait(30)

    pool.submit(hands_on_slowly)
    assert handing.wait(10)
    pool.submit(queued_ran.set)
    time.sleep(LAZY_S * 2)  # longer than LAZY_S in its job
    looks.run()
    assert _threads_named("handing-") == 1, "a thread started behind one handing on"
    release.set()
    assert queued_ran.wait(10)
    pool.shutdown()


def test_a_lazy_pool_wakes_an_idle_thread_for_a_job_behind_one_handing_on() -> None:
    # An idle thread sat while a job waited for as long as the thread ahead handed its outcome
    # on (a run's step that may wait on another process's write lock).
    looks = Looks()
    pool = Workers(8, "idle-", call_later=looks.call_later)
    release, handing, ran = threading.Event(), threading.Event(), threading.Event()
    blocked = [threading.Event(), threading.Event()]
    for gate in blocked:  # two threads, both idle afterwards
        pool.submit(lambda gate=gate: gate.wait(30))
    looks.run_until(lambda: _threads_named("idle-") == 2)
    for gate in blocked:
        gate.set()
    pool.join(10)

    def hands_on_slowly() -> None:
        with pool.handing_on():
            handing.set()
            release.wait(30)

    pool.submit(hands_on_slowly)
    assert handing.wait(10)
    pool.submit(ran.set)
    looks.run_until(ran.is_set)
    assert _threads_named("idle-") == 2  # woken, not started
    release.set()
    pool.shutdown()


class _Bail(BaseException):
    """Outside FAILURES: it ends the pool thread it is raised on."""


def test_a_lazy_pool_goes_on_past_a_thread_that_died_or_never_started(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    timers = Timers()
    pool = Workers(4, "mortal-", call_later=timers.call_later)
    try:
        monkeypatch.setattr(threading, "excepthook", lambda args: None)  # the dying thread

        def bail() -> None:
            raise _Bail

        pool.submit(bail)
        ran = threading.Event()
        pool.submit(ran.set)
        assert ran.wait(10), "a job was left to the thread that died"

        real_start = threading.Thread.start
        failed: list[str] = []

        def start_once_failing(thread: threading.Thread) -> None:
            if thread.name.startswith("mortal-") and not failed:
                failed.append(thread.name)
                raise RuntimeError("can't start new thread")
            real_start(thread)

        pool.shutdown()
        pool = Workers(4, "mortal-", call_later=timers.call_later)
        monkeypatch.setattr(threading.Thread, "start", start_once_failing)
        first = threading.Event()
        with pytest.raises(RuntimeError, match="can't start"):
            pool.submit(first.set)
        ran.clear()
        pool.submit(ran.set)
        assert ran.wait(10) and first.wait(10), "jobs were left to a thread never started"
    finally:
        pool.shutdown()
        timers.stop()


class _Noting(_Ending):
    """A hosted run that calls ``on_message(self, message)`` as it handles each one."""

    def __init__(self, run_id: str, on_message: Callable[[_Noting, object], None]) -> None:
        super().__init__(run_id, lambda run_id, then: None)
        self.on_message = on_message
        self.post: Callable[[object], None] = lambda message: None

    def receive(self, message: object) -> bool:
        self.on_message(self, message)
        return super().receive(message)

    def activated(self, post: Callable[[object], None]) -> None:
        self.post = post


def test_what_a_pool_thread_posts_as_it_handles_goes_behind_what_others_posted_meanwhile() -> None:
    dropped: list[tuple[str, list[Any]]] = []
    shard = started_shard(on_dropped=lambda run_id, left: dropped.append((run_id, left)))
    other = _Noting("b", lambda run, message: None)

    def on_lone(run: _Noting, message: object) -> None:
        if message == "outcome":
            # another thread places run b meanwhile (a parent taken up), then this step
            # tells b something (a child's end): it must come after b's activation
            placing = threading.Thread(
                target=lambda: (
                    shard.post(Activate(other), inline=False),
                    shard.post(Deliver("b", "decision"), inline=False),
                )
            )
            placing.start()
            placing.join(10)
            shard.post(Deliver("b", "told"))
            # the run's own next message (an instant model's reply) after one told to it
            shard.post(Deliver("a", "told"))
            run.post("own")

    lone = _Noting("a", on_lone)
    shard.post(Activate(lone))
    shard.actor_ref.ask(Barrier(), timeout=10)
    try:
        with outcome_in_hand():
            shard.post(Deliver("a", "outcome"))
        wait_until(lambda: len(other.handled) == 2 and len(lone.handled) == 3, 10, "all")
        assert other.handled == ["decision", "told"] and not dropped
        assert lone.handled == ["outcome", "told", "own"]
    finally:
        shard.actor_ref.stop()

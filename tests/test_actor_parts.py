"""The small concurrency parts the actors stand on: timers, per-run mailboxes, shards."""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable

from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from foldloop.actors._mailboxes import Mailboxes
from foldloop.actors._shard import Activate, Continue, Deliver, Shard
from foldloop.actors._timers import Timers
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

    def stopping(self) -> None:
        pass


def test_a_shard_hands_each_run_its_messages_one_at_a_time_in_order() -> None:
    # Twenty runs on two shards, each told 60 messages from four threads at once; some
    # messages wait (as on a durable commit) and resume from yet another thread.
    shards = [Shard.start(lambda run_id, left: None) for _ in range(2)]
    try:

        def resume(run_id: str, then: Callable[[], bool]) -> None:
            shards[int(run_id[1:]) % 2].tell(Continue(run_id, then))

        runs = [_Run(f"r{i}", resume) for i in range(20)]
        for i, run in enumerate(runs):
            shards[i % 2].tell(Activate(run))
        sent: dict[str, list[int]] = {run.run_id: [] for run in runs}
        lock = threading.Lock()

        def teller(seed: int) -> None:
            rng = random.Random(seed)
            for n in range(300):
                run = rng.choice(runs)
                with lock:  # the order a run's messages are told in is the order to keep
                    message = seed * 1000 + n
                    sent[run.run_id].append(message)
                    shards[int(run.run_id[1:]) % 2].tell(Deliver(run.run_id, message))

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
            shard.stop()

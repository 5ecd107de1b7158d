"""The store port's contract: what every backend of ``foldloop.store.EventStore`` must do.

A backend's test module subclasses ``StoreContract`` and says how to open (and reopen) a
store in a directory; every test here then runs against it, and ``contract_machine``
gives a hypothesis state machine that drives the backend's port operations at random
against an in-memory model. ``tests/test_store_contract.py`` runs both against LMDB.
Only port operations are used: nothing here knows how a backend stores anything.
"""

from __future__ import annotations

import tempfile
import threading
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import pytest
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from foldloop.errors import ApprovalError, ConcurrencyError, ConfigError, RunLocked
from foldloop.events import RunCompleted, RunStarted, ToolCompleted
from foldloop.events._recorded import Recorded
from foldloop.store import (
    MAX_EVENT_BYTES,
    ApprovalChanges,
    ApprovalRecord,
    Checkpoint,
    EventStore,
    Lease,
    Pending,
    encode_all,
)

__all__ = ["StoreContract", "contract_machine"]

Opener = Callable[[Path], EventStore]


def ev(i: int) -> ToolCompleted:
    return ToolCompleted(call_id=f"c{i}", result=f"result-{i}")


def request(run_id: str, call_id: str, *, expires_at: int = 2**62) -> ApprovalRecord:
    return ApprovalRecord(
        run_id=run_id,
        call_id=call_id,
        gate="g",
        tool="delete",
        args='{"path": "/tmp/x"}',
        token_digest=f"digest-{run_id}-{call_id}",
        expires_at=expires_at,
        requested_at=1,
    )


class StoreContract:
    """The tests every backend passes. Subclasses define ``open_store`` (and may override
    ``reopen`` when closing and opening again is not simply that)."""

    def open_store(self, path: Path) -> EventStore:
        raise NotImplementedError

    def reopen(self, store: EventStore, path: Path) -> EventStore:
        store.close()
        return self.open_store(path)

    @pytest.fixture
    def path(self, tmp_path: Path) -> Path:
        return tmp_path / "store"

    @pytest.fixture
    def store(self, path: Path) -> Iterator[EventStore]:
        opened = self.open_store(path)
        holder = [opened]
        self._holder = holder
        try:
            yield opened
        finally:
            holder[0].close()

    def _reopen(self, store: EventStore, path: Path) -> EventStore:
        """Reopen, keeping the fixture's teardown closing the store that is open."""
        fresh = self.reopen(store, path)
        self._holder[0] = fresh
        return fresh

    @staticmethod
    def append(
        store: EventStore,
        run_id: str,
        events: Sequence[Any],
        expected: int,
        *,
        at: int = 1,
        lease: Lease | None = None,
        release: bool = False,
        approvals: ApprovalChanges | None = None,
    ) -> list[Recorded]:
        return store.append(
            run_id,
            encode_all(events, at),
            expected_seq=expected,
            lease=lease,
            release=release,
            approvals=approvals,
        ).wait()

    # -- appends with an expected seq ------------------------------------------------------

    def test_appends_read_back_in_seq_and_position_order(self, store: EventStore) -> None:
        recs = self.append(store, "r1", [RunStarted(agent="a", input="x"), ev(1)], 0, at=7)
        assert [(r.run_id, r.seq, r.position, r.at) for r in recs] == [
            ("r1", 1, 1, 7),
            ("r1", 2, 2, 7),
        ]
        self.append(store, "r2", [ev(2)], 0, at=8)
        self.append(store, "r1", [ev(3)], 2, at=9)
        assert [r.event for r in store.read("r1")] == [
            RunStarted(agent="a", input="x"),
            ev(1),
            ev(3),
        ]
        assert [(r.seq, r.position, r.at) for r in store.read("r1")] == [
            (1, 1, 7),
            (2, 2, 7),
            (3, 4, 9),
        ]
        assert store.head("r1") == 3 and store.head("r2") == 1 and store.head("nope") == 0
        assert store.read("nope") == []
        assert store.run_ids() == ["r1", "r2"]
        assert store.verify_chain("r1") == 3

    def test_an_event_as_large_as_the_store_says_it_keeps_is_kept(self, store: EventStore) -> None:
        bound = store.max_event_bytes
        assert 0 < bound <= MAX_EVENT_BYTES
        text = "x" * (bound - 1024)  # the event's envelope takes the rest
        (rec,) = self.append(store, "big", [RunStarted(agent="a", input=text)], 0)
        assert store.read("big")[0].event == rec.event

    def test_reads_from_a_seq_and_to_a_seq(self, store: EventStore) -> None:
        for i in range(5):
            self.append(store, "r", [ev(2 * i), ev(2 * i + 1)], 2 * i, at=i)
        assert [r.seq for r in store.read("r", 4)] == list(range(4, 11))
        assert [r.seq for r in store.read("r", 3, 6)] == [3, 4, 5, 6]
        assert [r.seq for r in store.read("r", 0)] == list(range(1, 11))
        assert store.read("r", 11) == []
        events, ats = store.read_events("r", 9)
        assert events == [ev(8), ev(9)] and ats == [4, 4]
        assert store.consume_events("r", list, 10) == [(ev(9), 4)]
        assert store.read_runs({"r": 10, "none": 1}) == {"r": ([ev(9)], [4]), "none": ([], [])}

    def test_a_stale_expected_seq_is_refused_and_writes_nothing(self, store: EventStore) -> None:
        self.append(store, "r", [ev(1), ev(2)], 0)
        for stale in (0, 1, 3):
            with pytest.raises(ConcurrencyError) as info:
                self.append(store, "r", [ev(3)], stale)
            assert (info.value.run_id, info.value.expected, info.value.actual) == ("r", stale, 2)
        assert store.head("r") == 2 and store.last_position() == 2

    def test_events_of_one_append_keep_their_own_times(self, store: EventStore) -> None:
        payloads = [*encode_all([ev(1), ev(2)], 9), *encode_all([ev(3)], 8)]
        store.append("r", payloads, expected_seq=0).wait()
        assert [(r.seq, r.at) for r in store.read("r")] == [(1, 9), (2, 9), (3, 8)]

    def test_an_append_not_waited_for_still_lands_or_reports(self, store: EventStore) -> None:
        failures: list[BaseException | None] = []
        heard = threading.Event()

        def told(op: Pending[list[Recorded]]) -> None:
            failures.append(op.error)
            heard.set()

        ok = store.append("r", encode_all([ev(1)], 1), expected_seq=0, durable=False, records=False)
        stale = store.append(
            "r", encode_all([ev(9)], 1), expected_seq=0, durable=False, callback=told
        )
        assert isinstance(ok.wait(10), list)
        assert heard.wait(10)
        assert isinstance(failures[0], ConcurrencyError) and stale.done
        assert [r.event for r in store.read("r")] == [ev(1)]

    def test_flush_returns_once_what_was_queued_is_stored(self, store: EventStore) -> None:
        ops = [
            store.append("r", encode_all([ev(i)], 1), expected_seq=i - 1, durable=False)
            for i in range(1, 4)
        ]
        assert store.flush(10)
        assert all(op.done for op in ops)  # none lingers for a later commit
        assert [r.event for r in store.read("r")] == [ev(1), ev(2), ev(3)]

    # -- leases and fencing ----------------------------------------------------------------

    def test_lease_lifecycle(self, store: EventStore) -> None:
        assert store.lease("r") is None
        assert store.acquire_lease("r", "a").wait() == 1
        assert store.lease("r") == Lease("a", 1)
        assert store.acquire_lease("r", "a").wait() == 2  # the holder takes it again
        assert store.release_lease("r", Lease("a", 1), durable=True).wait() is False  # stale
        assert store.lease("r") == Lease("a", 2)
        assert store.release_lease("r", Lease("a", 2), durable=True).wait() is True
        assert store.lease("r") == Lease("", 2)
        assert store.acquire_lease("r", "b").wait() == 3  # epochs only grow

    def test_leases_reads_every_runs_lease_at_once(self, store: EventStore) -> None:
        assert store.leases() == {}
        odd = "run with spaces/and.dots"  # a key a store must spell and read back
        for run_id, owner in (("a", "x"), ("b", "y"), (odd, "x")):
            store.acquire_lease(run_id, owner).wait()
        store.release_lease("b", Lease("y", 1), durable=True).wait()
        assert store.leases() == {"a": Lease("x", 1), "b": Lease("", 1), odd: Lease("x", 1)}
        assert store.leases() == {r: store.lease(r) for r in ("a", "b", odd)}

    def test_leases_reads_past_a_thousand_runs(self, store: EventStore) -> None:
        runs = [f"r{i:04d}" for i in range(1_100)]  # JetStream lists past 1,024 another way
        ops = [store.acquire_lease(run_id, "x") for run_id in runs]
        assert all(op.wait() == 1 for op in ops)
        assert store.leases() == dict.fromkeys(runs, Lease("x", 1))

    def test_checkpoints_past_a_thousand_leave_the_deleted_out(self, store: EventStore) -> None:
        names = [f"p{i:04d}" for i in range(1_100)]
        for op in [store.put_checkpoint(Checkpoint(name=n, position=1)) for n in names]:
            op.wait()
        gone = names[::3] + names[-5:]  # the last ones too: a walk must not stop at them
        for op in [store.delete_checkpoint(n) for n in gone]:
            op.wait()
        assert sorted(c.name for c in store.checkpoints()) == sorted(set(names) - set(gone))

    def test_a_live_owner_keeps_its_runs_a_dead_one_loses_them(self, store: EventStore) -> None:
        hold = store.hold_owner("alive")
        try:
            assert store.owner_alive("alive") and not store.owner_alive("never-held")
            store.acquire_lease("r", "alive").wait()
            with pytest.raises(RunLocked, match="driven by a live runtime"):
                store.acquire_lease("r", "other").wait()
        finally:
            hold.release()
        assert not store.owner_alive("alive")
        assert store.acquire_lease("r", "other").wait() == 2

    def test_a_fenced_off_owner_cannot_append(self, store: EventStore) -> None:
        first = store.acquire_lease("r", "a").wait()
        self.append(store, "r", [ev(1)], 0, lease=Lease("a", first))
        second = store.acquire_lease("r", "b").wait()  # "a" holds no owner lock: dead
        with pytest.raises(RunLocked, match=f"held epoch {first} and was fenced off"):
            self.append(store, "r", [ev(2)], 1, lease=Lease("a", first))
        with pytest.raises(RunLocked):
            self.append(store, "r", [ev(2)], 1, lease=Lease("b", second + 1))
        assert store.head("r") == 1
        self.append(store, "r", [ev(2)], 1, lease=Lease("b", second))
        assert store.head("r") == 2

    def test_an_append_releases_its_lease_in_the_same_write(self, store: EventStore) -> None:
        epoch = store.acquire_lease("r", "a").wait()
        lease = Lease("a", epoch)
        with pytest.raises(ConcurrencyError):  # refused whole: the lease stays held
            self.append(store, "r", [ev(1)], 5, lease=lease, release=True)
        assert store.lease("r") == lease
        seen: list[tuple[int, Lease | None]] = []  # what a reader told of the commit finds
        told = threading.Event()

        def listener(recs: list[Recorded]) -> None:
            seen.append((len(recs), store.lease("r")))
            told.set()

        remove = store.add_listener(listener)
        try:
            self.append(
                store, "r", [ev(1), RunCompleted(output="done")], 0, lease=lease, release=True
            )
            assert told.wait(10)
        finally:
            remove()
        assert seen == [(2, Lease("", epoch))]
        assert store.lease("r") == Lease("", epoch) and store.head("r") == 2
        with pytest.raises(ConfigError, match="lease="):
            store.append("r", encode_all([ev(3)], 1), expected_seq=2, release=True)

    def test_start_run_takes_the_lease_and_appends_at_once(self, store: EventStore) -> None:
        started = encode_all([RunStarted(agent="a", input="x")], 5)
        epoch = store.start_run("r", started, owner="a").wait()
        assert store.lease("r") == Lease("a", epoch) and store.head("r") == 1
        with pytest.raises(ConcurrencyError) as info:
            store.start_run("r", started, owner="b").wait()
        assert info.value.actual == 1 and store.lease("r") == Lease("a", epoch)
        parked = store.start_run("p", started, owner="a", release=True).wait()
        assert store.lease("p") == Lease("", parked) and store.head("p") == 1
        hold = store.hold_owner("alive")
        try:
            store.acquire_lease("q", "alive").wait()
            with pytest.raises(RunLocked):
                store.start_run("q", started, owner="b").wait()
            assert store.head("q") == 0
        finally:
            hold.release()

    def test_writes_begun_together_each_land_or_fail_on_their_own(self, store: EventStore) -> None:
        started = encode_all([RunStarted(agent="a", input="x")], 5)
        store.start_run("taken", started, owner="a").wait()
        ids = [f"r{i}" for i in range(50)]
        outcome: dict[str, Any] = {}

        def together() -> None:  # not the main thread: a thread that would commit its own
            with store.writes_together():
                pending = [store.start_run(run_id, started, owner="a") for run_id in ids]
                outcome["again"] = store.start_run("taken", started, owner="b")
                with store.writes_together():  # nested: still together; waits inside are fine
                    outcome["inner"] = store.start_run("inner", started, owner="a").wait()
                outcome["epochs"] = [p.wait() for p in pending]

        thread = threading.Thread(target=together)
        thread.start()
        thread.join(30)
        assert not thread.is_alive() and set(outcome) == {"again", "inner", "epochs"}
        epochs, inner = outcome["epochs"], outcome["inner"]
        with pytest.raises(ConcurrencyError):
            outcome["again"].wait()
        assert [store.lease(run_id) for run_id in ids] == [Lease("a", e) for e in epochs]
        assert store.lease("inner") == Lease("a", inner) and store.head("inner") == 1
        taken = store.lease("taken")
        assert taken is not None and taken.owner == "a"

    def test_import_writes_a_whole_run_in_one_go(self, store: EventStore) -> None:
        events = [ev(i) for i in range(300)]
        payloads = [p for i, e in enumerate(events) for p in encode_all([e], 1000 + i)]
        self.append(store, "other", [ev(0)], 0)
        store.import_run("copy", payloads).wait()
        got = store.read("copy")
        assert [r.event for r in got] == events
        assert [r.at for r in got] == [1000 + i for i in range(300)]
        assert [r.position for r in got] == list(range(2, 302))
        assert store.lease("copy") is None and store.verify_chain("copy") == 300
        with pytest.raises(ConcurrencyError):
            store.import_run("copy", payloads).wait()
        assert store.head("copy") == 300

    def test_an_import_writes_the_approval_requests_it_waits_on(self, store: EventStore) -> None:
        payloads = encode_all([ev(1)], 1000)
        asked = ApprovalChanges(requests=(request("parked", "c1"),))
        store.import_run("parked", payloads, approvals=asked).wait()
        assert store.approval("parked", "c1") == request("parked", "c1")
        assert store.head("parked") == 1

    # -- the whole log ---------------------------------------------------------------------

    def test_scan_gives_every_record_once_in_position_order(self, store: EventStore) -> None:
        order: list[tuple[str, int]] = []
        for step in range(4):
            for run in ("a", "b", "c"):
                size = 1 + (step + len(order)) % 3
                self.append(store, run, [ev(k) for k in range(size)], store.head(run))
                order += [(run, store.head(run) - size + 1 + k) for k in range(size)]
        everything = store.read_all()
        assert [(r.run_id, r.seq) for r in everything] == order
        assert [r.position for r in everything] == list(range(1, len(order) + 1))
        assert store.last_position() == len(order)
        for start in range(1, len(order) + 2):  # from inside any append
            assert [r.position for r in store.read_all(start)] == list(range(start, len(order) + 1))
            want = list(range(start, min(start + 2, len(order) + 1)))
            assert [r.position for r in store.read_all(start, 2)] == want
        assert store.read_all(len(order) + 1) == []

    def test_listeners_hear_of_every_commit_of_this_process(self, store: EventStore) -> None:
        heard: list[list[tuple[str, int]]] = []
        told = threading.Event()

        def listener(recs: list[Recorded]) -> None:
            heard.append([(r.run_id, r.seq) for r in recs])
            told.set()

        remove = store.add_listener(listener)
        self.append(store, "r", [ev(1), ev(2)], 0)
        assert told.wait(10)
        remove()
        self.append(store, "r", [ev(3)], 2)
        store.add_listener(lambda recs: told.set())  # a later commit: the first one is told
        told.clear()
        self.append(store, "r", [ev(4)], 3)
        assert told.wait(10)
        assert heard == [[("r", 1), ("r", 2)]]

    # -- the approvals table ---------------------------------------------------------------

    def test_approval_requests_go_with_their_append(self, store: EventStore) -> None:
        asked = ApprovalChanges(requests=(request("r", "c1"),))
        with pytest.raises(ConcurrencyError):  # refused whole: no record either
            self.append(store, "r", [ev(1)], 3, approvals=asked)
        assert store.approval("r", "c1") is None and store.approvals() == []
        self.append(store, "r", [ev(1)], 0, approvals=asked)
        record = store.approval("r", "c1")
        assert record is not None and record.status == "pending" and not record.applied
        assert store.open_approvals() == [record]
        assert store.approval_by_token("digest-r-c1") == record
        assert store.approval_by_token("unknown") is None

    def test_a_decision_is_taken_once_then_applied(self, store: EventStore) -> None:
        self.append(
            store, "r", [ev(1)], 0, approvals=ApprovalChanges(requests=(request("r", "c1"),))
        )
        pending = request("r", "c1")
        decided = store.decide_approval(pending, approved=True, by="alice", note="ok", now=5).wait()
        assert (decided.status, decided.by, decided.note, decided.decided_at) == (
            "approved",
            "alice",
            "ok",
            5,
        )
        with pytest.raises(ApprovalError, match="already approved by 'alice'"):
            store.decide_approval(pending, approved=False, by="bob", note="", now=6).wait()
        assert store.due_approvals(0) == [decided]  # decided: due whatever the time
        self.append(store, "r", [ev(2)], 1, approvals=ApprovalChanges(applied=(("c1", 2),)))
        applied = store.approval("r", "c1")
        assert applied is not None and applied.applied and applied.applied_seq == 2
        assert store.open_approvals() == [] and store.due_approvals(2**63) == []
        assert store.approvals() == [applied]

    def test_a_request_past_its_deadline_expires(self, store: EventStore) -> None:
        soon, later = request("r", "soon", expires_at=10), request("r", "later", expires_at=100)
        self.append(store, "r", [ev(1)], 0, approvals=ApprovalChanges(requests=(soon, later)))
        assert store.due_approvals(9) == []
        assert [r.call_id for r in store.due_approvals(10)] == ["soon"]
        late = store.decide_approval(soon, approved=True, by="alice", note="", now=10).wait()
        assert late.status == "expired" and late.by == ""
        with pytest.raises(ApprovalError, match="cannot expire before then"):
            store.expire_approval(later, now=99).wait()  # never a denial in disguise
        assert store.approval("r", "later") == later
        expired = store.expire_approval(later, now=100).wait()
        assert expired.status == "expired"
        with pytest.raises(ApprovalError, match="already expired"):
            store.expire_approval(later, now=101).wait()
        with pytest.raises(ApprovalError, match="no such approval request"):
            store.decide_approval(
                request("r", "never"), approved=True, by="", note="", now=1
            ).wait()

    def test_one_append_cannot_apply_a_call_and_request_it_again(self) -> None:
        applied = ApprovalChanges(applied=(("c", 2),))
        with pytest.raises(ValueError, match="applied and requested again"):
            applied + ApprovalChanges(requests=(request("r", "c"),))
        both = ApprovalChanges(requests=(request("r", "c"),)) + applied  # request, then apply
        assert both.requests and both.applied

    def test_of_racing_deciders_exactly_one_wins(self, store: EventStore) -> None:
        self.append(
            store, "r", [ev(1)], 0, approvals=ApprovalChanges(requests=(request("r", "c"),))
        )
        ops = [
            store.decide_approval(
                request("r", "c"), approved=i % 2 == 0, by=f"p{i}", note="", now=1
            )
            for i in range(8)
        ]
        outcomes = []
        for op in ops:
            try:
                outcomes.append(op.wait().by)
            except ApprovalError:
                outcomes.append(None)
        winners = [by for by in outcomes if by is not None]
        assert len(winners) == 1
        record = store.approval("r", "c")
        assert record is not None and record.by == winners[0]

    # -- snapshots and checkpoints ---------------------------------------------------------

    def test_a_snapshot_is_kept_only_at_the_runs_head(self, store: EventStore) -> None:
        self.append(store, "r", [ev(1), ev(2)], 0)
        asked: list[int] = []

        class Chunks(Sequence[bytes]):
            def __init__(self, n: int) -> None:
                self.n = n

            def __len__(self) -> int:
                return self.n

            def __getitem__(self, i: Any) -> Any:
                asked.append(i)
                return f"chunk-{i}".encode()

        assert store.snapshot("r") is None
        assert (
            store.put_snapshot("r", seq=1, state_version=3, state=b"s1", chunks=Chunks(1)).wait()
            is False
        )
        assert store.snapshot("r") is None and asked == []
        assert store.put_snapshot("r", seq=2, state_version=3, state=b"s2", chunks=Chunks(2)).wait()
        assert store.snapshot("r") == (3, 2, b"s2", [b"chunk-0", b"chunk-1"])
        self.append(store, "r", [ev(3)], 2)
        asked.clear()
        assert store.put_snapshot("r", seq=3, state_version=3, state=b"s3", chunks=Chunks(3)).wait()
        assert asked == [2]  # full chunks never change: only the new one is read
        assert store.snapshot("r") == (3, 3, b"s3", [b"chunk-0", b"chunk-1", b"chunk-2"])

    def test_checkpoints_only_move_forward(self, store: EventStore) -> None:
        assert store.checkpoint("p") is None and store.checkpoints() == []
        at_5 = Checkpoint(name="p", position=5, state=b"five")
        assert store.put_checkpoint(at_5).wait() is True
        assert store.put_checkpoint(Checkpoint(name="p", position=3)).wait() is False
        assert store.checkpoint("p") == at_5
        other_version = Checkpoint(name="p", version=2, position=1)
        assert store.put_checkpoint(other_version).wait() is True  # a new version restarts
        back = Checkpoint(name="p", version=2, position=0)
        assert store.put_checkpoint(back, advance=False, durable=True).wait() is True
        assert store.checkpoint("p") == back
        store.put_checkpoint(Checkpoint(name="q", position=1)).wait()
        assert sorted(c.name for c in store.checkpoints()) == ["p", "q"]
        store.delete_checkpoint("p").wait()
        assert store.checkpoint("p") is None and [c.name for c in store.checkpoints()] == ["q"]

    # -- durability ------------------------------------------------------------------------

    def test_everything_written_is_there_after_reopening(
        self, store: EventStore, path: Path
    ) -> None:
        epoch = store.start_run(
            "r", encode_all([RunStarted(agent="a", input="x")], 1), owner="a"
        ).wait()
        self.append(
            store,
            "r",
            [ev(1)],
            1,
            lease=Lease("a", epoch),
            approvals=ApprovalChanges(requests=(request("r", "c"),)),
        )
        store.put_snapshot("r", seq=2, state_version=1, state=b"s", chunks=[b"c0"]).wait()
        store.put_checkpoint(Checkpoint(name="p", position=2)).wait()
        store.release_lease("r", Lease("a", epoch)).wait()
        before = (store.read_all(), store.lease("r"), store.approvals(), store.snapshot("r"))
        store = self._reopen(store, path)
        after = (store.read_all(), store.lease("r"), store.approvals(), store.snapshot("r"))
        assert after == before and store.checkpoint("p") == Checkpoint(name="p", position=2)
        self.append(store, "r", [ev(2)], 2)  # and it goes on from there
        assert store.head("r") == 3 and store.last_position() == 3


# -- a state machine against an in-memory model ------------------------------------------


def contract_machine(opener: Opener) -> type[RuleBasedStateMachine]:
    """A state machine driving ``opener``'s store through its port at random, checked
    against a model of what the port promises (runs, leases, approvals, checkpoints)."""

    class PortMachine(RuleBasedStateMachine):
        def __init__(self) -> None:
            super().__init__()
            self.path = Path(tempfile.mkdtemp()) / "store"
            self.store = opener(self.path)
            self.runs: dict[str, list[ToolCompleted]] = {}
            self.order: list[tuple[str, int]] = []
            self.leases: dict[str, Lease] = {}
            self.approvals: dict[tuple[str, str], str] = {}
            self.checkpoints: dict[str, int] = {}
            self.n = 0

        def _events(self, k: int) -> list[ToolCompleted]:
            self.n += k
            return [ev(self.n - k + i) for i in range(k)]

        def _landed(self, run: str, events: list[ToolCompleted]) -> None:
            for event in events:
                self.runs.setdefault(run, []).append(event)
                self.order.append((run, len(self.runs[run])))

        @rule(
            run=st.sampled_from("abc"), k=st.integers(1, 3), off=st.sampled_from([0, 0, 0, 1, -1])
        )
        def append(self, run: str, k: int, off: int) -> None:
            head = len(self.runs.get(run, []))
            events = self._events(k)
            if off == 0 or head + off < 0:
                self.store.append(run, encode_all(events, self.n), expected_seq=head).wait()
                self._landed(run, events)
            else:
                with pytest.raises(ConcurrencyError):
                    self.store.append(run, encode_all(events, 1), expected_seq=head + off).wait()

        @rule(run=st.sampled_from("abc"), owner=st.sampled_from(["x", "y"]))
        def acquire(self, run: str, owner: str) -> None:
            epoch = self.store.acquire_lease(run, owner).wait()  # no owner is alive here
            before = self.leases.get(run)
            assert epoch == (before.epoch if before else 0) + 1
            self.leases[run] = Lease(owner, epoch)

        @rule(run=st.sampled_from("abc"), stale=st.booleans(), release=st.booleans())
        def append_leased(self, run: str, stale: bool, release: bool) -> None:
            lease = self.leases.get(run)
            if lease is None or not lease.owner:
                return
            used = Lease(lease.owner, lease.epoch - 1) if stale else lease
            events = self._events(1)
            head = len(self.runs.get(run, []))
            op = self.store.append(
                run, encode_all(events, self.n), expected_seq=head, lease=used, release=release
            )
            if stale:
                with pytest.raises(RunLocked):
                    op.wait()
                return
            op.wait()
            self._landed(run, events)
            if release:
                self.leases[run] = Lease("", lease.epoch)

        @rule(run=st.sampled_from("abc"))
        def release(self, run: str) -> None:
            lease = self.leases.get(run)
            if lease is not None and lease.owner:
                assert self.store.release_lease(run, lease, durable=True).wait() is True
                self.leases[run] = Lease("", lease.epoch)
                stale = Lease(lease.owner, lease.epoch)
                assert self.store.release_lease(run, stale, durable=True).wait() is False

        @rule(run=st.sampled_from("abc"), call=st.sampled_from(["c1", "c2"]))
        def ask(self, run: str, call: str) -> None:
            if (run, call) in self.approvals:
                return
            events = self._events(1)
            head = len(self.runs.get(run, []))
            changes = ApprovalChanges(requests=(request(run, call),))
            self.store.append(
                run, encode_all(events, 1), expected_seq=head, approvals=changes
            ).wait()
            self._landed(run, events)
            self.approvals[(run, call)] = "pending"

        @rule(run=st.sampled_from("abc"), call=st.sampled_from(["c1", "c2"]), yes=st.booleans())
        def decide(self, run: str, call: str, yes: bool) -> None:
            op = self.store.decide_approval(
                request(run, call), approved=yes, by="p", note="", now=1
            )
            status = self.approvals.get((run, call))
            if status != "pending":
                with pytest.raises(ApprovalError):
                    op.wait()
                return
            assert op.wait().status == ("approved" if yes else "denied")
            self.approvals[(run, call)] = "approved" if yes else "denied"

        @rule(name=st.sampled_from(["p", "q"]), position=st.integers(0, 9))
        def checkpoint(self, name: str, position: int) -> None:
            written = self.store.put_checkpoint(Checkpoint(name=name, position=position)).wait()
            assert written == (position >= self.checkpoints.get(name, 0))
            if written:
                self.checkpoints[name] = position

        @rule(name=st.sampled_from(["p", "q"]))
        def forget(self, name: str) -> None:
            self.store.delete_checkpoint(name).wait()
            self.checkpoints.pop(name, None)

        @precondition(lambda self: self.n % 3 == 0)
        @rule()
        def reopen(self) -> None:
            self.store.close()
            self.store = opener(self.path)

        @invariant()
        def reads_match_the_model(self) -> None:
            store = self.store
            for run, events in self.runs.items():
                assert [r.event for r in store.read(run)] == events
                assert store.head(run) == len(events)
            assert store.run_ids() == sorted(self.runs)
            everything = store.read_all()
            assert [(r.run_id, r.seq) for r in everything] == self.order
            assert [r.position for r in everything] == list(range(1, len(self.order) + 1))
            assert store.last_position() == len(self.order)

        @invariant()
        def tables_match_the_model(self) -> None:
            store = self.store
            for run in "abc":
                assert store.lease(run) == self.leases.get(run)
            got = {(r.run_id, r.call_id): r.status for r in store.approvals()}
            assert got == self.approvals
            assert {c.name: c.position for c in store.checkpoints()} == self.checkpoints

        def teardown(self) -> None:
            self.store.close()

    return PortMachine

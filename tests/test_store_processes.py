"""Two processes on one store: everything either can do, in random order, against a model.

Each worker (tests/store_worker.py) is a real process holding the store open. A hypothesis
state machine has them append, append stale, take and release leases, append under a
lease, refuse ops (a write transaction that commits nothing), undo ops that wrote before
refusing, record approvals and race decisions, restart, and die by SIGKILL, idle or with
an append in flight; after every step both processes must read exactly the model. A
second test lets processes write at the same time, at random, and checks every write
either acknowledged is still there.

``FOLDLOOP_SOAK=1`` runs both far longer (nightly).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
from pathlib import Path
from typing import Any

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from foldloop.events import ToolCompleted
from foldloop.store import append_events, encode_all, open_store

ROOT = Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "store_worker.py"
SOAK = bool(os.environ.get("FOLDLOOP_SOAK"))
TIMEOUT = 7200 if SOAK else 120
RUNS = ("a", "b", "c")


class Worker:
    """A store_worker.py process and its owner id."""

    def __init__(self, path: Path, owner: str) -> None:
        self.owner = owner
        self.proc = subprocess.Popen(
            [sys.executable, str(WORKER), str(path), owner],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert self._answer() == {"ok": "ready"}

    def send(self, op: str, *args: Any) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write(json.dumps([op, *args]) + "\n")
        self.proc.stdin.flush()

    def _answer(self) -> dict[str, Any]:
        assert self.proc.stdout is not None
        line = self.proc.stdout.readline()
        assert line, f"worker {self.owner} died (exit {self.proc.wait()})"
        answer: dict[str, Any] = json.loads(line)
        return answer

    def call(self, op: str, *args: Any) -> Any:
        """The op's result; a refused op gives ('refused', error class name)."""
        self.send(op, *args)
        answer = self._answer()
        return ("refused", answer["error"]) if "error" in answer else answer["ok"]

    def exit(self) -> None:
        self.send("exit")
        assert self.proc.wait(timeout=30) == 0

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=30)


class TwoProcesses(RuleBasedStateMachine):
    """The store as two live processes see it, against a model of what they were told."""

    def __init__(self) -> None:
        super().__init__()
        self.path = Path(tempfile.mkdtemp()) / "store"
        open_store(self.path).close()  # created before two processes race to open it
        self.generation = 0
        self.workers = [self._start(0), self._start(1)]
        self.runs: dict[str, list[str]] = {r: [] for r in RUNS}
        self.order: list[tuple[str, int]] = []
        self.leases: dict[str, tuple[str, int]] = {}
        self.held: dict[tuple[int, str], int] = {}  # the epoch each worker was given
        self.approvals: dict[tuple[str, str], tuple[str, str]] = {}
        self.tags = 0

    def _start(self, i: int) -> Worker:
        self.generation += 1
        return Worker(self.path, f"w{i}g{self.generation}")

    def _new_tags(self, k: int) -> list[str]:
        self.tags += k
        return [f"t{n}" for n in range(self.tags - k + 1, self.tags + 1)]

    def _landed(self, run: str, tags: list[str]) -> None:
        for tag in tags:
            self.runs[run].append(tag)
            self.order.append((run, len(self.runs[run])))

    def _alive(self, owner: str) -> bool:
        return any(w.owner == owner for w in self.workers)

    # -- writes ------------------------------------------------------------------------

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), k=st.integers(1, 3))
    def append(self, i: int, run: str, k: int) -> None:
        tags = self._new_tags(k)
        got = self.workers[i].call("append", run, len(self.runs[run]), tags)
        first = len(self.order) + 1
        assert got == list(range(first, first + k))
        self._landed(run, tags)

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), lag=st.integers(1, 2))
    def stale_append(self, i: int, run: str, lag: int) -> None:
        expected = len(self.runs[run]) - lag
        if expected < 0:
            expected = len(self.runs[run]) + lag  # ahead of the run: refused the same way
        got = self.workers[i].call("append", run, expected, self._new_tags(1))
        assert got == ("refused", "ConcurrencyError")

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS))
    def acquire(self, i: int, run: str) -> None:
        worker = self.workers[i]
        owner, epoch = self.leases.get(run, ("", 0))
        got = worker.call("acquire", run)
        if owner and owner != worker.owner and self._alive(owner):
            assert got == ("refused", "RunLocked")
            return
        assert got == epoch + 1
        self.leases[run] = (worker.owner, epoch + 1)
        self.held[(i, run)] = epoch + 1

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS))
    def release(self, i: int, run: str) -> None:
        epoch = self.held.get((i, run))
        if epoch is None:
            return
        worker = self.workers[i]
        released = self.workers[i].call("release", run, epoch)
        assert released == (self.leases.get(run) == (worker.owner, epoch))
        if released:
            self.leases[run] = ("", epoch)

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), k=st.integers(1, 2))
    def leased_append(self, i: int, run: str, k: int) -> None:
        epoch = self.held.get((i, run))
        if epoch is None:
            return
        tags = self._new_tags(k)
        got = self.workers[i].call("append", run, len(self.runs[run]), tags, epoch)
        if self.leases.get(run) == (self.workers[i].owner, epoch):
            assert isinstance(got, list) and len(got) == k
            self._landed(run, tags)
        else:
            assert got == ("refused", "RunLocked")

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS))
    def refuse(self, i: int, run: str) -> None:
        # A write transaction that commits nothing: LMDB does not count it.
        assert self.workers[i].call("refuse", run) == ("refused", "ConfigError")

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), k=st.integers(1, 3))
    def half(self, i: int, run: str, k: int) -> None:
        # An op that appends and takes a lease, then refuses: none of it may stay.
        got = self.workers[i].call("half", run, len(self.runs[run]), self._new_tags(k))
        assert got == ("refused", "ConfigError")

    @rule(i=st.integers(0, 1))
    def noop(self, i: int) -> None:
        assert self.workers[i].call("noop") is None

    @rule(i=st.integers(0, 1))
    def index(self, i: int) -> None:
        assert self.workers[i].call("index") is None

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), call=st.sampled_from(("x", "y")))
    def propose(self, i: int, run: str, call: str) -> None:
        if (run, call) in self.approvals:
            return
        self.workers[i].call("propose", run, call)
        self.approvals[(run, call)] = ("pending", "")

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), call=st.sampled_from(("x", "y")))
    def decide(self, i: int, run: str, call: str) -> None:
        known = self.approvals.get((run, call))
        if known is None:
            return
        worker = self.workers[i]
        got = worker.call("decide", run, call)
        if known[0] == "pending":
            assert got == "approved"
            self.approvals[(run, call)] = ("approved", worker.owner)
        else:
            assert got == ("refused", "ApprovalError")  # commits nothing

    # -- processes -----------------------------------------------------------------------

    @rule(i=st.integers(0, 1))
    def restart(self, i: int) -> None:
        self.workers[i].exit()
        self.workers[i] = self._start(i)
        self.held = {key: e for key, e in self.held.items() if key[0] != i}

    @rule(i=st.integers(0, 1))
    def kill(self, i: int) -> None:
        self.workers[i].kill()
        self.workers[i] = self._start(i)
        self.held = {key: e for key, e in self.held.items() if key[0] != i}

    @rule(i=st.integers(0, 1), run=st.sampled_from(RUNS), k=st.integers(1, 3))
    def kill_in_flight(self, i: int, run: str, k: int) -> None:
        tags = self._new_tags(k)
        worker = self.workers[i]
        worker.send("append", run, len(self.runs[run]), tags)
        worker.kill()
        self.workers[i] = self._start(i)
        self.held = {key: e for key, e in self.held.items() if key[0] != i}
        # All of the append or none of it, never a part.
        head = self.workers[1 - i].call("head", run)
        assert head in (len(self.runs[run]), len(self.runs[run]) + k)
        if head > len(self.runs[run]):
            self._landed(run, tags)

    # -- what both must see --------------------------------------------------------------

    @invariant()
    def both_read_the_model(self) -> None:
        for worker in self.workers:
            assert worker.call("runs") == sorted(r for r, tags in self.runs.items() if tags)
            for run, tags in self.runs.items():
                assert worker.call("read", run) == [[s, t] for s, t in enumerate(tags, 1)]
                assert worker.call("head", run) == len(tags)
                if tags:
                    assert worker.call("verify", run) == len(tags)
            everything = worker.call("all")
            assert [(r, s) for r, s, _p in everything] == self.order
            assert [p for _r, _s, p in everything] == list(range(1, len(self.order) + 1))
            for (run, call), (status, by) in self.approvals.items():
                assert worker.call("approval", run, call) == [status, by]

    def teardown(self) -> None:
        for worker in self.workers:
            worker.kill()


TestTwoProcesses = pytest.mark.timeout(TIMEOUT)(TwoProcesses.TestCase)
TestTwoProcesses.settings = settings(
    max_examples=300 if SOAK else 6,
    stateful_step_count=60 if SOAK else 30,
    deadline=None,
)


def test_a_write_after_another_process_committed_over_a_no_op_lands(tmp_path: Path) -> None:
    """This process commits a transaction that changes nothing (LMDB does not count it),
    another process commits exactly once, and this process appends again: the append must
    land after the other's, not over it."""
    path = tmp_path / "store"
    store = open_store(path)
    try:
        append_events(store, "a1", [ToolCompleted(call_id="1", result="x")], expected_seq=0, at=1)
        store.submit(lambda w: None).wait()  # nothing written
        code = textwrap.dedent(
            f"""
            from foldloop.events import ToolCompleted
            from foldloop.store import encode_all, open_store
            s = open_store({str(path)!r})
            payloads = encode_all([ToolCompleted(call_id="b", result="y")], 2)
            # one commit: the append, indexed in the same transaction (so close writes none)
            s.submit(lambda w: (w.append("b1", payloads, expected_seq=0), w.index_now())).wait()
            s.close()
            """
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        append_events(store, "a2", [ToolCompleted(call_id="2", result="z")], expected_seq=0, at=3)
        assert [(r.run_id, r.position) for r in store.read_all()] == [
            ("a1", 1),
            ("b1", 2),
            ("a2", 3),
        ]
        assert store.verify_chain("a2") == 1
    finally:
        store.close()
    reopened = open_store(path)
    try:
        assert [r.run_id for r in reopened.read_all()] == ["a1", "b1", "a2"]
    finally:
        reopened.close()


def test_an_op_that_refuses_after_writing_leaves_nothing(tmp_path: Path) -> None:
    """Ops share one transaction (group commit); one that raises after it wrote is undone
    whole, and the ops beside it in the same commit keep what they wrote."""
    from foldloop.errors import ConfigError
    from foldloop.store import Lease
    from foldloop.store._writer import WriteOp

    store = open_store(tmp_path / "store")
    try:
        first = encode_all([ToolCompleted(call_id="1", result="x")], 1)
        store.submit(lambda w: w.append("r", first, expected_seq=0)).wait()
        payloads = encode_all([ToolCompleted(call_id="2", result="y")], 2)

        def refuses(w: Any) -> None:
            w.append("r", payloads, expected_seq=1)
            w.put_lease("r", Lease("intruder", 7))
            raise ConfigError("refused after writing")

        def then(w: Any) -> int:
            w.append("r", payloads, expected_seq=1)
            return int(w.head("r").seq)

        # One batch: a lingering op rides in the next durable op's commit.
        ops = [WriteOp(refuses, durable=False), WriteOp(then, durable=True)]
        commits = store.writer.commits
        store.writer.submit(ops[0])
        store.writer.submit(ops[1])
        with pytest.raises(ConfigError):
            ops[0].wait()
        assert ops[1].wait() == 2
        assert store.writer.commits == commits + 1  # they did share one transaction
        assert store.lease("r") is None
        assert [(r.seq, r.event) for r in store.read("r")] == [
            (1, ToolCompleted(call_id="1", result="x")),
            (2, ToolCompleted(call_id="2", result="y")),
        ]
        assert store.verify_chain("r") == 2
    finally:
        store.close()


def test_an_op_refused_before_it_writes_begins_no_child_transaction(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A refused op leaves nothing to abort: py-lmdb's abort of a write transaction waits
    until no other thread of the process is inside an LMDB call, which 200 threads
    following runs did not allow for seconds while every other process's writes waited."""
    from foldloop.errors import ConcurrencyError

    store = open_store(tmp_path / "store")
    try:
        children: list[object] = []
        begin = store.mapped.begin

        def counted(*, write: bool = False, parent: Any = None) -> Any:
            if parent is not None:
                children.append(parent)
            return begin(write=write, parent=parent)

        monkeypatch.setattr(store.mapped, "begin", counted)
        payloads = encode_all([ToolCompleted(call_id="1", result="x")], 1)
        store.submit(lambda w: w.append("r", payloads, expected_seq=0)).wait()
        assert len(children) == 1  # the op that wrote had its own child transaction
        with pytest.raises(ConcurrencyError):
            store.submit(lambda w: w.append("r", payloads, expected_seq=0)).wait()
        assert store.submit(lambda w: w.lease("r")).wait() is None  # a read-only op
        assert len(children) == 1
        assert store.head("r") == 1
    finally:
        store.close()


_WRITER = textwrap.dedent(
    """
    import json, os, random, sys
    from foldloop.errors import FoldloopError
    from foldloop.events import ToolCompleted
    from foldloop.store import encode_all, open_store

    path, me, seed, steps, ledger = sys.argv[1:6]
    rng = random.Random(int(seed))
    store = open_store(path, index_every=rng.choice([4, 256]))
    out = open(ledger, "a")
    for n in range(int(steps)):
        run = rng.choice(["shared-1", "shared-2", me])
        choice = rng.random()
        if choice < 0.15:
            try:
                store.submit(lambda w: (_ for _ in ()).throw(FoldloopError("refused"))).wait()
            except FoldloopError:
                pass
            continue
        if choice < 0.2:
            store.submit(lambda w: None).wait()
            continue
        tags = [f"{me}-{n}-{i}" for i in range(rng.randint(1, 3))]
        payloads = encode_all([ToolCompleted(call_id=t, result=t) for t in tags], n)
        head = store.head(run)
        try:
            recs = store.submit(lambda w: w.append(run, payloads, expected_seq=head)).wait()
        except FoldloopError:
            continue  # the other process appended first
        out.write(json.dumps([run, [r.seq for r in recs], tags]) + "\\n")
        out.flush()
        os.fsync(out.fileno())
    store.close()
    """
)


@pytest.mark.timeout(TIMEOUT)
@pytest.mark.parametrize("seed", range(8 if SOAK else 2))
def test_processes_writing_at_once_lose_nothing_acknowledged(tmp_path: Path, seed: int) -> None:
    """Three processes append at random to their own run and to two shared ones at the same
    time, refusing ops and committing nothing in between; every append acknowledged to
    one of them is in the log at the seqs it was given, and the log is whole."""
    path = tmp_path / "store"
    open_store(path).close()
    steps = 600 if SOAK else 150
    ledger = tmp_path / "ledger"
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-c",
                _WRITER,
                str(path),
                f"p{k}",
                str(seed * 10 + k),
                str(steps),
                str(ledger),
            ],
            stderr=subprocess.PIPE,
        )
        for k in range(3)
    ]
    for proc in procs:
        _, err = proc.communicate(timeout=240)
        assert proc.returncode == 0, err.decode()
    acknowledged = [json.loads(line) for line in ledger.read_text().splitlines()]
    assert len(acknowledged) > steps  # they did write, and contended
    store = open_store(path)
    try:
        for run, seqs, tags in acknowledged:
            got = store.read(run, seqs[0], seqs[-1])
            assert [r.event.call_id for r in got] == tags  # type: ignore[union-attr]
        everything = store.read_all()
        assert [r.position for r in everything] == list(range(1, len(everything) + 1))
        assert len(everything) == sum(len(tags) for _r, _s, tags in acknowledged)
        for run in store.run_ids():
            assert store.verify_chain(run) == store.head(run)
    finally:
        store.close()


def test_a_batch_taking_up_a_dead_runtimes_runs_asks_once_whether_it_lives(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Asking is syscalls (so GIL hand-offs among the process's threads) while the batch
    holds LMDB's write lock: 50 takes of runs a dead runtime held ask once, not 50 times."""
    from foldloop.store import Lease, _lmdb_store

    store = open_store(tmp_path / "store")
    try:
        runs = [f"r{i}" for i in range(50)]
        for run in runs:
            store.submit(lambda w, run=run: w.put_lease(run, Lease("dead-owner", 1))).wait()
        asked: list[str] = []
        real = _lmdb_store.owner_alive

        def counted(directory: Path, owner: str) -> bool:
            asked.append(owner)
            return real(directory, owner)

        monkeypatch.setattr(_lmdb_store, "owner_alive", counted)
        holding, release = threading.Event(), threading.Event()

        def hold(w: Any) -> None:  # keeps the writer busy while the takes queue behind it
            holding.set()
            release.wait(30)

        holder = threading.Thread(target=lambda: store.submit(hold).wait())
        holder.start()
        assert holding.wait(30)
        commits = store.writer.commits
        ops = [store.submit(lambda w, run=run: w.acquire_lease(run, "me")) for run in runs]
        release.set()
        holder.join(30)
        assert [op.wait() for op in ops] == [2] * 50
        assert store.writer.commits == commits + 2  # the holder's, then all 50 takes in one
        assert asked == ["dead-owner"]
    finally:
        store.close()

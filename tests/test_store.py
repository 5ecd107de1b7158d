"""The LMDB log: atomic appends, integrity, growth, bad files, leases, and a model check."""

from __future__ import annotations

import itertools
import os
import signal
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, invariant, rule

from foldloop.errors import ConcurrencyError, ConfigError, CorruptRecord, RunLocked, StoreError
from foldloop.events import ModelRequested, RunCompleted, RunStarted, ToolCompleted
from foldloop.store import OwnerLock, append_events, encode_all, open_store
from foldloop.store._framing import batch_frame, decode_index, index_key, index_value, seal
from foldloop.store._layout import INDEX_SPAN, VALUE_BYTES, VALUE_EVENTS, value_groups

ROOT = Path(__file__).resolve().parents[1]


def ev(i: int) -> ToolCompleted:
    return ToolCompleted(call_id=f"c{i}", result=f"result-{i}")


def test_append_and_read_back(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        recs = append_events(
            store, "r1", [RunStarted(agent="a", input="x"), ev(1)], expected_seq=0, at=7
        )
        assert [(r.seq, r.position, r.at) for r in recs] == [(1, 1, 7), (2, 2, 7)]
        append_events(store, "r2", [ev(2)], expected_seq=0, at=8)
        append_events(store, "r1", [ev(3)], expected_seq=2, at=9)
        assert [r.event for r in store.read("r1")] == [
            RunStarted(agent="a", input="x"),
            ev(1),
            ev(3),
        ]
        assert [r.seq for r in store.read("r1", 2)] == [2, 3]
        assert [r.position for r in store.read_all()] == [1, 2, 3, 4]
        assert [r.run_id for r in store.read_all(3)] == ["r2", "r1"]
        assert store.head("r1") == 3 and store.head("nope") == 0
        assert store.run_ids() == ["r1", "r2"]
        assert store.verify_chain("r1") == 3
    finally:
        store.close()


def test_stale_expected_seq_is_refused_and_writes_nothing(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        append_events(store, "r1", [ev(1), ev(2)], expected_seq=0, at=1)
        with pytest.raises(ConcurrencyError, match="at seq 2, expected 1") as info:
            append_events(store, "r1", [ev(3)], expected_seq=1, at=2)
        assert (info.value.expected, info.value.actual) == (1, 2)
        assert store.head("r1") == 2 and store.last_position() == 2
    finally:
        store.close()


def test_unencodable_payload_fails_before_any_write(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        with pytest.raises(ConfigError, match="nothing was written"):
            append_events(store, "r1", [RunCompleted(output="\ud800")], expected_seq=0, at=1)
        assert store.last_position() == 0
    finally:
        store.close()


def test_store_directory_is_private(store_path: Path) -> None:
    store = open_store(store_path)
    append_events(store, "r1", [ev(1)], expected_seq=0, at=1)
    store.close()
    assert stat.S_IMODE(store_path.stat().st_mode) == 0o700
    for name in ("data.mdb", "lock.mdb"):
        assert stat.S_IMODE((store_path / name).stat().st_mode) == 0o600


def test_two_opens_in_one_process_share_the_store(store_path: Path) -> None:
    a = open_store(store_path)
    b = open_store(store_path)
    try:
        assert a is b
        append_events(a, "r1", [ev(1)], expected_seq=0, at=1)
    finally:
        a.close()
    assert b.head("r1") == 1  # still open: one reference left
    b.close()


def test_flipped_byte_is_reported_with_run_and_seq(store_path: Path) -> None:
    """One append is one stored value: a damaged byte makes the events of that append
    unreadable (named by the first one asked for) and leaves the others readable."""
    store = open_store(store_path)
    append_events(store, "r1", [RunStarted(agent="a", input="x")], expected_seq=0, at=1)
    append_events(
        store, "r1", [ev(2), RunCompleted(output="MARKER-0123456789")], expected_seq=1, at=2
    )
    store.close()
    data = (store_path / "data.mdb").read_bytes()
    assert b"MARKER-0123456789" in data
    (store_path / "data.mdb").write_bytes(data.replace(b"MARKER-0123456789", b"MARKER-0123456788"))
    store = open_store(store_path)
    try:
        assert store.read("r1", 1, 1)[0].seq == 1  # the intact record still reads
        with pytest.raises(CorruptRecord, match="'r1' seq 2: checksum mismatch") as info:
            store.read("r1")
        assert (info.value.run_id, info.value.seq) == ("r1", 2)
        with pytest.raises(CorruptRecord, match="'r1' seq 3: checksum mismatch"):
            store.read("r1", 3)
        with pytest.raises(CorruptRecord, match="'r1' seq 2: checksum mismatch"):
            store.verify_chain("r1")
        # The fold's read steps from the intact value to the damaged one without a seek:
        # the damage is caught there all the same.
        with pytest.raises(CorruptRecord, match="'r1' seq 2: checksum mismatch"):
            store.read_events("r1")
        with pytest.raises(CorruptRecord, match="'r1' seq 3: checksum mismatch"):
            store.read_events("r1", 3)
        with pytest.raises(CorruptRecord, match="'r1' seq 2: checksum mismatch"):
            store.consume_events("r1", list)
    finally:
        store.close()


@pytest.mark.parametrize("points_at", ["another run's value", "a later value of the run"])
def test_an_index_entry_placing_a_run_wrongly_is_reported_not_followed(
    store_path: Path, points_at: str
) -> None:
    """Reads take a stored value the index names only if its own frame holds the run and
    the seq the index says sit there (stepping to the adjacent value or seeking one)."""
    store = open_store(store_path)
    for i in range(3):  # a, b, a, b, a, b: each run's values are apart in the log
        for run in ("a", "b"):
            append_events(store, run, [ev(10 * i), ev(10 * i + 1)], expected_seq=2 * i, at=i)
    store.close()  # indexes everything
    b_first = 3
    store = open_store(store_path)
    try:
        key = index_key("a", 1)
        entry = decode_index(key, store.read_txn(lambda txn: txn.get(key, db=store.tables.index)))
        assert [entry.first_position, entry.length] == [1, 6]
        wrong = b_first if points_at == "another run's value" else 5  # where a's seq 3 is
        # The forged entry says a's six records sit at six consecutive positions from there.
        forged = index_value(wrong, 6, entry.last_chain, entry.last_position, b"")
        with store.env.begin(write=True) as txn:
            txn.put(key, forged, db=store.tables.index)
        for read in (lambda: store.read("a"), lambda: store.read_events("a")):
            with pytest.raises(CorruptRecord, match=r"'a' seq 1: the record holds"):
                read()
        assert [r.event for r in store.read("b")] == [ev(j) for j in (0, 1, 10, 11, 20, 21)]
    finally:
        store.close()


def test_reads_use_the_tail_cache_only_for_what_their_transaction_sees(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A read finds a run's unindexed records through the write path's view of the tail:
    records the view has but the read's transaction does not are left out, records the
    transaction has and the view does not yet are scanned for."""
    store = open_store(store_path)
    try:
        append_events(store, "r", [ev(1)], expected_seq=0, at=1)
        append_events(store, "other", [ev(9)], expected_seq=0, at=1)

        def older_transaction(txn: Any) -> list[int]:
            append_events(store, "r", [ev(2), ev(3)], expected_seq=1, at=2)  # the view moves on
            return [first for _value, first, _count in store.reader.tail_values(txn, "r")]

        assert store.read_txn(older_transaction) == [1]
        base, entries, covered = store.tail.view()
        assert covered == 4 and [e[0] for e in entries] == ["r", "other", "r", "r"]
        behind = (base, entries[:2], 2)  # a view behind what is committed
        monkeypatch.setattr(store.tail, "view", lambda: behind)
        assert [r.seq for r in store.read("r")] == [1, 2, 3]
        assert store.read_events("r")[0] == [ev(1), ev(2), ev(3)]
        assert store.head("r") == 3
        other = (base - 1, [], 0)  # a view of another index: scan it all
        monkeypatch.setattr(store.tail, "view", lambda: other)
        assert [r.seq for r in store.read("r", 2)] == [2, 3]
    finally:
        store.close()


def test_rewritten_record_with_valid_checksum_breaks_the_hash_chain(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        for i in (1, 2, 3):  # three appends, three stored values
            append_events(store, "r1", [ev(i)], expected_seq=i - 1, at=i)
        position = store.read("r1")[1].position
        forged = batch_frame(store.numbers.cached("r1"), 2, position, encode_all([ev(99)], 2))
        value, _ = seal(forged, b"\0" * 16)
        with store.env.begin(write=True) as txn:
            txn.put(position.to_bytes(8, "big"), value, db=store.tables.log)
        assert store.read("r1")[1].event == ev(99)  # the crc alone cannot tell
        with pytest.raises(CorruptRecord, match="seq 2: hash chain broken"):
            store.verify_chain("r1")
    finally:
        store.close()


def test_map_grows_when_full_and_nothing_is_lost(store_path: Path) -> None:
    store = open_store(store_path, map_size=1 << 20)
    try:
        big = "x" * 20_000
        for i in range(120):  # ~2.4 MB into a 1 MiB map
            append_events(store, "r1", [RunCompleted(output=f"{i}{big}")], expected_seq=i, at=i)
        assert store.map_size > 1 << 20
        assert [r.event.output[:3].rstrip("x") for r in store.read("r1")] == [
            str(i) for i in range(120)
        ]
    finally:
        store.close()


@pytest.mark.parametrize("map_size", [0, -5, 2**60, "10GB", True])
def test_bad_map_size_is_refused(store_path: Path, map_size: object) -> None:
    with pytest.raises(ConfigError, match="map_size must be an int"):
        open_store(store_path, map_size=map_size)  # type: ignore[arg-type]
    assert not store_path.exists()


def _open_in_child(path: Path) -> subprocess.CompletedProcess[str]:
    code = textwrap.dedent(
        f"""
        from foldloop.store import open_store
        from foldloop.errors import StoreError
        try:
            s = open_store({str(path)!r}, create=True)
            print("opened", s.read_all())
        except StoreError as e:
            print("StoreError:", e)
        """
    )
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)


def _make_store(path: Path, n: int = 300) -> None:
    store = open_store(path)
    for i in range(n):
        append_events(store, "r1", [RunCompleted(output="y" * 500)], expected_seq=i, at=i)
    store.close()


def test_truncated_data_file_is_refused_not_a_crash(store_path: Path) -> None:
    _make_store(store_path)
    data = store_path / "data.mdb"
    size = data.stat().st_size
    with data.open("r+b") as fh:
        fh.truncate(size // 2)
    proc = _open_in_child(store_path)
    assert proc.returncode == 0, proc.stderr  # not -SIGBUS
    assert "StoreError:" in proc.stdout and "truncated" in proc.stdout


def test_non_lmdb_data_file_is_refused(store_path: Path) -> None:
    _make_store(store_path, 5)
    (store_path / "data.mdb").write_bytes(os.urandom(64 * 1024))
    proc = _open_in_child(store_path)
    assert proc.returncode == 0, proc.stderr
    assert "is not an LMDB file" in proc.stdout


def test_emptied_data_file_is_not_mistaken_for_a_new_store(store_path: Path) -> None:
    _make_store(store_path, 5)
    (store_path / "data.mdb").write_bytes(b"")
    with pytest.raises(StoreError, match="missing or empty"):
        open_store(store_path)
    assert (store_path / "data.mdb").stat().st_size == 0


def test_a_file_or_a_foreign_directory_is_refused(tmp_path: Path) -> None:
    afile = tmp_path / "file"
    afile.write_text("hello")
    with pytest.raises(StoreError, match="is not a directory"):
        open_store(afile)
    foreign = tmp_path / "foreign"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("mine")
    with pytest.raises(StoreError, match="not a foldloop store"):
        open_store(foreign)
    assert sorted(os.listdir(foreign)) == ["notes.txt"]
    with pytest.raises(StoreError, match="no foldloop store"):
        open_store(tmp_path / "missing", create=False)
    assert not (tmp_path / "missing").exists()


def test_stale_reader_slot_of_a_killed_process_is_cleared_on_open(store_path: Path) -> None:
    _make_store(store_path, 3)
    code = textwrap.dedent(
        f"""
        import sys, time
        from foldloop.store import open_store
        s = open_store({str(store_path)!r})
        txn = s.env.begin()
        txn.get(b"x")
        print("reading", flush=True)
        time.sleep(60)
        """
    )
    child = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    assert child.stdout is not None and child.stdout.readline().strip() == "reading"
    os.kill(child.pid, signal.SIGKILL)
    child.wait()
    store = open_store(store_path)
    try:
        assert f"{child.pid}" not in store.env.readers().split()
        assert store.env.reader_check() == 0  # already cleared by open
    finally:
        store.close()


def test_leases_fence_a_stale_owner(store_path: Path) -> None:
    store = open_store(store_path)
    lock_a = OwnerLock(store.owners_dir, "owner-a")
    lock_b = OwnerLock(store.owners_dir, "owner-b")
    try:
        epoch_a = store.submit(lambda w: w.acquire_lease("r1", "owner-a")).wait()
        payload = encode_all([ev(1)], 1)
        store.submit(
            lambda w: w.append("r1", payload, expected_seq=0, owner="owner-a", epoch=epoch_a)
        ).wait()
        with pytest.raises(RunLocked, match="driven by a live runtime"):
            store.submit(lambda w: w.acquire_lease("r1", "owner-b")).wait()
        lock_a.release()  # owner a dies
        epoch_b = store.submit(lambda w: w.acquire_lease("r1", "owner-b")).wait()
        assert epoch_b == epoch_a + 1
        with pytest.raises(RunLocked, match=f"held epoch {epoch_a} and was fenced off"):
            store.submit(
                lambda w: w.append("r1", payload, expected_seq=1, owner="owner-a", epoch=epoch_a)
            ).wait()
        assert store.head("r1") == 1
    finally:
        lock_b.release()
        store.close()


class StoreMachine(RuleBasedStateMachine):
    """The real store against a dict model, with reopen in between."""

    runs = Bundle("runs")

    def __init__(self) -> None:
        super().__init__()
        import tempfile

        self.dir = Path(tempfile.mkdtemp()) / "s"
        # A tiny index threshold interleaves indexed records and the unindexed tail.
        self.store = open_store(self.dir, map_size=1 << 20, index_every=5)
        self.model: dict[str, list[ToolCompleted]] = {}
        self.ats: dict[str, list[int]] = {}
        self.order: list[tuple[str, int]] = []
        self.n = 0
        self.appends = 0

    @rule(target=runs, rid=st.from_regex(r"[a-z]{1,3}(-[0-9]{1,2})?", fullmatch=True))
    def new_run(self, rid: str) -> str:
        self.model.setdefault(rid, [])
        self.ats.setdefault(rid, [])
        return rid

    @rule(r=runs, k=st.integers(1, 4), size=st.integers(0, 3000), later=st.integers(0, 4))
    def append(self, r: str, k: int, size: int, later: int) -> None:
        events = []
        for _ in range(k):
            self.n += 1
            events.append(ToolCompleted(call_id=str(self.n), result="z" * size))
        # The last ``later`` events happened later (as held-back events of a run do): one
        # stored value, each event keeping its own time.
        cut = max(0, k - later)
        payloads = encode_all(events[:cut], self.n) + encode_all(events[cut:], self.n + 7)
        expected = len(self.model[r])
        self.store.submit(lambda w: w.append(r, payloads, expected_seq=expected)).wait()
        self.appends += 1
        for i, e in enumerate(events):
            self.model[r].append(e)
            self.ats[r].append(self.n if i < cut else self.n + 7)
            self.order.append((r, len(self.model[r])))

    @rule(r=runs, lag=st.integers(1, 3))
    def stale_append(self, r: str, lag: int) -> None:
        if len(self.model[r]) < lag:
            return
        with pytest.raises(ConcurrencyError):
            append_events(self.store, r, [ev(0)], expected_seq=len(self.model[r]) - lag, at=0)

    @rule()
    def reopen(self) -> None:
        self.store.close()
        self.store = open_store(self.dir, map_size=1 << 20, index_every=5)

    @rule(r=runs, from_seq=st.integers(1, 10))
    def read_from(self, r: str, from_seq: int) -> None:
        assert [x.event for x in self.store.read(r, from_seq)] == self.model[r][from_seq - 1 :]

    @rule(r=runs, from_seq=st.integers(1, 10))
    def read_events_from(self, r: str, from_seq: int) -> None:
        want = (self.model[r][from_seq - 1 :], self.ats[r][from_seq - 1 :])
        assert self.store.read_events(r, from_seq) == want
        records = self.store.read(r, from_seq)
        assert ([x.event for x in records], [x.at for x in records]) == want

    @rule(r=runs, from_seq=st.integers(1, 10), span=st.integers(0, 6))
    def consume_events_from(self, r: str, from_seq: int, span: int) -> None:
        # What Runtime.state folds: the same pairs, whatever the spans they come in.
        got = self.store.consume_events(r, list, from_seq, span=span)
        events, ats = self.model[r][from_seq - 1 :], self.ats[r][from_seq - 1 :]
        assert got == list(zip(events, ats, strict=True))

    @rule(r=runs, from_seq=st.integers(1, 12), span=st.integers(0, 6))
    def read_slice(self, r: str, from_seq: int, span: int) -> None:
        got = [x.event for x in self.store.read(r, from_seq, from_seq + span)]
        assert got == self.model[r][from_seq - 1 : from_seq + span]

    @rule(start=st.integers(0, 40), limit=st.none() | st.integers(1, 7))
    def read_all_from(self, start: int, limit: int | None) -> None:
        # Appends of several events are one stored value: a read may start inside one.
        got = self.store.read_all(start, limit)
        want = list(enumerate(self.order, start=1))[max(1, start) - 1 :]
        want = want if limit is None else want[:limit]
        assert [(r.position, (r.run_id, r.seq)) for r in got] == want

    @invariant()
    def index_holds_one_entry_a_run(self) -> None:
        # Runs interleave here; each run's entry lists where its records sit (no run nears
        # INDEX_SPAN records, past which an entry of scattered records is closed).
        entries = self.store.read_txn(lambda txn: txn.stat(self.store.tables.index)["entries"])
        assert entries <= sum(1 for e in self.model.values() if e)

    @invariant()
    def matches_model(self) -> None:
        for r, events in self.model.items():
            got = self.store.read(r)
            assert [x.event for x in got] == events
            assert [x.seq for x in got] == list(range(1, len(events) + 1))
            assert self.store.head(r) == len(events)
            if events:
                assert self.store.verify_chain(r) == len(events)
        assert self.store.run_ids() == sorted(r for r, e in self.model.items() if e)
        starts = {r: 1 + len(e) // 2 for r, e in self.model.items()}
        many = self.store.read_runs(starts)
        assert many == {
            r: (e[starts[r] - 1 :], self.ats[r][starts[r] - 1 :]) for r, e in self.model.items()
        }
        everything = self.store.read_all()
        assert [x.position for x in everything] == list(range(1, len(self.order) + 1))
        assert [(x.run_id, x.seq) for x in everything] == self.order

    def teardown(self) -> None:
        self.store.close()


TestStoreMachine = StoreMachine.TestCase
TestStoreMachine.settings = settings(max_examples=40, stateful_step_count=25, deadline=None)


def _two_interleaved_runs(store_path: Path) -> tuple[Any, dict[str, list[Any]]]:
    """A store where runs a and b appended in turn (12 records each), and what they read."""
    store = open_store(store_path, index_every=4)
    for i in range(6):
        for r in ("a", "b"):
            append_events(store, r, [ev(i), ev(i + 100)], expected_seq=2 * i, at=i)
    return store, {r: store.read(r) for r in ("a", "b")}


def _files(path: Path) -> dict[str, tuple[bytes, int]]:
    """Every file under ``path``: its bytes and its modification time."""
    return {
        str(p.relative_to(path)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(path.rglob("*"))
        if p.is_file()
    }


@pytest.mark.parametrize(("fmt", "maker"), [(3, None), (3, "0.0.7"), (4, None)])
def test_a_store_of_an_older_format_is_refused_untouched(
    store_path: Path, fmt: int, maker: str | None
) -> None:
    """One format before 1.0: a store of an older one is refused (exit 4 from the CLI) with
    the format and the foldloop that made it, and how to move its runs; nothing in it is
    changed."""
    import json

    from foldloop.store._preflight import FORMAT, foldloop_version

    store = open_store(store_path)
    append_events(store, "r1", [ev(1)], expected_seq=0, at=1)
    store.close()
    marker = json.loads((store_path / "foldloop.store").read_text())
    assert marker == {"format": FORMAT, "foldloop": foldloop_version()}  # says who made it
    old = {"format": fmt} if maker is None else {"format": fmt, "foldloop": maker}
    (store_path / "foldloop.store").write_text(json.dumps(old) + "\n")
    before = _files(store_path)
    who = "a foldloop that did not record its version" if maker is None else f"foldloop {maker}"
    with pytest.raises(StoreError, match=f"has store format {fmt}, made by {who}") as info:
        open_store(store_path)
    text = str(info.value)
    assert f"reads format {FORMAT} only" in text
    assert f"--store {store_path} export RUN > RUN.jsonl" in text and "import RUN.jsonl" in text
    proc = subprocess.run(
        [sys.executable, "-m", "foldloop.cli", "--store", str(store_path), "runs"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 4, proc.stderr
    assert f"has store format {fmt}" in proc.stderr + proc.stdout
    assert _files(store_path) == before


def _index_entries(store: Any) -> int:
    return int(store.read_txn(lambda txn: txn.stat(store.tables.index)["entries"]))


def test_interleaved_runs_share_one_index_entry_each(store_path: Path) -> None:
    """Concurrent runs interleave their records in the log; each run's index entry lists
    where its records sit instead of one entry per append."""
    runs = [f"r{i}" for i in range(20)]
    store = open_store(store_path, index_every=8)
    try:
        for step in range(10):
            for r in runs:
                append_events(store, r, [ev(step), ev(step + 1000)], expected_seq=2 * step, at=step)
        store.submit(lambda w: w.index_now()).wait()
        assert _index_entries(store) == len(runs)  # was one per append: 200
        for r in runs:
            got = store.read(r)
            assert [x.seq for x in got] == list(range(1, 21))
            assert [x.event for x in got] == [ev(s + k) for s in range(10) for k in (0, 1000)]
            assert [x.event for x in store.read(r, 7, 12)] == [x.event for x in got[6:12]]
            assert store.verify_chain(r) == 20
    finally:
        store.close()


def test_requested_event_roundtrip_through_store(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        append_events(
            store,
            "r",
            [ModelRequested(step=1, prompt_digest="abc", max_tokens=5)],
            expected_seq=0,
            at=3,
        )
        assert store.read("r")[0].event == ModelRequested(step=1, prompt_digest="abc", max_tokens=5)
    finally:
        store.close()


def test_damaged_record_in_the_unindexed_tail_is_attributed_to_its_run(store_path: Path) -> None:
    # A writer killed mid-life leaves its last records unindexed (in the log's tail).
    code = textwrap.dedent(
        f"""
        import os, signal
        from foldloop.events import RunCompleted, ToolCompleted
        from foldloop.store import append_events, open_store
        s = open_store({str(store_path)!r})
        append_events(s, "r1", [ToolCompleted(call_id="a", result="x"),
                        RunCompleted(output="TAILMARK-0123456789")], expected_seq=0, at=1)
        append_events(s, "r2", [ToolCompleted(call_id="b", result="y")], expected_seq=0, at=2)
        os.kill(os.getpid(), signal.SIGKILL)
        """
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
    assert proc.returncode == -signal.SIGKILL
    data = (store_path / "data.mdb").read_bytes()
    assert data.count(b"TAILMARK-0123456789") >= 1  # copy-on-write may leave old page copies
    (store_path / "data.mdb").write_bytes(
        data.replace(b"TAILMARK-0123456789", b"TAILMARK-0123456780")
    )
    store = open_store(store_path)
    try:
        assert store.meta("indexed") is None  # nothing was ever indexed: all tail
        assert [r.seq for r in store.read("r2")] == [1]
        # r1's two events are one stored value: the first is named
        with pytest.raises(CorruptRecord, match="'r1' seq 1: checksum mismatch"):
            store.read("r1")
        assert store.head("r1") == 2
        append_events(store, "r2", [ev(5)], expected_seq=1, at=3)  # other runs keep working
        with pytest.raises(ConcurrencyError):
            append_events(
                store, "r1", [ev(6)], expected_seq=1, at=3
            )  # the damaged run's head holds
    finally:
        store.close()


@given(
    st.one_of(
        st.integers(2, 1500).map(lambda n: list(range(5, 5 + n))),  # a run appending alone
        st.integers(2, 1500)
        .flatmap(lambda n: st.lists(st.sampled_from([1, 1, 2, 7, 300]), min_size=n, max_size=n))
        .map(lambda gaps: list(itertools.accumulate(gaps))),  # runs interleaving
    ),
    st.integers(1, 1499),
)
@example(list(range(0, 2 * INDEX_SPAN, 2)), 10)  # scattered, as many as an entry may hold
@example(list(range(0, 2 * INDEX_SPAN + 2, 2)), 10)  # one more: a new entry starts
def test_an_index_entry_lists_its_positions_exactly_when_extended(
    positions: list[int], cut: int
) -> None:
    """An entry's value gives back every position it was built from, and one extended by
    the positions of the next seqs gives back both parts; consecutive positions add no
    bytes; past INDEX_SPAN a scattered entry is closed, never silently cut."""
    from foldloop.store._framing import decode_index, index_key, index_value, steps_between
    from foldloop.store._layout import joined

    cut = min(cut, len(positions) - 1)
    head, tail = positions[:cut], positions[cut:]
    key = index_key("r", 1)
    value = index_value(head[0], len(head), b"c" * 16, head[-1], steps_between(head))
    first = decode_index(key, value)
    assert list(first.positions()) == head and first.last_position == head[-1]
    merged = joined(first, 1 + len(head), tail)
    if merged is None:
        assert len(positions) > INDEX_SPAN and positions[-1] - positions[0] >= len(positions)
        return
    count, last_position, steps = merged
    assert count == len(positions) and (not steps or count <= INDEX_SPAN)
    value = index_value(first.first_position, count, b"d" * 16, last_position, steps)
    entry = decode_index(key, value)
    assert list(entry.positions()) == positions
    assert entry.last_seq == len(positions) and entry.last_chain == b"d" * 16
    if positions[-1] - positions[0] == len(positions) - 1:
        assert len(value) == 28


def test_an_append_is_one_stored_value_each_event_keeping_its_time(store_path: Path) -> None:
    """A decision's events share one value (one checksum, chain hash and envelope), also
    when they were decided at different times (events held back from the previous
    decision, an imported run); an append too big for one value fills several."""
    store = open_store(store_path)
    try:
        append_events(store, "r", [ev(1), ev(2), ev(3)], expected_seq=0, at=7)
        mixed = [*encode_all([ev(4), ev(5)], 9), *encode_all([ev(6)], 8)]
        store.submit(lambda w: w.append("r", mixed, expected_seq=3)).wait()
        assert store.read_txn(lambda txn: txn.stat(store.tables.log)["entries"]) == 2
        got = store.read("r")
        assert [(r.seq, r.position, r.at) for r in got] == [
            (1, 1, 7),
            (2, 2, 7),
            (3, 3, 7),
            (4, 4, 9),
            (5, 5, 9),
            (6, 6, 8),
        ]
        assert [r.event for r in got] == [ev(i) for i in range(1, 7)]
        assert store.verify_chain("r") == 6 and store.last_position() == 6
        assert [r.seq for r in store.read("r", 2, 5)] == [2, 3, 4, 5]
        many = encode_all([ev(i) for i in range(7, 7 + 2 * VALUE_EVENTS + 1)], 10)
        append_events(store, "r", [e for e, _raw, _at in many], expected_seq=6, at=10)
        assert store.read_txn(lambda txn: txn.stat(store.tables.log)["entries"]) == 2 + 3
        assert [r.seq for r in store.read("r", 6)] == list(range(6, 8 + 2 * VALUE_EVENTS))
        assert store.verify_chain("r") == 7 + 2 * VALUE_EVENTS
    finally:
        store.close()


@given(sizes=st.lists(st.integers(0, VALUE_BYTES + 10), min_size=1, max_size=3 * VALUE_EVENTS))
@example(sizes=[VALUE_BYTES + 1])
@example(sizes=[VALUE_BYTES // 2, VALUE_BYTES // 2, 1])
def test_value_groups_keep_order_and_limits(sizes: list[int]) -> None:
    payloads = [(ev(i), b"x" * n, i) for i, n in enumerate(sizes)]
    groups = value_groups(payloads)  # type: ignore[arg-type]
    assert [p for g in groups for p in g] == payloads
    for g in groups:
        assert 1 <= len(g) <= VALUE_EVENTS
        assert len(g) == 1 or sum(len(raw) for _e, raw, _at in g) <= VALUE_BYTES
    for a, b in itertools.pairwise(groups):  # a group ends only where the next one must
        assert len(a) == VALUE_EVENTS or sum(len(r) for _e, r, _a in [*a, b[0]]) > VALUE_BYTES


def _run_numbers(store: Any) -> dict[str, int]:
    from foldloop.store._framing import unpack_run

    return dict(
        store.read_txn(
            lambda txn: [
                (bytes(k).decode(), unpack_run(v))
                for k, v in txn.cursor(db=store.tables.run_numbers)
            ]
        )
    )


def test_runs_are_numbered_once_across_processes(store_path: Path) -> None:
    """Stored values name their run by a number given on its first append. Another
    process numbers its own new runs in the same sequence, and this process reads them
    by the names it has not seen yet."""
    store = open_store(store_path)
    try:
        append_events(store, "run-a", [ev(1)], expected_seq=0, at=1)
        code = textwrap.dedent(
            f"""
            from foldloop.events import ToolCompleted
            from foldloop.store import append_events, open_store
            s = open_store({str(store_path)!r})
            for name in ("run-b", "run-c", "run-a"):
                head = s.head(name)
                event = ToolCompleted(call_id=name, result="x")
                append_events(s, name, [event], expected_seq=head, at=2)
            s.close()
            """
        )
        proc = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=60)
        assert proc.returncode == 0, proc.stderr.decode()
        append_events(store, "run-d", [ev(4)], expected_seq=0, at=3)
        assert _run_numbers(store) == {"run-a": 1, "run-b": 2, "run-c": 3, "run-d": 4}
        assert [(r.run_id, r.seq) for r in store.read_all()] == [
            ("run-a", 1),
            ("run-b", 1),
            ("run-c", 1),
            ("run-a", 2),
            ("run-d", 1),
        ]
        assert [r.event.call_id for r in store.read("run-c")] == ["run-c"]  # type: ignore[union-attr]
    finally:
        store.close()


def test_a_number_given_in_an_aborted_transaction_is_not_kept(store_path: Path) -> None:
    store = open_store(store_path)
    try:
        payloads = encode_all([ev(1)], 1)

        def append_then_crash(w: Any) -> None:
            w.append("lost", payloads, expected_seq=0)
            raise RuntimeError("the op fails after its append")

        with pytest.raises(StoreError, match="the op fails after its append"):
            store.submit(append_then_crash).wait()
        append_events(store, "kept", [ev(1)], expected_seq=0, at=2)
        append_events(store, "lost", [ev(2)], expected_seq=0, at=3)
        assert _run_numbers(store) == {"kept": 1, "lost": 2}
        assert [(r.run_id, r.event) for r in store.read_all()] == [("kept", ev(1)), ("lost", ev(2))]
    finally:
        store.close()


def test_a_value_at_odds_with_its_own_count_is_reported_not_a_crash(store_path: Path) -> None:
    """A value whose checksum holds but whose event count does not match its events (a
    writer bug, not disk damage) is named as a CorruptRecord by every reader."""
    from foldloop.store._framing import GENESIS, Batch

    store = open_store(store_path)
    try:
        append_events(store, "r1", [ev(1)], expected_seq=0, at=7)
        raw = msgspec.Raw(encode_all([ev(1)], 7)[0][1])
        forged = Batch(store.numbers.cached("r1"), 1, 1, 7, 2, (raw,), (), (5, 6))
        value, _ = seal(forged, GENESIS)
        with store.env.begin(write=True) as txn:
            txn.put((1).to_bytes(8, "big"), value, db=store.tables.log)
        for read in (lambda: store.read("r1"), store.read_all, lambda: store.verify_chain("r1")):
            with pytest.raises(CorruptRecord, match="'r1' seq 1: the record's event count"):
                read()
    finally:
        store.close()


def test_the_run_number_cache_is_bounded_and_misses_read_lmdb(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from foldloop.store import _run_numbers as run_numbers

    monkeypatch.setattr(run_numbers, "KEPT", 4)
    store = open_store(store_path)
    try:
        runs = [f"run-{i}" for i in range(10)]
        for round_ in range(2):  # the second round finds every number in LMDB, not cached
            for run in runs:
                append_events(store, run, [ev(round_)], expected_seq=round_, at=round_)
                assert len(store.numbers) <= 4
        assert _run_numbers(store) == {run: i + 1 for i, run in enumerate(runs)}
        assert [r.run_id for r in store.read_all()] == runs * 2
        assert all([r.event for r in store.read(run)] == [ev(0), ev(1)] for run in runs)
        assert len(store.numbers) <= 4
    finally:
        store.close()


def test_a_value_that_does_not_follow_the_one_before_is_refused_loudly(store_path: Path) -> None:
    """Positions are gapless: a value keyed inside the positions of the value before it (a
    writer that is not this foldloop's, or damage) stops readers and writers, named."""
    from foldloop.store._framing import GENESIS, Batch

    store = open_store(store_path)
    try:
        append_events(store, "new", [ev(1), ev(2), ev(3)], expected_seq=0, at=1)  # positions 1-3
        raw = msgspec.Raw(encode_all([ev(9)], 5)[0][1])
        value, _ = seal(Batch(1, 4, 2, 5, 1, (raw,)), GENESIS)
        with store.env.begin(write=True) as txn:  # past the write path: LMDB itself
            txn.put((2).to_bytes(8, "big"), value, db=store.tables.log, append=True)
        with pytest.raises(CorruptRecord, match=r"position 2 does not follow .* ends at 3"):
            store.read("new")
        with pytest.raises(StoreError, match="does not follow"):
            append_events(store, "new", [ev(4)], expected_seq=3, at=6)
    finally:
        store.close()

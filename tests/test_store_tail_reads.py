"""Reading a log another process writes: its unindexed tail is read right after every
append, and each new value is scanned once, not once a read."""

from __future__ import annotations

import random
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from foldloop.events import ToolCompleted
from foldloop.store import _tail, open_store
from foldloop.store._framing import Head

WRITER = textwrap.dedent(
    """
    import sys
    from foldloop.events import ToolCompleted
    from foldloop.store import append_events, open_store

    store = open_store(sys.argv[1], index_every=5)  # the index moves every few appends
    heads = {}
    print("ready", flush=True)
    for line in sys.stdin:
        run, k = line.split()
        n = heads.get(run, 0)
        events = [ToolCompleted(call_id=f"{run}-{n + i}", result="x") for i in range(1, int(k) + 1)]
        append_events(store, run, events, expected_seq=n, at=n)
        heads[run] = n + int(k)
        print("ok", flush=True)
    """
)


@pytest.fixture
def writer(store_path: Path) -> Iterator[subprocess.Popen[str]]:
    """Another process appending to the store: write "run k" to append k events to run."""
    proc = subprocess.Popen(
        [sys.executable, "-c", WRITER, str(store_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
    yield proc
    proc.kill()
    proc.wait()


def append(writer: subprocess.Popen[str], run: str, k: int) -> None:
    assert writer.stdin is not None and writer.stdout is not None
    writer.stdin.write(f"{run} {k}\n")
    writer.stdin.flush()
    assert writer.stdout.readline() == "ok\n"


def test_reads_of_a_log_another_process_writes_see_each_append(
    store_path: Path, writer: subprocess.Popen[str]
) -> None:
    rng = random.Random(20261206)
    model: dict[str, int] = {}
    store = open_store(store_path)
    try:
        for _ in range(150):
            run = rng.choice("abcdefg")
            k = rng.randint(1, 4)
            append(writer, run, k)
            model[run] = model.get(run, 0) + k
            for rid, head in model.items():
                assert store.head(rid) == head
                start = rng.randint(1, head)
                records = store.read(rid, start)
                assert [r.seq for r in records] == list(range(start, head + 1))
                assert [r.event for r in records] == [
                    ToolCompleted(call_id=f"{rid}-{seq}", result="x")
                    for seq in range(start, head + 1)
                ]
    finally:
        store.close()


def test_reads_scan_each_value_another_process_wrote_once(
    store_path: Path, writer: subprocess.Popen[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    store = open_store(store_path)
    try:
        for run in "abc":  # fewer records than the writer's index_every: all in the tail
            append(writer, run, 1)
        scanned: list[int] = []
        scan = store.reader.scan

        def counted(txn: Any, after: int) -> Iterator[Any]:
            for found in scan(txn, after):
                scanned.append(found[0])
                yield found

        monkeypatch.setattr(store.reader, "scan", counted)
        for _ in range(20):
            assert [store.head(run) for run in "abc"] == [1, 1, 1]
        assert sorted(scanned) == [1, 2, 3]  # once each, not once a read
        append(writer, "d", 1)
        for _ in range(20):
            assert [store.head(run) for run in "abcd"] == [1, 1, 1, 1]
        assert sorted(scanned) == [1, 2, 3, 4]  # the new value only
    finally:
        store.close()


def test_heads_known_at_an_own_index_write_are_kept_up_to_a_bound(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(_tail, "KEPT_HEADS", 3)
    tail = _tail.TailCache()
    a, b, c = (Head(n, bytes([n]) * 32) for n in (1, 2, 3))
    tail.extend([("a", 1, 1, a.hash)], {"a": a}, 1)
    tail.restart(1, {"b": b})  # its own commit indexed the tail: what it knew stays true
    assert (tail.head("a"), tail.head("b"), len(tail)) == (a, b, 0)
    tail.restart(2)  # another process indexed: records it never scanned may move any head
    assert (tail.head("a"), tail.head("b")) == (None, None)
    tail.restart(3, {"a": a, "b": b, "c": c})
    assert tail.head("c") == c
    tail.restart(4, {"d": Head(4, b"d" * 32)})  # past the bound: all go, the new ones stay
    assert (tail.head("a"), tail.head("d")) == (None, Head(4, b"d" * 32))

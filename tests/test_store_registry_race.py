"""Opening and closing one store directory at once, from threads and processes.

A process shares one LmdbStore a directory (LMDB refuses an environment opened twice in a
process). The last ``close`` leaves the registry and then commits and closes LMDB: an open
of the same directory meanwhile waits for that close and opens the store afresh, and an
open of any other directory does not wait.

    python tests/test_store_registry_race.py STORE PREFIX ROUNDS   (one churning process)
"""

from __future__ import annotations

import json
import os
import random
import subprocess
import sys
import threading
import time
from pathlib import Path

from foldloop.events import Recorded, ToolCompleted
from foldloop.store import LmdbStore, encode_all, open_store
from foldloop.store._lmdb_store import _REGISTRY
from foldloop.store._write_txn import WriteTxn
from foldloop.store._writer import WriteOp

ROUNDS = 200


def churn(path: Path, run_id: str, seed: int, rounds: int) -> list[str]:
    """Open the store, append 0-2 events to ``run_id`` (durable or not, waited for or not:
    the close commits what is queued), close; ``rounds`` times. Returns the call ids written."""
    rng = random.Random(seed)
    written: list[str] = []
    for i in range(rounds):
        store = open_store(path)
        ops: list[WriteOp[list[Recorded]]] = []
        try:
            for _ in range(rng.randrange(3)):
                tag = f"{i}.{len(written)}"
                payload = encode_all([ToolCompleted(call_id=tag, result=tag)], i)
                op = store.append(
                    run_id, payload, expected_seq=len(written), durable=rng.random() < 0.5
                )
                written.append(tag)
                ops.append(op)
                if rng.random() < 0.5:
                    op.wait(timeout=30)
        finally:
            store.close()
        for op in ops:
            op.wait(timeout=30)
    return written


def churn_in_threads(path: Path, prefix: str, rounds: int) -> dict[str, list[str]]:
    """Two threads churning at once, each on a run of its own; raises the first failure."""
    written: dict[str, list[str]] = {}
    failures: list[BaseException] = []

    def one(seed: int) -> None:
        run_id = f"{prefix}-{seed}"
        try:
            written[run_id] = churn(path, run_id, seed, rounds)
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=one, args=(seed,)) for seed in (1, 2)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads), "a churning thread hangs"
    if failures:
        raise failures[0]
    return written


def assert_stored(path: Path, written: dict[str, list[str]]) -> None:
    store = open_store(path)
    try:
        for run_id, tags in written.items():
            events = [r.event for r in store.read(run_id)]
            assert [e.call_id for e in events if isinstance(e, ToolCompleted)] == tags
            assert store.verify_chain(run_id) == len(tags)
    finally:
        store.close()


def test_two_threads_opening_and_closing_one_store_open_every_time(tmp_path: Path) -> None:
    path = tmp_path / "store"
    written = churn_in_threads(path, "t", ROUNDS)
    assert sum(map(len, written.values())) > ROUNDS  # about 2 x ROUNDS appends
    assert_stored(path, written)


def test_two_processes_of_two_threads_each_open_every_time(tmp_path: Path) -> None:
    path = tmp_path / "store"
    open_store(path).close()  # created once: creation under contention is test_store_create's
    procs = [
        subprocess.Popen(
            [sys.executable, __file__, str(path), prefix, str(ROUNDS // 2)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for prefix in ("p", "q")
    ]
    written: dict[str, list[str]] = {}
    for proc in procs:
        out, err = proc.communicate(timeout=120)
        assert proc.returncode == 0, err
        written.update(json.loads(out))
    assert len(written) == 4
    assert_stored(path, written)


def test_an_open_during_the_last_close_waits_for_it_and_other_paths_do_not(
    tmp_path: Path,
) -> None:
    path, other = tmp_path / "a", tmp_path / "b"
    store = open_store(path)
    entered, gate = threading.Event(), threading.Event()

    def hold(_txn: WriteTxn) -> None:  # keeps the writer, so the close, busy until the gate
        entered.set()
        gate.wait(timeout=30)

    store.submit(hold, durable=False)
    assert entered.wait(timeout=30)
    closer = threading.Thread(target=store.close)
    closer.start()
    key = os.path.realpath(path)
    deadline = time.monotonic() + 30
    while key in _REGISTRY and time.monotonic() < deadline:  # the close then waits on LMDB
        time.sleep(0.01)
    assert key not in _REGISTRY and closer.is_alive()

    elsewhere = open_store(other)  # another directory does not wait for this close
    assert not gate.is_set()
    elsewhere.close()

    threading.Timer(0.2, gate.set).start()
    again = open_store(path)  # was: StoreError "is the disk full, or are its files not..."
    try:
        assert gate.is_set() and again is not store
        closer.join(timeout=30)
        assert not closer.is_alive()
        payload = encode_all([ToolCompleted(call_id="c", result="r")], 1)
        again.append("r", payload, expected_seq=0).wait(timeout=30)
        assert again.head("r") == 1
    finally:
        gate.set()
        again.close()


CHILD_OF_A_FORK = """
import os, signal, sys
from foldloop.errors import StoreError
from foldloop.events import Recorded, ToolCompleted
from foldloop.store import LmdbStore, encode_all, open_store

path = sys.argv[1]
store = open_store(path)
pid = os.fork()
if pid == 0:  # never returns into the rest of this script
    code = 1
    try:
        signal.alarm(50)
        payload = encode_all([ToolCompleted(call_id="c", result="r")], 1)
        other = open_store(path + "-child")  # a store of its own opens and writes
        other.append("r", payload, expected_seq=0).wait(timeout=30)
        other.close()
        try:
            open_store(path).append("r", payload, expected_seq=0).wait(timeout=10)
            code = 2  # (the writer thread of the parent's store is not in this process)
        except StoreError as exc:
            print(exc, flush=True)
            code = 7
    finally:
        os._exit(code)
print(os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]))
store.close()
"""


def test_a_forked_child_is_told_it_cannot_open_its_parents_store(tmp_path: Path) -> None:
    path = tmp_path / "store"
    done = subprocess.run(
        [sys.executable, "-c", CHILD_OF_A_FORK, str(path)],
        capture_output=True,
        text=True,
        timeout=90,
    )
    assert done.returncode == 0, done.stderr
    said, code = done.stdout.splitlines()
    assert code == "7", said
    assert "was open in the process this one was forked from" in said
    assert "'spawn' or 'forkserver'" in said


if __name__ == "__main__":
    print(json.dumps(churn_in_threads(Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]))))


def test_a_store_made_directly_closes_lmdb_when_closed(tmp_path: Path) -> None:
    """An LmdbStore built without open_store is in no registry: close() still closes LMDB
    (else the directory could not be opened again in this process)."""
    direct = LmdbStore(tmp_path / "s", create=True, map_size=1 << 24)
    direct.close()
    direct.close()  # a second close does nothing
    again = open_store(tmp_path / "s")
    again.close()

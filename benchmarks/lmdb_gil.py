"""What py-lmdb's release of the interpreter lock costs a write transaction in a busy process.

py-lmdb gives the lock away around every LMDB call (get, put, cursor step, transaction
begin and commit). Alone, the calls cost a microsecond; beside threads running Python,
each one waits to take the lock back. This prints gets a second inside one write
transaction with 0, 1 and 2 busy Python threads beside it, and dict gets for reference.

    .venv/bin/python benchmarks/lmdb_gil.py
"""

from __future__ import annotations

import tempfile
import threading
import time

import lmdb

SECONDS = 1.0
KEYS = [i.to_bytes(8, "big") for i in range(100)]


def gets_per_second(env: lmdb.Environment, db: object) -> float:
    """LMDB gets a second in one write transaction."""
    with env.begin(write=True) as txn:
        done = 0
        started = time.perf_counter()
        while time.perf_counter() - started < SECONDS:
            for key in KEYS:
                txn.get(key, db=db)
            done += len(KEYS)
        return done / (time.perf_counter() - started)


def dict_gets_per_second() -> float:
    """The same number of lookups in a dict, which keeps the lock."""
    table = dict.fromkeys(KEYS, b"v")
    done = 0
    started = time.perf_counter()
    while time.perf_counter() - started < SECONDS:
        for key in KEYS:
            table.get(key)
        done += len(KEYS)
    return done / (time.perf_counter() - started)


def spin(stop: threading.Event) -> None:
    """Run Python until told to stop (a busy thread of the process)."""
    count = 0
    while not stop.is_set():
        count += 1


def main() -> None:
    with tempfile.TemporaryDirectory() as path:
        env = lmdb.open(path, map_size=1 << 28, max_dbs=1, sync=False)
        db = env.open_db(b"values")
        with env.begin(write=True) as txn:
            for key in KEYS:
                txn.put(key, b"v" * 100, db=db)
        alone_lmdb, alone_dict = gets_per_second(env, db), dict_gets_per_second()
        print("busy threads | LMDB gets/s | vs alone | dict gets/s | vs alone")
        for busy in (0, 1, 2):
            stop = threading.Event()
            threads = [
                threading.Thread(target=spin, args=(stop,), daemon=True) for _ in range(busy)
            ]
            for thread in threads:
                thread.start()
            try:
                lmdb_rate, dict_rate = gets_per_second(env, db), dict_gets_per_second()
            finally:
                stop.set()
                for thread in threads:
                    thread.join()
            print(
                f"{busy:>12} | {lmdb_rate:>11,.0f} | {lmdb_rate / alone_lmdb:>8.4f} "
                f"| {dict_rate:>11,.0f} | {dict_rate / alone_dict:>8.2f}"
            )
        env.close()


if __name__ == "__main__":
    main()

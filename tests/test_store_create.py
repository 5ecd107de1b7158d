"""Creating a store: processes racing to create one, and a creator stopped part way.

Real processes throughout. The racers wait for a "go" file, so they reach the store's
creation together; the interrupted creators make store after store until a signal lands
at a random point of one of them.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from foldloop.errors import StoreError
from foldloop.events import RunCompleted
from foldloop.store import append_events, open_store

PROCESSES = 4
TRIALS = 10
COMPLETE = ["data.mdb", "foldloop.store", "lock.mdb", "owners"]

RACER = textwrap.dedent(
    """
    import os, sys, time, traceback
    from pathlib import Path
    import foldloop as fl
    from foldloop.events import RunCompleted
    from foldloop.store import append_events, open_store

    root, mode, who, trials = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))

    def create(path):
        if mode == "store":
            store = open_store(path)
            try:
                append_events(store, f"r{who}", [RunCompleted(output=who)], expected_seq=0, at=1)
            finally:
                store.close()
        else:
            with fl.Runtime.open(path) as rt:
                rt.spawn(agent, "hi", run_id=f"r{who}").wait(timeout=30)

    def report(name, text):
        (root / f"{name}.tmp").write_text(text)
        os.replace(root / f"{name}.tmp", root / name)

    report(f"ready-{who}", "")
    for trial in range(trials):
        while not (root / f"go-{trial}").exists():
            time.sleep(0.0002)
        try:
            create(root / f"trial-{trial}" / "store")
            outcome = "ok"
        except BaseException:
            outcome = traceback.format_exc()
        report(f"done-{trial}-{who}", outcome)
    """
)

CREATOR = textwrap.dedent(
    """
    import itertools, sys
    from pathlib import Path
    from foldloop.store import open_store

    root = Path(sys.argv[1])
    print("ready", flush=True)
    sys.stdin.readline()
    for k in itertools.count():
        open_store(root / f"s{k}" / "store").close()
    """
)


def _wait_for(path: Path, racer: subprocess.Popen[bytes], timeout: float = 60) -> str:
    """The text of a file ``racer`` writes, once it exists (failing if it ended without it)."""
    deadline = time.monotonic() + timeout
    while not path.exists():
        # A racer may write its last file and exit between the two checks: look again.
        if racer.poll() is not None and not path.exists():
            raise AssertionError(f"racer exited ({racer.returncode}) before writing {path.name}")
        assert time.monotonic() < deadline, f"no {path.name} after {timeout} s"
        time.sleep(0.001)
    return path.read_text()


def _check_complete(path: Path, runs: set[str]) -> None:
    """``path`` is one whole store holding one completed run per racer, and nothing else."""
    assert sorted(os.listdir(path.parent)) == ["store"]
    assert sorted(os.listdir(path)) == COMPLETE
    store = open_store(path, create=False)
    try:
        records = store.read_all()
    finally:
        store.close()
    assert {r.run_id for r in records} == runs
    assert {r.run_id for r in records if r.type == "run.completed"} == runs


@pytest.mark.parametrize("mode", ["store", "runtime"])
def test_processes_creating_one_new_store_at_once_all_open_it(tmp_path: Path, mode: str) -> None:
    argv = [sys.executable, "-c", RACER, str(tmp_path), mode]
    procs = [subprocess.Popen([*argv, str(who), str(TRIALS)]) for who in range(PROCESSES)]
    try:
        for who in range(PROCESSES):
            _wait_for(tmp_path / f"ready-{who}", procs[who])
        for trial in range(TRIALS):
            (tmp_path / f"go-{trial}").touch()
            outcomes = [
                _wait_for(tmp_path / f"done-{trial}-{who}", procs[who]) for who in range(PROCESSES)
            ]
            assert outcomes == ["ok"] * PROCESSES, f"trial {trial}:\n" + "\n".join(outcomes)
            _check_complete(
                tmp_path / f"trial-{trial}" / "store", {f"r{who}" for who in range(PROCESSES)}
            )
        for proc in procs:
            assert proc.wait(timeout=60) == 0
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


AGAIN = 5
"""How many times a creator still going is signalled again."""


def _interrupt_creators(root: Path, sig: signal.Signals, count: int, seed: int) -> None:
    """Run ``count`` creators at once, each stopped by ``sig`` after a random short time."""
    rng = random.Random(seed)
    procs = []
    for i in range(count):
        (root / f"c{i}").mkdir()
        procs.append(
            subprocess.Popen(
                [sys.executable, "-c", CREATOR, str(root / f"c{i}")],
                stdin=subprocess.PIPE,
                stdout=subprocess.PIPE,
                stderr=subprocess.DEVNULL,
                text=True,
            )
        )
    try:
        for proc in procs:
            assert proc.stdout is not None and proc.stdout.readline() == "ready\n"
        start = time.monotonic()
        stops = sorted((rng.uniform(0.0, 0.08), i) for i in range(count))
        for proc in procs:
            assert proc.stdin is not None
            proc.stdin.write("go\n")
            proc.stdin.flush()
        for at, i in stops:
            time.sleep(max(0.0, start + at - time.monotonic()))
            procs[i].send_signal(sig)
        for proc in procs:
            for _ in range(AGAIN):
                try:
                    proc.wait(timeout=10)
                    break
                except subprocess.TimeoutExpired:
                    # Python swallowed the KeyboardInterrupt: it landed in a callback whose
                    # exceptions are "ignored" (importlib's module-lock weakref callback, seen
                    # once in ~800 creators); a user presses Ctrl-C again
                    proc.send_signal(sig)
            assert proc.wait(timeout=60) != 0  # stopped, not finished
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()


def _check_whole_or_absent(path: Path, *, clean: bool) -> None:
    """``path`` holds a whole store or none, and opening it afterwards works either way.

    ``clean``: the creator could tidy up (SIGINT), so no store means an empty directory.
    """
    assert sorted(os.listdir(path.parent)) in ([], ["store"])
    listing = sorted(os.listdir(path)) if path.exists() else []
    if clean:
        assert listing in ([], COMPLETE)
    if "foldloop.store" in listing:
        assert listing == COMPLETE
        open_store(path, create=False).close()
    else:
        with pytest.raises(StoreError, match="no foldloop store"):
            open_store(path, create=False)
    store = open_store(path)
    try:
        append_events(store, "after", [RunCompleted(output="x")], expected_seq=0, at=1)
        assert [r.run_id for r in store.read_all()] == ["after"]
    finally:
        store.close()


@pytest.mark.parametrize(
    ("sig", "count"), [(signal.SIGINT, 20), (signal.SIGKILL, 10)], ids=["SIGINT", "SIGKILL"]
)
def test_a_creator_stopped_at_any_point_leaves_a_whole_store_or_none(
    tmp_path: Path, sig: signal.Signals, count: int
) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")  # shown if the test fails
    _interrupt_creators(tmp_path, sig, count, seed)
    stores = [
        creator / name / "store"
        for creator in sorted(tmp_path.iterdir())
        for name in sorted(os.listdir(creator))
    ]
    assert stores, f"seed {seed}: no creator got as far as a directory"
    for path in stores:
        assert path.parent.name.startswith("s"), (seed, path)
        _check_whole_or_absent(path, clean=sig == signal.SIGINT)

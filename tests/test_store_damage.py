"""Damage below the records: LMDB's own pages flipped, and what host code sees of it.

Whatever byte of data.mdb is damaged, reads raise a FoldloopError (StoreCorrupted when LMDB
finds the damage), never an ``lmdb.Error``, and ``foldloop doctor`` reports it and exits 4
without a traceback.
"""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import foldloop as fl

PAGE = 4096
FOLDLOOP = [sys.executable, "-c", "from foldloop.cli import main; main()"]


@pytest.fixture(scope="module")
def intact(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A store of 300 finished runs: a few dozen pages of log, index and tables."""
    path = tmp_path_factory.mktemp("intact") / "store"
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="done")]), tools=[])
    with fl.Runtime.open(path) as rt:
        for i in range(300):
            rt.spawn(agent, "x" * 500, run_id=f"r{i}").wait(timeout=30)
    return path


def _damaged_copy(intact: Path, into: Path, page: int) -> Path:
    path = into / f"page-{page}"
    shutil.copytree(intact, path)
    data = bytearray((path / "data.mdb").read_bytes())
    data[page * PAGE + 10] ^= 0xFF  # the page header's flags: LMDB checks them on every visit
    (path / "data.mdb").write_bytes(bytes(data))
    return path


def test_a_damaged_page_is_a_store_error_never_an_lmdb_error(intact: Path, tmp_path: Path) -> None:
    pages = (intact / "data.mdb").stat().st_size // PAGE
    seen: set[str] = set()
    for page in range(2, pages, 3):  # pages 0 and 1 are LMDB's meta pages
        path = _damaged_copy(intact, tmp_path, page)
        seen.add(_read_everything(path))
        shutil.rmtree(path)
    assert "StoreCorrupted" in seen  # the damage was met, and named


def _read_everything(path: Path) -> str:
    """List the store and fold each run; what stopped it (a FoldloopError, by class)."""
    try:
        with fl.Runtime.open(path) as rt:
            damaged = 0
            for row in rt.runs():
                try:
                    rt.state(row.run_id)
                except fl.errors.CorruptRecord:
                    damaged += 1
    except fl.StoreError as exc:
        if str(path) not in str(exc):
            raise AssertionError(f"the error does not name the store: {exc}") from exc
        return type(exc).__name__
    return "a damaged run" if damaged else "read whole"  # whole: a page nothing reads


def test_doctor_reports_a_damaged_page_and_exits_4(intact: Path, tmp_path: Path) -> None:
    pages = (intact / "data.mdb").stat().st_size // PAGE
    codes = []
    for page in range(2, pages, 9):
        path = _damaged_copy(intact, tmp_path, page)
        proc = subprocess.run(
            [*FOLDLOOP, "--store", str(path), "doctor"], capture_output=True, text=True
        )
        assert "Traceback" not in proc.stderr + proc.stdout
        assert proc.returncode in (0, 4), proc.stderr
        if proc.returncode == 4:
            assert "damaged" in proc.stdout + proc.stderr
            # doctor is pointed to only where it can read on: not when it failed itself
            assert "foldloop doctor" not in proc.stderr, proc.stderr
        codes.append(proc.returncode)
    assert 4 in codes


READ_ALL = """
import sys
import foldloop as fl
try:
    with fl.Runtime.open(sys.argv[1]) as rt:
        rows = rt.runs()
        for row in rows:
            try:
                rt.state(row.run_id)
            except (fl.StoreError, fl.RunNotFound):  # not found: its listed id is damaged
                assert row.damaged, row
        rt.recover()
    print("listed", len(rows), "damaged", sum(row.damaged for row in rows))
except fl.StoreError as exc:
    print("refused:", type(exc).__name__)
"""


@pytest.mark.parametrize("seed", range(4))
def test_random_damage_is_reported_never_a_traceback_or_a_hang(
    intact: Path, tmp_path: Path, seed: int
) -> None:
    """Hundreds of flipped bits anywhere in data.mdb: listing, folding, recovering, the CLI's
    runs and doctor each end (bounded by a timeout) in a listing with the damaged runs
    marked, or a StoreError; never a foreign exception, a traceback or a wrong exit code."""
    rng = random.Random(seed)
    path = tmp_path / "store"
    shutil.copytree(intact, path)
    data = bytearray((path / "data.mdb").read_bytes())
    for _ in range(200):
        at = rng.randrange(2 * PAGE, len(data))  # past the meta pages, which LMDB checks
        data[at] ^= 1 << rng.randrange(8)
    (path / "data.mdb").write_bytes(bytes(data))
    read = subprocess.run(
        [sys.executable, "-c", READ_ALL, str(path)], capture_output=True, text=True, timeout=60
    )
    assert read.returncode == 0 and "Traceback" not in read.stderr, read.stderr
    assert read.stdout.splitlines()[-1].startswith(("listed", "refused:")), read.stdout
    for command, codes in (("runs", (0, 4)), ("doctor", (0, 4))):
        cli = subprocess.run(
            [*FOLDLOOP, "--store", str(path), command], capture_output=True, text=True, timeout=60
        )
        assert cli.returncode in codes and "Traceback" not in cli.stderr, (command, cli.stderr)

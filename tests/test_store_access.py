"""A store the system will not let this user use: a StoreAccessError naming it, never an
OSError from deep inside; the CLI says so and exits 1 (the environment is at fault).

Root ignores file modes, so as root each check runs in a child without the capabilities
that let it (``setpriv``), as any other user would meet the store.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

import foldloop as fl

DROP = ["setpriv", "--bounding-set", "-dac_override,-dac_read_search,-fowner"]
OPEN = """
import sys
import foldloop as fl
from foldloop.errors import StoreAccessError
try:
    fl.Runtime.open(sys.argv[1]).close()
except StoreAccessError as exc:
    print("refused:", exc)
"""


def _as_a_user(argv: list[str]) -> subprocess.CompletedProcess[str]:
    if os.geteuid() == 0:
        if shutil.which("setpriv") is None:
            pytest.skip("running as root without setpriv: file modes cannot be tested")
        argv = [*DROP, *argv]
    return subprocess.run(argv, capture_output=True, text=True, timeout=60)


CHANGES: dict[str, Callable[[Path], None]] = {
    "data.mdb unreadable": lambda p: (p / "data.mdb").chmod(0),
    "marker unreadable": lambda p: (p / "foldloop.store").chmod(0),
    "lock.mdb unreadable": lambda p: (p / "lock.mdb").chmod(0),
    "owners/ read-only": lambda p: (p / "owners").chmod(0o500),
    "store directory read-only": lambda p: p.chmod(0o500),
}


@pytest.mark.parametrize("change", sorted(CHANGES))
def test_a_store_this_user_cannot_use_is_refused_by_name(store_path: Path, change: str) -> None:
    agent = fl.Agent(name="a", llm=fl.ScriptedLLM([fl.Reply(text="done")]), tools=[])
    with fl.Runtime.open(store_path) as rt:
        rt.spawn(agent, "x").wait(timeout=30)
    CHANGES[change](store_path)
    try:
        opened = _as_a_user([sys.executable, "-c", OPEN, str(store_path)])
        assert opened.returncode == 0, opened.stderr
        assert opened.stdout.startswith("refused:") and str(store_path) in opened.stdout
        doctor = _as_a_user(
            [
                sys.executable,
                "-c",
                "from foldloop.cli import main; main()",
                "--store",
                str(store_path),
                "doctor",
            ]
        )
        assert doctor.returncode == 1, doctor.stdout + doctor.stderr
        assert "Traceback" not in doctor.stderr and str(store_path) in doctor.stderr
    finally:
        for path in (
            store_path,
            store_path / "owners",
            store_path / "data.mdb",
            store_path / "lock.mdb",
        ):
            path.chmod(0o700 if path.is_dir() else 0o600)


def test_a_read_waits_for_a_reader_slot_when_every_one_is_taken(
    store_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Thousands of threads reading at once across a store's processes take every reader
    slot for a moment: a read then waits for one, and says so only after a long wait."""
    import threading

    import lmdb

    from foldloop.store import _mapped, open_store
    from tests.log_capture import capture_logs
    from tests.waiting import logged, wait_until

    store = open_store(store_path)
    held: list[object] = []
    try:
        while True:  # take every slot, as many readers in flight would
            try:
                held.append(store.mapped.env.begin())
            except lmdb.ReadersFullError:
                break
        assert len(held) >= 4000
        got: list[int] = []
        with capture_logs() as logs:
            reader = threading.Thread(target=lambda: got.append(store.head("r")))
            reader.start()
            wait_until(lambda: logged(logs, "reader_slots_full"), 10, "the read to wait")
            held.pop().abort()  # type: ignore[attr-defined]
            reader.join(30)
        assert got == [0]
        monkeypatch.setattr(_mapped, "READER_SLOT_WAIT_S", 0.2)
        held.append(store.mapped.env.begin())
        with pytest.raises(fl.errors.StoreAccessError, match="every reader slot is taken"):
            store.head("r")
    finally:
        for txn in held:
            txn.abort()  # type: ignore[attr-defined]
        store.close()

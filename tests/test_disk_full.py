"""A full disk, for real: a child process whose file size limit (RLIMIT_FSIZE) stops LMDB's
writes as a full disk stops them (EFBIG, or EIO for a short write, instead of ENOSPC), then
lifts it again ("space is freed").

The child (``python test_disk_full.py child STORE MODE``) reports what it saw as one JSON
line; the test reopens the store afterwards and checks every run the child saw completed.
A hang is bounded twice: the child dumps its threads' stacks and exits after HANG_S, and
the test kills it after CHILD_TIMEOUT_S.
"""

from __future__ import annotations

import faulthandler
import json
import os
import resource
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import foldloop as fl

ROOT = Path(__file__).resolve().parents[1]
HANG_S = 20
CHILD_TIMEOUT_S = 30
BLOB = "x" * 6000  # each run writes a few such values: the limit and the map are met soon
MAP_SIZE = 1 << 20
LIMIT_HEADROOM = 192 << 10  # how far the store's file may grow once the disk "fills"


def _agent() -> fl.Agent:
    @fl.tool(idempotent=True)
    def echo(text: str) -> str:
        """Return the text."""
        return text

    llm = fl.ScriptedLLM(
        [fl.Reply(tool_calls=[fl.ToolCall("echo", {"text": BLOB})]), fl.Reply(text="done")]
    )
    return fl.Agent(name="filler", llm=llm, tools=[echo], instructions="Echo.")


def _child(store: Path, mode: str) -> dict[str, Any]:
    """Fill the disk; then close at once (``mode`` "close-full") or free space and go on."""
    # A write past the limit then fails with EFBIG instead of killing the process.
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    agent = _agent()
    report: dict[str, Any] = {"completed": [], "failures": [], "interrupted": []}
    rt = fl.Runtime.open(store, agents=[agent], map_size=MAP_SIZE)
    acked: dict[str, int] = {}  # run -> its last seq known durable

    def spawn_and_wait() -> fl.types.RunResult:
        result = rt.spawn(agent, "fill " + BLOB).wait(timeout=HANG_S)
        if result.ok:
            report["completed"].append(result.run_id)
            acked[result.run_id] = rt.state(result.run_id).seq
        return result

    for _ in range(2):
        assert spawn_and_wait().ok

    _soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    size = (store / "data.mdb").stat().st_size
    resource.setrlimit(resource.RLIMIT_FSIZE, (size + LIMIT_HEADROOM, hard))
    for _ in range(200):
        try:
            result = spawn_and_wait()
        except fl.StoreError as exc:  # run.started itself was refused
            report["failures"].append(str(exc))
            break
        if result.status is fl.RunStatus.INTERRUPTED:  # a later step of the run was
            report["failures"].append(result.reason)
            report["interrupted"].append(result.run_id)
            stored = rt.state(result.run_id)
            acked[result.run_id] = stored.seq
            # the result says what the log holds, not the steps it could not store
            assert (result.steps, result.usage) == (stored.steps, stored.usage), result
            break
        assert result.ok, result
    report["map_size_full"] = rt.store.map_size
    for run_id, seq in acked.items():  # nothing acknowledged is lost, and the store reads
        assert rt.state(run_id).seq == seq, run_id

    if mode == "free":
        resource.setrlimit(resource.RLIMIT_FSIZE, (hard, hard))
        # On, until the map has grown and a few runs were written after it grew.
        grown = 0
        while grown < 3:
            assert spawn_and_wait().ok
            grown += rt.store.map_size > MAP_SIZE
            assert len(report["completed"]) < 200, "the map never grew"
        for run_id in report["interrupted"]:
            result = rt.resume(run_id).wait(timeout=HANG_S)
            assert result.ok, result
            report["completed"].append(run_id)
    report["map_size"] = rt.store.map_size
    rt.close()
    if mode == "close-full":
        # Not a byte more: a runtime opened now cannot even write its owner lock.
        resource.setrlimit(resource.RLIMIT_FSIZE, (0, hard))
        try:
            fl.Runtime.open(store, agents=[agent], map_size=MAP_SIZE).close()
        except fl.StoreError as exc:
            report["failures"].append(str(exc))
        else:
            raise AssertionError("a runtime opened on a full disk")
    return report


def _run_child(store: Path, mode: str) -> dict[str, Any]:
    """Run the child on ``store``; fail the test if it hangs or fails."""
    path = os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))
    with subprocess.Popen(
        [sys.executable, __file__, "child", str(store), mode],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "PYTHONPATH": path},  # the foldloop of this checkout
    ) as proc:
        try:
            out, err = proc.communicate(timeout=CHILD_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, err = proc.communicate()
            raise AssertionError(f"the child hung and was killed:\n{err[-4000:]}") from None
    assert proc.returncode == 0, f"the child failed (a hang dumps its stacks):\n{err[-6000:]}"
    report: dict[str, Any] = json.loads(out.strip().splitlines()[-1])
    assert report["failures"], "the file size limit never stopped a write"
    # The host is told what went wrong and what to do, in a foldloop error.
    assert all("Free space" in reason for reason in report["failures"]), report["failures"]
    assert report["map_size_full"] == MAP_SIZE  # the map grows only after space is freed
    return report


def _check_reopened(store: Path, completed: list[str]) -> None:
    with fl.Runtime.open(store, agents=[_agent()]) as rt:
        for run_id in completed:
            assert rt.state(run_id).status is fl.RunStatus.COMPLETED, run_id
            assert rt.verify(run_id).status is fl.RunStatus.COMPLETED, run_id


def test_a_full_disk_fails_a_write_and_close_still_returns(tmp_path: Path) -> None:
    store = tmp_path / "store"
    report = _run_child(store, "close-full")
    _check_reopened(store, report["completed"])


def test_once_space_is_freed_runs_go_on_the_map_grows_and_interrupted_runs_resume(
    tmp_path: Path,
) -> None:
    store = tmp_path / "store"
    report = _run_child(store, "free")
    assert report["map_size"] > MAP_SIZE
    _check_reopened(store, report["completed"])


def test_the_demo_on_a_disk_that_fills_says_so_and_exits_1(tmp_path: Path) -> None:
    """Its run interrupted by a write that failed, the demo stops there and says why; it
    does not go on to resume and verify as if the run had got where its actor had."""
    store = tmp_path / "store"
    script = [sys.executable, "-m", "foldloop", "--store", str(store), "demo"]
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    first = subprocess.run(script, capture_output=True, text=True, timeout=60, env=env)
    assert first.returncode == 0, first.stderr
    size = (store / "data.mdb").stat().st_size

    def no_growth() -> None:  # in the child, before exec: its store's file cannot grow
        resource.setrlimit(resource.RLIMIT_FSIZE, (size, resource.RLIM_INFINITY))

    full = subprocess.run(
        script, capture_output=True, text=True, timeout=60, env=env, preexec_fn=no_growth
    )
    assert full.returncode == 1, (full.stdout, full.stderr)
    assert "the demo's run" in full.stderr and "Free space" in full.stderr, full.stderr
    assert "replay check" not in full.stdout, full.stdout


if __name__ == "__main__" and sys.argv[1:2] == ["child"]:
    faulthandler.dump_traceback_later(HANG_S, exit=True)  # a hang shows where, then exits
    print(json.dumps(_child(Path(sys.argv[2]), sys.argv[3])), flush=True)

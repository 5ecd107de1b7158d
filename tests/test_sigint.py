"""One Ctrl-C ends ``foldloop demo`` at any point, quietly, and leaves a store every command opens.

A real ``foldloop`` process (the console script) gets one SIGINT at a random moment: while
Python imports foldloop, while the store is being created, mid-run, or while it closes.
Each must exit within a few seconds of that one signal, print no traceback, and leave a
store that ``runs``, ``show``, ``verify`` and ``doctor`` accept (or none at all, which
the next creator makes). ``FOLDLOOP_SOAK=1`` runs 1,000 interruptions instead of 25.
"""

from __future__ import annotations

import contextlib
import os
import random
import signal
import subprocess
import sys
import sysconfig
import threading
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import foldloop as fl
from foldloop import _closing as closing
from foldloop._closing import ClosedOnExit, noting_int_handler
from foldloop.cli import _interrupt as cli_interrupt
from foldloop.cli import app
from foldloop.store import open_store
from foldloop.store._writer import WriteOp
from tests.waiting import wait_until

SOAK = bool(os.environ.get("FOLDLOOP_SOAK"))
ITERATIONS = 1000 if SOAK else 25
GRACE_S = 5.0
"""How long a process may take to exit after its one SIGINT."""
PHASES = ("import", "creation", "run", "close")
"""What the delay is counted from: the process loading its first compiled dependency (so
the signal lands while foldloop imports; earlier, Python itself is starting, and a Ctrl-C
there is CPython's affair), the store directory appearing, the demo's first line, and its
last line (the runtime closes right after it)."""
QUIET_EXITS = (0, 130, -signal.SIGINT)
"""Finished before the signal; stopped by it (exit 130); or killed by it at once, once the
command was done (SIGINT's default action, as for any Unix tool)."""
DEMO_AGENT = "foldloop.cli:demo_agent"


def foldloop_script() -> Path:
    """The installed ``foldloop`` console script of this environment."""
    script = Path(sysconfig.get_path("scripts")) / "foldloop"
    if not script.is_file():
        pytest.fail(f"no {script}: install the package (pip install -e .) to get the script")
    return script


@dataclass(frozen=True)
class Timing:
    """An uninterrupted demo on this machine: its first line, its last line, its exit."""

    first_line_s: float
    last_line_s: float
    total_s: float


@dataclass(frozen=True)
class Outcome:
    iteration: int
    phase: str
    delay: float
    store: Path
    returncode: int | None
    stderr: str

    @property
    def hung(self) -> bool:
        return self.returncode is None

    def where(self) -> str:
        return f"iteration {self.iteration} (SIGINT {self.delay:.3f} s after {self.phase})"


def calibrate(argv: Sequence[str], store: Path) -> Timing:
    start = time.monotonic()
    proc = subprocess.Popen(
        [*argv, "--store", str(store), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    proc.stdout.readline()
    first = time.monotonic() - start
    for line in proc.stdout:
        if line.rstrip().endswith(" doctor"):
            break
    last = time.monotonic() - start
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 0, stderr
    return Timing(first, last, time.monotonic() - start)


def _loaded_a_compiled_module(pid: int) -> bool:
    """True once the process has mapped an extension module from site-packages."""
    try:
        maps = Path(f"/proc/{pid}/maps").read_text()
    except OSError:  # no /proc (or the process is gone): count from a moment later
        return True
    return any(line.endswith(".so") and PURELIB in line for line in maps.splitlines())


PURELIB = sysconfig.get_path("purelib")


def interrupt_once(
    argv: Sequence[str], root: Path, iteration: int, fraction: float, timing: Timing
) -> Outcome:
    """Start a demo on a new store, send it one SIGINT, and see how it ends."""
    store = root / f"s{iteration}" / "store"
    phase = PHASES[iteration % len(PHASES)]
    proc = subprocess.Popen(
        [*argv, "--store", str(store), "demo"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    try:
        if phase == "import":
            delay = fraction * timing.first_line_s
            while not _loaded_a_compiled_module(proc.pid) and proc.poll() is None:
                time.sleep(0.0005)
        elif phase == "creation":
            delay = fraction * 0.02  # creating a store takes a few ms
            while not store.exists() and proc.poll() is None:
                time.sleep(0.0005)
        elif phase == "run":
            delay = fraction * (timing.last_line_s - timing.first_line_s)
            proc.stdout.readline()
        else:
            delay = fraction * 0.02  # the runtime closes within a few ms of the last line
            for line in proc.stdout:
                if line.rstrip().endswith(" doctor"):
                    break
        time.sleep(delay)
        proc.send_signal(signal.SIGINT)
        try:
            _, stderr = proc.communicate(timeout=GRACE_S)
        except subprocess.TimeoutExpired:
            proc.kill()
            _, stderr = proc.communicate()
            return Outcome(iteration, phase, delay, store, None, stderr)
        return Outcome(iteration, phase, delay, store, proc.returncode, stderr)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def interrupt_many(argv: Sequence[str], root: Path, count: int, seed: int) -> list[Outcome]:
    """``count`` interruptions, two at a time (the machine may have only two cores)."""
    calibrate(argv, root / "warm-up")  # a first run may compile bytecode: not typical
    timing = calibrate(argv, root / "calibration")
    rng = random.Random(seed)
    fractions = [rng.random() for _ in range(count)]
    with ThreadPoolExecutor(2) as pool:
        return list(
            pool.map(
                lambda i: interrupt_once(argv, root, i, fractions[i], timing),
                range(count),
            )
        )


def check_usable(outcome: Outcome, runner: CliRunner) -> None:
    """The store the interrupted demo left: every command opens it, every run in it reads
    and replays; or there is no store yet, and a reader says so and a creator makes one."""

    def cli(*args: str) -> tuple[int, str]:
        result = runner.invoke(app, ["--store", str(outcome.store), *args])
        return result.exit_code, result.output

    code, text = cli("runs")
    if not (outcome.store / "foldloop.store").exists():
        assert code == 3 and "no foldloop store" in text, f"{outcome.where()}: {code} {text}"
        open_store(outcome.store).close()  # the next creator finishes the store
        code, text = cli("runs")
    assert code == 0, f"{outcome.where()}: `runs` exits {code}: {text}"
    store = open_store(outcome.store, create=False)
    try:
        run_ids = store.run_ids()
    finally:
        store.close()
    for run_id in run_ids:
        for args in (("show", run_id), ("verify", run_id, "--agent", DEMO_AGENT)):
            code, text = cli(*args)
            assert code == 0, f"{outcome.where()}: `{' '.join(args)}` exits {code}: {text}"
    code, text = cli("doctor")
    assert code == 0, f"{outcome.where()}: `doctor` exits {code}: {text}"


@pytest.mark.timeout(7200 if SOAK else 300)
def test_one_ctrl_c_ends_the_demo_at_any_point_quietly(tmp_path: Path) -> None:
    seed = random.randrange(1 << 32)
    print(f"seed {seed}")  # shown if the test fails
    outcomes = interrupt_many([str(foldloop_script())], tmp_path, ITERATIONS, seed)

    hung = [o for o in outcomes if o.hung]
    assert not hung, "\n".join(
        f"{o.where()} did not exit within {GRACE_S} s of one SIGINT" for o in hung
    )
    noisy = [o for o in outcomes if "Traceback" in o.stderr or "Exception ignored" in o.stderr]
    assert not noisy, "\n\n".join(f"{o.where()} printed:\n{o.stderr}" for o in noisy)
    odd = [o for o in outcomes if o.returncode not in QUIET_EXITS]
    assert not odd, "\n".join(f"{o.where()} exited {o.returncode}: {o.stderr}" for o in odd)
    assert {o.returncode for o in outcomes} & {130}, "no SIGINT landed while the demo ran"

    runner = CliRunner()
    for outcome in outcomes:
        check_usable(outcome, runner)


# -- the parts, in this process ------------------------------------------------------------

needs_python_handler = pytest.mark.skipif(
    signal.getsignal(signal.SIGINT) is not signal.default_int_handler,
    reason="the test runner replaced Python's SIGINT handler",
)


@needs_python_handler
def test_ctrl_c_while_the_main_thread_writes_leaves_the_writer_closable(tmp_path: Path) -> None:
    """The main thread, where Python raises KeyboardInterrupt, never commits itself: the
    interrupt cuts its wait, not a commit, and close() still returns."""
    store = open_store(tmp_path / "store")
    committed = threading.Event()

    def interrupted(w: object) -> None:
        os.kill(os.getpid(), signal.SIGINT)
        time.sleep(0.05)  # long enough for the main thread to see the signal
        committed.set()

    with pytest.raises(KeyboardInterrupt):
        store.writer.submit(WriteOp(interrupted, durable=True)).wait()
    closer = threading.Thread(target=store.close, daemon=True)
    closer.start()
    closer.join(timeout=10)
    assert not closer.is_alive(), "close() waits for ever on a commit a Ctrl-C cut short"
    assert committed.is_set()


class _Closing(ClosedOnExit):
    def __init__(self, signals: int) -> None:
        self.signals = signals
        self.steps: list[str] = []

    def close(self) -> None:
        self.steps.append("closing")
        for _ in range(self.signals):
            os.kill(os.getpid(), signal.SIGINT)
            time.sleep(0.01)  # the handler runs between these lines
        self.steps.append("closed")


@needs_python_handler
def test_a_ctrl_c_during_close_waits_for_the_close_then_interrupts() -> None:
    with pytest.raises(KeyboardInterrupt), _Closing(signals=1) as thing:
        pass
    assert thing.steps == ["closing", "closed"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


@needs_python_handler
def test_a_second_ctrl_c_interrupts_a_close_at_once() -> None:
    with pytest.raises(KeyboardInterrupt), _Closing(signals=2) as thing:
        pass
    assert thing.steps == ["closing"]
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_a_ctrl_c_whose_close_waits_for_a_tool_says_so(tmp_path: Path) -> None:
    """`foldloop resume` drives a run whose tool call is under way: after one Ctrl-C the
    close waits for the call (its outcome is recorded), and says so on stderr instead of
    leaving the user before a silent terminal for up to 10 s."""
    store, gate = tmp_path / "store", tmp_path / "gate"
    tests_dir = str(Path(__file__).resolve().parent)
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [tests_dir, os.environ.get("PYTHONPATH")])),
    }
    spawner = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import sys, foldloop as fl, pool_agents\n"
            "rt = fl.Runtime.open(sys.argv[1], agents=[pool_agents.persistent])\n"
            "print(rt.spawn(pool_agents.persistent, sys.argv[2]).id, flush=True)\n"
            "sys.stdin.read()\n",
            str(store),
            str(gate),
        ],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    assert spawner.stdout is not None
    run_id = spawner.stdout.readline().strip()
    with fl.Runtime.open(store) as read:

        def calls() -> int:
            return sum(r.type == "tool.requested" for r in read.events(run_id))

        wait_until(lambda: calls() == 1, 30, "the first tool call")
        spawner.kill()  # its call is cut short: a resume asks again
        spawner.wait()
        driver = subprocess.Popen(
            [
                str(foldloop_script()),
                "--store",
                str(store),
                "resume",
                run_id,
                "--agent",
                "pool_agents:persistent",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
            env=env,
        )
        try:
            wait_until(lambda: calls() == 2, 30, "the resumed run's tool call")
            driver.send_signal(signal.SIGINT)
            assert driver.stderr is not None
            said = driver.stderr.readline()
            assert said.startswith("stopping: waiting for the work under way"), said
            gate.touch()
            assert driver.wait(timeout=30) == 130
        finally:
            if driver.poll() is None:
                driver.kill()
                driver.wait()
        assert "tool.completed" in [r.type for r in read.events(run_id)]


def test_a_ctrl_c_whose_keyboardinterrupt_python_dropped_still_ends_a_cli_wait(
    tmp_path: Path,
) -> None:
    """Python drops an exception raised in a ``__del__`` or a weakref callback, a Ctrl-C's
    KeyboardInterrupt included: the CLI's waits (resume, the demo) still end within a slice
    of it, not when the run does."""
    release = threading.Event()

    @fl.tool(idempotent=True)
    def held() -> str:
        """Wait to be let go."""
        release.wait(30)
        return "let go"

    llm = fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("held", {})]), fl.Reply(text="x")])
    agent = fl.Agent(name="held", llm=llm, tools=[held])
    with fl.Runtime.open(tmp_path / "s", agents=[agent]) as rt:
        handle = rt.spawn(agent, "go")
        try:
            with contextlib.suppress(KeyboardInterrupt):  # as where Python drops it
                noting_int_handler(signal.SIGINT, None)
            with pytest.raises(KeyboardInterrupt):
                cli_interrupt.waited(handle)
        finally:
            closing._came.clear()
            release.set()
        assert handle.wait(timeout=30).ok


def test_a_close_under_the_cli_handler_holds_a_first_ctrl_c_and_not_a_second() -> None:
    """The CLI notes each Ctrl-C (noting_int_handler): a close it runs still goes to its end
    through one, then raises it; once one came, the next stops a close at once."""
    steps: list[str] = []

    def close() -> None:
        steps.append("closing")
        signal.raise_signal(signal.SIGINT)
        steps.append("closed")

    previous = signal.signal(signal.SIGINT, noting_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            closing.close_through_ctrl_c(close)
        assert steps == ["closing", "closed"]
        assert signal.getsignal(signal.SIGINT) is noting_int_handler
        steps.clear()
        with pytest.raises(KeyboardInterrupt):  # a Ctrl-C came: this one is the second
            closing.close_through_ctrl_c(close)
        assert steps == ["closing"]
    finally:
        signal.signal(signal.SIGINT, previous)
        closing._came.clear()

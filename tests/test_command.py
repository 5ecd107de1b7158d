"""run_command: real subprocesses, killed as a whole process group when their time is up."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import zipfile
from pathlib import Path
from typing import Any

import pytest

import foldloop as fl
from foldloop.tools import _reaper
from tests.waiting import wait_until


def alive(pid: int) -> bool:
    """Running (a zombie waiting to be reaped counts as gone)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):  # gone, or going as we read
        return False
    return state != "Z"


def test_a_command_that_finishes_in_time(tmp_path: Path) -> None:
    result = fl.run_command([sys.executable, "-c", "import os; print(os.getcwd())"], 30, tmp_path)
    assert result.ok
    assert result.stdout.strip() == str(tmp_path)
    assert not result.timed_out
    failing = fl.run_command([sys.executable, "-c", "import sys; sys.exit(3)"], 30)
    assert (failing.returncode, failing.ok) == (3, False)


def test_a_hung_command_and_its_children_are_killed(tmp_path: Path) -> None:
    script = (
        "trap '' TERM; "  # ignore the polite signal
        "sleep 60 & echo $!; "  # a grandchild holding our stdout
        "sleep 60"
    )
    start = time.monotonic()
    result = fl.run_command(["sh", "-c", script], timeout=0.5, grace=0.5)
    elapsed = time.monotonic() - start
    assert result.timed_out
    assert result.returncode < 0
    assert elapsed < 30  # not the 60 s the children wanted
    grandchild = int(result.stdout.split()[0])
    wait_until(lambda: not alive(grandchild), 5, "the grandchild to be killed")


@pytest.mark.parametrize(
    ("cmd", "timeout", "message"),
    [
        ("echo hi", 5, "list of strings"),
        ([], 5, "list of strings"),
        (["true"], 0, "timeout must be"),
        (["true"], float("nan"), "timeout must be"),
        (["/no/such/program"], 5, "cannot start"),
    ],
)
def test_bad_input_is_refused_before_anything_runs(
    cmd: object, timeout: float, message: str
) -> None:
    with pytest.raises(fl.ConfigError, match=message):
        fl.run_command(cmd, timeout)  # type: ignore[arg-type]


def test_a_tool_can_shell_out(tmp_path: Path) -> None:
    @fl.tool(timeout=30, idempotent=True)
    def count_lines(path: str) -> int:
        """Count the lines of a file with wc."""
        result = fl.run_command(["wc", "-l", path], timeout=10)
        return int(result.stdout.split()[0])

    target = tmp_path / "f.txt"
    target.write_text("a\nb\nc\n")
    assert count_lines.invoke(f'{{"path": "{target}"}}').text == "3"


def test_input_goes_to_the_commands_stdin_and_output_keeps_its_first_max_output_bytes() -> None:
    echo = "import sys; data = sys.stdin.buffer.read(); sys.stdout.write(str(len(data)) * 9)"
    result = fl.run_command([sys.executable, "-c", echo], timeout=30, input=b"x" * 300_000)
    assert result.ok and result.stdout == "300000" * 9
    cut = fl.run_command([sys.executable, "-c", echo], timeout=30, input=b"x", max_output=4)
    assert cut.ok and cut.stdout == "1111"
    quiet = fl.run_command([sys.executable, "-c", echo], timeout=30)
    assert quiet.stdout == "0" * 9  # no input: an empty stdin, not the caller's


def test_a_process_that_left_the_group_cannot_hold_the_call(tmp_path: Path) -> None:
    """A grandchild in a session of its own survives the group's kill and holds whatever
    it inherited: the call still ends at its timeout (it waited for the grandchild)."""
    pidfile = tmp_path / "pid"
    script = (
        "import subprocess, sys, time\n"
        "child = subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(60)'],"
        " start_new_session=True)\n"
        f"open({str(pidfile)!r}, 'w').write(str(child.pid))\n"
        "print('hi', flush=True)\n"
        "time.sleep(60)\n"
    )
    try:
        result = fl.run_command([sys.executable, "-c", script], timeout=2, grace=1)
        assert result.timed_out and result.stdout == "hi\n", result
        assert result.duration_s < 20
    finally:
        wait_until(pidfile.exists, 10, "the grandchild's pid")
        os.kill(int(pidfile.read_text()), signal.SIGKILL)


def test_input_may_be_text_and_nothing_else() -> None:
    cat = [sys.executable, "-c", "import sys; sys.stdout.write(sys.stdin.read())"]
    assert fl.run_command(cat, timeout=30, input="héllo").stdout == "héllo"
    with pytest.raises(fl.ConfigError, match="input must be bytes or str"):
        fl.run_command(cat, timeout=30, input=5)  # type: ignore[arg-type]
    with pytest.raises(fl.ConfigError, match="input is not valid Unicode text"):
        fl.run_command(cat, timeout=30, input="x\ud800")


def test_output_past_max_output_is_dropped_as_it_comes() -> None:
    big = [sys.executable, "-c", "import sys; sys.stdout.buffer.write(b'x' * 50_000_000)"]
    result = fl.run_command(big, timeout=60, max_output=10)
    assert result.ok and result.stdout == "x" * 10


def test_a_timeout_past_what_one_wait_takes_is_waited_in_parts() -> None:
    """epoll refuses a wait past ~24.8 days: a subprocess tool without a timeout is given
    10**9 s (each call failed with OverflowError)."""
    result = fl.run_command([sys.executable, "-c", "print('ok')"], timeout=10**9)
    assert result.ok and result.stdout == "ok\n", result


@pytest.mark.parametrize("grace", [float("nan"), float("inf"), -1, True, "1"])
def test_grace_must_be_a_finite_number_of_seconds(grace: object) -> None:
    with pytest.raises(fl.ConfigError, match="grace must be a finite number of seconds"):
        fl.run_command([sys.executable, "-c", "pass"], timeout=5, grace=grace)  # type: ignore[arg-type]


def killed_host(tmp_path: Path, script: str, names: tuple[str, ...], **popen: Any) -> list[int]:
    """Run ``script`` in a host process, wait for it to write each of ``names`` (a pid) into
    ``tmp_path``, SIGKILL it; the pids written."""
    host = subprocess.Popen([sys.executable, "-c", script.format(pids=tmp_path)], **popen)
    try:

        def written() -> bool:
            return all((tmp_path / n).exists() and (tmp_path / n).read_text() for n in names)

        wait_until(written, 30, "the host's commands to start")
        pids = [int((tmp_path / n).read_text()) for n in names]
        assert all(alive(pid) for pid in pids)
    finally:
        host.kill()
        host.wait()
    return pids


def stopped(pids: list[int]) -> None:
    for pid in pids:
        wait_until(lambda pid=pid: not alive(pid), 10, f"process {pid} to be stopped")


HOST = """
import os, sys, threading, time
import foldloop as fl
from foldloop.tools import _reaper
script = 'trap "" TERM; sleep 300 & echo $! > {pids}/grandchild; echo $$ > {pids}/command; wait'
threading.Thread(target=fl.run_command, args=(["sh", "-c", script], 600)).start()
untagged = 'echo $$ > {pids}/untagged; exec env -u FOLDLOOP_COMMAND_TAG sleep 300'
threading.Thread(target=fl.run_command, args=(["sh", "-c", untagged], 600)).start()

def told():  # the reaper knows each command's group (the untagged one is found by it alone)
    commands = _reaper._reaper._commands
    while len(commands) < 3 or any(pgid is None for pgid, _ in list(commands.values())):
        time.sleep(0.01)
    open("{pids}/told", "w").write(str(os.getpid()))

threading.Thread(target=told, daemon=True).start()
fl.run_command(["sh", "-c", "sleep 300 & echo $! > {pids}/second; wait"], 600)
"""


def test_the_commands_of_a_host_killed_by_sigkill_are_stopped(tmp_path: Path) -> None:
    """The host's death, even a SIGKILL, stops the groups of the commands it was running,
    one that ignores SIGTERM too (SIGKILL follows), one that dropped its tag (found by the
    group the reaper was told)."""
    stopped(killed_host(tmp_path, HOST, ("command", "grandchild", "untagged", "second", "told")))


def test_tags_are_never_the_same_in_two_processes_of_one_pid() -> None:
    """A pid comes back (os.execv keeps it; the counter wraps): a tag must not name a command
    of an earlier process, whose daemon may carry it still."""
    one, other = _reaper._Reaper(), _reaper._Reaper()
    one._unavailable = other._unavailable = True  # no reaper process: tags only
    assert one.starting(2.0) != other.starting(2.0)


LOGS_FORK = """
import logging, os, signal, subprocess, threading
import foldloop as fl
from foldloop.tools import _reaper

class Pager(logging.Handler):  # a handler that starts a process (fork handlers run)
    def emit(self, record):
        subprocess.run(["true"], preexec_fn=lambda: None)

logging.getLogger("foldloop").addHandler(Pager())
fl.run_command(["true"], 5)
os.kill(_reaper._reaper._proc.pid, signal.SIGKILL)  # its replacement is logged
_reaper._reaper._proc.wait()
command = threading.Thread(target=fl.run_command, args=(["true"], 5), daemon=True)
command.start()
command.join(20)
print("hung" if command.is_alive() else "ran", flush=True)
os._exit(0)
"""


def test_a_log_handler_that_forks_does_not_deadlock_the_next_command() -> None:
    """The reaper's warnings are logged once its lock is let go: a fork waits for that lock."""
    done = subprocess.run(
        [sys.executable, "-c", LOGS_FORK], capture_output=True, text=True, timeout=60
    )
    assert done.stdout.strip() == "ran", done.stderr[-2000:]


REAPER_KILLED = """
import os, signal, threading
import foldloop as fl
from foldloop.tools import _reaper
first = 'echo $$ > {pids}/first; sleep 300'
threading.Thread(target=fl.run_command, args=(["sh", "-c", first], 600)).start()
while not os.path.exists("{pids}/first"):
    pass
os.kill(_reaper._reaper._proc.pid, signal.SIGKILL)  # by hand, while the first one runs
_reaper._reaper._proc.wait()
fl.run_command(["sh", "-c", "echo $$ > {pids}/second; sleep 300"], 600)
"""


def test_a_reaper_killed_by_hand_is_replaced_by_one_that_knows_every_command(
    tmp_path: Path,
) -> None:
    stopped(killed_host(tmp_path, REAPER_KILLED, ("first", "second")))


ZIPPED_HOST = """
import sys
sys.path.insert(0, "{pids}/foldloop.zip")
import foldloop as fl
assert fl.__file__.startswith("{pids}/foldloop.zip"), fl.__file__
fl.run_command(["sh", "-c", "echo $$ > {pids}/command; sleep 300"], 600)
"""


def test_a_foldloop_imported_from_a_zip_still_stops_its_commands(tmp_path: Path) -> None:
    package = Path(fl.__file__).parent
    with zipfile.ZipFile(tmp_path / "foldloop.zip", "w") as archive:
        for source in package.rglob("*.py"):
            archive.write(source, Path("foldloop") / source.relative_to(package))
    stopped(killed_host(tmp_path, ZIPPED_HOST, ("command",)))


def test_a_reaper_that_stops_reading_holds_no_command_up_and_is_replaced() -> None:
    """Writes to it never wait: past a full pipe it is replaced by one given the list."""
    reaper = _reaper._Reaper()
    kept = reaper.starting(2.0)
    first = reaper._proc
    assert first is not None
    os.kill(first.pid, signal.SIGSTOP)
    beyond = 2**22 + 1  # past the most pids Linux gives: no real group has these ids
    last = None
    try:
        for pgid in range(beyond, beyond + 10_000):  # far more than a pipe holds
            tag = reaper.starting(2.0)
            reaper.started(tag, pgid)
            reaper.forget(tag)
        last = reaper.starting(2.0)
        reaper.started(last, 2 * beyond)
        second = reaper._proc
        assert second is not None and second.pid != first.pid and second.poll() is None
        assert reaper._commands == {kept: (None, 2.0), last: (2 * beyond, 2.0)}
    finally:
        first.kill()
        first.wait()
        reaper.forget(kept)
        if last is not None:
            reaper.forget(last)
        if reaper._proc is not None:
            assert reaper._proc.stdin is not None
            reaper._proc.stdin.close()  # its end: it stops, with nothing listed
            reaper._proc.wait()


DIES_STARTING = """
import time
import foldloop as fl
from foldloop.tools import _reaper

def killed_before_it_tells(tag, pgid):  # the host dies before the reaper hears the group
    with open("{pids}/command", "w") as f:
        f.write(str(pgid))
    time.sleep(300)

_reaper.started = killed_before_it_tells
fl.run_command(["sleep", "300"], 600)
"""


def test_a_command_its_host_died_starting_is_found_by_its_tag(tmp_path: Path) -> None:
    stopped(killed_host(tmp_path, DIES_STARTING, ("command",)))


FORKING_HOST = """
import gc, os, time
import foldloop as fl
fl.run_command(["true"], 10)  # the reaper starts
child = os.fork()
if child == 0:  # holds what it inherited, for as long as the test lets it
    gc.collect()
    with open("{pids}/fork", "w") as f:
        f.write(str(os.getpid()))
    time.sleep(300)
    os._exit(0)
fl.run_command(["sh", "-c", "echo $$ > {pids}/command; sleep 300"], 600)
"""


def test_a_forked_child_of_the_host_does_not_keep_its_commands_alive(tmp_path: Path) -> None:
    """A child made by os.fork lets go of the host's reaper, quietly (a warning there breaks
    a test suite run with -W error): the host's death still stops its commands while the
    fork lives on."""
    with (tmp_path / "stderr").open("w") as err:
        command, fork = killed_host(
            tmp_path, FORKING_HOST, ("command", "fork"), stderr=err, env=_dev_mode()
        )
    try:
        stopped([command])
        assert alive(fork)
    finally:
        os.kill(fork, signal.SIGKILL)
    assert "Warning" not in (tmp_path / "stderr").read_text()


def _dev_mode() -> dict[str, str]:
    """The environment with Python's dev mode on (ResourceWarnings shown)."""
    return {**os.environ, "PYTHONDEVMODE": "1"}

"""The command line's manners: as a Unix tool in pipes and terminals, with CLI hints.

Output piped is never wrapped nor clipped, and fits a terminal (``--wide`` shows it
whole); a reader that goes away (``| head``) ends it quietly with 0; "not found" is exit
3 for every command naming a run or a token; every hint names a command of this CLI; flags
show no ``<bool>``; a failed import leaves no store; the demo's hints run as printed, with
no virtualenv activated. Processes, pipes and terminals are real; CliRunner only reads
output.
"""

from __future__ import annotations

import fcntl
import json
import os
import pty
import re
import resource
import shlex
import stat
import struct
import subprocess
import sys
import sysconfig
import termios
import textwrap
import threading
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest
from typer.testing import CliRunner

import foldloop as fl
from foldloop.cli import app, demo_agent
from foldloop.cli._runs_command import RUNS_LISTED

SCRIPT = Path(sysconfig.get_path("scripts")) / "foldloop"
PYTHON_ADVICE = re.compile(r"\brt\.\w|\bfl\.\w|Runtime\.open|\bwait\(\)")
"""A hint for Python callers, which the CLI must never print."""
ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
LONG_REASON = "the operator stopped it: " + " ".join(f"word{i}" for i in range(60))
LONG_OUTPUT = "done: " + "-".join(f"part{i}" for i in range(80))
BIG_RESULT = 200_000  # characters, three times over: far more than a pipe and head's buffer


@dataclass(frozen=True)
class Shop:
    """A store holding runs in every state a person may ask the CLI about."""

    path: Path
    expired_token: str
    lapsed_token: str


def _scripted(*replies: fl.Reply) -> fl.ScriptedLLM:
    return fl.ScriptedLLM(list(replies))


@fl.tool(name="lookup", idempotent=True)
def lookup(key: str) -> str:
    """Look a key up (always the same answer, so asking again is no progress)."""
    return f"value of {key}"


@fl.tool(name="dump", idempotent=True)
def dump(part: int) -> str:
    """A large result."""
    return str(part) + "x" * BIG_RESULT


@fl.tool(name="send")
def send(to: str) -> str:
    """An effect behind an approval gate."""
    return f"sent to {to}"


def _failing(messages: object, tools: object) -> fl.Reply:
    raise fl.errors.ModelCallError("the model's endpoint answered 401", retryable=False)


def _build_shop(path: Path) -> Shop:
    ask_again = fl.Reply(tool_calls=[fl.ToolCall("lookup", {"key": "k"})])
    agents = {
        "limited": fl.Agent(
            name="limited",
            llm=_scripted(ask_again, ask_again, fl.Reply(text="never")),
            tools=[lookup],
            limits=fl.Limits(max_steps=1),
        ),
        "stuck": fl.Agent(
            name="stuck", llm=_scripted(*[ask_again] * 6), tools=[lookup], limits=fl.Limits()
        ),
        "failing": fl.Agent(name="failing", llm=fl.ScriptedLLM(_failing)),
        "done": fl.Agent(
            name="done",
            llm=_scripted(
                fl.Reply(tool_calls=[fl.ToolCall("dump", {"part": n}) for n in range(3)]),
                fl.Reply(text=LONG_OUTPUT),
            ),
            tools=[dump],
        ),
        "waiting": fl.Agent(
            name="waiting",
            llm=_scripted(fl.Reply(tool_calls=[fl.ToolCall("send", {"to": "bob"})])),
            tools=[send],
            approvals=fl.RequireApproval({"send"}),
        ),
    }
    with fl.Runtime.open(path) as rt:
        for name, agent in agents.items():
            rt.spawn(agent, "go", run_id=name).wait(timeout=30)
        cancelled = fl.Agent(
            name="cancelled",
            llm=_scripted(fl.Reply(tool_calls=[fl.ToolCall("send", {"to": "ann"})])),
            tools=[send],
            approvals=fl.RequireApproval({"send"}),
        )
        handle = rt.spawn(cancelled, "go", run_id="cancelled")
        handle.wait(timeout=30)
        handle.cancel(LONG_REASON)
    # A request decided on a clock long past: every later runtime sees it expired.
    with fl.Runtime.open(path, clock=lambda: 10**12) as rt:
        gated = fl.Agent(
            name="expired",
            llm=_scripted(fl.Reply(tool_calls=[fl.ToolCall("send", {"to": "cy"})])),
            tools=[send],
            approvals=fl.RequireApproval({"send"}, ttl=60),
        )
        rt.spawn(gated, "go", run_id="expired").wait(timeout=30)
        rt.spawn(gated, "go", run_id="lapsed").wait(timeout=30)
        tokens = {p.run_id: p.token for p in rt.pending_approvals()}
        token, lapsed = tokens["expired"], tokens["lapsed"]
        assert token is not None and lapsed is not None
    with fl.Runtime.open(path, agents=[gated]) as rt:
        with pytest.raises(fl.ApprovalError, match="expired"):
            rt.approve(token)  # records the expiry, which this runtime carries into the run
        deadline = time.monotonic() + 30
        while not any(r.type == "approval.expired" for r in rt.events("expired")):
            assert time.monotonic() < deadline, "no approval.expired in the run's log"
            time.sleep(0.01)
    _orphan(path)
    return Shop(path, token, lapsed)


def _orphan(path: Path) -> None:
    """A run whose runtime died mid-call (SIGKILL): listed as interrupted."""
    code = textwrap.dedent(
        f"""
        import time
        import foldloop as fl

        def forever(messages, tools):
            time.sleep(600)

        rt = fl.Runtime.open({str(path)!r})
        rt.spawn(fl.Agent(name="orphan", llm=fl.ScriptedLLM(forever)), "go", run_id="orphan")
        while not any(r.type == "model.requested" for r in rt.events("orphan")):
            time.sleep(0.01)
        print("CALLING", flush=True)
        time.sleep(600)
        """
    )
    child = subprocess.Popen(
        [sys.executable, "-c", code], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
    )
    try:
        assert child.stdout is not None
        while (line := child.stdout.readline()) and line.strip() != "CALLING":
            pass  # a host's log lines, if any, come first
        assert line.strip() == "CALLING"
    finally:
        child.kill()
        child.wait()


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> Shop:
    return _build_shop(tmp_path_factory.mktemp("shop") / "store")


def cli(store: Path, *args: str) -> tuple[int, str, str]:
    """The CLI in this process (for output only): exit code, stdout, stderr."""
    result = CliRunner().invoke(app, ["--store", str(store), *args])
    return result.exit_code, result.stdout, result.stderr


def script(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    """The installed ``foldloop`` script, a real process with stdout piped."""
    return subprocess.run(  # type: ignore[call-overload, no-any-return]
        [str(SCRIPT), *args], capture_output=True, text=True, timeout=60, **kwargs
    )


def on_terminal(args: Sequence[str], columns: int = 80) -> tuple[int, str]:
    """The script on a real pseudo-terminal ``columns`` wide: exit code and what it showed."""
    master, slave = pty.openpty()
    fcntl.ioctl(slave, termios.TIOCSWINSZ, struct.pack("HHHH", 50, columns, 0, 0))
    env = {k: v for k, v in os.environ.items() if k not in ("COLUMNS", "LINES", "FORCE_COLOR")}
    proc = subprocess.Popen(
        [str(SCRIPT), *args], stdin=slave, stdout=slave, stderr=slave, env=env, close_fds=True
    )
    os.close(slave)
    chunks = []
    while True:
        try:
            data = os.read(master, 65536)
        except OSError:  # EIO: the terminal's other side is closed
            break
        if not data:
            break
        chunks.append(data)
    os.close(master)
    shown = ANSI.sub("", b"".join(chunks).decode()).replace("\r\n", "\n")
    return proc.wait(timeout=60), shown


# -- piped and redirected output: never wrapped, never clipped ----------------------------


def test_piped_output_is_neither_wrapped_nor_clipped(shop: Shop) -> None:
    store = ["--store", str(shop.path)]
    runs = script(*store, "runs")
    assert runs.returncode == 0, runs.stderr
    (row,) = [line for line in runs.stdout.splitlines() if "cancelled" in line]
    assert LONG_REASON in row  # the whole reason, on the run's one line
    show = script(*store, "show", "cancelled")
    (reason,) = [line for line in show.stdout.splitlines() if line.startswith("reason: ")]
    assert reason.endswith(LONG_REASON)
    done = script(*store, "show", "done")
    assert f"output: {LONG_OUTPUT}" in done.stdout.splitlines()
    events = script(*store, "events", "done")
    completed = [line for line in events.stdout.splitlines() if "tool.completed" in line]
    assert len(completed) == 3 and all("x" * BIG_RESULT in line for line in completed)
    assert all(len(line) <= 80 for line in script("--help").stdout.splitlines())  # help fits
    tail = script(*store, "tail")
    assert any("x" * BIG_RESULT in line for line in tail.stdout.splitlines())
    explain = script(*store, "explain", "cancelled")
    (why,) = [line for line in explain.stdout.splitlines() if line.startswith("why: ")]
    assert why.endswith(LONG_REASON)


def test_a_terminal_gets_tables_that_fit_and_wide_shows_them_whole(shop: Shop) -> None:
    code, shown = on_terminal(["--store", str(shop.path), "runs"], columns=80)
    assert code == 0, shown
    lines = shown.splitlines()
    assert lines and all(len(line) <= 80 for line in lines), shown
    assert [line for line in lines if "cancelled" in line and line.rstrip(" │").endswith("…")]
    assert LONG_REASON not in shown
    code, shown = on_terminal(["--store", str(shop.path), "runs", "--wide"], columns=80)
    assert code == 0, shown
    assert LONG_REASON in shown
    code, shown = on_terminal(["--store", str(shop.path), "events", "done"], columns=80)
    assert code == 0 and all(len(line) <= 80 for line in shown.splitlines()), shown


@fl.tool(name="send_invoice_reminder")
def send_invoice_reminder(customer: str) -> str:
    """An effect behind an approval gate, with a tool name as long as real ones are."""
    return f"reminded {customer}"


def _ask_to_send(messages: object, tools: object) -> fl.Reply:
    return fl.Reply(tool_calls=[fl.ToolCall("send_invoice_reminder", {"customer": "x" * 300})])


@pytest.fixture(scope="module")
def spawned(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict[str, str]]:
    """Six runs with the ids spawn gives (``billing-4f1c2d3e5a6b``): four waiting for a
    person, two cancelled with a long reason. Returns the store and each run's status."""
    path = tmp_path_factory.mktemp("spawned") / "store"
    agent = fl.Agent(
        name="billing",
        llm=fl.ScriptedLLM(_ask_to_send),
        tools=[send_invoice_reminder],
        approvals=fl.RequireApproval({"send_invoice_reminder"}),
    )
    statuses = {}
    with fl.Runtime.open(path) as rt:
        for n in range(6):
            handle = rt.spawn(agent, "remind them")
            handle.wait(timeout=30)
            if n % 3 == 2:
                handle.cancel(LONG_REASON)
            statuses[handle.id] = "cancelled" if n % 3 == 2 else "awaiting_approval"
    return path, statuses


@pytest.mark.parametrize("columns", [60, 80, 100])
def test_a_terminal_never_cuts_the_ids_a_user_types_next(
    spawned: tuple[Path, dict[str, str]], columns: int
) -> None:
    path, statuses = spawned
    code, shown = on_terminal(["--store", str(path), "runs"], columns=columns)
    assert code == 0, shown
    for run_id, status in statuses.items():
        (row,) = [line for line in shown.splitlines() if run_id in line]
        assert re.search(rf"│ {status}\s+│ 1\s+│", row), shown  # status and steps whole
        assert "│ billing " in row, shown
    assert LONG_REASON not in shown  # the free text gave way, not the ids
    if columns >= 80:  # room for every id: the table fits the terminal too
        assert all(len(line) <= columns for line in shown.splitlines()), shown
    code, shown = on_terminal(["--store", str(path), "approvals"], columns=columns)
    assert code == 0, shown
    waiting = [run_id for run_id, status in statuses.items() if status == "awaiting_approval"]
    for run_id in waiting:
        (row,) = [line for line in shown.splitlines() if run_id in line]
        assert re.search(r"│ call_1_1\s+│ send_invoice_reminder\s+│", row), shown
        assert re.search(r"│ \d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00\s+│", row), shown
    if columns >= 100:  # below, a row's ids alone are wider: overflowing beats cutting one
        assert all(len(line) <= columns for line in shown.splitlines()), shown


# -- a reader that goes away ----------------------------------------------------------------


def _read_then_left(args: list[str], lines: int) -> None:
    """The script with ``args`` piped into ``head -LINES``: it ends quietly with 0."""
    line = shlex.join([str(SCRIPT), *args])
    proc = subprocess.run(
        ["bash", "-c", f'{line} | head -{lines} >/dev/null; echo "exit ${{PIPESTATUS[0]}}"'],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.stdout.strip() == "exit 0", proc.stderr
    assert proc.stderr == ""


@pytest.mark.parametrize(
    "command",
    [["events", "done"], ["events", "done", "--json"], ["tail"], ["export", "done"]],
    ids=" ".join,
)
def test_a_reader_that_leaves_ends_the_command_quietly_with_0(
    shop: Shop, command: list[str]
) -> None:
    _read_then_left(["--store", str(shop.path), *command], 1)


@pytest.mark.parametrize("lines", [2, 5])
def test_a_reader_that_leaves_the_demo_ends_it_quietly_with_0(tmp_path: Path, lines: int) -> None:
    """The demo prints its run's events from a subscription's thread: a reader leaving
    there ends the demo quietly too (it stopped the subscription with an error, exit 1)."""
    _read_then_left(["--store", str(tmp_path / "s"), "demo"], lines)


def test_the_demo_goes_on_beside_another_runs_pending_approval(tmp_path: Path) -> None:
    """A run of the store's left waiting for a person (a host's, an earlier demo's cut
    short): the demo approves only its own run's request, and shows only its run."""
    store = tmp_path / "s"
    agent = demo_agent()
    with fl.Runtime.open(store, agents=[agent]) as rt:
        left = rt.spawn(agent, "a run left waiting").wait(timeout=30)
        assert left.status is fl.RunStatus.AWAITING_APPROVAL
    proc = script("--store", str(store), "demo")
    assert proc.returncode == 0, proc.stderr
    assert left.run_id not in proc.stdout and proc.stdout.count("approval needed") == 1
    with fl.Runtime.open(store) as rt:
        assert rt.state(left.run_id).status is fl.RunStatus.AWAITING_APPROVAL
        assert [p.run_id for p in rt.pending_approvals()] == [left.run_id]


# -- output that cannot be written is 1, said ------------------------------------------------


@pytest.mark.parametrize("where", ["missing", "directory"])
def test_an_export_to_a_file_it_cannot_write_says_so_and_leaves_nothing(
    shop: Shop, tmp_path: Path, where: str
) -> None:
    target = tmp_path / "no" / "x.jsonl" if where == "missing" else tmp_path
    proc = script("--store", str(shop.path), "export", "done", "-o", str(target))
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr.startswith(f"error: could not write '{target}': "), proc.stderr
    assert "Traceback" not in proc.stderr and list(tmp_path.iterdir()) == []


def test_an_export_to_a_symlink_or_a_fifo_writes_through_it(shop: Shop, tmp_path: Path) -> None:
    """Only a regular file is replaced whole; a link (as /dev/stdout is) and a FIFO are
    written through, and stay what they are."""
    whole = script("--store", str(shop.path), "export", "done").stdout
    target, link = tmp_path / "target.jsonl", tmp_path / "link.jsonl"
    target.write_text("old")
    link.symlink_to(target)
    proc = script("--store", str(shop.path), "export", "done", "-o", str(link))
    assert proc.returncode == 0, proc.stderr
    assert link.is_symlink() and target.read_text() == whole
    target.write_text("old")

    def small_files() -> None:  # in the child: a file stops growing at 1 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    cut = script(
        "--store", str(shop.path), "export", "done", "-o", str(link), preexec_fn=small_files
    )
    assert cut.returncode == 1 and target.read_text() == "old", cut.stderr  # whole or none
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    read: list[str] = []
    reader = threading.Thread(target=lambda: read.append(fifo.read_text()), daemon=True)
    reader.start()
    proc = script("--store", str(shop.path), "export", "done", "-o", str(fifo))
    reader.join(30)
    assert proc.returncode == 0, proc.stderr
    assert read == [whole] and stat.S_ISFIFO(fifo.lstat().st_mode)


@pytest.mark.parametrize("command", [["export", "done"], ["runs"], ["events", "done"]])
def test_output_to_a_full_device_is_an_error_not_a_traceback(
    shop: Shop, command: list[str]
) -> None:
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [str(SCRIPT), "--store", str(shop.path), *command],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "error: could not write the output: No space left on device\n"


@pytest.mark.parametrize("unbuffered", ["1", ""])
def test_an_export_cut_short_by_a_full_disk_is_an_error(
    shop: Shop, tmp_path: Path, unbuffered: str
) -> None:
    """Unbuffered (PYTHONUNBUFFERED, as many container images set it) stdout's short write
    lost the rest of an export without a word, exit 0."""
    target = tmp_path / "out.jsonl"

    def small_files() -> None:  # in the child: a file stops growing at 1 KiB
        resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))

    env = {k: v for k, v in os.environ.items() if k != "PYTHONUNBUFFERED"}
    with target.open("w") as out:
        proc = subprocess.run(
            [str(SCRIPT), "--store", str(shop.path), "export", "done"],
            stdout=out,
            stderr=subprocess.PIPE,
            text=True,
            timeout=60,
            env={**env, "PYTHONUNBUFFERED": unbuffered} if unbuffered else env,
            preexec_fn=small_files,
        )
    assert proc.returncode == 1, proc.stderr
    assert proc.stderr == "error: could not write the output: File too large\n"


# -- not found is 3 -------------------------------------------------------------------------


def test_approving_a_run_that_is_not_there_exits_3(shop: Shop) -> None:
    proc = script("--store", str(shop.path), "approve", "--run", "nope", "--call", "c1")
    assert proc.returncode == 3, proc.stderr
    assert "no run 'nope'" in proc.stderr


@pytest.mark.parametrize(
    "args",
    [
        ["show", "nope"],
        ["events", "nope"],
        ["events", "nope", "--json"],
        ["explain", "nope"],
        ["export", "nope"],
        ["verify", "nope", "--agent", "foldloop.cli:demo_agent"],
        ["resume", "nope", "--agent", "foldloop.cli:demo_agent"],
        ["approve", "no-such-token"],
        ["deny", "no-such-token"],
        ["approve", "--run", "nope", "--call", "call_1_1"],
        ["deny", "--run", "nope", "--call", "call_1_1"],
        ["approve", "--run", "waiting", "--call", "no-such-call"],
        ["deny", "--run", "done", "--call", "call_1_1"],  # a call that was never gated
    ],
    ids=" ".join,
)
def test_not_found_is_exit_3_for_every_run_and_token(shop: Shop, args: list[str]) -> None:
    code, _, stderr = cli(shop.path, *args)
    assert code == 3, stderr
    assert not PYTHON_ADVICE.search(stderr), stderr


@pytest.mark.parametrize("option", ["--max-seconds", "--max-cost-usd"])
@pytest.mark.parametrize("value", ["0", "-1", "inf", "nan"])
def test_a_ceiling_to_raise_to_must_be_above_0_in_the_options_words(
    shop: Shop, option: str, value: str
) -> None:
    code, _, stderr = cli(
        shop.path, "resume", "limited", "--agent", "foldloop.cli:demo_agent", option, value
    )
    assert code == 2, stderr
    assert f"{option} is a ceiling to raise to: give a finite number above 0" in stderr
    assert "fl.Limits" not in stderr


# -- hints name CLI commands ----------------------------------------------------------------

NEXT_STEPS = {
    "limited": "foldloop resume limited --agent MODULE:ATTR --max-steps N",
    "stuck": "start a new run with other tools or instructions",
    "failing": "foldloop resume failing --agent MODULE:ATTR",
    "waiting": "foldloop approve --run waiting --call call_1_1",
    "expired": "foldloop resume expired --agent MODULE:ATTR",
    "orphan": "foldloop resume orphan --agent MODULE:ATTR",
    "cancelled": "start a new run",
    "done": "nothing",
}


def _own_lines(stdout: str) -> str:
    """What the CLI says itself: not the timeline, which shows the log as it was written
    (a recorded error may quote the library's advice to Python callers)."""
    return "\n".join(line for line in stdout.splitlines() if not re.match(r"\s+\d+ ", line))


@pytest.mark.parametrize("run", sorted(NEXT_STEPS))
def test_show_and_explain_say_what_next_in_cli_commands(shop: Shop, run: str) -> None:
    for command in ("show", "explain"):
        code, stdout, stderr = cli(shop.path, command, run)
        assert code == 0, stderr
        assert not PYTHON_ADVICE.search(_own_lines(stdout)), stdout
        if command == "explain" or run != "done":
            (next_line,) = [line for line in stdout.splitlines() if line.startswith("next: ")]
            assert NEXT_STEPS[run] in next_line, stdout


def test_every_listing_and_error_words_its_hints_for_the_shell(shop: Shop) -> None:
    code, stdout, _ = cli(shop.path, "runs")
    assert code == 0
    assert {"limit_reached", "no_progress", "failed", "awaiting_approval", "cancelled"} <= set(
        stdout.split()
    )
    assert "interrupted" in stdout
    assert not PYTHON_ADVICE.search(stdout), stdout
    outcomes = [
        cli(shop.path, "approve", "--", shop.lapsed_token),  # expired: asked again on resume
        cli(shop.path, "resume", "limited", "--agent", "foldloop.cli:demo_agent"),
        cli(shop.path, "show", "nope"),
    ]
    exported = script("--store", str(shop.path), "export", "done").stdout
    export_file = shop.path.parent / "done.jsonl"
    export_file.write_text(exported)
    outcomes.append(cli(shop.path, "import", str(export_file)))  # the run exists already
    codes = [code for code, _, _ in outcomes]
    assert codes == [1, 2, 3, 2], outcomes
    for _, stdout, stderr in outcomes:
        assert not PYTHON_ADVICE.search(stdout + stderr), stderr
    assert "expired at" in outcomes[0][2]
    assert "asked again by `foldloop resume lapsed --agent MODULE:ATTR`" in outcomes[0][2]
    code, _, stderr = cli(shop.path, "deny", "--", shop.expired_token)
    assert code == 1 and "already expired" in stderr and not PYTHON_ADVICE.search(stderr)
    assert "--agent MODULE:ATTR" in outcomes[1][2]
    assert "`foldloop runs`" in outcomes[2][2]
    assert "--run-id" in outcomes[3][2]


def test_counts_are_words_a_person_would_write(shop: Shop) -> None:
    code, stdout, _ = cli(shop.path, "explain", "limited")
    assert code == 0 and "is limit_reached after 1 step\n" in stdout, stdout
    code, stdout, _ = cli(shop.path, "explain", "done")
    assert code == 0 and "is completed after 2 steps\n" in stdout, stdout


# -- help ---------------------------------------------------------------------------------


def test_flags_show_no_bool_in_help() -> None:
    names = [c.name or c.callback.__name__ for c in app.registered_commands if c.callback]
    assert {"events", "tail", "metrics", "runs"} <= set(names)
    for args in ([], *([name] for name in names)):
        result = CliRunner().invoke(app, [*args, "--help"])
        assert result.exit_code == 0, result.output
        assert "<bool>" not in result.output, (args, result.output)
    events_help = CliRunner().invoke(app, ["events", "--help"]).output
    assert re.search(r"--json\s+One JSON object a line", events_help), events_help


# -- import -------------------------------------------------------------------------------


def _export_lines(shop: Shop) -> list[str]:
    return script("--store", str(shop.path), "export", "limited").stdout.splitlines()


@pytest.mark.parametrize(
    "case", ["garbage", "binary", "format", "truncated", "run-id", "time", "too big"]
)
def test_a_failed_import_leaves_no_store(shop: Shop, tmp_path: Path, case: str) -> None:
    lines = _export_lines(shop)
    header = json.loads(lines[0])
    bad = tmp_path / "bad.jsonl"
    extra: list[str] = []
    if case == "garbage":
        bad.write_text("this is not an export\n")
    elif case == "binary":
        bad.write_bytes(b"\xff\xfe\x00\x81" * 100)
    elif case == "format":
        bad.write_text("\n".join([json.dumps({**header, "format": 99}), *lines[1:]]) + "\n")
    elif case == "truncated":
        bad.write_text("\n".join(lines[:-1]) + "\n")
    elif case in ("time", "too big"):  # what no store can hold: a time past 64 bits, a
        started = json.loads(lines[1])  # value past the event size limit
        if case == "time":
            started["at"] = 2**63  # offsets from the next time would not fit
        else:
            started["event"]["input"] = "z" * 2_000_000
        bad.write_text("\n".join([lines[0], json.dumps(started), *lines[2:]]) + "\n")
    else:
        bad.write_text("\n".join(lines) + "\n")
        extra = ["--run-id", "not a valid id!"]
    fresh, empty = tmp_path / "fresh" / "store", tmp_path / "empty"
    empty.mkdir()
    for store in (fresh, empty):
        code, _, stderr = cli(store, "import", str(bad), *extra)
        assert code == 2, stderr
        assert "Traceback" not in stderr
    assert not fresh.exists() and not fresh.parent.exists()
    assert list(empty.iterdir()) == []


@pytest.mark.parametrize("char", ["\u2028", "\u2029", "\x85"])
def test_an_export_holding_line_separators_in_its_text_imports_whole(
    tmp_path: Path, char: str
) -> None:
    """JSON writes U+2028, U+2029 and NEL as they are: they split no line of the file."""
    agent = fl.Agent(name="sep", llm=fl.ScriptedLLM([fl.Reply(text=f"one{char}two")]))
    source, target = tmp_path / "a", tmp_path / "b"
    with fl.Runtime.open(source) as rt:
        run = rt.spawn(agent, f"in{char}put")
        assert run.wait(timeout=30).ok
        text = "\n".join(rt.export(run.id)) + "\n"
    exported = tmp_path / "run.jsonl"
    exported.write_text("\ufeff" + text.replace("\n", "\r\n"))  # an editor's BOM and CRLF too
    code, _, stderr = cli(target, "import", str(exported))
    assert code == 0, stderr
    with fl.Runtime.open(target) as rt:
        assert rt.state(run.id).output == f"one{char}two"
        assert rt.import_jsonl(text, run_id="whole-text") == "whole-text"  # one str: its lines
        assert rt.state("whole-text").output == f"one{char}two"


# -- the demo's hints run as printed --------------------------------------------------------


def _hints(stdout: str) -> list[str]:
    lines = stdout.splitlines()
    start = lines.index("Inspect what it wrote:")
    return [line.strip() for line in lines[start + 1 :] if line.strip()]


@pytest.mark.parametrize("how", ["script", "python -m"])
def test_the_demo_hints_work_with_no_virtualenv_activated(tmp_path: Path, how: str) -> None:
    env = {**os.environ, "PATH": "/usr/bin:/bin"}
    env.pop("VIRTUAL_ENV", None)
    start = [str(SCRIPT)] if how == "script" else [sys.executable, "-m", "foldloop"]
    demo = subprocess.run(
        [*start, "--store", "my store", "demo"],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert demo.returncode == 0, demo.stderr
    hints = _hints(demo.stdout)
    assert len(hints) == 6 and all(h.startswith(shlex.join(start)) for h in hints), hints
    for hint in hints:
        proc = subprocess.run(
            shlex.split(hint), cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120
        )
        assert proc.returncode == 0, (hint, proc.stderr)


def test_runs_lists_the_most_recently_updated_first_and_says_what_it_left_out(
    tmp_path: Path,
) -> None:
    """A table of thousands of runs takes seconds to draw: the default lists RUNS_LISTED,
    newest first, and says on stderr how many it left out and how to see them."""
    many = fl.Agent(name="many", llm=fl.ScriptedLLM(lambda messages, tools: fl.Reply(text="x")))
    store = tmp_path / "many"
    with fl.Runtime.open(store, agents=[many]) as rt:
        for handle in rt.spawn_many(many, [f"run {i}" for i in range(RUNS_LISTED + 5)]):
            assert handle.wait(timeout=30).ok
        newest = [r.run_id for r in sorted(rt.runs(), key=lambda r: -r.updated_at)]

    def listed(stdout: str) -> list[str]:
        return [word for line in stdout.splitlines() for word in line.split() if word in ids]

    ids = set(newest)
    code, stdout, stderr = cli(store, "runs")
    assert code == 0
    assert listed(stdout) == newest[:RUNS_LISTED]
    assert stderr.startswith(f"{RUNS_LISTED} of {RUNS_LISTED + 5} runs listed")
    assert stderr.endswith("narrow them\n") and stderr.count("\n") == 1  # whole, piped
    code, stdout, stderr = cli(store, "runs", "--limit", "2")
    assert (code, listed(stdout)) == (0, newest[:2])
    code, stdout, stderr = cli(store, "runs", "--limit", "0")
    assert (code, listed(stdout), stderr) == (0, newest, "")

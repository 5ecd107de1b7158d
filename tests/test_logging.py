"""foldloop is quiet until its host configures logging, then speaks through the host's logging.

Each host is a real Python process: what it prints is what a user would see.
"""

from __future__ import annotations

import json
import logging
import re
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import structlog

import foldloop as fl
from foldloop._approvals import PendingApproval
from foldloop._log import EventDict
from tests.log_capture import capture_logs

ROOT = Path(__file__).resolve().parents[1]

# One spawn and wait with a tool call, as a host writes it: the lines around it are the host's.
PROGRAM = textwrap.dedent(
    """
    import sys
    import foldloop as fl

    @fl.tool(idempotent=True)
    def add(a: int, b: int) -> int:
        '''Add two integers.'''
        return a + b

    agent = fl.Agent(
        name="adder",
        llm=fl.ScriptedLLM([
            fl.Reply(tool_calls=[fl.ToolCall("add", {"a": 1, "b": 2})]),
            fl.Reply(text="3"),
        ]),
        tools=[add],
    )
    with fl.Runtime.open(sys.argv[1], agents=[agent]) as rt:
        result = rt.spawn(agent, "1 + 2?", run_id="sum-1").wait(timeout=60)
    assert result.ok, result
    """
)

# A real warning: a cost ceiling priced with a price table years out of date.
STALE = textwrap.dedent(
    """
    import sys
    import foldloop as fl

    agent = fl.Agent(
        name="pricey",
        llm=fl.ScriptedLLM([fl.Reply(text="ok")]),
        limits=fl.Limits(max_cost_usd=1.0),
        pricing=fl.Pricing(as_of="2000-01-01", stale="warn"),
    )
    with fl.Runtime.open(sys.argv[1], agents=[agent]) as rt:
        assert rt.spawn(agent, "go", run_id="stale-1").wait(timeout=60).ok
    """
)


def host(setup: str, program: str, store: Path) -> subprocess.CompletedProcess[str]:
    """Run ``setup`` then ``program`` in a fresh interpreter, as the host's own script."""
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(setup) + "\n" + program, str(store)],
        capture_output=True,
        text=True,
        timeout=120,
    )


def logging_section() -> str:
    text = (ROOT / "README.md").read_text()
    match = re.search(r"^### Logging\n(.*?)(?=^##)", text, flags=re.S | re.M)
    assert match is not None, "README.md has no '### Logging' section"
    return match.group(1)


def test_a_spawn_with_nothing_configured_prints_nothing(tmp_path: Path) -> None:
    check = "\nsys.exit(3 if 'structlog' in sys.modules else 0)\n"
    proc = host("", PROGRAM + check, tmp_path / "s")
    assert (proc.stdout, proc.stderr) == ("", "")
    assert proc.returncode == 0, "structlog was imported: logging cost a run its import"


def test_a_warning_with_nothing_configured_prints_nothing(tmp_path: Path) -> None:
    """The NullHandler keeps Python's last-resort handler from printing foldloop's warnings."""
    proc = host("", STALE, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert (proc.stdout, proc.stderr) == ("", "")


def test_basic_config_shows_lifecycle_lines_with_their_fields_on_stderr(tmp_path: Path) -> None:
    setup = """
        import logging
        logging.basicConfig(level=logging.DEBUG, format="%(levelname)s %(name)s %(message)s")
    """
    proc = host(setup, PROGRAM, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    lines = proc.stderr.splitlines()
    for pattern in (
        rf"INFO foldloop\.\S+ runtime_opened path={re.escape(str(tmp_path / 's'))} owner=\S+$",
        r"INFO foldloop\.\S+ run_started run_id=sum-1 agent=adder$",
        r"INFO foldloop\.\S+ run_finished run_id=sum-1 agent=adder status=completed steps=2 ",
        r"INFO foldloop\.\S+ runtime_closed owner=\S+$",
    ):
        assert any(re.match(pattern, line) for line in lines), (pattern, proc.stderr)


def test_a_warning_reaches_the_hosts_logging(tmp_path: Path) -> None:
    setup = "import logging\nlogging.basicConfig()\n"  # WARNING and up, to stderr
    proc = host(setup, STALE, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert re.search(
        r"^WARNING:foldloop\.\S+:pricing_stale agent=pricey age_days=\d+ as_of=2000-01-01$",
        proc.stderr,
        flags=re.M,
    ), proc.stderr
    assert "run_started" not in proc.stderr  # INFO stays below the host's level


def test_a_pool_worker_logs_its_warnings_to_the_pools_stderr(tmp_path: Path) -> None:
    """A worker process is a host of its own: it logs at the pool's log_level to stderr."""
    program = """
import sys
import foldloop as fl
with fl.WorkerPool(sys.argv[1], agents=["tests.logging_agents:stale"], processes=1) as pool:
    assert pool.spawn("pricey", "go").wait(timeout=60).ok
"""
    proc = subprocess.run(
        [sys.executable, "-c", program, str(tmp_path / "s")],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=ROOT,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert re.fullmatch(
        r"WARNING foldloop\.\S+ \[worker \d+\]: pricing_stale agent=pricey age_days=\d+ "
        r"as_of=2000-01-01\n",
        proc.stderr,
    ), proc.stderr


def test_records_point_at_the_line_that_logged(tmp_path: Path) -> None:
    setup = """
        import logging
        logging.basicConfig(level=logging.INFO, format="%(pathname)s:%(funcName)s %(message)s")
    """
    proc = host(setup, PROGRAM, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    started = next(line for line in proc.stderr.splitlines() if " run_started " in line)
    where = started.split()[0]
    assert "/foldloop/" in where and not where.startswith(str(ROOT / "foldloop" / "_log.py"))


def readme_python(kind: str) -> str:
    blocks = re.findall(r"```python\n(.*?)```", logging_section(), flags=re.S)
    (block,) = [b for b in blocks if (kind == "structlog") == ("import structlog" in b)]
    return str(block)


def test_readme_plain_logging_block(tmp_path: Path) -> None:
    proc = host(readme_python("logging"), PROGRAM, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    assert "run_started run_id=sum-1 agent=adder" in proc.stderr, proc.stderr


def test_readme_structlog_block_gives_the_formatter_the_event_dicts(tmp_path: Path) -> None:
    proc = host(readme_python("structlog"), PROGRAM, tmp_path / "s")
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == ""
    entries = [json.loads(line) for line in proc.stderr.splitlines()]
    by_event = {e["event"]: e for e in entries}
    started = by_event["run_started"]
    assert started["run_id"] == "sum-1"
    assert started["agent"] == "adder"
    assert started["level"] == "info"
    assert started["logger"].startswith("foldloop.")
    assert "timestamp" in started
    assert by_event["run_finished"]["status"] == "completed"
    assert by_event["run_finished"]["steps"] == 2


@pytest.fixture
def foldloop_records() -> Iterator[list[logging.LogRecord]]:
    """Every record foldloop logs, at any level, while the test runs."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("foldloop")
    handler, level = Keep(logging.DEBUG), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield records
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)


def test_an_exception_reaches_both_kinds_of_formatter_with_its_traceback(
    rt: fl.Runtime, foldloop_records: list[logging.LogRecord]
) -> None:
    seen = threading.Event()

    def broken(pending: PendingApproval) -> None:
        try:
            raise RuntimeError("the chat service is down")
        finally:
            seen.set()

    @fl.tool
    def pay(to: str) -> str:
        """Pay someone."""
        return f"paid {to}"

    agent = fl.Agent(
        name="payer",
        llm=fl.ScriptedLLM([fl.Reply(tool_calls=[fl.ToolCall("pay", {"to": "bob"})])]),
        tools=[pay],
        approvals=fl.RequireApproval({"pay"}, notify=broken),
    )
    run = rt.spawn(agent, "pay bob")
    assert seen.wait(30)

    def failed() -> logging.LogRecord | None:
        failures = (r for r in foldloop_records if fields(r)["event"] == "approval_notify_failed")
        return next(failures, None)

    wait_until(lambda: failed() is not None)
    record = failed()
    assert record is not None and record.levelno == logging.ERROR

    plain = logging.Formatter("%(message)s").format(record).splitlines()
    assert plain[0].startswith(f"approval_notify_failed run_id={run.id} call_id=")
    assert plain[-1] == "RuntimeError: the chat service is down"

    formatter = structlog.stdlib.ProcessorFormatter(
        processors=[
            structlog.stdlib.ProcessorFormatter.remove_processors_meta,
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ]
    )
    line = json.loads(formatter.format(record))
    assert (line["event"], line["run_id"]) == ("approval_notify_failed", run.id)  # fields, not text
    assert line["exception"].endswith("RuntimeError: the chat service is down")


def fields(record: logging.LogRecord) -> EventDict:
    assert isinstance(record.msg, EventDict), record.msg
    return record.msg


def test_capture_logs_sees_the_bound_run_fields(rt: fl.Runtime) -> None:
    agent = fl.Agent(name="quiet", llm=fl.ScriptedLLM([fl.Reply(text="ok")]))
    with capture_logs() as logs:
        rt.spawn(agent, "go", run_id="q-1").wait(timeout=30)
        wait_until(lambda: any(e["event"] == "run_finished" for e in logs))
    finished = next(e for e in logs if e["event"] == "run_finished")
    assert finished["run_id"] == "q-1"
    assert (finished["agent"], finished["log_level"]) == ("quiet", "info")


def test_values_that_would_not_read_as_one_token_are_quoted() -> None:
    text = str(EventDict(event="e", a="two words", b="x\ny", c=3, d="", e="k=v", f="ok"))
    assert text == "e a='two words' b='x\\ny' c=3 d='' e='k=v' f=ok"


def test_import_leaves_one_null_handler_on_the_foldloop_logger() -> None:
    handlers = logging.getLogger("foldloop").handlers
    assert [type(h) for h in handlers if not _is_test_handler(h)] == [logging.NullHandler]


def _is_test_handler(handler: logging.Handler) -> bool:
    return type(handler).__module__.startswith(("_pytest", "tests."))


def wait_until(condition: Any, timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.01)):
        if condition():
            return
        done.wait(0.01)
    raise AssertionError("condition not met in time")

"""A tool result longer than the tool's max_result_chars is cut, never silently: the event
records how long it was, the model is told, and a warning is logged."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest

import foldloop as fl
from foldloop.core._messages import Message, ToolSpec
from foldloop.events import ToolCompleted, ToolFailed
from foldloop.tools._decorator import DEFAULT_MAX_RESULT_CHARS, MAX_RESULT_BYTES, ToolOutcome

README = Path(__file__).resolve().parent.parent / "README.md"
BIG = 5_000_000


class Records(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.DEBUG)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def cut(self) -> list[str]:
        return [r.getMessage() for r in self.records if "tool_result_cut" in r.getMessage()]


@pytest.fixture
def logged() -> Iterator[Records]:
    handler = Records()
    logger = logging.getLogger("foldloop")
    old_level = logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    try:
        yield handler
    finally:
        logger.removeHandler(handler)
        logger.setLevel(old_level)


class Model:
    """Calls ``tool`` once, then answers; keeps every prompt it was given."""

    def __init__(self, tool: str) -> None:
        self.tool = tool
        self.prompts: list[list[Message]] = []

    def __call__(self, messages: Sequence[Message], tools: Sequence[ToolSpec]) -> fl.Reply:
        self.prompts.append(list(messages))
        if len(self.prompts) == 1:
            return fl.Reply(tool_calls=[fl.ToolCall(self.tool, {})])
        return fl.Reply(text="read it")


def run_once(tmp_path: Path, tool: fl.types.Tool) -> tuple[Model, list[object], fl.types.RunResult]:
    model = Model(tool.name)
    agent = fl.Agent(name="reader", llm=fl.ScriptedLLM(model), tools=[tool])
    with fl.Runtime.open(tmp_path / "store", agents=[agent]) as rt:
        run = rt.spawn(agent, "read the file")
        result = run.wait(timeout=60)
        events = [r.event for r in rt.events(run.id)]
        rt.verify(run.id)  # the recorded cut replays to the same events
    return model, events, result


@fl.tool
def dump() -> str:
    """Return a very long text."""
    return "x" * BIG


def test_a_5_mb_result_is_cut_recorded_told_and_logged(tmp_path: Path, logged: Records) -> None:
    model, events, result = run_once(tmp_path, dump)
    assert result.status is fl.RunStatus.COMPLETED
    (done,) = [e for e in events if isinstance(e, ToolCompleted)]
    assert done.original_chars == BIG
    assert done.result == "x" * DEFAULT_MAX_RESULT_CHARS
    told = model.prompts[1][-1]
    assert told.role == "tool" and told.content.startswith(done.result)
    assert told.content.endswith(
        f"[cut: the tool returned {BIG:,} characters; only the first "
        f"{DEFAULT_MAX_RESULT_CHARS:,} are shown, {BIG - DEFAULT_MAX_RESULT_CHARS:,} were "
        "left out]"
    )
    (line,) = logged.cut()
    assert f"kept={DEFAULT_MAX_RESULT_CHARS}" in line and f"original={BIG}" in line
    assert "tool=dump" in line and "call_id=" in line and f"run_id={result.run_id}" in line
    assert [r.levelno for r in logged.records if "tool_result_cut" in r.getMessage()] == [
        logging.WARNING
    ]


@fl.tool(max_result_chars=10)
def short() -> str:
    """Return 25 characters."""
    return "abcdefghij" + "-" * 15


@fl.tool(max_result_chars=10)
def exact() -> str:
    """Return 10 characters."""
    return "0123456789"


def test_the_limit_is_the_tools_own_and_a_result_that_fits_is_untouched(
    tmp_path: Path, logged: Records
) -> None:
    model, events, _ = run_once(tmp_path / "short", short)
    (done,) = [e for e in events if isinstance(e, ToolCompleted)]
    assert (done.result, done.original_chars) == ("abcdefghij", 25)
    assert "returned 25 characters; only the first 10 are shown" in model.prompts[1][-1].content
    model, events, _ = run_once(tmp_path / "exact", exact)
    (done,) = [e for e in events if isinstance(e, ToolCompleted)]
    assert (done.result, done.original_chars) == ("0123456789", None)
    assert model.prompts[1][-1].content == "0123456789"
    assert len(logged.cut()) == 1  # only the cut one


@fl.tool(max_result_chars=100)
def shout() -> str:
    """Raise with a long message."""
    raise RuntimeError("!" * 1000)


def test_a_long_error_is_cut_the_same_way(tmp_path: Path, logged: Records) -> None:
    model, events, _ = run_once(tmp_path, shout)
    (failed,) = [e for e in events if isinstance(e, ToolFailed)]
    assert len(failed.error) == 100 and failed.original_chars == len("RuntimeError: ") + 1000
    told = model.prompts[1][-1].content
    assert told.startswith("error (exception): RuntimeError: !!!")
    assert "only the first 100 are shown" in told
    assert len(logged.cut()) == 1


@fl.tool
def smileys() -> str:
    """Return wide characters: 4 bytes each in UTF-8."""
    return "\N{GRINNING FACE}" * DEFAULT_MAX_RESULT_CHARS


def test_wide_characters_are_cut_to_what_the_log_holds(tmp_path: Path, logged: Records) -> None:
    """Within the character limit but over what one event may take: cut, not refused."""
    _model, events, result = run_once(tmp_path, smileys)
    assert result.status is fl.RunStatus.COMPLETED
    (done,) = [e for e in events if isinstance(e, ToolCompleted)]
    assert len(done.result.encode()) <= MAX_RESULT_BYTES
    assert done.original_chars == DEFAULT_MAX_RESULT_CHARS
    assert len(done.result) == MAX_RESULT_BYTES // 4
    assert len(logged.cut()) == 1


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "10", MAX_RESULT_BYTES + 1])
def test_max_result_chars_must_be_a_whole_number_the_log_can_hold(bad: object) -> None:
    why = rf"max_result_chars must be .*; got {re.escape(repr(bad))}"
    with pytest.raises(fl.ConfigError, match=why):

        @fl.tool(max_result_chars=bad)  # type: ignore[arg-type]
        def t() -> str:
            """T."""
            return ""


def test_the_readme_documents_the_limit() -> None:
    tools = README.read_text().split("### Tools", 1)[1].split("\n### ", 1)[0]
    assert "max_result_chars" in tools
    assert f"{DEFAULT_MAX_RESULT_CHARS:,}" in tools
    assert "tool_result_cut" in tools and "original_chars" in tools


class Unprintable(Exception):
    def __str__(self) -> str:
        raise RuntimeError("no message for you")


@fl.tool(timeout=None)
def loops_back() -> list[object]:
    """Return a list that holds itself (no JSON can say it)."""
    looped: list[object] = []
    looped.append(looped)
    return looped


@fl.tool(timeout=None)
def unprintable() -> str:
    """Raise an error whose message cannot be read."""
    raise Unprintable


@pytest.mark.parametrize("tool", [loops_back, unprintable], ids=lambda t: t.name)
def test_a_failure_that_cannot_be_put_in_words_is_still_the_calls_outcome(
    tmp_path: Path, tool: fl.types.Tool
) -> None:
    """Neither may escape as an error of the pool's thread: with no timeout, the run would
    wait for the call for ever."""
    outcome = tool.invoke("{}")
    assert (outcome.ok, outcome.kind) == (False, "exception"), outcome
    _model, events, result = run_once(tmp_path, tool)
    assert result.ok, result
    failed = [e for e in events if isinstance(e, ToolFailed)]
    assert [f.kind for f in failed] == ["exception"]
    assert failed[0].error == outcome.text


class Broken(fl.types.Tool):
    """A Tool whose invoke itself raises (a subclass's bug, not the function's failure)."""

    def invoke(self, args: str) -> ToolOutcome:
        raise LookupError("no such backend")


class BrokenAsync(fl.types.Tool):
    """The same of an async def tool: its ainvoke raises."""

    async def ainvoke(self, args: str) -> ToolOutcome:
        raise LookupError("no such backend")


@pytest.mark.parametrize("form", ["sync", "async"])
def test_a_tool_whose_invoke_raises_fails_the_call_at_once(tmp_path: Path, form: str) -> None:
    def lookup() -> str:
        """Look it up."""
        return "never"

    async def alookup() -> str:
        """Look it up."""
        return "never"

    tool = Broken(lookup, timeout=None) if form == "sync" else BrokenAsync(alookup, timeout=None)
    _model, events, result = run_once(tmp_path, tool)
    assert result.ok, result
    failed = [e for e in events if isinstance(e, ToolFailed)]
    assert [(f.kind, f.error) for f in failed] == [("exception", "LookupError: no such backend")]

"""fl.Limits and the other host-written values check themselves where they are written;
a run recorded before a check existed still reads, folds and resumes."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st

import foldloop as fl
from foldloop.core import ModelPrice
from foldloop.events import RunLimitReached, RunResumed, RunStarted, decode_event, encode_event
from foldloop.events._jsonl import dump_run
from foldloop.events._recorded import Recorded
from foldloop.events._values import LIMIT_RULES, MAX_INT, as_recorded

WHOLE = {"max_steps": 1, "max_tokens": 1, "no_progress": 2, "max_children": 1, "max_depth": 0}
"""The whole-number fields and the least each allows."""
POSITIVE = ("max_seconds", "max_cost_usd")

not_a_number = st.text(max_size=5) | st.booleans() | st.lists(st.integers(), max_size=1)


def invalid(field: str) -> st.SearchStrategy[Any]:
    """Values ``field`` refuses."""
    if field in WHOLE:
        return (
            st.integers(max_value=WHOLE[field] - 1)
            | st.integers(min_value=MAX_INT + 1)
            | st.floats()  # 3.0 too: the log would store a float where it reads an int
            | not_a_number
        )
    return (
        st.floats(max_value=0)
        | st.sampled_from([math.nan, math.inf, -math.inf])
        | st.integers(max_value=0)
        | not_a_number
    )


def valid(field: str) -> st.SearchStrategy[Any]:
    """Values ``field`` accepts (None: the default)."""
    if field in WHOLE:
        return st.none() | st.integers(WHOLE[field], MAX_INT)
    return st.none() | st.floats(0, 1e300, exclude_min=True) | st.integers(1, 10**12)


@given(st.sampled_from(sorted(LIMIT_RULES)), st.data())
def test_any_invalid_value_of_any_field_raises_config_error_naming_it(
    field: str, data: Any
) -> None:
    value = data.draw(invalid(field))
    with pytest.raises(fl.ConfigError) as caught:
        fl.Limits(**{field: value})
    message = str(caught.value)
    assert f"{field}={value!r}" in message
    assert LIMIT_RULES[field][0] in message  # what is allowed


def test_the_reported_cases_fail_where_they_are_written() -> None:
    for kwargs in (
        {"max_steps": 0},
        {"max_steps": -1},
        {"max_tokens": -5},
        {"max_seconds": -1.0},
        {"max_cost_usd": -0.01},
        {"no_progress": 0},
        {"max_seconds": math.nan},
        {"max_steps": 1.5},
        {"max_steps": True},
        {"max_steps": "3"},
    ):
        with pytest.raises(fl.ConfigError, match=next(iter(kwargs))):
            fl.Limits(**kwargs)  # type: ignore[arg-type]


limits = st.builds(fl.Limits, **{field: valid(field) for field in LIMIT_RULES})


@given(limits)
def test_any_valid_limits_round_trip_through_the_codec(value: fl.Limits) -> None:
    started = RunStarted(agent="a", input="go", limits=value)
    assert decode_event(encode_event(started)) == started
    resumed = RunResumed(owner="o", extended_limits=value)
    assert decode_event(encode_event(resumed)) == resumed
    assert msgspec.msgpack.decode(msgspec.msgpack.encode(value), type=fl.Limits) == value


@given(limits, limits)
def test_an_extension_of_valid_limits_is_valid(base: fl.Limits, ext: fl.Limits) -> None:
    extended = base.extended(ext)
    assert fl.Limits(**msgspec.structs.asdict(extended)) == extended


def _effective(value: fl.Limits) -> dict[str, float | None]:
    """Each ceiling as a run meets it (an unset one with a default counts as its default)."""
    return {
        "max_steps": value.steps_ceiling,
        "max_tokens": value.max_tokens,
        "max_seconds": value.max_seconds,
        "max_cost_usd": value.max_cost_usd,
        "no_progress": value.no_progress_window,
        "max_children": value.children_ceiling,
        "max_depth": value.depth_ceiling,
    }


@given(limits, limits)
def test_an_extension_only_ever_raises_a_ceiling(base: fl.Limits, ext: fl.Limits) -> None:
    # README: "a value at or below the current ceiling changes nothing: ceilings are only
    # raised". An unset max_depth is 3, not "none yet": extending it to 0 lowered it.
    before, after = _effective(base), _effective(base.extended(ext))
    for name, was in before.items():
        asked = getattr(ext, name)
        if asked is None:
            assert after[name] == was, name
        elif was is None:  # no ceiling before (tokens, seconds, dollars): the extension sets one
            assert after[name] == asked, name
        else:
            assert after[name] == max(was, asked), name


def test_a_stored_record_with_a_limit_refused_today_decodes_as_recorded() -> None:
    # run.started as an older foldloop stored it: by position, limits by name.
    raw = msgspec.msgpack.encode(
        ["run.started", "a", "go", {"max_steps": 0, "no_progress": 0}, "", None, [], "", []]
    )
    event = decode_event(raw)
    assert isinstance(event, RunStarted)
    assert (event.limits.max_steps, event.limits.no_progress) == (0, 0)
    with pytest.raises(fl.ConfigError, match="max_steps=0"):
        fl.Limits(max_steps=0)  # reading it did not turn the check off


def test_a_run_recorded_with_a_limit_refused_today_reads_and_resumes(tmp_path: Path) -> None:
    """An export of such a run (the way from an older store) imports, folds, explains and
    resumes: nothing recorded is lost to a check added later."""
    agent = fl.Agent(name="legacy", llm=fl.ScriptedLLM([fl.Reply(text="done")]))
    with as_recorded():
        old = fl.Limits(max_steps=0, no_progress=0)
    events = [
        RunStarted(
            agent="legacy",
            input="go",
            limits=old,
            tools_digest=agent.tools_digest,
            tools=agent.tool_infos,
        ),
        RunLimitReached(limit="max_steps", value=0, ceiling=0),
    ]
    records = [
        Recorded(run_id="old", seq=i, position=i, at=i, event=e) for i, e in enumerate(events, 1)
    ]
    with fl.Runtime.open(tmp_path / "store", agents=[agent]) as rt:
        run_id = rt.import_jsonl(dump_run("old", records))
        assert [r.event for r in rt.events(run_id)] == events
        state = rt.state(run_id)
        assert state.status is fl.RunStatus.LIMIT_REACHED and state.limits == old
        assert "max_steps" in rt.explain(run_id).reason
        result = rt.resume(run_id, extend=fl.Limits(max_steps=2)).wait(timeout=30)
        assert (result.status, result.output) == (fl.RunStatus.COMPLETED, "done")
        assert rt.state(run_id).limits.max_steps == 2


@pytest.mark.parametrize(
    ("build", "field"),
    [
        (lambda: fl.Pricing(as_of="yesterday"), "as_of"),
        (lambda: fl.Pricing(as_of="2026-11-01", stale="never"), "stale"),  # type: ignore[arg-type]
        (lambda: fl.Pricing(as_of="2026-11-01", max_age_days=-1), "max_age_days"),
        (lambda: fl.Pricing(as_of="2026-11-01", prices={"m": (1.0, 2.0)}), "prices"),  # type: ignore[dict-item]
        (lambda: ModelPrice(-1.0, 2.0), "input_per_mtok"),
        (lambda: ModelPrice(1.0, math.nan), "output_per_mtok"),
    ],
)
def test_a_bad_price_table_fails_where_it_is_written(build: Any, field: str) -> None:
    with pytest.raises(fl.ConfigError, match=field):
        build()


@pytest.mark.parametrize("timeout", [0, -1, math.nan, math.inf, True, "30"])
def test_a_tool_timeout_that_cannot_work_is_refused(timeout: object) -> None:
    with pytest.raises(fl.ConfigError, match="timeout"):

        @fl.tool(timeout=timeout)  # type: ignore[arg-type]
        def slow() -> str:
            """Slow."""
            return ""

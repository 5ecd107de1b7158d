"""The runtime's small rules: argument checks, price-table policy, merging decisions, the
error of spawns cut short.

Pure functions of their arguments (plus a warning log for stale prices), kept apart from
the facade so each reads on its own.
"""

from __future__ import annotations

import datetime
import re
import secrets
from collections.abc import Iterable, Mapping

import msgspec

from foldloop._agent import Agent
from foldloop._log import get_logger
from foldloop.core._decide import decide
from foldloop.core._effects import Decision, Effect, Settle
from foldloop.core._evolve import apply
from foldloop.core._state import RunState
from foldloop.errors import ConfigError, FoldloopError, SpawnError
from foldloop.events._codec import encode_event, plain_str, unpaired_surrogate
from foldloop.events._values import Limits
from foldloop.store import MAX_EVENT_BYTES

__all__ = [
    "NothingToDo",
    "check_cap",
    "check_decision",
    "check_run_id",
    "check_spawn",
    "check_text",
    "evolve_all",
    "input_room",
    "iso",
    "merged",
    "metadata_pairs",
    "new_run_id",
    "plain_metadata",
    "priced_limits",
    "tool_drift",
]

log = get_logger("foldloop.runtime")

_RUN_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")

MAX_NOTE_BYTES = 64 * 1024
"""The most a decision's ``note`` and ``by`` may take together: they are told to the model
and stored twice (the approvals table, the run's ``approval.decided``)."""


def priced_limits(agent: Agent, now: int) -> Limits:
    """The agent's limits, given how old its price table is (its ``stale`` policy decides)."""
    limits, pricing = agent.limits, agent.pricing
    if limits.max_cost_usd is None:
        return limits
    today = datetime.datetime.fromtimestamp(now / 1e9, tz=datetime.UTC).date()
    age = pricing.age_days(today)
    if age <= pricing.max_age_days:
        return limits
    why = (
        f"agent {agent.name!r}: the price table is {age} days old (as of {pricing.as_of}, "
        f"over {pricing.max_age_days}), so max_cost_usd may be off"
    )
    if pricing.stale == "refuse":
        raise ConfigError(why, advice="update the prices (fl.Pricing) or choose stale='warn'")
    if pricing.stale == "tokens_only":
        log.warning("pricing_stale_cost_ceiling_dropped", agent=agent.name, age_days=age)
        return msgspec.structs.replace(limits, max_cost_usd=None)
    log.warning("pricing_stale", agent=agent.name, age_days=age, as_of=pricing.as_of)
    return limits


class NothingToDo(Exception):
    """A lease was taken, but there was nothing to apply under it."""


def merged(decisions: list[Decision], state: RunState) -> Decision:
    """The effects of several decisions in a row: every effect but the earlier Settles."""
    effects: list[Effect] = [
        e for d in decisions[:-1] for e in d.effects if not isinstance(e, Settle)
    ]
    effects.extend(decisions[-1].effects)
    return Decision(effects=tuple(effects), state=state)


def iso(ns: int) -> str:
    """``ns`` (unix ns) as an ISO 8601 UTC timestamp."""
    return datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC).isoformat(timespec="seconds")


def evolve_all(state: RunState, decision: Decision, at: int) -> RunState:
    """The state after a committed decision (its own, or its events applied)."""
    if decision.state is not None:
        return decision.state
    for event in decision.events:
        state = apply(state, event, at)
    return state


def new_run_id(agent: str) -> str:
    """A fresh run id for a run of ``agent`` (``calc-1a2b3c4d5e6f``)."""
    return f"{agent}-{secrets.token_hex(6)}"


def check_text(what: str, value: object) -> None:
    """Refuse what the log cannot hold as text, naming the value and the rule."""
    if not isinstance(value, str):
        raise ConfigError(f"{what} must be a str; got {type(value).__name__}")
    bad = unpaired_surrogate(value)
    if bad is not None:
        raise ConfigError(
            f"{what} contains an unpaired surrogate (U+{ord(value[bad]):04X}) at index "
            f"{bad}; text must be valid Unicode (decode bytes with errors='replace')"
        )


def check_decision(
    token: object, run_id: object, call_id: object, by: object, note: object
) -> None:
    """Refuse an approval decision's arguments before anything is written."""
    if token is not None:
        check_text("token", token)
    if run_id is not None:
        check_run_id(run_id)
    if call_id is not None:
        check_text("call_id", call_id)
    check_text("by", by)
    check_text("note", note)
    size = len(str(by).encode()) + len(str(note).encode())  # both str: check_text said so
    if size > MAX_NOTE_BYTES:
        raise ConfigError(
            f"note and by are {size:,} bytes together, over the {MAX_NOTE_BYTES:,} a decision "
            "may carry",
            advice="keep the note short (it is told to the model); link to anything longer",
        )


def check_cap(name: str, value: object) -> None:
    """Refuse a cap (``max_model_calls``, ``max_active_runs``) that is not None or an int >= 1."""
    if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value < 1):
        raise ConfigError(f"{name} must be an int >= 1, or None for no cap; got {value!r}")


def check_run_id(run_id: object) -> None:
    """Refuse a run id the store and the CLI cannot carry safely."""
    if not isinstance(run_id, str) or not _RUN_ID.match(run_id):
        raise ConfigError(f"run_id must be 1-128 characters of [A-Za-z0-9._:-]; got {run_id!r}")


def check_inputs(inputs: object) -> None:
    """Refuse what ``spawn_many`` cannot take as its inputs (one str would be its letters)."""
    if isinstance(inputs, str) or not isinstance(inputs, Iterable):
        raise ConfigError(
            f"spawn_many takes a list of str inputs; got a {type(inputs).__name__}",
            advice="spawn() takes one input",
        )


def plain_metadata(metadata: Mapping[str, str] | None) -> dict[str, str] | None:
    """Checked metadata (``check_spawn``) as it is recorded: plain str keys and values."""
    if metadata is None:
        return None
    return {plain_str(key): plain_str(value) for key, value in metadata.items()}


def metadata_pairs(metadata: Mapping[str, str] | None) -> tuple[tuple[str, str], ...]:
    """Checked metadata as run.started records it: sorted pairs of plain str."""
    return tuple(sorted((plain_metadata(metadata) or {}).items()))


_STR_HEADER_GROWTH = 4
"""Bytes a msgpack str's header grows by from an empty one to the longest (1 to 5)."""


def input_room(
    agent: Agent,
    *,
    now: int,
    limits: Limits,
    metadata: tuple[tuple[str, str], ...],
    parent_run_id: str | None,
    max_event_bytes: int,
) -> int:
    """The bytes an input may take in its run.started: an event's limit less what the event
    records besides (the agent's instructions, tools and limits, the metadata); refused
    when that leaves none."""
    probe = agent.start("", now=now, metadata=metadata, parent_run_id=parent_run_id, limits=limits)
    besides = len(encode_event(decide(RunState(run_id="room"), probe).events[0]))
    besides += _STR_HEADER_GROWTH
    if besides >= max_event_bytes:
        raise ConfigError(
            f"agent {agent.name!r}'s run.started takes {besides:,} bytes without its input (the "
            f"instructions, tools and limits, the metadata), over the {max_event_bytes:,}-byte "
            "limit of an event: no input fits",
            advice="keep large instructions or metadata outside the log and pass a reference",
        )
    return max_event_bytes - besides


def check_spawn(
    input: object,
    run_id: object,
    metadata: object,
    parent_run_id: object,
    *,
    room: int | None = None,
) -> None:
    """Refuse a spawn's arguments before anything is written (``run_id`` and
    ``parent_run_id`` may be None: a run id is made, no parent is recorded; ``room``: the
    bytes its run.started leaves the input, when known)."""
    check_text("input", input)
    assert isinstance(input, str)  # check_text said so
    size = len(plain_str(input).encode())  # as it is recorded
    if size > MAX_EVENT_BYTES:  # its run.started could not be stored (nor any of a spawn_many)
        raise ConfigError(
            f"input is {size:,} bytes, over the {MAX_EVENT_BYTES:,}-byte limit of an event",
            advice="keep large data outside the log and pass a reference to it",
        )
    if room is not None and size > room:
        raise ConfigError(
            f"input is {size:,} bytes; with what its run.started event records besides (the "
            f"agent's instructions, tools and limits, the metadata) it leaves room for "
            f"{max(room, 0):,}, under the limit of an event",
            advice="keep large data outside the log and pass a reference to it",
        )
    if run_id is not None:
        check_run_id(run_id)
    if parent_run_id is not None:
        check_run_id(parent_run_id)
    if metadata is None:
        return
    if not isinstance(metadata, Mapping):
        raise ConfigError(f"metadata must be a mapping of str to str; got {metadata!r:.80}")
    for key, value in metadata.items():
        check_text("a metadata key", key)
        check_text(f"metadata[{key!r}]", value)


def tool_drift(state: RunState, agent: Agent) -> str:
    """Why a run cannot resume with ``agent``: which tools were added, removed or changed."""
    old = {t.name: t for t in state.tools}
    new = {t.name: t for t in agent.tool_infos}
    added = sorted(set(new) - set(old))
    removed = sorted(set(old) - set(new))
    changed = sorted(n for n in set(old) & set(new) if old[n] != new[n])
    parts = [
        f"{label}: {', '.join(names)}"
        for label, names in (("added", added), ("removed", removed), ("changed", changed))
        if names
    ]
    return (
        f"run {state.run_id!r} was started with other tools than agent {agent.name!r} has now "
        f"({'; '.join(parts) or 'digest differs'}); resume it with the original tools, "
        "or start a new run"
    )


def partly_spawned(
    total: int, started: tuple[object, ...], missing: tuple[int, ...], failure: BaseException
) -> SpawnError:
    """The error of a ``spawn_many`` of ``total`` inputs that failed with ``failure`` when the
    runs ``started`` (their handles, in input order) are in the log and the inputs at
    ``missing`` have none."""
    why = failure.fact if isinstance(failure, FoldloopError) else repr(failure)
    if not missing:
        return SpawnError(
            f"all {total} runs started, but not all of them are driven: {why}",
            advice="their handles are this error's .started; a wait on one, or recover(), "
            "in a runtime with their agent drives those left behind",
            started=started,
        )
    return SpawnError(
        f"{len(started)} of {total} runs started (their handles are this error's .started, "
        f"in input order) and the inputs at .missing ({len(missing)}) have no run: {why}",
        advice="spawning only those again is safe",
        started=started,
        missing=missing,
    )

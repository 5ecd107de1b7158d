"""The loop's rules, as a builder of one decision: events are emitted one at a time and
folded into a draft of the state with the same rules the fold uses, so the state after a
decision is, by construction, the fold of the log with the decision's events appended.

Limits are checked before every action: before each model call (steps, tokens, cost,
time) and before each batch of tool calls (time, cost). ``decide`` (``_decide``) says which
rule a command starts; the rules here say what follows what.
"""

from __future__ import annotations

from foldloop.core._ceilings import before_tools, call_room, next_call, seconds_left
from foldloop.core._commands import (
    ApprovalTicket,
)
from foldloop.core._effects import (
    AwaitChildren,
    CallModel,
    CancelChildren,
    Decision,
    Effect,
    RequestApproval,
    RunTools,
    Settle,
    SpawnChild,
    ToolRun,
)
from foldloop.core._evolve import Draft, all_finished
from foldloop.core._messages import prompt_digest
from foldloop.core._state import CallState, RunState, RunStatus
from foldloop.core._tree import (
    allotment,
    child_input,
    child_refused,
    child_run_id,
    spent,
    unstarted_children,
    waits_only_for_children,
)
from foldloop.events._catalogue import (
    ApprovalRequested,
    ChildSpawned,
    KnownEvent,
    ModelRequested,
    RunFailed,
    RunFailureKind,
    RunNoProgress,
    ToolFailed,
    ToolRequested,
)

__all__ = ["MAX_INVALID_ARGS", "DecisionBuilder"]

MAX_INVALID_ARGS = 3
"""Invalid-argument tool calls in one step that end the run failed."""


class DecisionBuilder:
    """Accumulates one decision: events (folded into a draft of the state as they are
    emitted; the state is built from the draft when next asked for)."""

    def __init__(self, state: RunState, now: int) -> None:
        self._state: RunState | None = state
        self._draft: Draft | None = None
        self.now = now
        self.events: list[KnownEvent] = []
        self.effects: list[Effect] = []
        self.durable = False

    @property
    def state(self) -> RunState:
        """The state after the events emitted so far."""
        if self._state is None:
            assert self._draft is not None  # an event was emitted since the last build
            self._state = self._draft.state()
        return self._state

    def emit(self, event: KnownEvent) -> None:
        self.events.append(event)
        if self._draft is None:
            self._draft = Draft(self.state)
        self._draft.take(((event, self.now),))
        self._state = None

    def settle(self) -> None:
        self.effects.append(Settle())
        self.durable = True

    def cancel_children(self, reason: str) -> None:
        """Cancel the child runs still running (the run ends without their answers)."""
        running = tuple(c.run_id for c in self.state.children if c.running)
        if running:
            self.effects.append(CancelChildren(run_ids=running, reason=reason))

    def decision(self) -> Decision:
        if not any(type(e) is Settle for e in self.effects) and waits_only_for_children(self.state):
            self.effects.append(AwaitChildren())
            self.durable = True  # what it waits with is in the log before it may park
        return Decision(
            events=tuple(self.events),
            effects=tuple(self.effects),
            durable=self.durable,
            state=self.state,
        )

    # -- the loop's rules ---------------------------------------------------------------

    def call_model(self) -> None:
        """Ask the model for the next step, unless a ceiling forbids it."""
        room = next_call(self.state, self.now)
        if room.limit is not None:
            self.emit(room.limit)
            self.settle()
            return
        s = self.state
        left = room.max_tokens
        step = s.steps + 1
        digest = prompt_digest(s.history_digest, s.tools_digest, left)
        self.emit(ModelRequested(step=step, prompt_digest=digest, max_tokens=left))
        self.effects.append(
            CallModel(
                step=step,
                max_tokens=left,
                prompt_bound=room.prompt_bound,
                reserved_usd=room.reserved_usd,
                within_s=seconds_left(s, self.now),
            )
        )

    def ask_again(self, step: int, attempt: int = 1, delay_s: float = 0.0) -> None:
        """Make the pending call of ``step`` again (a retry, a recovery, a resume) with the
        room the run has now, unless none is left: a resume gave a run whose call went out
        without a ceiling one that its prompt does not fit."""
        room = call_room(self.state, spent(self.state))
        if room.limit is not None:
            self.emit(room.limit)
            self.settle()
            return
        self.effects.append(
            CallModel(
                step=step,
                max_tokens=room.max_tokens,
                attempt=attempt,
                delay_s=delay_s,
                prompt_bound=room.prompt_bound,
                reserved_usd=room.reserved_usd,
                within_s=seconds_left(self.state, self.now),
            )
        )

    def request_tools(self, calls: tuple[CallState, ...]) -> None:
        """Record the intent of each proposed call and run the known ones."""
        limit = before_tools(self.state, self.now)
        if limit is not None:
            self.emit(limit)
            self.settle()
            return
        runs: list[ToolRun] = []
        step = self.state.steps
        for call in calls:
            self.emit(
                ToolRequested(call_id=call.call_id, tool=call.tool, args=call.args, step=step)
            )
            info = self.state.tool_info(call.tool)
            if info is None:
                names = ", ".join(t.name for t in self.state.tools) or "none"
                self.emit(
                    ToolFailed(
                        call_id=call.call_id,
                        kind="invalid_args",
                        error=f"there is no tool named {call.tool!r}; the tools are: {names}",
                    )
                )
                continue
            if info.agent_limits is not None:
                refused = child_refused(self.state, info, call.args)
                if refused is not None:
                    kind, why = refused
                    self.emit(ToolFailed(call_id=call.call_id, kind=kind, error=why))
                continue  # started by spawn_children, as slots allow
            if not info.idempotent:
                self.durable = True
            runs.append(ToolRun(call_id=call.call_id, tool=call.tool, args=call.args))
        self.spawn_children()
        if runs:
            self.effects.append(RunTools(calls=tuple(runs)))
        elif self.children_pending():
            return
        elif all_finished(self.state.calls):
            self.after_step()
        elif self.state.status is RunStatus.AWAITING_APPROVAL:
            self.settle()

    def propose(self, calls: tuple[CallState, ...], tickets: tuple[ApprovalTicket, ...]) -> None:
        """Hold back the calls a gate ticketed (approval.requested), request the others."""
        if not tickets:  # no gate holds any of them (the common case)
            self.request_tools(calls)
            return
        limit = before_tools(self.state, self.now)
        if limit is not None:
            self.emit(limit)
            self.settle()
            return
        by_index = {t.index: t for t in tickets if t.index >= 0}
        by_id = {t.call_id: t for t in tickets if t.call_id}
        positions = {c.call_id: i for i, c in enumerate(self.state.calls)}
        plain: list[CallState] = []
        for call in calls:
            ticket = by_id.get(call.call_id) or by_index.get(positions.get(call.call_id, -1))
            if ticket is None or self.state.tool_info(call.tool) is None:
                plain.append(call)
                continue
            self.emit(
                ApprovalRequested(
                    call_id=call.call_id,
                    gate=ticket.gate,
                    token_digest=ticket.token_digest,
                    expires_at=ticket.expires_at,
                    summary=ticket.summary,
                )
            )
            self.effects.append(RequestApproval(call_id=call.call_id, gate=ticket.gate))
            self.durable = True
        self.request_tools(tuple(plain))

    def spawn_children(self) -> None:
        """Start the sub-agent calls waiting for a child run, as many as ``max_children``
        allows running at once, each with its allotment escrowed (``child.spawned``)."""
        s = self.state
        running = sum(1 for c in s.children if c.running)
        waiting = unstarted_children(s)
        for index, (call, info) in enumerate(waiting):
            if running >= s.limits.children_ceiling:
                return
            assert info.agent_limits is not None
            limits = allotment(self.state, info.agent_limits, self.now, len(waiting) - index)
            if isinstance(limits, str):
                error = f"sub-agent {call.tool!r} was not started: {limits}"
                self.emit(ToolFailed(call_id=call.call_id, kind="exception", error=error))
                continue
            run_id = child_run_id(s.run_id, s.steps, call.call_id, call.tool)
            self.emit(
                ChildSpawned(call_id=call.call_id, run_id=run_id, agent=call.tool, limits=limits)
            )
            self.effects.append(
                SpawnChild(
                    call_id=call.call_id,
                    run_id=run_id,
                    agent=call.tool,
                    input=child_input(call.args),
                    limits=limits,
                    depth=s.depth + 1,
                )
            )
            self.durable = True  # the escrow is recorded before the child can spend
            running += 1

    def children_pending(self) -> bool:
        """A sub-agent call of the step has no outcome yet (its child runs, or waits to)."""
        s = self.state
        return any(c.running for c in s.children) or bool(unstarted_children(s))

    def after_step(self) -> None:
        """Every call of the step has an outcome: stop for a rule, or ask the model again."""
        s = self.state
        if s.invalid_args_in_step >= MAX_INVALID_ARGS:
            last = next(c for c in reversed(s.calls) if c.kind == "invalid_args")
            self.emit(
                RunFailed(
                    kind=RunFailureKind.INVALID_ARGS,
                    error=(
                        f"the model sent invalid tool arguments {s.invalid_args_in_step} times "
                        f"in step {s.steps} (last: {last.tool}: {last.result}); improve the tool "
                        "descriptions or instructions, or use a stronger model"
                    ),
                )
            )
            self.settle()
            return
        window = s.limits.no_progress_window
        if window > 0 and s.repeat_count >= window:
            last_call = s.calls[-1]
            self.emit(
                RunNoProgress(
                    window=window,
                    detail=(
                        f"tool {last_call.tool!r} was called with the same arguments and gave "
                        f"the same result {s.repeat_count} times running"
                    ),
                )
            )
            self.settle()
            return
        self.call_model()

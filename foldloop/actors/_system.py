"""ActorSystem: the runtime's supervisor: activates runs on its shards, starts tool actors,
tracks who is active, releases leases and wakes waiters when runs settle.
"""

from __future__ import annotations

import collections
import contextlib
import inspect
import threading
import time
import weakref
import zlib
from collections.abc import Awaitable, Callable
from typing import Any

import pykka

from foldloop._agent import Agent
from foldloop._log import get_logger
from foldloop.actors._drain import CLOSE_DRAIN_S, drain
from foldloop.actors._event_loop import EventLoop
from foldloop.actors._gates import Gates
from foldloop.actors._late_outcomes import LATE_OUTCOMES_S, LateOutcomes
from foldloop.actors._model_calls import ModelCalls
from foldloop.actors._run_actor import RunActor
from foldloop.actors._shard import Activate, Continue, Deliver, Shard
from foldloop.actors._timers import Timers
from foldloop.actors._tool_actor import ToolActor, ToolRunner
from foldloop.core._commands import Cancel, Command, ToolFinished
from foldloop.core._effects import Decision, SpawnChild
from foldloop.core._state import RunState, RunStatus
from foldloop.core._tree import child_finished, ended_for_parent, unstartable
from foldloop.errors import ConfigError, RunLocked
from foldloop.store import EventStore, Lease
from foldloop.tools._decorator import bound_text

__all__ = ["CLOSE_DRAIN_S", "ActorSystem", "Settlement"]

log = get_logger(__name__)

HANDOVER_WAIT = 5.0
"""Seconds a host's resume or cancel waits for another thread of this runtime that is
carrying a decision into the run (the approvals poller, say) to finish, before RunLocked."""
SHARDS = 1
"""Actors (threads) the active runs are placed on. A run waits for a model, a tool or its
commit without holding one; one interpreter lock runs one thread's Python at a time, so more
shards only contend for it with the writer and the event loop (and lose throughput). What
blocks the shard (a slow ``on_state``, a group commit it leads) holds up every run."""
PARK_AFTER_S = 10.0
"""Seconds a run that waits only for its child runs stays active before it parks (a short
wait is not worth a fold from the log when the next child ends)."""


class Settlement:
    """How a run driven here ended up: its final state, or why it was interrupted."""

    def __init__(self) -> None:
        self.event = threading.Event()
        self.state: RunState | None = None
        self.interrupted: str = ""


def _ended_for_good(done: Settlement | None) -> bool:
    """The run ended here, and not by an interruption (its late outcomes are recorded)."""
    return (
        done is not None
        and done.event.is_set()
        and not done.interrupted
        and done.state is not None
        and done.state.terminal
    )


class ActorSystem:
    """Owns every actor of one runtime."""

    KEEP_SETTLED = 256

    def __init__(
        self,
        store: EventStore,
        owner: str,
        clock: Callable[[], int],
        *,
        snapshot_every: int,
        on_state: Callable[[RunState], None] | None,
        max_model_calls: int | None = None,
        on_inactive: Callable[[str], None] | None = None,
    ) -> None:
        self.store = store
        self.on_inactive = on_inactive
        """Told the run id when a run driven here stops being active (it settled, parked or
        was interrupted), on the thread that drove it: hand slow work elsewhere."""
        self.on_lost_cancel: Callable[[str, Cancel], None] | None = None
        """Given a cancel that reached a run as it stopped being active here (it parked, say):
        its host carries it in another way. Called on a shard: hand slow work elsewhere."""
        self.on_spawn_children: Callable[[RunState, tuple[SpawnChild, ...]], None] | None = None
        """Starts (or, when they exist, follows) the child runs of a parent's sub-agent calls;
        called on a shard: hand slow work elsewhere. Their ends come back to the parent
        through ``tell`` (``ChildFinished``)."""
        self.on_parked: Callable[[str], None] | None = None
        """Takes a run parked here up again with the commands that came for it
        (``next_for_take_up``), off the calling thread: it waits for a commit."""
        self.park_after_s = PARK_AFTER_S
        """How long a run waiting only for its children stays active before it parks."""
        self.on_cancel_children: Callable[[tuple[str, ...], str], None] | None = None
        """Cancels child runs (a parent's cancel cascades); called on a shard, as above."""
        self.on_ended: Callable[[RunState], None] | None = None
        """Told the final state of each run that ended here (a terminal status, not an
        interruption) once that end is durable; called on the thread that settled it (a
        shard, often): hand slow work elsewhere. One that raises is logged."""
        self.owner = owner
        self.clock = clock
        self.snapshot_every = snapshot_every
        self.on_state = on_state
        self.timers = Timers()
        self.gates = Gates(store, self.timers)
        self.late = LateOutcomes(store)
        self.loop = EventLoop()
        """Where async model calls and async tools are awaited."""
        self.models = ModelCalls(max_model_calls, self.loop, self.timers)
        self._shards: list[Shard] = []
        self._models_seen: weakref.WeakValueDictionary[int, Any] = weakref.WeakValueDictionary()
        """Models that ran here (their connections close with the loop); one dropped by its
        host is forgotten with it."""
        self._lock = threading.Lock()
        self._handed = threading.Condition(self._lock)  # a claim went, or became an actor
        self._actors: dict[str, RunActor] = {}
        """The actor of each run active here."""
        self._placed: dict[str, Shard] = {}
        """The shard each active run is on."""
        self._claims: set[str] = set()
        """Runs one thread of this runtime has taken (the lease is per runtime, so it alone
        cannot keep two threads of one runtime from driving a run at once)."""
        self._tools: dict[tuple[str, str], pykka.ActorRef[Any]] = {}
        self._runners: dict[tuple[str, str], ToolRunner] = {}
        self._settlements: dict[str, Settlement] = {}
        # runs parked here for their children (lease kept), with the children they wait for;
        # and parked runs one thread is taking up again, with the commands that came meanwhile
        self._parked: dict[str, tuple[str, ...]] = {}
        self._taking_up: dict[str, list[Command]] = {}
        # runs driven here that started child runs, and sub-agent runs activated here: the
        # tree's follow-ups (children_elsewhere, children_of_elsewhere) look at these, not at
        # every active run (a fleet's thousands have neither)
        self._parents: set[str] = set()
        self._children: set[str] = set()
        self._ended: collections.deque[tuple[str, Settlement]] = collections.deque()
        """Settlements in the order their runs ended, for ``_forget_old``."""
        self._closed = False

    # -- tools ---------------------------------------------------------------------------

    def tool_runner(self, agent: Agent, name: str) -> ToolRunner:
        """The runner of ``agent``'s tool ``name``; its ToolActor starts on first use."""
        key = (agent.name, name)
        runner = self._runners.get(key)  # every call of every step: no lock once it exists
        if runner is not None:
            return runner
        with self._lock:
            runner = self._runners.get(key)
            if runner is None:
                tool = agent.tool(name)
                if tool is None:  # decide never asks for an unknown tool
                    raise KeyError(name)
                # one runner a tool, whichever agents list it: its concurrency bounds them all
                runner = next((r for r in self._runners.values() if r.tool is tool), None)
                if runner is None:
                    bound = self.store.max_event_bytes
                    runner = ToolRunner(tool, self.timers, self.clock, self.loop, bound)
                    self._tools[key] = ToolActor.start(runner)
                self._runners[key] = runner
            return runner

    def _sync_calls_running(self) -> int:
        """Sync tool calls started and not yet reported of runs that ended here (a cancel):
        their outcomes are recorded after the end (an interrupted run's are not)."""
        with self._lock:
            runners = set(self._runners.values())
            ended = self._settlements
        calls = 0
        for runner in runners:
            for run_id, count in runner.running().items():
                calls += count if _ended_for_good(ended.get(run_id)) else 0
        return calls

    # -- runs ----------------------------------------------------------------------------

    @property
    def closed(self) -> bool:
        """True once ``stop`` began: no run is activated here any more."""
        return self._closed

    def active_count(self) -> int:
        """How many runs an actor of this runtime drives now."""
        with self._lock:
            return len(self._actors)

    def active(self, run_id: str) -> bool:
        """True if an actor of this runtime drives the run now."""
        with self._lock:
            return run_id in self._actors

    def claim(self, run_id: str, *, wait: float = 0.0) -> None:
        """Take the run for the calling thread until its actor finishes or ``unclaim``.

        Raises RunLocked when the run is claimed here already: an actor drives it, or (past
        ``wait`` seconds) a spawn, resume, cancel or approval still carries a decision into
        it. Waiting rides out such a hand-over, which takes a commit or two."""
        with self._lock:
            if wait > 0:
                self._handed.wait_for(
                    lambda: run_id not in self._claims or run_id in self._actors, wait
                )
            if run_id in self._claims:
                raise RunLocked(
                    f"run {run_id!r} is being driven by this runtime right now",
                    advice="wait() for it first",
                )
            self._claims.add(run_id)

    def take(self, run_id: str, *, wait: float = 0.0) -> int:
        """Claim the run (``claim``) and take its lease in the store; returns the epoch.

        Raises RunLocked as ``claim`` does, or when a live runtime holds the lease. Hand the
        run to an actor (``start_run``) or give it back (``give_back``)."""
        self.claim(run_id, wait=wait)
        try:
            return self.store.acquire_lease(run_id, self.owner).wait()
        except BaseException:
            self.unclaim(run_id)
            raise

    def give_back(self, run_id: str, epoch: int) -> None:
        """Undo ``take`` for a run not driven after all."""
        self.release_lease(run_id, epoch)
        self.unclaim(run_id)

    def release_lease(self, run_id: str, epoch: int) -> None:
        """Release the run's lease with the next commit (nothing waits on it)."""
        self.store.release_lease(run_id, Lease(self.owner, epoch))

    def unclaim(self, run_id: str) -> None:
        """Give up a claim whose run got no actor (nothing to do, or it failed)."""
        with self._lock:
            self._drop_claim(run_id)

    def _drop_claim(self, run_id: str) -> None:
        """(Lock held.) The run is no longer claimed here; wake whoever awaits its hand-over."""
        self._claims.discard(run_id)
        self._handed.notify_all()

    def settlement(self, run_id: str) -> Settlement | None:
        """The settlement record of a run driven (now or before) by this runtime."""
        with self._lock:
            return self._settlements.get(run_id)

    def start_run(self, agent: Agent, state: RunState, epoch: int, decision: Decision) -> None:
        """Activate a run claimed here whose decision is already committed, and act on it;
        the claim goes when the run settles."""
        run_id = state.run_id
        with self._lock:
            if self._closed:
                self._drop_claim(run_id)
                raise ConfigError(
                    f"this runtime closed while run {run_id!r} started: the run is in the log",
                    advice="recover() in a runtime with its agent drives it (or a wait there)",
                )
            came = self._taking_up.get(run_id, ())  # told while it was taken up
            try:
                shard = self._shard_of(run_id)
                actor = RunActor(self, agent, state, epoch)
                if any(type(message) is Cancel for message in came):
                    actor.cancel_requested()  # before the decision runs: it starts nothing new
                # told under the lock: a tell that sees the run placed queues behind these
                shard.post(Activate(actor), inline=False)
                shard.post(Deliver(run_id, decision), inline=False)
            except BaseException:
                self._drop_claim(run_id)
                raise
            held = self._settlements.get(run_id)
            if held is None or held.event.is_set():  # a parked run's waiters keep theirs
                self._settlements[run_id] = Settlement()
            self._parked.pop(run_id, None)
            self._taking_up.pop(run_id, None)
            for message in came:
                shard.post(Deliver(run_id, message), inline=False)
            self._actors[run_id] = actor
            if state.parent_call_id:
                self._children.add(run_id)
            with contextlib.suppress(TypeError):  # a model that cannot be weakly referenced
                self._models_seen.setdefault(id(agent.llm), agent.llm)
            self._placed[run_id] = shard
            self._handed.notify_all()

    def _shard_of(self, run_id: str) -> Shard:
        """(Lock held.) The shard a run is placed on, by its id (shards start on first use)."""
        if not self._shards:
            self._shards = [Shard(self._deactivated, self._dropped) for _ in range(SHARDS)]
            for shard in self._shards:
                shard.start_here()
        return self._shards[zlib.crc32(run_id.encode()) % len(self._shards)]

    def tell(self, run_id: str, message: Any, *, take_up: bool = True) -> bool:
        """Queue a message in the mailbox of the run; False if it is not active here. A
        command for a run parked here for its children goes to ``on_parked`` (its host
        takes it up again with it) unless ``take_up`` is False."""
        start_take_up = False
        with self._lock:
            shard = self._placed.get(run_id)
            actor = self._actors.get(run_id) if type(message) is Cancel else None
            if shard is None and take_up and isinstance(message, Command):
                waiting = self._taking_up.get(run_id)
                if waiting is not None:  # being taken up: it gets this once it is placed
                    waiting.append(message)
                    return True
                if run_id in self._parked and self.on_parked is not None:
                    del self._parked[run_id]
                    self._taking_up[run_id] = [message]
                    start_take_up = True
        if actor is not None:  # from now on nothing of it starts, before the shard gets to it
            actor.cancel_requested()
        if start_take_up:
            assert self.on_parked is not None
            self.on_parked(run_id)
            return True
        if shard is None:
            if type(message) is ToolFinished:  # its run ended here as the call went on
                self.late.record(run_id, message)
            return False
        try:
            shard.post(Deliver(run_id, message))
        except pykka.ActorDeadError:  # closing
            return False
        return True

    def wait_cancelled(self, timeout: float) -> bool:
        """Wait until every run told a cancel here has handled it (it settled, or stopped
        being active here); False if some had not after ``timeout`` seconds. A cancel still
        in a run's mailbox when ``stop`` comes is lost (the run stays running in the log)."""
        with self._lock:
            return self._handed.wait_for(
                lambda: not any(actor.cancelling for actor in self._actors.values()),
                max(timeout, 0.0),
            )

    def spawn_children(self, parent: RunState, effects: tuple[SpawnChild, ...]) -> None:
        """Start a parent's child runs (through ``on_spawn_children``)."""
        with self._lock:
            self._parents.add(parent.run_id)
        if self.on_spawn_children is None:
            for effect in effects:
                why = "no host starts child runs"
                self.tell(parent.run_id, unstartable(self.clock(), effect, why))
            return
        self.on_spawn_children(parent, effects)

    def cancel_children(self, run_ids: tuple[str, ...], reason: str) -> None:
        """Cancel child runs (through ``on_cancel_children``)."""
        if self.on_cancel_children is not None:
            self.on_cancel_children(run_ids, reason)

    def children_elsewhere(self) -> list[tuple[str, str]]:
        """(parent, child) of each running child of a parent driven here whose child no actor
        here drives: driven by another runtime (after a recovery there), it cannot tell its
        parent by itself."""
        out: list[tuple[str, str]] = []
        with self._lock:
            for parent in self._parents:
                actor = self._actors.get(parent)
                if actor is not None:
                    running = [c.run_id for c in actor.state.children if c.running]
                else:
                    running = list(self._parked.get(parent, ()))
                out.extend((parent, child) for child in running if child not in self._actors)
        return out

    def children_of_elsewhere(self) -> list[tuple[str, str]]:
        """(child, parent) of each sub-agent child driven here whose parent no actor here
        drives: its parent's cancel, carried by another runtime, cannot reach it here."""
        with self._lock:
            out = [(child, self._actors[child].state.parent_run_id) for child in self._children]
            return [(child, parent) for child, parent in out if parent not in self._actors]

    def tell_parent(self, state: RunState) -> None:
        """If ``state`` is a child run's end, tell its parent (when the parent is driven here;
        a parent driven elsewhere, or resumed later, learns it when it follows the child)."""
        if state.parent_call_id and ended_for_parent(state):
            self.tell(state.parent_run_id, child_finished(state, self.clock(), bound_text))

    def proceed(self, actor: RunActor, then: Callable[[], bool]) -> None:
        """Let the run go on with the message in hand (its durable append landed)."""
        with self._lock:
            shard = self._placed.get(actor.run_id)
        if shard is not None:
            with contextlib.suppress(pykka.ActorDeadError):
                shard.post(Continue(actor, then))

    def _deactivated(self, run: Any) -> None:
        """A shard let ``run`` go. A run that settled or failed has said so already; one that
        broke its shard's last guard has not, and is interrupted here."""
        with self._lock:
            broke = self._actors.get(run.run_id) is run  # not a later activation of it
        if broke:
            self.interrupted(run.run_id, run.epoch, run.state, "its actor failed; resume it")

    def park(self, actor: RunActor) -> None:
        """The run waits only for its children: it gives its actor up and keeps its lease
        (so nothing else takes it up); a command for it takes it up again (``tell``)."""
        run_id = actor.run_id
        with self._lock:
            if self._actors.get(run_id) is not actor:
                return
            del self._actors[run_id]
            self._children.discard(run_id)
            self._placed.pop(run_id, None)
            self._parked[run_id] = tuple(c.run_id for c in actor.state.children if c.running)
            self._drop_claim(run_id)
        actor.log.info("run_parked_for_children", children=len(self._parked.get(run_id, ())))
        if self.on_inactive is not None:
            self.on_inactive(run_id)

    def next_for_take_up(self, run_id: str, state: RunState | None) -> Command | None:
        """The next command for a run being taken up (in the order they came); None when
        none is left: the run (``state``, None if unknown) then parks again as it was."""
        with self._lock:
            waiting = self._taking_up.get(run_id)
            if waiting:
                return waiting.pop(0)
            self._taking_up.pop(run_id, None)
            if state is not None and state.status is RunStatus.RUNNING:
                self._parked[run_id] = tuple(c.run_id for c in state.children if c.running)
            return None

    def take_up_failed(self, run_id: str) -> None:
        """Taking the parked run up failed: what came for it is dropped (a tell from now on
        finds it neither driven nor parked here, and takes its caller's other way), but a
        cancel among it, which is carried as a lost one."""
        with self._lock:
            came = self._taking_up.pop(run_id, [])
        cancels = [m for m in came if isinstance(m, Cancel)]
        if cancels and self.on_lost_cancel is not None:
            self.on_lost_cancel(run_id, cancels[0])

    def parked(self, run_id: str) -> bool:
        """The run is parked here, waiting for its children (or being taken up)."""
        with self._lock:
            return run_id in self._parked or run_id in self._taking_up

    def _dropped(self, run_id: str, messages: list[Any]) -> None:
        """Messages a run will never handle (it parked, ended or failed first). Late results
        are stale by then; a cancel is not: it goes to ``on_lost_cancel``. A parked run
        takes up again the commands that reached its mailbox as it parked."""
        if self.parked(run_id):
            for message in messages:
                if isinstance(message, Command):
                    self.tell(run_id, message)
            return
        for message in messages:
            if type(message) is ToolFinished:  # came after its run's end: recorded after it
                self.late.record(run_id, message)
        cancels = [m for m in messages if isinstance(m, Cancel)]
        log.debug("run_messages_dropped", run_id=run_id, count=len(messages) - len(cancels))
        if cancels and self.on_lost_cancel is not None:
            self.on_lost_cancel(run_id, cancels[0])

    def settled_without_actor(self, state: RunState) -> None:
        """Record the outcome of a decision the runtime committed without starting an actor
        (the run's claim goes)."""
        with self._lock:
            self._drop_claim(state.run_id)
            self._parked.pop(state.run_id, None)
            self._taking_up.pop(state.run_id, None)
            settlement = self._settlements.setdefault(state.run_id, Settlement())
            self._forget_old(state.run_id, settlement)
        settlement.state = state
        settlement.event.set()
        self._tell_ended(settlement)
        self.tell_parent(state)

    def settled(self, run_id: str, epoch: int, state: RunState, *, released: bool) -> None:
        """Called by a RunActor whose run settled; ``released`` when its lease went in the
        settling decision's own transaction (else it is released now)."""
        if not released:
            self.release_lease(run_id, epoch)
        self._finish(run_id, state, "")

    def interrupted(self, run_id: str, epoch: int, state: RunState, reason: str) -> None:
        """Called by a RunActor that can no longer drive its run: its lease is given up
        (if still ours), so ``recover()`` here or elsewhere can take the run up again."""
        if not self._closed:
            self.release_lease(run_id, epoch)
        self._finish(run_id, state, reason)

    def _finish(self, run_id: str, state: RunState, interrupted: str) -> None:
        with self._lock:
            self._actors.pop(run_id, None)
            self._parked.pop(run_id, None)
            self._taking_up.pop(run_id, None)
            self._parents.discard(run_id)
            self._children.discard(run_id)
            self._placed.pop(run_id, None)
            self._drop_claim(run_id)
            settlement = self._settlements.setdefault(run_id, Settlement())
            self._forget_old(run_id, settlement)
        settlement.state = state
        settlement.interrupted = interrupted
        settlement.event.set()
        self._tell_ended(settlement)
        if not interrupted:
            self.tell_parent(state)
        elif state.parent_call_id and not self._closed:  # its parent must not wait for ever
            command = child_finished(state, self.clock(), bound_text, interrupted=interrupted)
            self.tell(state.parent_run_id, command)
        if self.on_inactive is not None:
            self.on_inactive(run_id)

    def _tell_ended(self, settlement: Settlement) -> None:
        state = settlement.state
        if self.on_ended is not None and state is not None and _ended_for_good(settlement):
            try:
                self.on_ended(state)
            except Exception:  # an observer: the run's parent and admission still hear of it
                log.exception("on_ended_failed", run_id=state.run_id)

    def _forget_old(self, run_id: str, ended: Settlement) -> None:
        """(Lock held.) ``run_id`` ended with ``ended``: keep the settlements of runs driven
        now and of the last ``KEEP_SETTLED`` that ended.

        A runtime that lives for months must not hold every finished run's state; a wait()
        on a forgotten run reads its state from the store instead.
        """
        self._ended.append((run_id, ended))
        while len(self._ended) > self.KEEP_SETTLED:
            old_id, old = self._ended.popleft()
            if self._settlements.get(old_id) is old and old_id not in self._actors:
                del self._settlements[old_id]

    # -- lifecycle -----------------------------------------------------------------------

    def stop(self, drain_s: float = CLOSE_DRAIN_S) -> list[str]:
        """Stop every actor; runs still going stay 'running' in the log (recover() resumes).
        First, for up to ``drain_s``, the sync tool calls under way finish and are recorded;
        no model call or child run starts meanwhile. Returns the runs it left (their waits
        are told once what the runs wrote is stored: ``Waiter.closed_under``)."""
        deadline = time.monotonic() + drain_s
        with self._lock:
            self._closed = True
            actors = list(self._actors.values())
            refs = [shard.actor_ref for shard in self._shards]
        drain(actors, refs, deadline, self._sync_calls_running)
        with self._lock:
            shards, self._shards = self._shards, []
            active = [*self._actors, *self._parked, *self._taking_up]
            tools = [*self._tools.values(), *self.gates.refs()]
        for shard in shards:  # each queues what its runs hold back, as it stops
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                shard.actor_ref.stop(block=True, timeout=5)
        for ref in tools:
            with contextlib.suppress(pykka.ActorDeadError, pykka.Timeout):
                ref.stop(block=True, timeout=5)
        self.gates.deliver_notifications()
        self.late.close(max(LATE_OUTCOMES_S, deadline - time.monotonic()))
        self.timers.stop()
        # model calls and async tools in flight are cancelled (runs resume later), waited for
        # what the drain left of its time; then the async models' connection pools closed
        self.loop.close(deadline - time.monotonic(), then=self._model_cleanups())
        self.models.shutdown()
        self.gates.shutdown()
        return active

    def _model_cleanups(self) -> list[Callable[[], Awaitable[object]]]:
        """The ``aclose`` of each distinct model that ran here and has one."""
        with self._lock:
            models = list(self._models_seen.values())
        closers = [getattr(m, "aclose", None) for m in models]
        return [c for c in closers if c is not None and inspect.iscoroutinefunction(c)]

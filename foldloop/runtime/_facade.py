"""Runtime: the host-facing facade (DESIGN.md section 6).

It opens the store, holds an owner lock (so a crash frees its runs at once), wires the
runtime's parts together and hands each host call to the part whose job it is:
``commands`` (spawn, resume, cancel, recover), ``waiting``, ``queries`` (state, runs,
events, explain, verify), ``transfer`` (export, import), ``approval_desk`` and the
actors' ``Followers`` (projections, subscriptions). Every public method raises
ConfigError once the runtime is closed (``lifecycle``).
"""

from __future__ import annotations

import os
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping
from pathlib import Path
from typing import Any, ClassVar, Literal, overload

from foldloop._agent import Agent
from foldloop._approvals import PendingApproval
from foldloop._arguments import check_seconds
from foldloop._closing import ClosedOnExit
from foldloop._log import get_logger
from foldloop.actors._followers import Followers
from foldloop.actors._own_threads import calling, inside_a_call, on_own_thread
from foldloop.actors._projection_actor import ProjectionHandle
from foldloop.actors._system import CLOSE_DRAIN_S, ActorSystem
from foldloop.core._explain import Explanation
from foldloop.core._state import RunState, RunStatus
from foldloop.errors import ConfigError, RunNotFound, SpawnError, StoreError
from foldloop.events._recorded import Recorded
from foldloop.events._values import Limits
from foldloop.projections._base import Projection
from foldloop.runtime._admission import Admission
from foldloop.runtime._approval_desk import ApprovalDesk
from foldloop.runtime._collector import COLLECTOR
from foldloop.runtime._commands import Commands
from foldloop.runtime._handle_ops import HandleOps
from foldloop.runtime._lifecycle import Lifecycle, OpenOnly
from foldloop.runtime._queries import Queries
from foldloop.runtime._registry import AgentRegistry
from foldloop.runtime._replay_checks import ReplayChecks
from foldloop.runtime._results import RunHandle, RunOps, RunSummary, RunTree
from foldloop.runtime._rules import check_cap, check_inputs
from foldloop.runtime._transfer import Transfer
from foldloop.runtime._waiting import Waiter
from foldloop.runtime._work_taker import WorkTaker
from foldloop.runtime._writes import RunWrites
from foldloop.store import (
    DEFAULT_MAP_SIZE,
    EventStore,
    RemoteCancel,
    WorkQueue,
    answer_by,
    connect_store,
)
from foldloop.store._nats_names import shown

__all__ = ["Runtime", "run_ops", "spawn_named"]

log = get_logger(__name__)

MAX_CLOSE_TIMEOUT_S = 86_400.0
"""The longest ``close(timeout=...)`` (a day; threading refuses waits past its own limit)."""
POLL_INTERVAL_S = (0.001, 3_600.0)
"""The shortest and longest ``poll_interval`` (decisions of other processes reach runs
within it; shorter, the poller would take a core)."""
POLL_READ_S = 5.0
"""The longest the poller waits for a store's answer to one read (a close waits for it)."""
FLUSH_WAIT_S = 5.0
"""Seconds ``close()`` waits for the runs' last writes to be stored before it gives up its
runs all the same (a store that cannot store them in that time has failed)."""
THREADS_STOP_S = 5.0
"""Seconds ``close()`` waits for the work-queue taker and the approvals poller to stop (a
read of a store whose server is away may hold either that long)."""
CLOSE_GRACE_S = 30.0
"""Seconds past its ``timeout`` a second ``close()`` waits for the first one to finish (the
stores' own last writes and the actors' stops)."""


class Runtime(OpenOnly, ClosedOnExit):
    """Runs agents on an LMDB store. Use ``Runtime.open(path, agents=[...])``."""

    _usable_when_closed: ClassVar[frozenset[str]] = frozenset({"close", "closed"})

    def __init__(
        self,
        store: EventStore,
        *,
        agents: Iterable[Agent] = (),
        clock: Callable[[], int] = time.time_ns,
        snapshot_every: int = 200,
        on_state: Callable[[RunState], None] | None = None,
        poll_interval: float = 0.1,
        max_model_calls: int | None = None,
        max_active_runs: int | None = None,
    ) -> None:
        check_cap("max_model_calls", max_model_calls)
        check_cap("max_active_runs", max_active_runs)
        agents = tuple(agents)
        self.store = store
        self.owner = uuid.uuid4().hex[:16]
        self._clock = clock
        self._lifecycle = Lifecycle()
        self._agents = AgentRegistry(agents)
        self._owner_hold = store.hold_owner(self.owner)
        self._pid = os.getpid()
        # Late-bound (lambdas): the system and the commands it counts and admits with need
        # it, so they are built after it.
        self._admission = Admission(
            max_active_runs,
            active=lambda: self.system.active_count(),  # noqa: PLW0108
            admit=lambda run_ids: self._commands.admits.admit(run_ids),  # noqa: PLW0108
        )
        self.system = ActorSystem(
            store,
            self.owner,
            clock,
            snapshot_every=snapshot_every,
            on_state=on_state,
            max_model_calls=max_model_calls,
            on_inactive=None if max_active_runs is None else self._admission.on_inactive,
        )
        self._followers = Followers(store, clock, self._lifecycle.check)
        writes = RunWrites(store, self.owner)
        self._queries = Queries(store, self.system, self._agents, clock, self._lifecycle.check)
        self._checks = ReplayChecks(store, self._queries, self._agents)
        self._desk = ApprovalDesk(
            store=store,
            system=self.system,
            writes=writes,
            queries=self._queries,
            agents=self._agents,
            lifecycle=self._lifecycle,
            clock=clock,
            tree_ended=lambda state: self._commands.trees.cancel_reason(state),  # noqa: PLW0108 - made below
        )
        self._commands = Commands(
            store=store,
            system=self.system,
            writes=writes,
            queries=self._queries,
            agents=self._agents,
            desk=self._desk,
            clock=clock,
            owner=self.owner,
            admission=self._admission,
        )
        self.system.on_lost_cancel = self._commands.cancels.carry_lost_cancel
        self.system.on_spawn_children = self._commands.spawn_children
        self.system.on_cancel_children = self._commands.cancels.cancel_children
        self.system.on_parked = self._commands.trees.take_up_parked
        self.system.gates.root_of = lambda run_id: self._queries.root_of(run_id, {})
        self._transfer = Transfer(self._queries, writes)
        self._stop_cancels = (
            store.serve_cancels(self._commands.cancels.cancel_here)
            if isinstance(store, RemoteCancel)
            else None
        )
        self._driving = {agent.name for agent in agents}
        """Agents this runtime takes queued runs of from a shared work queue (those it was
        opened with or given by ``register``; not those it merely spawns)."""
        self._taker = (
            WorkTaker(
                store,
                agents=lambda: sorted(self._driving),
                room=self._admission.room,
                take=self._commands.recovery.take_queued,
            )
            if isinstance(store, WorkQueue)
            else None
        )
        self._ops = HandleOps(
            self._lifecycle,
            self._queries,
            Waiter(
                store,
                self.system,
                self._queries,
                self._desk,
                self._admission,
                take_up=self._commands.recovery.take_up_orphan,
                knows=lambda name: self._agents.named(name) is not None,
            ),
            self._commands.cancels,
        )
        self._poll_interval = poll_interval
        self._stop_polling = threading.Event()
        self._poller = threading.Thread(target=self._poll, name="foldloop-poller", daemon=True)
        self._poller.start()
        COLLECTOR.runtime_opened()
        log.info("runtime_opened", path=shown(store.location), owner=self.owner)

    @classmethod
    def open(
        cls,
        path: str | Path = ".foldloop",
        *,
        agents: Iterable[Agent] = (),
        clock: Callable[[], int] | None = None,
        map_size: int = DEFAULT_MAP_SIZE,
        snapshot_every: int = 200,
        on_state: Callable[[RunState], None] | None = None,
        create: bool = True,
        poll_interval: float = 0.1,
        max_model_calls: int | None = None,
        max_active_runs: int | None = None,
    ) -> Runtime:
        """Open (creating if absent) the store at ``path`` and start a runtime: a directory
        (LMDB, embedded), or ``nats://HOST:PORT[,HOST:PORT...][/NAMESPACE]`` (JetStream,
        shared by every machine that opens it; extra ``foldloop[nats]``).

        ``clock`` returns unix ns (inject one in tests); ``snapshot_every`` bounds how many
        events a resume folds; ``on_state`` observes every state a run actor reaches, on
        the thread handling the run's message as its events are appended (a durable append
        may still be committing: keep it quick and read the log for what is stored; what it
        raises is logged as ``on_state_failed`` and the run goes on);
        ``create=False`` refuses to create a missing store (read-only tools use it);
        ``max_model_calls`` caps the model calls in flight at once, async and sync together
        (a provider's rate limit; None: as many as runs ask for);
        ``max_active_runs`` caps the runs driven at once: runs spawned past it are recorded
        ``queued`` and start in spawn order as slots free (None: no cap).
        """
        if not isinstance(path, str | os.PathLike) or isinstance(os.fspath(path), bytes):
            is_bytes = isinstance(path, bytes | os.PathLike)
            raise ConfigError(
                "the store must be a directory path (a str or os.PathLike such as "
                "pathlib.Path) or a nats://HOST:PORT[/NAMESPACE] URL; got "
                f"{path!r:.80} ({type(path).__name__}): pass where it is, as in "
                "Runtime.open('.foldloop')"
                + (", decoding a bytes path with os.fsdecode()" if is_bytes else "")
            )
        if not isinstance(snapshot_every, int) or snapshot_every < 0:
            raise ConfigError(f"snapshot_every must be an int >= 0; got {snapshot_every!r}")
        least, most = POLL_INTERVAL_S
        check_seconds("poll_interval", poll_interval, most, least=least)
        check_cap("max_model_calls", max_model_calls)  # before the store is created
        check_cap("max_active_runs", max_active_runs)
        store = connect_store(path, map_size=map_size, create=create)
        try:
            return cls(
                store,
                agents=agents,
                clock=clock or time.time_ns,
                snapshot_every=snapshot_every,
                on_state=on_state,
                poll_interval=poll_interval,
                max_model_calls=max_model_calls,
                max_active_runs=max_active_runs,
            )
        except BaseException:
            store.close()
            raise

    def close(self, timeout: float = CLOSE_DRAIN_S) -> None:
        """Stop driving runs (they stay resumable), commit what is queued, release the store.
        Tool calls under way (a sync tool cannot be stopped) get up to ``timeout`` seconds to
        return, and their outcomes are recorded; meanwhile the runs take only tool outcomes
        and cancels, and start no model call or child run; calls still waiting for a slot
        of their tool never start (recorded as not run). A call still running then is left:
        a resume records it as interrupted. A ``close()`` from another thread meanwhile
        returns once this one is done (at once from a tool or callback it is waiting for).
        Called from one of its own threads (a tool, ``on_state``, a notify), or from a signal
        handler that interrupted a call into this runtime (the call ends once it has seen
        the close), it starts the close on a thread of its own and returns at once."""
        check_seconds("timeout", timeout, MAX_CLOSE_TIMEOUT_S)
        # A signal handler's close on a thread inside a call here: that call may hold any
        # lock the close needs, and goes on only once the handler returns.
        interrupting = inside_a_call(self.store)
        with calling(self.store):  # a handler's close that interrupts this one returns
            self._close(timeout, interrupting)

    def _close(self, timeout: float, interrupting: bool) -> None:
        release_by = time.monotonic() + timeout + CLOSE_GRACE_S
        if not self._lifecycle.close(release_by=release_by, blocking=not interrupting):
            # another thread is closing it: return once it is closed (its outcomes stored),
            # unless this is one of the runtime's own threads, which that close waits for
            if not (on_own_thread() or interrupting):
                self._lifecycle.wait_released()
            return
        if os.getpid() != self._pid:  # inherited over os.fork: its threads stayed behind
            self._lifecycle.mark_released()
            return
        if on_own_thread() or interrupting:  # the close waits for what this thread does
            threading.Thread(target=self._shut, args=(timeout,), name="foldloop-close").start()
            return
        self._shut(timeout)

    def _shut(self, timeout: float) -> None:
        """What the first ``close`` does."""
        try:
            self._commands.stop_spawns()
            if self._taker is not None:
                self._taker.stop()
            if self._stop_cancels is not None:
                self._stop_cancels()
            self._stop_polling.set()
            # Told to stop together, waited for together: each may be in a read of a store
            # whose server went away, and their waits overlap rather than add up.
            joined_by = time.monotonic() + THREADS_STOP_S
            if self._taker is not None:
                self._taker.join(THREADS_STOP_S)
            self._poller.join(timeout=max(0.0, joined_by - time.monotonic()))
            self._followers.close()
            self._admission.close()
            self._commands.close()
            left = self.system.stop(drain_s=timeout)
            try:
                # What the runs wrote last is stored before another runtime may take them up.
                if not self.store.flush(timeout=FLUSH_WAIT_S):
                    log.warning("close_writes_unconfirmed", owner=self.owner)
            finally:
                self._ops.closed_under(left)  # their waits read the log while it is open
            self._owner_hold.release()
            self.store.close()
        finally:
            COLLECTOR.runtime_closed()
            self._lifecycle.mark_released()
        log.info("runtime_closed", owner=self.owner)

    @property
    def closed(self) -> bool:
        """True once ``close()`` was called."""
        return self._lifecycle.closed

    def check_open(self) -> None:
        """Raise ConfigError if this runtime was closed."""
        self._lifecycle.check()

    def _check_open(self) -> None:
        self._lifecycle.check()

    @property
    def _call_key(self) -> object:
        return self.store

    # -- agents --------------------------------------------------------------------------

    def register(self, agent: Agent) -> None:
        """Make ``agent`` known, so its runs can be resumed and recovered here (and, on a
        store with a shared work queue, taken from it here)."""
        self._agents.register(agent)
        self._driving.add(agent.name)

    def agent_named(self, name: str) -> Agent | None:
        """The agent registered here under ``name`` (None if this runtime does not know it)."""
        return self._agents.named(name)

    # -- commands ------------------------------------------------------------------------

    def spawn(
        self,
        agent: Agent,
        input: str,
        *,
        run_id: str | None = None,
        metadata: Mapping[str, str] | None = None,
        parent_run_id: str | None = None,
    ) -> RunHandle:
        """Start a run of ``agent`` on ``input``; returns once run.started is durable (past
        ``max_active_runs``, with the run queued: it starts when its turn comes)."""
        started = self._commands.spawn(
            agent, input, run_id=run_id, metadata=metadata, parent_run_id=parent_run_id
        )
        return RunHandle(self._ops, started)

    def spawn_many(
        self,
        agent: Agent,
        inputs: Iterable[str],
        *,
        metadata: Mapping[str, str] | None = None,
    ) -> list[RunHandle]:
        """Start a run of ``agent`` on each input, in order, as ``spawn`` does; returns once
        every ``run.started`` is durable. The starts share commits (a fleet's thousands of
        spawns cost a few fsyncs, not one each); past ``max_active_runs`` the rest queue in
        this order. An input that ``spawn`` would refuse is refused before anything is written.
        When it fails part-way after some runs started (the runtime closed under it, the
        store failed), raises ``SpawnError`` with the handles of those in the log
        (``.started``) and the indices of the inputs with no run (``.missing``)."""
        check_inputs(inputs)
        try:
            started = self._commands.spawn_many(agent, list(inputs), metadata=metadata)
        except SpawnError as exc:
            exc.started = tuple(RunHandle(self._ops, run_id) for run_id in exc.started)
            raise
        return [RunHandle(self._ops, run_id) for run_id in started]

    def handle(self, run_id: str) -> RunHandle:
        """A handle to an existing run (to wait on it or cancel it)."""
        if not self._queries.exists(run_id):
            raise RunNotFound(run_id)
        return RunHandle(self._ops, run_id)

    def resume(self, run_id: str, *, extend: Limits | None = None) -> RunHandle:
        """Continue a resumable run (interrupted, limit reached, no progress, parked).

        Raises RunLocked if a live runtime drives it, SchemaChangedError if the agent's
        tools changed since the run started.
        """
        return RunHandle(self._ops, self._commands.resume(run_id, extend=extend))

    def recover(self) -> list[RunHandle]:
        """Resume every run left running by a runtime that died, for agents registered here;
        the runs it had queued are queued here, in the order they were spawned. Returns the
        handles of the runs it resumed or queued (a child run its resumed parent took up
        first is driven all the same, and not among them: wait on the parent)."""
        return [RunHandle(self._ops, run_id) for run_id in self._commands.recovery.recover()]

    # -- approvals -----------------------------------------------------------------------

    def pending_approvals(self) -> list[PendingApproval]:
        """Gated calls waiting for a decision (with the token, where this runtime issued it)."""
        return self._desk.pending()

    def approve(
        self,
        token: str | None = None,
        *,
        run_id: str | None = None,
        call_id: str | None = None,
        by: str = "",
        note: str = "",
    ) -> None:
        """Approve a waiting call, by its token or by ids, from any process with the store.

        Exactly one decision wins; a second one, an unknown or forged token, or a decision
        after the deadline raises ApprovalError saying which.
        """
        self._desk.record_decision(token, run_id, call_id, approved=True, by=by, note=note)

    def deny(
        self,
        token: str | None = None,
        *,
        run_id: str | None = None,
        call_id: str | None = None,
        by: str = "",
        note: str = "",
    ) -> None:
        """Deny a waiting call; the model is told ``note`` and the run goes on without it."""
        self._desk.record_decision(token, run_id, call_id, approved=False, by=by, note=note)

    def _poll(self) -> None:
        """Every ``poll_interval``: decisions and expiries into runs, the ends of children
        driven elsewhere into their parents, other processes' commits to the projections."""
        polls = (
            ("approval_poll_failed", self._desk.carry_due),
            ("children_poll_failed", self._commands.trees.follow_children),
            ("projection_poll_failed", self._followers.tick),
        )
        while not self._stop_polling.wait(self._poll_interval):
            for failed, poll in polls:
                try:  # a server away: each poll's reads give up soon (a close waits for it)
                    with answer_by(time.monotonic() + POLL_READ_S):
                        poll()
                except StoreError as exc:  # said already by what the host itself reads
                    log.warning(failed, error=str(exc))
                except Exception:
                    log.exception(failed)

    # -- reading -------------------------------------------------------------------------

    def events(self, run_id: str, from_seq: int = 1) -> Iterator[Recorded]:
        """The run's recorded events from ``from_seq``."""
        return self._queries.events(run_id, from_seq)

    def read_all(self, from_position: int = 1) -> Iterator[Recorded]:
        """The whole log in order, read in pages (cheap enough to tail)."""
        return self._queries.read_all(from_position)

    def state(self, run_id: str) -> RunState:
        """The run's state: its latest snapshot plus the events after it."""
        return self._queries.state(run_id)

    def runs(
        self, status: RunStatus | str | None = None, agent: str | None = None
    ) -> list[RunSummary]:
        """Summaries of the runs in the store, optionally filtered by status and agent."""
        return self._queries.runs(status, agent)

    def tree(self, run_id: str) -> RunTree:
        """The run and every child run below it: what its sub-agent calls started, each
        with its status and spend (``RunTree``)."""
        return self._queries.tree(run_id)

    def explain(self, run_id: str) -> Explanation:
        """Why the run is where it is (status, reason, limit, last decision) and what to do."""
        return self._queries.explain(run_id)

    @overload
    def verify(self, run_id: str, *, tree: Literal[False] = False) -> RunState: ...
    @overload
    def verify(self, run_id: str, *, tree: Literal[True]) -> dict[str, RunState]: ...
    def verify(self, run_id: str, *, tree: bool = False) -> RunState | dict[str, RunState]:
        """Replay the run's log through today's decide(); raise at the first difference.

        Checks the checksums and hash chain too. Raises NondeterminismError (with run, seq,
        recorded and new event) or SchemaChangedError if the agent's tools changed.
        ``tree=True`` checks the run and every child run below it, and that parent and
        child logs agree (who started whom with which allotment, what each child spent);
        returns each run's state by run id, depth first from ``run_id``.
        """
        if tree is True:
            return self._checks.verify_tree(run_id)
        if tree is not False:
            raise ConfigError(f"tree must be True or False; got {tree!r}")
        return self._checks.verify(run_id)

    # -- transfer ------------------------------------------------------------------------

    def export(self, run_id: str, *, tree: bool = False) -> Iterator[str]:
        """The run as JSONL lines (schema in ``foldloop.events._jsonl``); with ``tree=True``,
        the run and every child run below it (``tree(run_id).walk()``), in one export that
        ``import_jsonl`` takes back whole."""
        if not isinstance(tree, bool):
            raise ConfigError(f"tree must be True or False; got {tree!r}")
        return self._transfer.export(run_id, tree=tree)

    def import_jsonl(self, lines: Iterable[str] | str, *, run_id: str | None = None) -> str:
        """Append an exported run (its lines, or its whole text) to this store (as ``run_id``
        if given); returns its id.
        An exported tree is imported whole under its own run ids (``run_id`` must be None;
        if this store holds any of them, nothing is imported); returns its root's id.

        The imported run folds to the same state; nobody drives it, so a resumable one
        shows as interrupted until a runtime with its agent resumes it.
        """
        return self._transfer.import_jsonl(lines, run_id=run_id)

    # -- projections ---------------------------------------------------------------------

    def attach(
        self, projection: Projection[Any], *, reset: bool = False, checkpoint_every: float = 1.0
    ) -> ProjectionHandle:
        """Fold the log into ``projection``: from its checkpoint (a new one backfills from
        the first record), then live, each record applied once and in log order.

        Returns a handle with ``.state``, ``.position``, ``.catch_up()``, ``.error`` and
        ``.detach()``. ``reset=True`` drops the stored checkpoint and rebuilds from the start.
        A stored projection writes its checkpoint at most every ``checkpoint_every`` seconds
        while live (and on detach or close); after a crash it re-applies at most that much.
        An ``apply`` that raises stops this projection only (see ``handle.error``).
        """
        return self._followers.attach(projection, reset=reset, checkpoint_every=checkpoint_every)

    def subscribe(
        self, callback: Callable[[Recorded], None], types: Iterable[str] | None = None
    ) -> ProjectionHandle:
        """Call ``callback`` with every record committed from now on, by any process (only
        those of ``types``, if given), in log order, on the subscription's own thread.

        A callback that raises is stopped (``handle.error`` says at which record); runs and
        other subscribers are untouched. Call the returned handle (or ``.detach()``) to stop.
        """
        return self._followers.subscribe(callback, types)


def run_ops(runtime: Runtime) -> RunOps:
    """The operations ``runtime``'s handles use (for handles made elsewhere in this package,
    as a WorkerPool's are)."""
    return runtime._ops


def spawn_named(
    runtime: Runtime,
    agent: Agent,
    inputs: list[str],
    run_ids: list[str],
    metadata: Mapping[str, str] | None,
) -> list[str]:
    """``Runtime.spawn_many`` under the run ids given, one an input (a WorkerPool's host
    names its runs, so that after a worker's death the log says which of them started)."""
    runtime.check_open()
    return runtime._commands.spawn_many(agent, inputs, run_ids=run_ids, metadata=metadata)

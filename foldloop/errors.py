"""The foldloop error tree.

Every error foldloop raises to host code is a ``FoldloopError``; each message says what
was wrong and what to do about it::

    FoldloopError
    ├── ConfigError (also ValueError)   your argument is out of range or malformed
    ├── ConcurrencyError                another writer appended first (stale expected seq)
    ├── RunNotFound (also KeyError)     no run with that id in this store
    ├── RunLocked                       a live runtime drives the run, or you were fenced off
    ├── NondeterminismError             today's decide() differs from the recorded log
    ├── SchemaChangedError              the tool set changed, or the log holds newer event types
    ├── ApprovalError                   an approval decision that cannot be taken
    ├── ToolSchemaError (also TypeError) a tool signature foldloop cannot describe
    ├── ModelCallError                  a model adapter failed (``retryable`` says if a retry helps)
    ├── ProjectionError                 a projection's apply raised; it stopped at that record
    ├── SpawnError                      a spawn_many failed part-way: which runs started
    ├── WorkerError                     a WorkerPool's worker process would not start or died
    └── StoreError                      the store directory or file is unusable or corrupt
        ├── StoreNotFound               no foldloop store at that path
        ├── StoreAccessError            the system refuses it: permissions, a full disk, NFS
        └── StoreCorrupted              the store's bytes were damaged (not your doing)
            └── CorruptRecord           a record failed its checksum or hash chain

This module imports nothing from foldloop, so every layer may raise these.
"""

from __future__ import annotations

from typing import Any

__all__ = [
    "ApprovalError",
    "ConcurrencyError",
    "ConfigError",
    "CorruptRecord",
    "FoldloopError",
    "ModelCallError",
    "NondeterminismError",
    "ProjectionError",
    "RunLocked",
    "RunNotFound",
    "SchemaChangedError",
    "SpawnError",
    "StoreAccessError",
    "StoreCorrupted",
    "StoreError",
    "StoreNotFound",
    "ToolSchemaError",
    "WorkerError",
]


class FoldloopError(Exception):
    """Base of every error foldloop raises on purpose.

    ``fact`` is what went wrong; ``advice``, when there is one, is what a Python caller does
    about it (the command line words its own). ``str()`` gives both.
    """

    def __init__(self, fact: str = "", *args: object, advice: str = "") -> None:
        super().__init__(f"{fact}; {advice}" if advice else fact, *args)
        self.fact = fact
        self.advice = advice


class ConfigError(FoldloopError, ValueError):
    """Your fault: an argument was malformed or out of range; the message names the rule."""


class ConcurrencyError(FoldloopError):
    """Another append reached the run first: reload the state and decide again."""

    def __init__(self, run_id: str, expected: int, actual: int) -> None:
        self.run_id = run_id
        self.expected = expected
        self.actual = actual
        super().__init__(
            f"run {run_id!r} is at seq {actual}, expected {expected}; "
            "another writer appended first: reload the state and decide again"
        )


class RunNotFound(FoldloopError, KeyError):
    """No run with this id exists in the store."""

    def __init__(self, run_id: str) -> None:
        self.run_id = run_id
        super().__init__(run_id)

    def __str__(self) -> str:
        return f"no run {self.run_id!r} in this store; list runs with rt.runs() or `foldloop runs`"


class RunLocked(FoldloopError):
    """A live runtime holds the run's lease, or this owner's lease was taken over."""


class NondeterminismError(FoldloopError):
    """Replaying the log through today's decide() produced a different event."""

    def __init__(self, run_id: str, seq: int, recorded: object, new: object) -> None:
        self.run_id = run_id
        self.seq = seq
        self.recorded = recorded
        self.new = new
        super().__init__(
            f"run {run_id!r} diverges at seq {seq}: the log has {recorded!r} but today's "
            f"code decides {new!r}; revert the change or start new runs with the new code"
        )


class SchemaChangedError(FoldloopError):
    """The agent's tools differ from those the run was started with, or the run's log holds
    event types of a newer foldloop (it can be read, not resumed, until you upgrade)."""


class ApprovalError(FoldloopError):
    """An approval decision was refused (unknown, expired or already decided)."""


class ToolSchemaError(FoldloopError, TypeError):
    """A tool's signature cannot be turned into an argument schema."""


class ModelCallError(FoldloopError):
    """A model adapter failed; ``retryable`` tells the run whether asking again may help,
    and ``retry_after_s`` how long the provider asked it to wait first (a 429's
    ``Retry-After``): the run's retry waits at least that, up to a minute."""

    def __init__(
        self, message: str, *, retryable: bool = False, retry_after_s: float | None = None
    ) -> None:
        self.retryable = retryable
        self.retry_after_s = retry_after_s
        super().__init__(message)


class ProjectionError(FoldloopError):
    """A projection stopped because its ``apply`` raised on the record at ``position``.

    Runs and other projections go on; the projection's checkpoint stays before the record,
    so attaching it again (after fixing ``apply``) retries that record.
    """

    def __init__(
        self, name: str, *, position: int, run_id: str, seq: int, event_type: str, error: str
    ) -> None:
        self.name = name
        self.position = position
        self.run_id = run_id
        self.seq = seq
        self.event_type = event_type
        self.error = error
        super().__init__(
            f"projection {name!r} stopped at position {position} "
            f"(run {run_id!r} seq {seq}, {event_type}): apply raised {error}; "
            "fix apply and attach it again to retry from there"
        )


class _SpawnsCutShort(FoldloopError):
    """An error of spawns cut short: ``started`` holds the handles of the runs that did
    start, in input order, and ``missing`` the indices of the inputs that have no run."""

    def __init__(
        self,
        fact: str = "",
        *args: object,
        advice: str = "",
        started: tuple[Any, ...] = (),  # RunHandles: this module imports no foldloop
        missing: tuple[int, ...] = (),
    ) -> None:
        super().__init__(fact, *args, advice=advice)
        self.started = started
        self.missing = missing


class SpawnError(_SpawnsCutShort):
    """A ``spawn_many`` (of a Runtime, or a WorkerPool's worker refusing a request) failed
    part-way after some of its runs started (the runtime closed under it, the store failed).

    ``started`` holds the handles of the runs whose ``run.started`` is in the log, in input
    order (driven, or left for ``recover()`` when the runtime closed before driving them);
    ``missing`` the indices of the inputs that have no run (empty when all started):
    spawning only those again is safe. The first failure is the ``__cause__``.
    """


class WorkerError(_SpawnsCutShort):
    """A WorkerPool's worker process failed to start, or died with a request in flight.

    Runs it drove stay in the log: the pool's replacement worker recovers them. When worker
    processes kept dying under a ``spawn_many`` (or ``spawn``), ``started`` holds the handles
    of the runs that did start, in input order, and ``missing`` the indices of the inputs
    that have no run: spawning only those again is safe.
    """


class StoreError(FoldloopError):
    """The store cannot be used: wrong path, not a foldloop store, truncated or corrupt."""


class StoreNotFound(StoreError):
    """No foldloop store at the path (a typo, or ``create=False`` where none was made)."""


class StoreAccessError(StoreError):
    """The system refuses the store: permissions, a full disk, a network filesystem. Fix
    the environment; the store itself is fine."""


class StoreCorrupted(StoreError):
    """The store's files are damaged (a disk fault, an outside write): restore a backup;
    ``foldloop doctor`` lists what it can still tell apart."""


class CorruptRecord(StoreCorrupted):
    """A stored record failed its checksum or its hash chain; never folded silently."""

    def __init__(self, run_id: str, seq: int, problem: str) -> None:
        self.run_id = run_id
        self.seq = seq
        self.problem = problem
        super().__init__(
            f"run {run_id!r} seq {seq}: {problem}; the store is damaged "
            "(run `foldloop doctor` to list every damaged record)"
        )

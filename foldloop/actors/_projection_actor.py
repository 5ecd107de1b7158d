"""ProjectionActor: one per attached projection (or subscription); catches up, then follows.

The actor reads the log itself, in pages, from the position after its own: the commit
listener and the runtime's poller only *wake* it. So it sees every record exactly once
and in log order, whichever process wrote it, and a slow projection delays nothing but
itself. An ``apply`` that raises stops this actor alone, with the record and the error
kept (in the handle, the log and the checkpoint); the runs and every other projection go on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable
from typing import Any

from foldloop._arguments import MAX_WAIT_S, check_seconds
from foldloop._log import get_logger
from foldloop.actors._base import FAILURES, FastActor
from foldloop.actors._own_threads import calling, closed_says_so
from foldloop.errors import ProjectionError
from foldloop.projections._base import Projection
from foldloop.store import Checkpoint, EventStore, Pending
from foldloop.store._checkpoints import ProjectionFailure

__all__ = ["ProjectionActor", "ProjectionHandle"]

log = get_logger(__name__)

PAGE = 1024
"""Records read per read transaction."""


class _Pull:
    """Read what the log holds after our position."""


class _Detach:
    """Write the checkpoint and stop."""


_PULL = _Pull()
_DETACH = _Detach()


class ProjectionActor(FastActor):
    """Folds the log into one projection's state, page by page, then live."""

    def __init__(
        self,
        store: EventStore,
        projection: Projection[Any],
        *,
        position: int,
        state: Any,
        clock: Callable[[], int],
        checkpoint_interval: float = 1.0,
        on_done: Callable[[], None] = lambda: None,
    ) -> None:
        super().__init__()
        self.on_done = on_done
        self.store = store
        self.projection = projection
        self.clock = clock
        self.checkpoint_interval = checkpoint_interval
        self.stored = projection.stored and not store.readonly
        self._types = projection.types
        self._apply = projection.apply
        self._published: tuple[int, Any] = (position, state)
        self._checkpointed = position
        self._unconfirmed: Pending[Any] | None = None
        """The last checkpoint write not waited for: a stop waits for it."""
        self._last_checkpoint = time.monotonic()
        self._poked = threading.Event()
        self._changed = threading.Condition()
        self.failure: ProjectionFailure | None = None
        self.done = False

    # -- wake-ups (any thread) -----------------------------------------------------------

    def poke(self) -> None:
        """Ask the actor to read what is new (coalesced: one pending pull at most)."""
        if not self._poked.is_set() and not self.done:
            self._poked.set()
            self.actor_ref.tell(_PULL)

    @property
    def published(self) -> tuple[int, Any]:
        """(position, state) after the last page applied."""
        return self._published

    def wait_done(self, timeout: float | None) -> bool:
        """Block until the actor stopped (detached or failed); False on timeout."""
        return self.wait_for(None, timeout)

    def wait_for(self, position: int | None, timeout: float | None) -> bool:
        """Block until the projection reached ``position`` (None: until it stopped) or
        stopped; False on timeout."""
        deadline = None if timeout is None else time.monotonic() + timeout
        with self._changed:
            while not self.done and (position is None or self._published[0] < position):
                left = None if deadline is None else deadline - time.monotonic()
                if left is not None and left <= 0:
                    return False
                self._changed.wait(left)
        return True

    # -- the actor -----------------------------------------------------------------------

    def on_receive(self, message: Any) -> Any:
        if message is _PULL:
            self._pull()
        elif message is _DETACH:
            self._finish()
        return None

    def on_failure(self, *_: Any) -> None:  # pragma: no cover - defensive
        self._mark_done()

    def _pull(self) -> None:
        if self.done:
            return
        self._poked.clear()
        position, state = self._published
        try:
            page = self.store.read_all(position + 1, limit=PAGE)
        except Exception as exc:  # a damaged record or a closed store: stop, say where
            run_id, seq = getattr(exc, "run_id", "?"), getattr(exc, "seq", 0)
            self._halt(position, state, position + 1, run_id, seq, "(unreadable)", exc)
            return
        if not page:
            return
        types, apply = self._types, self._apply
        for rec in page:
            if types is None or rec.type in types:
                try:
                    state = apply(state, rec)
                except FAILURES as exc:
                    self._halt(position, state, rec.position, rec.run_id, rec.seq, rec.type, exc)
                    return
            position = rec.position
        self._publish(position, state)
        if self.stored and time.monotonic() - self._last_checkpoint >= self.checkpoint_interval:
            self._checkpoint(wait=False)  # during a long backfill too: a crash keeps progress
        if len(page) == PAGE:
            self.poke()

    def _publish(self, position: int, state: Any) -> None:
        with self._changed:
            self._published = (position, state)
            self._changed.notify_all()

    def _halt(  # noqa: PLR0917 - the failing record's coordinates, spelled out
        self,
        position: int,
        state: Any,
        failed_at: int,
        run_id: str,
        seq: int,
        event_type: str,
        exc: BaseException,
    ) -> None:
        """The record at ``failed_at`` could not be applied (or read): keep the state
        before it, record why, stop."""
        self.failure = ProjectionFailure(
            position=failed_at,
            run_id=run_id,
            seq=seq,
            event_type=event_type,
            error=f"{type(exc).__name__}: {exc}",
            at=self.clock(),
        )
        log.error(
            "projection_stopped",
            projection=self.projection.name,
            position=failed_at,
            run_id=run_id,
            seq=seq,
            event_type=event_type,
            error=self.failure.error,
            exc_info=exc,  # the apply's traceback (README: ERROR with its traceback)
        )
        self._published = (position, state)
        self._checkpoint(wait=True)
        self._mark_done()
        self.stop()

    def _finish(self) -> None:
        if not self.done:
            if self.stored and self._published[0] != self._checkpointed:
                self._checkpoint(wait=True)
            elif self._unconfirmed is not None:  # written, but maybe not yet landed
                self._confirm(self._unconfirmed)
            self._mark_done()
        self.stop()

    def _confirm(self, op: Pending[Any]) -> None:
        """Wait for a checkpoint write: a detach returns once a new attach can read it."""
        try:
            op.wait()
        except FAILURES as exc:
            log.warning(
                "projection_checkpoint_failed", projection=self.projection.name, error=str(exc)
            )

    def _mark_done(self) -> None:
        with self._changed:
            self.done = True
            self._changed.notify_all()
        self.on_done()

    def _checkpoint(self, *, wait: bool) -> None:
        if not self.stored:
            return
        position, state = self._published
        projection = self.projection
        try:
            raw = projection.encode_state(state)
            if not isinstance(raw, bytes):  # stored, it could never be read back
                raise TypeError(f"encode_state returned {type(raw).__name__}, not bytes")
            checkpoint = Checkpoint(
                name=projection.name,
                version=projection.version,
                position=position,
                state=raw,
                failure=self.failure,
                updated_at=self.clock(),
            )
            op = self.store.put_checkpoint(checkpoint)
            self._unconfirmed = None if wait else op
            if wait:
                op.wait()
        except FAILURES as exc:
            log.warning("projection_checkpoint_failed", projection=projection.name, error=str(exc))
            return
        self._checkpointed = position
        self._last_checkpoint = time.monotonic()


class ProjectionHandle:
    """What ``rt.attach`` (and ``rt.subscribe``) return: the live view of one projection.

    ``state`` and ``position`` are read without locks (the actor publishes both together
    after every page). Calling the handle, like ``detach()``, stops it.
    """

    def __init__(self, actor: ProjectionActor, check_open: Callable[[], None]) -> None:
        self._actor = actor
        self._check_open = check_open
        """Raises what a call on the closed runtime raises, once it is closed."""
        self.name = actor.projection.name

    def __repr__(self) -> str:
        status = "stopped" if self._actor.done else "live"
        return f"<ProjectionHandle {self.name!r} at {self.position} ({status})>"

    @property
    def state(self) -> Any:
        """The projection's state after every record up to ``position``."""
        return self._actor.published[1]

    @property
    def position(self) -> int:
        """The log position of the last record this projection has seen."""
        return self._actor.published[0]

    @property
    def error(self) -> ProjectionError | None:
        """Why the projection stopped, if its ``apply`` raised."""
        failure = self._actor.failure
        if failure is None:
            return None
        return ProjectionError(
            self.name,
            position=failure.position,
            run_id=failure.run_id,
            seq=failure.seq,
            event_type=failure.event_type,
            error=failure.error,
        )

    @property
    def live(self) -> bool:
        """True until detached or stopped by an error."""
        return not self._actor.done

    def catch_up(self, timeout: float | None = 10.0) -> int:
        """Wait until the projection has seen the whole log as it stands now.

        Returns the position reached; raises ProjectionError if the projection stopped
        on a failing record, TimeoutError if ``timeout`` seconds were not enough.
        """
        check_seconds("timeout", timeout, MAX_WAIT_S, none=True)
        self._check_open()
        # a signal handler's close must not wait for what this holds
        with calling(self._actor.store):
            with closed_says_so(self._check_open):
                target = self._actor.store.last_position()
            self._actor.poke()
            reached = self._actor.wait_for(target, timeout)
        if not reached:
            raise TimeoutError(
                f"projection {self.name!r} reached position {self.position} of {target} "
                f"in {timeout} s; it is still catching up (call catch_up again to keep waiting)"
            )
        error = self.error
        if error is not None:
            raise error
        return self.position

    def detach(self) -> None:
        """Stop following the log; a stored projection writes its checkpoint first."""
        actor = self._actor
        if not actor.done:
            with calling(actor.store):
                actor.actor_ref.tell(_DETACH)
                actor.wait_done(timeout=10)

    __call__ = detach

"""Followers: the runtime's attached projections and subscriptions, woken as the log grows.

Each follower is a ProjectionActor reading the log from its own position. Commits made
in this process wake them through the store's commit listener; commits of other
processes are noticed by ``tick`` (called by the runtime's poller), which compares the
log's last position with the last one it saw.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from typing import Any

import msgspec

from foldloop._arguments import MAX_WAIT_S, check_seconds
from foldloop._log import get_logger
from foldloop.actors._own_threads import closed_says_so
from foldloop.actors._projection_actor import ProjectionActor, ProjectionHandle
from foldloop.errors import ConfigError, StoreError
from foldloop.events._recorded import Recorded
from foldloop.projections._base import (
    Projection,
    check_event_types,
    check_projection,
    check_state_codec,
)
from foldloop.store import EventStore

__all__ = ["Followers"]

log = get_logger(__name__)


class _Subscription(Projection[None]):
    """A callback as a projection without state or checkpoint, starting at the log's end."""

    stored = False

    def __init__(self, callback: Callable[[Recorded], None], types: frozenset[str] | None):
        super().__init__(f"subscription:{id(callback):x}")
        self.callback = callback
        self.types = types

    def initial(self) -> None:
        return None

    def apply(self, state: None, record: Recorded) -> None:
        self.callback(record)


class Followers:
    """Starts, wakes and stops the follower actors of one runtime."""

    def __init__(
        self, store: EventStore, clock: Callable[[], int], closed: Callable[[], None]
    ) -> None:
        self.store = store
        self.clock = clock
        self._closed_error = closed
        """Raises what a call on the closed runtime raises."""
        self._closed = False
        self._lock = threading.Lock()
        self._actors: dict[int, ProjectionActor] = {}
        self._names: set[str] = set()
        self._seen = 0
        self._unlisten: Callable[[], None] | None = None

    def attach(
        self, projection: Projection[Any], *, reset: bool = False, checkpoint_every: float = 1.0
    ) -> ProjectionHandle:
        """Start ``projection`` from its checkpoint (or from the start), then follow live."""
        projection = check_projection(projection)
        if not isinstance(reset, bool):
            raise ConfigError(f"reset must be True or False; got {reset!r:.80}")
        check_seconds("checkpoint_every", checkpoint_every, MAX_WAIT_S)
        name = projection.name
        with self._lock:
            if name in self._names:
                raise ConfigError(
                    f"projection {name!r} is already attached to this runtime; "
                    "use its handle, or detach it first"
                )
            self._names.add(name)
        try:
            with closed_says_so(self._closed_error):
                position, state, rebuilt = self._start_point(projection, reset=reset)
                if projection.stored:  # a checkpoint read back needs no proof it reads back
                    check_state_codec(projection, state, read_back=position == 0)
                if rebuilt is not None:  # said once the attach is not refused
                    rebuilt()
                if reset and not self.store.readonly:  # once nothing above refused it
                    self.store.delete_checkpoint(name).wait()
        except BaseException:
            with self._lock:
                self._names.discard(name)
            raise
        return self._start(projection, position, state, name=name, every=checkpoint_every)

    def subscribe(
        self, callback: Callable[[Recorded], None], types: Iterable[str] | None
    ) -> ProjectionHandle:
        """Call ``callback`` for each record committed from now on (of ``types``)."""
        if not callable(callback):
            raise ConfigError(f"subscribe() takes a callable; got {type(callback).__name__}")
        wanted = check_event_types(types)
        with closed_says_so(self._closed_error):
            position = self.store.last_position()
        return self._start(_Subscription(callback, wanted), position, None, name=None)

    def _start_point(
        self, projection: Projection[Any], *, reset: bool
    ) -> tuple[int, Any, Callable[[], None] | None]:
        """(position, state) to start from, and the log line of a checkpoint it could not
        start from (for the caller to write once nothing refused the attach)."""
        name = projection.name

        def rebuilt(why: str, *, warn: bool = True) -> tuple[int, Any, Callable[[], None]]:
            say = log.warning if warn else log.info
            return (
                0,
                projection.initial(),
                lambda: say("projection_rebuilt", projection=name, why=why),
            )

        if reset or not projection.stored:  # a reset's checkpoint goes once nothing refused it
            return 0, projection.initial(), None
        try:
            with closed_says_so(self._closed_error):  # no checkpoint is unreadable then
                checkpoint = self.store.checkpoint(name)
        except StoreError as exc:
            return rebuilt(str(exc))
        if checkpoint is None:
            return 0, projection.initial(), None
        if checkpoint.version != projection.version:
            why = f"version {checkpoint.version} stored, {projection.version} attached"
            return rebuilt(why, warn=False)
        if checkpoint.state is None:
            return 0, projection.initial(), None
        try:
            state = projection.decode_state(checkpoint.state)
        except (msgspec.MsgspecError, ValueError, TypeError) as exc:
            return rebuilt(f"state unreadable: {exc}")
        if checkpoint.failure is not None:
            log.info(
                "projection_retrying",
                projection=name,
                position=checkpoint.failure.position,
                error=checkpoint.failure.error,
            )
        return checkpoint.position, state, None

    def _start(
        self,
        projection: Projection[Any],
        position: int,
        state: Any,
        *,
        name: str | None,
        every: float = 1.0,
    ) -> ProjectionHandle:
        actor = ProjectionActor(
            self.store,
            projection,
            position=position,
            state=state,
            clock=self.clock,
            checkpoint_interval=every,
        )
        key = id(actor)

        def forget() -> None:
            with self._lock:
                self._actors.pop(key, None)
                if name is not None:
                    self._names.discard(name)

        actor.on_done = forget
        actor.start_here()
        with self._lock:
            closed = self._closed
            if not closed:
                self._actors[key] = actor
                if self._unlisten is None:
                    self._unlisten = self.store.add_listener(self._on_commit)
        if closed:  # the runtime closed while this attach read its start: it reads nothing
            ProjectionHandle(actor, self._closed_error).detach()
            self._closed_error()
        actor.poke()
        return ProjectionHandle(actor, self._closed_error)

    def _on_commit(self, _records: list[Recorded]) -> None:
        for actor in list(self._actors.values()):
            actor.poke()

    def tick(self) -> None:
        """Wake every follower if the log grew since the last tick (other processes' writes)."""
        if not self._actors:
            return
        last = self.store.last_position()
        if last != self._seen:
            self._seen = last
            for actor in list(self._actors.values()):
                actor.poke()

    def close(self) -> None:
        """Detach every follower (stored projections write their checkpoints)."""
        with self._lock:
            self._closed = True
            actors = list(self._actors.values())
            unlisten, self._unlisten = self._unlisten, None
        if unlisten is not None:
            unlisten()
        for actor in actors:
            ProjectionHandle(actor, self._closed_error).detach()
        with self._lock:
            self._actors.clear()
            self._names.clear()

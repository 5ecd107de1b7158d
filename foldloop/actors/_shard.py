"""Shard: one of the runtime's fixed set of pykka actors on which runs are activated.

A run is a virtual actor (as an Orleans grain, or an Akka Cluster Sharding entity): the
runtime places it on a shard by its id while it is active, and the shard hands it its
messages one at a time, in order (``Mailboxes``). A message whose handling waits on
something outside (a durable commit) keeps the run busy without holding the shard: the
shard goes on with other runs and resumes this one when a ``Continue`` comes back. So the
number of threads does not grow with the runs in flight.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from foldloop._log import get_logger
from foldloop.actors._base import FAILURES, FastActor
from foldloop.actors._mailboxes import Mailboxes

__all__ = ["Activate", "Barrier", "Continue", "Deliver", "Hosted", "Shard"]

log = get_logger(__name__)


class Hosted(Protocol):
    """**Protocol:** what a shard needs of a run activated on it (``RunActor``)."""

    @property
    def run_id(self) -> str: ...

    @property
    def finished(self) -> bool:
        """True once the run settled or failed: the shard then deactivates it."""
        ...

    def receive(self, message: Any) -> bool:
        """Handle one message; False while its handling waits on something that will come
        back as a ``Continue`` (the run's next message waits too)."""
        ...

    def idle(self) -> None:
        """No message waits for the run now."""
        ...

    def activated(self, post: Callable[[Any], None]) -> None:
        """The run is on a shard now; ``post`` queues a message it makes for itself."""
        ...

    def stopping(self) -> None:
        """The runtime is closing: keep nothing back from the store."""
        ...


# Messages are msgspec Structs: built in C, several a step at ~1/8 of a frozen dataclass.


class Activate(msgspec.Struct, frozen=True):
    """Host ``run`` on this shard from now on."""

    run: Hosted


class Deliver(msgspec.Struct, frozen=True):
    """A message for the run ``run_id``: queued in its mailbox."""

    run_id: str
    message: Any


class Continue(msgspec.Struct, frozen=True):
    """The message in hand for ``run`` may go on: ``then()`` (returning as ``receive``)."""

    run: Hosted
    then: Callable[[], bool]


class Barrier(msgspec.Struct, frozen=True):
    """Nothing to do: asked, its answer says the shard took every message sent before it
    (what each run was handling then is decided; a run's own queued messages may wait)."""


class Shard(FastActor):
    """Hosts the active runs placed on it and schedules their messages.

    ``on_deactivated`` is told each run that leaves (settled, failed, or past the last
    guard); ``on_dropped`` gets the messages a run will never handle (queued behind its end,
    or arriving once it left), for its host to see whether any still matters (a cancel).
    """

    def __init__(
        self,
        on_deactivated: Callable[[Hosted], None],
        on_dropped: Callable[[str, list[Any]], None],
    ) -> None:
        super().__init__()
        self._runs: dict[str, Hosted] = {}
        self._mailboxes: Mailboxes[str, Any] = Mailboxes()
        self._on_deactivated = on_deactivated
        self._on_dropped = on_dropped

    def on_receive(self, message: Any) -> None:
        if type(message) is Deliver:
            run = self._runs.get(message.run_id)
            if run is None:  # deactivated meanwhile
                self._on_dropped(message.run_id, [message.message])
                return
            first = self._mailboxes.post(message.run_id, message.message)
            if first is not None:
                self._go(run, _receiving(run, first))
        elif type(message) is Continue:
            if self._runs.get(message.run.run_id) is message.run:
                self._go(message.run, message.then)
        elif type(message) is Activate:
            run = message.run
            self._runs[run.run_id] = run
            # by weak reference: a run holding a closure over itself would live until a
            # cyclic collection, with all its state, instead of going when it finishes
            run.activated(functools.partial(self._post_own, weakref.ref(run)))
        elif type(message) is Barrier:
            return  # its answer is all it is for

    def _post_own(self, ref: weakref.ref[Hosted], message: Any) -> None:
        """A message a run made for itself while handling one (an instant model's reply):
        next in its mailbox, unless messages wait in the shard's inbox (a cancel, say), which
        must come first: then behind them."""
        run = ref()
        if run is None:  # only the run holds this: gone, it cannot be posting
            return
        if self._runs.get(run.run_id) is run and self.actor_inbox.empty():
            first = self._mailboxes.post(run.run_id, message)
            if first is not None:  # the run was idle (not while it handles a message)
                self._go(run, _receiving(run, first))
        else:
            self.actor_ref.tell(Deliver(run.run_id, message))

    def _go(self, run: Hosted, step: Callable[[], bool]) -> None:
        try:
            self._steps(run, step)
        except FAILURES:  # a last guard: runs turn their failures into events themselves
            log.exception("run_step_failed", run_id=run.run_id)
            if self._runs.get(run.run_id) is run:
                self._deactivate(run)

    def _steps(self, run: Hosted, step: Callable[[], bool]) -> None:
        """Run ``step`` and then the run's queued messages, until one waits or none is left."""
        run_id = run.run_id
        while step():
            if run.finished:
                self._deactivate(run)
                return
            message = self._mailboxes.done(run_id)
            if message is None:
                run.idle()
                if run.finished:  # what it held back could not be written
                    self._deactivate(run)
                return
            step = _receiving(run, message)

    def _deactivate(self, run: Hosted) -> None:
        del self._runs[run.run_id]
        dropped = self._mailboxes.drop(run.run_id)
        self._on_deactivated(run)
        if dropped:
            self._on_dropped(run.run_id, dropped)

    def on_stop(self) -> None:
        for run in self._runs.values():
            try:
                run.stopping()
            except FAILURES:
                log.exception("run_stop_failed", run_id=run.run_id)


def _receiving(run: Hosted, message: Any) -> Callable[[], bool]:
    return lambda: run.receive(message)

"""Shard: one of the runtime's fixed set of pykka actors on which runs are activated.

A run is a virtual actor (as an Orleans grain, or an Akka Cluster Sharding entity): the
runtime places it on a shard by its id while it is active, and the shard hands it its
messages one at a time, in order (``Mailboxes``). A message whose handling waits on
something outside (a durable commit) keeps the run busy without holding the shard: the
shard goes on with other runs and resumes this one when a ``Continue`` comes back. So the
number of threads does not grow with the runs in flight.
"""

from __future__ import annotations

import collections
import functools
import threading
import weakref
from collections.abc import Callable
from typing import Any, Protocol

import msgspec

from foldloop._log import get_logger
from foldloop.actors._base import FAILURES, FastActor
from foldloop.actors._mailboxes import Mailboxes
from foldloop.actors._own_threads import holding_outcome

__all__ = ["Activate", "Barrier", "Continue", "Deliver", "Hosted", "Shard"]

log = get_logger(__name__)

_handling = threading.local()
"""``shard``: the Shard whose message the current thread is handling, if any."""


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

    Messages come through ``post``. The shard's own thread handles them in order; a pool
    thread whose job is done but for handing its outcome on (``outcome_in_hand``: a tool's
    outcome, a model's reply) handles that message itself when its run is the only one
    active on the shard and the shard is idle, nothing waiting in its inbox: the thread is
    free, and the run's next step costs no hand-over. (With other runs active their steps
    share commits on the shard's thread; handled on pool threads, each would commit alone:
    2-4x the fsyncs at 1,000 runs.) One thread at a time handles the shard's messages
    (``_lock``); what a pool thread handling one posts meanwhile (a commit it led landed)
    follows it.
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
        self._lock = threading.Lock()
        """Held by the thread handling the shard's messages (its own, or one handing its
        outcome on)."""
        self._counting = threading.Lock()
        self._posted = 0
        """Messages put in the inbox (under ``_counting``)."""
        self._taken = 0
        """Of them, handled (under ``_lock``): all of them when equal."""
        self._after: collections.deque[Any] = collections.deque()
        """What the thread handling a message posted meanwhile: handled next, by it."""
        self._stopped = False

    def post(self, message: Any, *, inline: bool = True) -> None:
        """(Any thread.) Hand the shard ``message`` (``Activate``, ``Deliver``, ``Continue``);
        raises ``pykka.ActorDeadError`` once it stopped. ``inline=False``: a thread handing
        its outcome on does not handle it itself (it holds a lock the handling may take)."""
        if getattr(_handling, "shard", None) is self:
            if self._posted == self._taken:  # nothing another thread posted waits before it
                self._after.append(message)
            else:
                self._enqueue(message)
            return
        if inline and len(self._runs) == 1 and holding_outcome() and self._lock.acquire(False):
            try:
                if self._posted == self._taken and len(self._runs) == 1 and not self._stopped:
                    self._handle_here(message)
                    return
            finally:
                self._lock.release()
        self._enqueue(message)

    def _enqueue(self, message: Any) -> None:
        with self._counting:
            self._posted += 1
        self.actor_ref.tell(message)

    def on_receive(self, message: Any) -> None:
        with self._lock:
            if type(message) is not Barrier:  # asked, not posted: its answer is all it is for
                self._taken += 1
                self._receive(message)

    def _handle_here(self, message: Any) -> None:
        """(``_lock`` held, a pool thread.) Handle ``message``, then what was posted
        meanwhile."""
        _handling.shard = self
        try:
            self._receive(message)
            while self._after:
                self._receive(self._after.popleft())
        finally:
            _handling.shard = None
            while self._after:  # left by a failure: for the shard's own thread
                self._enqueue(self._after.popleft())

    def _receive(self, message: Any) -> None:
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

    def _post_own(self, ref: weakref.ref[Hosted], message: Any) -> None:
        """A message a run made for itself while handling one (an instant model's reply):
        next in its mailbox, unless messages wait in the shard's inbox (a cancel, say), which
        must come first: then behind them."""
        run = ref()
        if run is None:  # only the run holds this: gone, it cannot be posting
            return
        others_first = self._posted != self._taken or bool(self._after)
        if self._runs.get(run.run_id) is run and not others_first:
            first = self._mailboxes.post(run.run_id, message)
            if first is not None:  # the run was idle (not while it handles a message)
                self._go(run, _receiving(run, first))
        else:
            self._enqueue(Deliver(run.run_id, message))

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
        with self._lock:
            self._stopped = True
            for run in self._runs.values():
                try:
                    run.stopping()
                except FAILURES:
                    log.exception("run_stop_failed", run_id=run.run_id)


def _receiving(run: Hosted, message: Any) -> Callable[[], bool]:
    return lambda: run.receive(message)

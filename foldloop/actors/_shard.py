"""Shard: one of the runtime's fixed set of pykka actors on which runs are activated.

A run is a virtual actor (as an Orleans grain, or an Akka Cluster Sharding entity): the
runtime places it on a shard by its id while it is active, and the shard hands it its
messages one at a time, in order (``Mailboxes``). A message whose handling waits on
something outside (a durable commit) keeps the run busy without holding the shard: the
shard goes on with other runs and resumes this one when a ``Continue`` comes back. So the
number of threads does not grow with the runs in flight.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from foldloop._log import get_logger
from foldloop.actors._base import FastActor
from foldloop.actors._mailboxes import Mailboxes

__all__ = ["Activate", "Continue", "Deliver", "Hosted", "Shard"]

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

    def stopping(self) -> None:
        """The runtime is closing: keep nothing back from the store."""
        ...


@dataclass(frozen=True, slots=True)
class Activate:
    """Host ``run`` on this shard from now on."""

    run: Hosted


@dataclass(frozen=True, slots=True)
class Deliver:
    """A message for the run ``run_id``: queued in its mailbox."""

    run_id: str
    message: Any


@dataclass(frozen=True, slots=True)
class Continue:
    """The message in hand for ``run_id`` may go on: ``then()`` (returning as ``receive``)."""

    run_id: str
    then: Callable[[], bool]


class Shard(FastActor):
    """Hosts the active runs placed on it and schedules their messages."""

    def __init__(self, on_deactivated: Callable[[str, list[Any]], None]) -> None:
        super().__init__()
        self._runs: dict[str, Hosted] = {}
        self._mailboxes: Mailboxes[str, Any] = Mailboxes()
        self._on_deactivated = on_deactivated

    def on_receive(self, message: Any) -> None:
        if type(message) is Deliver:
            run = self._runs.get(message.run_id)
            if run is None:  # deactivated meanwhile: as a message to a stopped actor
                log.debug("message_for_inactive_run", run_id=message.run_id)
                return
            first = self._mailboxes.post(message.run_id, message.message)
            if first is not None:
                self._go(run, _receiving(run, first))
        elif type(message) is Continue:
            run = self._runs.get(message.run_id)
            if run is not None:
                self._go(run, message.then)
        elif type(message) is Activate:
            self._runs[message.run.run_id] = message.run

    def _go(self, run: Hosted, step: Callable[[], bool]) -> None:
        try:
            self._steps(run, step)
        except Exception:  # a last guard: runs turn their failures into events themselves
            log.exception("run_step_failed", run_id=run.run_id)
            if self._runs.pop(run.run_id, None) is not None:
                self._on_deactivated(run.run_id, self._mailboxes.drop(run.run_id))

    def _steps(self, run: Hosted, step: Callable[[], bool]) -> None:
        """Run ``step`` and then the run's queued messages, until one waits or none is left."""
        run_id = run.run_id
        while step():
            if run.finished:
                del self._runs[run_id]
                self._on_deactivated(run_id, self._mailboxes.drop(run_id))
                return
            message = self._mailboxes.done(run_id)
            if message is None:
                run.idle()
                return
            step = _receiving(run, message)

    def on_stop(self) -> None:
        for run in self._runs.values():
            try:
                run.stopping()
            except Exception:
                log.exception("run_stop_failed", run_id=run.run_id)


def _receiving(run: Hosted, message: Any) -> Callable[[], bool]:
    return lambda: run.receive(message)

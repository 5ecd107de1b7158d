"""The actor base foldloop's actors share: pykka's ThreadingActor with a C inbox, its loop
on a reused thread.

pykka documents ``_create_actor_inbox`` as the seam for the inbox. Its default,
``queue.Queue``, is a pure-Python Condition dance on every ``tell``; ``queue.SimpleQueue``
is implemented in C with the same put/get/empty interface, and a step makes several
tells, each on the serial path.
"""

from __future__ import annotations

import queue
from typing import Any, cast

import pykka

from foldloop.actors._loops import LOOPS

__all__ = ["FastActor"]


class FastActor(pykka.ThreadingActor):
    """A daemon-thread ThreadingActor whose inbox is a ``queue.SimpleQueue``."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()

    def _start_actor_loop(self) -> None:
        # pykka starts a thread here; the loop runs on a pooled one instead (see loops.py).
        LOOPS.run(self._actor_loop)

    def start_here(self) -> pykka.ActorRef[Any]:
        """Start this already-built actor (keeping a reference to the object itself)."""
        pykka.ActorRegistry.register(self.actor_ref)
        self._start_actor_loop()
        return self.actor_ref

    def drain_inbox(self) -> list[Any]:
        """Take every queued envelope, in order (to hand a run over to another actor)."""
        inbox = cast("queue.SimpleQueue[Any]", self.actor_inbox)
        taken: list[Any] = []
        while True:
            try:
                taken.append(inbox.get_nowait())
            except queue.Empty:
                return taken

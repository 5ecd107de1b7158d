"""The actor base foldloop's actors share: pykka's ThreadingActor with a C inbox.

pykka documents ``_create_actor_inbox`` as the seam for the inbox. Its default,
``queue.Queue``, is a pure-Python Condition dance on every ``tell``; ``queue.SimpleQueue``
is implemented in C with the same put/get/empty interface, and a step makes several
tells, each on the serial path.
"""

from __future__ import annotations

import queue
from typing import Any

import pykka

from foldloop.actors._own_threads import mark_own_thread

__all__ = ["FAILURES", "FastActor"]

FAILURES: tuple[type[BaseException], ...] = (Exception, SystemExit, KeyboardInterrupt)
"""What code of the host's run in an actor or a pool thread (a model, a projection, a
callback) may raise, caught as its own failure: pykka stops every actor of the process on a
SystemExit or KeyboardInterrupt (never a real Ctrl-C here: that reaches the main thread)."""


class FastActor(pykka.ThreadingActor):
    """A daemon-thread ThreadingActor whose inbox is a ``queue.SimpleQueue``."""

    use_daemon_thread = True

    @staticmethod
    def _create_actor_inbox() -> Any:
        return queue.SimpleQueue()

    def on_start(self) -> None:
        """Subclasses that start work here call this first."""
        mark_own_thread()

    def start_here(self) -> pykka.ActorRef[Any]:
        """Start this already-built actor (keeping a reference to the object itself)."""
        pykka.ActorRegistry.register(self.actor_ref)
        self._start_actor_loop()
        return self.actor_ref

"""Handing a run taken here on, once a decision about it is committed: to an actor, or,
when the decision parks or ends it, straight to its settlement."""

from __future__ import annotations

from foldloop._agent import Agent
from foldloop.actors._system import ActorSystem
from foldloop.core._effects import Decision, RequestApproval
from foldloop.core._state import RunState

__all__ = ["drive"]


def drive(
    system: ActorSystem,
    agent: Agent,
    state: RunState,
    epoch: int,
    decision: Decision,
    *,
    released: bool = False,
) -> None:
    """Hand a run taken here (``system.take``) whose decision is committed under ``epoch`` to
    a RunActor; ``released`` when a decision that settles it released the lease as it
    was committed."""
    if decision.settles:
        try:
            for effect in decision.effects:
                if isinstance(effect, RequestApproval):
                    system.gates.notify(agent, state, effect.call_id)
        finally:  # the run is parked or done whatever notify met: never left claimed
            if not released:
                system.release_lease(state.run_id, epoch)
            system.settled_without_actor(state)
        return
    system.start_run(agent, state, epoch, decision)

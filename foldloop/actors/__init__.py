"""Actors: thin pykka shells around the pure core (runs, tools) and their supervisor."""

from foldloop.actors.run_actor import RunActor
from foldloop.actors.system import ActorSystem, Settlement
from foldloop.actors.timers import Timers
from foldloop.actors.tool_actor import RunToolCall, ToolActor, ToolRunner

__all__ = [
    "ActorSystem",
    "RunActor",
    "RunToolCall",
    "Settlement",
    "Timers",
    "ToolActor",
    "ToolRunner",
]

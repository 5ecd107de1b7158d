"""Actors: thin pykka shells around the pure core (runs on shards, tools) and their supervisor."""

from foldloop.actors._run_actor import RunActor
from foldloop.actors._system import ActorSystem, Settlement
from foldloop.actors._timers import Timers
from foldloop.actors._tool_actor import RunToolCall, ToolActor, ToolRunner

__all__ = [
    "ActorSystem",
    "RunActor",
    "RunToolCall",
    "Settlement",
    "Timers",
    "ToolActor",
    "ToolRunner",
]

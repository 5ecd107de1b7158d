"""Agents named by import path (``module:attr``): how another process finds the same agent.

The CLI's ``--agent`` and a WorkerPool's worker processes both need an agent that lives
in the host's code; an import path names it without serialising a Python object.
"""

from __future__ import annotations

import importlib

from foldloop._agent import Agent
from foldloop.errors import ConfigError

__all__ = ["load_agent"]


def load_agent(spec: str) -> Agent:
    """The agent at ``spec`` (``module:attr``): an ``fl.Agent``, or a callable returning one."""
    module_name, _, attr = spec.partition(":")
    if not module_name or not attr:
        raise ConfigError(f"an agent is named module:attr (e.g. myapp.agents:calc); got {spec!r}")
    try:
        obj: object = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as exc:
        raise ConfigError(f"cannot load agent {spec!r}: {exc}") from None
    except (Exception, SystemExit) as exc:  # the module raised (or exited) as it was imported
        raise ConfigError(
            f"cannot load agent {spec!r}: importing {module_name} raised "
            f"{type(exc).__name__}: {exc}"
        ) from exc
    if callable(obj) and not isinstance(obj, Agent):
        try:
            obj = obj()
        except (Exception, SystemExit) as exc:  # the factory's own failure (a key not set)
            raise ConfigError(
                f"cannot load agent {spec!r}: calling {attr}() raised {type(exc).__name__}: "
                f"{str(exc)[:500]}"
            ) from exc
    if not isinstance(obj, Agent):
        raise ConfigError(f"{spec!r} is a {type(obj).__name__}, not an fl.Agent")
    return obj

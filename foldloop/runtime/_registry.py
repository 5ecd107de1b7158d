"""The agents a runtime knows by name: runs record only the name, resume finds it again."""

from __future__ import annotations

from collections.abc import Iterable

from foldloop._agent import Agent
from foldloop.core._state import RunState
from foldloop.errors import ConfigError, SchemaChangedError
from foldloop.runtime._rules import tool_drift

__all__ = ["AgentRegistry"]


class AgentRegistry:
    """Agents by name, one each."""

    def __init__(self, agents: Iterable[Agent] = ()) -> None:
        self._agents: dict[str, Agent] = {}
        for agent in agents:
            self.register(agent)

    def register(self, agent: Agent) -> None:
        """Make ``agent`` known; another agent of the same name is refused."""
        self.check(agent)
        self._agents[agent.name] = agent
        for sub in agent.agents:  # a child run is decided by its own agent, found by name
            self.register(sub)

    def check(self, agent: Agent) -> None:
        """Refuse what ``register`` would refuse, registering nothing."""
        if not isinstance(agent, Agent):
            raise ConfigError(f"expected an fl.Agent, got {type(agent).__name__}")
        known = self._agents.get(agent.name)
        if known is not None and known is not agent:
            raise ConfigError(
                f"another agent named {agent.name!r} is already registered with this runtime",
                advice="runs find their agent by name: give each agent, sub-agents "
                "included, a name of its own (or pass the same Agent object)",
            )

    def named(self, name: str) -> Agent | None:
        """The agent registered under ``name`` (None if unknown)."""
        return self._agents.get(name)

    def for_run(self, state: RunState) -> Agent:
        """The agent that can decide for the run: known here, with the tools it started with."""
        agent = self._agents.get(state.agent)
        if agent is None:
            raise ConfigError(
                f"run {state.run_id!r} belongs to agent {state.agent!r}, which this runtime does "
                "not know",
                advice=f"open it with Runtime.open(..., agents=[<the {state.agent!r} agent>])",
            )
        if agent.tools_digest != state.tools_digest:
            raise SchemaChangedError(tool_drift(state, agent))
        return agent

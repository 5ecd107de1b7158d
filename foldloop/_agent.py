"""Agent: what a run is made of (a model, tools, instructions, limits), defined by host code."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import msgspec

from foldloop._approvals import RequireApproval
from foldloop.core._ceilings import specs_bytes
from foldloop.core._commands import Start
from foldloop.core._messages import ToolSpec
from foldloop.core._pricing import DEFAULT_PRICING, Pricing
from foldloop.errors import ConfigError
from foldloop.events._codec import unpaired_surrogate
from foldloop.events._values import Limits, ToolInfo
from foldloop.llm._protocol import LLM
from foldloop.tools._decorator import Tool, infos_digest

__all__ = ["Agent"]

_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


MAX_MODEL_NAME = 1024
"""The longest model name an agent takes (every reply records it: a page of text there
would fill each event)."""


@dataclass(frozen=True, eq=False)
class Agent:
    """A named agent. Runs record its name; ``recover``/``resume`` find it again by name.

    ``agents`` are its sub-agents: each is offered to the model as a tool named after it,
    taking ``{"input": str}`` and described by its ``description``; a call of one is a
    child run whose final output is the call's result."""

    name: str
    llm: LLM
    tools: Sequence[Tool] = ()
    instructions: str = ""
    limits: Limits = field(default_factory=Limits)
    pricing: Pricing = DEFAULT_PRICING
    approvals: RequireApproval | None = None
    agents: Sequence[Agent] = ()
    description: str = ""
    _digest: str = field(init=False, repr=False, default="")
    _infos: tuple[ToolInfo, ...] = field(init=False, repr=False, default=())
    _specs: tuple[ToolSpec, ...] = field(init=False, repr=False, default=())
    _specs_bytes: int = field(init=False, repr=False, default=0)

    def __post_init__(self) -> None:
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise ConfigError(
                f"agent name must be 1-128 characters of [A-Za-z0-9._:-]; got {self.name!r}"
            )
        if not hasattr(self.llm, "complete"):
            raise ConfigError(
                f"agent {self.name!r}: llm must have a complete(messages, tools) method "
                "(fl.ScriptedLLM, fl.OpenAIChat, ...)"
            )
        model = getattr(self.llm, "model", None)
        if (
            not isinstance(model, str)
            or unpaired_surrogate(model) is not None
            or len(model) > MAX_MODEL_NAME
        ):
            raise ConfigError(
                f"agent {self.name!r}: llm must have a model attribute, the model's name as "
                f"valid Unicode text of at most {MAX_MODEL_NAME} characters (recorded in "
                f"model.responded, used for pricing); {type(self.llm).__name__}.model is "
                f"{model!r:.200}"
            )
        if not isinstance(self.instructions, str):
            raise ConfigError(f"agent {self.name!r}: instructions must be a str")
        bad = unpaired_surrogate(self.instructions)
        if bad is not None:
            raise ConfigError(
                f"agent {self.name!r}: instructions contain an unpaired surrogate at index "
                f"{bad}; text must be valid Unicode"
            )
        self._check_listed("tools", self.tools, "@fl.tool functions")
        tools = tuple(self.tools)
        seen: set[str] = set()
        for t in tools:
            if not isinstance(t, Tool):
                raise ConfigError(
                    f"agent {self.name!r}: {t!r} is not a tool; decorate it with @fl.tool"
                )
            if t.name in seen:
                raise ConfigError(f"agent {self.name!r}: tool {t.name!r} is registered twice")
            seen.add(t.name)
        if not isinstance(self.agents, Agent):
            self._check_listed("agents", self.agents, "fl.Agent objects")
        agents = tuple(self.agents) if not isinstance(self.agents, Agent) else (self.agents,)
        for a in agents:
            if not isinstance(a, Agent):
                raise ConfigError(
                    f"agent {self.name!r}: {a!r} in agents is not an fl.Agent; list the "
                    "sub-agents' Agent objects"
                )
            if a.name in seen:
                raise ConfigError(
                    f"agent {self.name!r}: sub-agent {a.name!r} has the name of another of its "
                    "tools or sub-agents; the model calls each by name, so rename one"
                )
            seen.add(a.name)
        if not isinstance(self.description, str):
            raise ConfigError(f"agent {self.name!r}: description must be a str")
        if not isinstance(self.limits, Limits):
            raise ConfigError(f"agent {self.name!r}: limits must be fl.Limits(...)")
        if self.approvals is not None and not isinstance(self.approvals, RequireApproval):
            raise ConfigError(f"agent {self.name!r}: approvals must be fl.RequireApproval(...)")
        if self.approvals is not None and not callable(self.approvals.tools):
            unknown = sorted(set(self.approvals.tools) - seen)  # a typo would gate nothing
            if unknown:
                raise ConfigError(
                    f"agent {self.name!r}: approvals name tool(s) {unknown} that it does not "
                    f"have; its tools are {sorted(seen)}"
                )
        if not isinstance(self.pricing, Pricing):
            raise ConfigError(f"agent {self.name!r}: pricing must be fl.Pricing(...)")
        object.__setattr__(self, "tools", tools)
        object.__setattr__(self, "agents", agents)
        # Computed once: every spawn records both, and tools never change after decoration.
        offered = [_as_tool(a) for a in agents]
        infos = tuple(t.info for t in tools) + tuple(info for info, _ in offered)
        object.__setattr__(self, "_infos", infos)
        object.__setattr__(self, "_digest", infos_digest(infos))
        specs = tuple(t.spec for t in tools) + tuple(spec for _, spec in offered)
        object.__setattr__(self, "_specs", specs)
        object.__setattr__(self, "_specs_bytes", specs_bytes(specs))

    @property
    def tools_digest(self) -> str:
        """Digest of the tool set; a run started with another digest cannot resume here."""
        return self._digest

    def _check_listed(self, what: str, given: object, of: str) -> None:
        """``given`` must be a sequence (a str or a lone value is not one)."""
        if isinstance(given, str | bytes) or not isinstance(given, Iterable):
            raise ConfigError(f"agent {self.name!r}: {what} is a list of {of}; got {given!r:.80}")

    @property
    def tool_infos(self) -> tuple[ToolInfo, ...]:
        """What runs record about each tool (sub-agents included)."""
        return self._infos

    @property
    def tool_specs(self) -> tuple[ToolSpec, ...]:
        """What the model is shown of each tool (sub-agents included)."""
        return self._specs

    def subagent(self, name: str) -> Agent | None:
        """The sub-agent called ``name``, if the agent has one."""
        return next((a for a in self.agents if a.name == name), None)

    def start(
        self,
        input: str,
        *,
        now: int,
        limits: Limits | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        parent_run_id: str | None = None,
        parent_call_id: str = "",
        depth: int = 0,
    ) -> Start:
        """The Start command this agent issues today for ``input`` (spawn and verify use it)."""
        return Start(
            now=now,
            agent=self.name,
            input=input,
            instructions=self.instructions,
            limits=self.limits if limits is None else limits,
            tools=self.tool_infos,
            tools_digest=self.tools_digest,
            metadata=metadata,
            parent_run_id=parent_run_id,
            parent_call_id=parent_call_id,
            depth=depth,
            price=self.pricing.price_of(self.llm.model),
            tools_bytes=self._specs_bytes,
        )

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name``, if the agent has one."""
        for t in self.tools:
            if t.name == name:
                return t
        return None


_CHILD_INPUT = {
    "type": "object",
    "properties": {
        "input": {"type": "string", "description": "The task, in full: it sees nothing else."}
    },
    "required": ["input"],
    "additionalProperties": False,
}
_JSON = msgspec.json.Encoder(order="sorted")


def _as_tool(agent: Agent) -> tuple[ToolInfo, ToolSpec]:
    """How a sub-agent is offered to the model and recorded by runs: a tool named after it."""
    description = (
        agent.description or f"Hand a task to the {agent.name!r} agent; it answers with its result."
    )
    digest = hashlib.sha256(_JSON.encode([agent.name, _CHILD_INPUT, description])).hexdigest()[:16]
    info = ToolInfo(
        name=agent.name, idempotent=False, schema_digest=digest, agent_limits=agent.limits
    )
    return info, ToolSpec(name=agent.name, description=description, parameters=_CHILD_INPUT)

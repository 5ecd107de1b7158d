"""Agent: what a run is made of (a model, tools, instructions, limits), defined by host code."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from foldloop._approvals import RequireApproval
from foldloop.core._commands import Start
from foldloop.core._pricing import DEFAULT_PRICING, Pricing
from foldloop.errors import ConfigError
from foldloop.events._codec import unpaired_surrogate
from foldloop.events._values import Limits, ToolInfo
from foldloop.llm._protocol import LLM
from foldloop.tools._decorator import Tool, tools_digest

__all__ = ["Agent"]

_NAME = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


@dataclass(frozen=True, eq=False)
class Agent:
    """A named agent. Runs record its name; ``recover``/``resume`` find it again by name."""

    name: str
    llm: LLM
    tools: Sequence[Tool] = ()
    instructions: str = ""
    limits: Limits = field(default_factory=Limits)
    pricing: Pricing = DEFAULT_PRICING
    approvals: RequireApproval | None = None
    _digest: str = field(init=False, repr=False, default="")
    _infos: tuple[ToolInfo, ...] = field(init=False, repr=False, default=())

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
        if not isinstance(self.instructions, str):
            raise ConfigError(f"agent {self.name!r}: instructions must be a str")
        bad = unpaired_surrogate(self.instructions)
        if bad is not None:
            raise ConfigError(
                f"agent {self.name!r}: instructions contain an unpaired surrogate at index "
                f"{bad}; text must be valid Unicode"
            )
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
        # Computed once: every spawn records both, and tools never change after decoration.
        object.__setattr__(self, "_digest", tools_digest(tools))
        object.__setattr__(self, "_infos", tuple(t.info for t in tools))

    @property
    def tools_digest(self) -> str:
        """Digest of the tool set; a run started with another digest cannot resume here."""
        return self._digest

    @property
    def tool_infos(self) -> tuple[ToolInfo, ...]:
        """What runs record about each tool."""
        return self._infos

    def start(
        self,
        input: str,
        *,
        now: int,
        limits: Limits | None = None,
        metadata: tuple[tuple[str, str], ...] = (),
        parent_run_id: str | None = None,
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
        )

    def tool(self, name: str) -> Tool | None:
        """The tool called ``name``, if the agent has one."""
        for t in self.tools:
            if t.name == name:
                return t
        return None

"""Model prices for the cost ceiling: a table with the date it was true on.

Prices drift; the as-of date lets the runtime warn when the table is old. Cost is computed
at the edge (when a reply arrives) and recorded in ``model.responded.usage.cost_usd``, so
the fold and replays never depend on this table.
"""

from __future__ import annotations

import datetime as _dt
from typing import Literal

import msgspec

from foldloop.events.values import Usage

__all__ = ["DEFAULT_PRICING", "ModelPrice", "Pricing", "StalePolicy"]


class ModelPrice(msgspec.Struct, frozen=True):
    """US dollars per million input and output tokens."""

    input_per_mtok: float
    output_per_mtok: float


StalePolicy = Literal["warn", "tokens_only", "refuse"]


class Pricing(msgspec.Struct, frozen=True, kw_only=True):
    """A price table valid as of ``as_of`` (ISO date).

    When it is older than ``max_age_days`` and a run has a cost ceiling, ``stale`` decides:
    ``"warn"`` (log and enforce the ceiling anyway), ``"tokens_only"`` (drop the cost
    ceiling, keep the token ceilings) or ``"refuse"`` (the run does not start).
    """

    as_of: str
    prices: dict[str, ModelPrice] = {}
    max_age_days: int = 90
    stale: StalePolicy = "warn"

    def cost(self, model: str, input_tokens: int, output_tokens: int) -> float:
        """Dollars for one call; unknown models cost 0 (token ceilings still apply)."""
        price = self.prices.get(model)
        if price is None:
            return 0.0
        return (input_tokens * price.input_per_mtok + output_tokens * price.output_per_mtok) / 1e6

    def usage(self, model: str, input_tokens: int, output_tokens: int) -> Usage:
        """A Usage with its cost filled in from this table."""
        return Usage(
            input_tokens=input_tokens,
            output_tokens=output_tokens,
            cost_usd=self.cost(model, input_tokens, output_tokens),
        )

    def age_days(self, today: _dt.date) -> int:
        """How old the table is on ``today``."""
        return (today - _dt.date.fromisoformat(self.as_of)).days


DEFAULT_PRICING = Pricing(
    as_of="2026-11-01",
    prices={
        "gpt-4o": ModelPrice(2.50, 10.00),
        "gpt-4o-mini": ModelPrice(0.15, 0.60),
        "gpt-4.1": ModelPrice(2.00, 8.00),
        "gpt-4.1-mini": ModelPrice(0.40, 1.60),
        "claude-sonnet-4-5": ModelPrice(3.00, 15.00),
        "claude-haiku-4-5": ModelPrice(1.00, 5.00),
        "claude-opus-4-1": ModelPrice(15.00, 75.00),
    },
)
"""The built-in table; pass your own ``Pricing`` to ``fl.Agent(pricing=...)`` to override."""

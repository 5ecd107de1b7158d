"""Model prices for the cost ceiling: a table with the date it was true on.

Prices drift; the as-of date lets the runtime warn when the table is old. Cost is computed
at the edge (when a reply arrives) and recorded in ``model.responded.usage.cost_usd``, so
the fold and replays never depend on this table.
"""

from __future__ import annotations

import datetime as _dt
import math
from typing import Literal, get_args

import msgspec

from foldloop.errors import ConfigError
from foldloop.events._values import Usage

__all__ = ["DEFAULT_PRICING", "ModelPrice", "Pricing", "StalePolicy"]


class ModelPrice(msgspec.Struct, frozen=True):
    """US dollars per million input and output tokens (finite, 0 or more)."""

    input_per_mtok: float
    output_per_mtok: float

    def __post_init__(self) -> None:
        for name in ("input_per_mtok", "output_per_mtok"):
            value = getattr(self, name)
            if (
                isinstance(value, bool)
                or not isinstance(value, int | float)
                or not math.isfinite(value)
                or value < 0
            ):
                raise ConfigError(
                    f"ModelPrice({name}={value!r}): {name} must be a finite number of "
                    "US dollars per million tokens, 0 or more"
                )


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

    def __post_init__(self) -> None:
        try:
            _dt.date.fromisoformat(self.as_of)
        except (TypeError, ValueError):
            raise ConfigError(
                f"fl.Pricing(as_of={self.as_of!r}): as_of must be an ISO date, e.g. '2026-11-01'"
            ) from None
        if not isinstance(self.prices, dict) or not all(
            isinstance(k, str) and isinstance(v, ModelPrice) for k, v in self.prices.items()
        ):
            raise ConfigError(
                "fl.Pricing(prices=...): prices must map model names to ModelPrice(input, output) "
                "(foldloop.core.ModelPrice)"
            )
        days = self.max_age_days
        if isinstance(days, bool) or not isinstance(days, int) or days < 0:
            raise ConfigError(
                f"fl.Pricing(max_age_days={days!r}): max_age_days must be a whole number >= 0"
            )
        if self.stale not in get_args(StalePolicy):
            raise ConfigError(
                f"fl.Pricing(stale={self.stale!r}): stale must be one of "
                f"{', '.join(map(repr, get_args(StalePolicy)))}"
            )

    def price_of(self, model: str) -> tuple[float, float] | None:
        """(input, output) dollars a million tokens of ``model``; None if the table lacks it."""
        price = self.prices.get(model)
        return None if price is None else (price.input_per_mtok, price.output_per_mtok)

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

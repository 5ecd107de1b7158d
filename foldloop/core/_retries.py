"""How a run retries a model call that failed in a way asking again may help."""

from __future__ import annotations

__all__ = ["MAX_MODEL_ATTEMPTS", "MAX_RETRY_AFTER_S", "retry_delay"]

MAX_MODEL_ATTEMPTS = 5
"""Attempts per step for retryable model failures before the run fails."""

MAX_RETRY_AFTER_S = 60.0
"""The longest wait a provider's ``Retry-After`` buys: past it the run asks again anyway."""


def retry_delay(attempt: int, asked_s: float = 0.0) -> float:
    """The wait before the ``attempt``-th retry of a model call: exponential backoff
    (capped at 8 s), or what the provider asked for (up to ``MAX_RETRY_AFTER_S``) if
    longer."""
    return max(float(min(8.0, 0.25 * 2 ** (attempt - 1))), min(asked_s, MAX_RETRY_AFTER_S))

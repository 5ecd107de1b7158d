"""An immutable bucketed histogram: bounded memory, percentiles as Prometheus estimates them.

Keeping every latency sample would grow a projection's state with the log; buckets keep
it constant and are what a Prometheus histogram exposes anyway. A percentile is
interpolated linearly inside the bucket it falls in (as ``histogram_quantile`` does), so
it is exact to the bucket's width.
"""

from __future__ import annotations

import bisect
import math

import msgspec

__all__ = ["APPROVAL_BUCKETS", "LATENCY_BUCKETS", "Histogram"]

LATENCY_BUCKETS: tuple[float, ...] = (
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0,
)  # fmt: skip
"""Upper bounds in seconds for model and tool latencies (then +Inf)."""

APPROVAL_BUCKETS: tuple[float, ...] = (
    1.0, 5.0, 15.0, 30.0, 60.0, 300.0, 900.0, 1800.0, 3600.0,
    7200.0, 14400.0, 43200.0, 86400.0, 259200.0,
)  # fmt: skip
"""Upper bounds in seconds for how long approvals wait (then +Inf)."""


class Histogram(msgspec.Struct, frozen=True, kw_only=True):
    """Counts per bucket (``counts[i]`` holds values <= ``bounds[i]``; the last is +Inf)."""

    bounds: tuple[float, ...] = LATENCY_BUCKETS
    counts: tuple[int, ...] = ()
    count: int = 0
    sum: float = 0.0
    min: float = 0.0
    max: float = 0.0

    def observe(self, value: float) -> Histogram:
        """A histogram with ``value`` added."""
        counts = list(self.counts) or [0] * (len(self.bounds) + 1)
        counts[bisect.bisect_left(self.bounds, value)] += 1
        return Histogram(
            bounds=self.bounds,
            counts=tuple(counts),
            count=self.count + 1,
            sum=self.sum + value,
            min=min(self.min, value) if self.count else value,
            max=max(self.max, value),
        )

    def percentile(self, q: float) -> float:
        """The estimated ``q``-quantile (0 < q <= 1), within [min, max]; NaN when empty."""
        if not self.count:
            return math.nan
        rank = q * self.count
        seen = 0
        for i, n in enumerate(self.counts):
            if n and seen + n >= rank:
                high = min(self.bounds[i], self.max) if i < len(self.bounds) else self.max
                low = min(max(self.bounds[i - 1] if i else 0.0, self.min), high)
                return low + (high - low) * ((rank - seen) / n)
            seen += n
        return self.max

    @property
    def p50(self) -> float:
        """Median estimate."""
        return self.percentile(0.5)

    @property
    def p90(self) -> float:
        """90th percentile estimate."""
        return self.percentile(0.9)

    @property
    def p99(self) -> float:
        """99th percentile estimate."""
        return self.percentile(0.99)

    @property
    def mean(self) -> float:
        """Exact mean; NaN when empty."""
        return self.sum / self.count if self.count else math.nan

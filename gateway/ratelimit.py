"""An endpoint's request rate limit (``tidegate/max_requests_per_second``): a token bucket.

The bucket holds one second's worth of requests (at least one) and refills continuously,
so a client may burst up to the rate at once and then keeps to the rate on average. Each
gateway process keeps its own bucket per endpoint, for its share of the rate (gateway.table).
No clock here: ``now`` is a parameter.
"""

from __future__ import annotations

import math


class TokenBucket:
    """``rate`` requests per second, bursts of ``max(1, rate)``; starts full."""

    __slots__ = ("rate", "burst", "tokens", "stamp")

    def __init__(self, rate: float, now: float) -> None:
        if not rate > 0:
            raise ValueError(f"rate must be > 0, got {rate}")
        self.rate = rate
        self.burst = max(1.0, rate)
        self.tokens = self.burst
        self.stamp = now

    def take(self, now: float) -> float:
        """Spend a token and return 0.0, or, when none is left, the seconds until one is."""
        tokens = self.tokens + (now - self.stamp) * self.rate
        if tokens > self.burst:
            tokens = self.burst
        self.stamp = now
        if tokens >= 1.0:
            self.tokens = tokens - 1.0
            return 0.0
        self.tokens = tokens
        return (1.0 - tokens) / self.rate


def retry_after_s(wait: float) -> int:
    """The Retry-After a refused request gets: whole seconds, at least 1."""
    return max(1, math.ceil(wait))

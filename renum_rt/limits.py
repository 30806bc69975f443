"""Token buckets: the rate limit of each connection and of each API key.

Pure arithmetic over a time value the caller passes in, so tests drive it with a
fake clock and the hot path costs a few float operations per frame.
"""

from __future__ import annotations


class TokenBucket:
    """``rate`` tokens per second refill a bucket of at most ``burst`` tokens.

    A request takes one token; when none is left it is refused, and ``retry_after``
    says how long until one will be there.
    """

    __slots__ = ("rate", "burst", "_tokens", "_stamp")

    def __init__(self, rate: float, burst: int, now: float) -> None:
        self.rate = float(rate)
        self.burst = float(burst)
        self._tokens = float(burst)
        self._stamp = now

    def _refill(self, now: float) -> None:
        if now > self._stamp:
            self._tokens = min(self.burst, self._tokens + (now - self._stamp) * self.rate)
            self._stamp = now

    def take(self, now: float, cost: float = 1.0) -> bool:
        """Take ``cost`` tokens if they are there; True when the request may go on."""
        self._refill(now)
        if self._tokens >= cost:
            self._tokens -= cost
            return True
        return False

    def retry_after(self, now: float, cost: float = 1.0) -> float:
        """Seconds until ``cost`` tokens will be available (0 when they are now)."""
        self._refill(now)
        missing = cost - self._tokens
        return max(0.0, missing / self.rate)


class KeyedBuckets:
    """One bucket per key (an API key), created on first use.

    The keys come from a bounded set (configured API keys), so no eviction is needed.
    """

    def __init__(self, rate: float, burst: int) -> None:
        self._rate = rate
        self._burst = burst
        self._buckets: dict[str, TokenBucket] = {}

    def take(self, key: str, now: float) -> float:
        """0 when the request may go on, else the seconds to wait before a retry."""
        bucket = self._buckets.get(key)
        if bucket is None:
            bucket = self._buckets[key] = TokenBucket(self._rate, self._burst, now)
        if bucket.take(now):
            return 0.0
        return bucket.retry_after(now)

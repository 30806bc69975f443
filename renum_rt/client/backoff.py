"""The reconnection and retry schedule of contract v1, as pure functions.

The contract fixes one schedule for every client library (the browser client, this
SDK's ``RealtimeClient`` and its publishers): attempt ``n`` (1-based) waits
``min(max_ms, base_ms * factor ** (n - 1))`` milliseconds, or, with jitter, a uniformly
random time between 0 and that ("full jitter", so that many clients cut off at once do
not come back at once). Keeping it here, with the random source injectable, lets the
schedule be tested exactly and shared by the WebSocket client and the HTTP publishers.
"""

from __future__ import annotations

import random
from collections.abc import Callable
from dataclasses import dataclass


def backoff_delay_ms(
    attempt: int,
    *,
    base_ms: float = 500,
    max_ms: float = 30000,
    factor: float = 2.0,
    jitter: bool = True,
    rand: Callable[[], float] = random.random,
) -> float:
    """Milliseconds to wait before attempt ``attempt`` (1-based).

    ``rand`` returns a float in [0, 1); it is called once, and only with ``jitter``.
    """
    if attempt < 1:
        raise ValueError(f"attempt is 1-based, got {attempt}")
    try:
        cap = min(float(max_ms), base_ms * factor ** (attempt - 1))
    except OverflowError:  # factor ** n beyond float range: the cap applies
        cap = float(max_ms)
    return rand() * cap if jitter else cap


@dataclass(frozen=True, slots=True)
class Backoff:
    """A reconnection policy: at most ``attempts`` attempts, on the contract's schedule."""

    attempts: int = 5
    base_ms: float = 500
    max_ms: float = 30000
    factor: float = 2.0
    jitter: bool = True

    def __post_init__(self) -> None:
        if self.attempts < 0 or self.base_ms < 0 or self.max_ms < 0 or self.factor < 1:
            raise ValueError(f"invalid backoff policy: {self!r}")

    def delay_ms(self, attempt: int, rand: Callable[[], float] = random.random) -> float:
        """Milliseconds to wait before attempt ``attempt`` (1-based) of this policy."""
        return backoff_delay_ms(
            attempt,
            base_ms=self.base_ms,
            max_ms=self.max_ms,
            factor=self.factor,
            jitter=self.jitter,
            rand=rand,
        )

"""Storage and fan-out engines: one interface (``base.Engine``), two implementations.

``memory.MemoryEngine`` keeps everything in this process (the default, nothing to
install); ``redis.RedisEngine`` keeps it in Redis so it survives restarts and is shared
by several gateway processes. ``make_engine`` picks one from the settings.
"""

from __future__ import annotations

from .base import Engine, EngineUnavailable, Event, Replay, Retention
from .inbox import InboxLimits


def make_engine(redis_url: str | None, retention: Retention, prefix: str = "renum-rt:",
                pool_size: int = 32, inbox_limits: InboxLimits = InboxLimits(), wait_replicas: int = 0,
                wait_timeout_ms: int = 1000) -> Engine:
    """The Redis engine when ``redis_url`` is set (one primary, Sentinel or a cluster, by its
    scheme; at most ``pool_size`` connections per server), else the in-memory engine."""
    if redis_url:
        from .redis import RedisEngine

        return RedisEngine(redis_url, retention, prefix=prefix, pool_size=pool_size, inbox_limits=inbox_limits,
                           wait_replicas=wait_replicas, wait_timeout_ms=wait_timeout_ms)
    from .memory import MemoryEngine

    return MemoryEngine(retention, inbox_limits=inbox_limits)


__all__ = ["Engine", "EngineUnavailable", "Event", "Replay", "Retention", "make_engine"]

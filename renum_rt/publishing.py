"""Publishing one event: stored before it is answered, once per ``Idempotency-Key``.

A backend that retries a publish (a timeout, a lost reply) sends the same
``Idempotency-Key``; the first request's answer is kept for ``ttl_s`` and returned to
every retry, so the event is stored and delivered once.
"""

from __future__ import annotations

import contextlib
import logging
import time
from typing import Any

from .engines import Engine, EngineUnavailable
from .logs import log


async def publish(engine: Engine, targets: list[str], name: str, data: dict[str, Any],
                  idempotency_key: str | None, ttl_s: int) -> dict[str, Any]:
    """Store and fan out one event; with an Idempotency-Key, a retry returns the first
    answer and creates nothing new. Raises ``EngineUnavailable`` (nothing was accepted)
    and ``IdempotencyInProgress``."""
    key = idempotency_key
    if key is not None:
        previous = await engine.idempotency_claim(key, ttl_s)
        if previous is not None:
            return previous
    try:
        ids = await engine.publish(targets, name, data, int(time.time() * 1000))
    except BaseException:
        if key is not None:
            with contextlib.suppress(EngineUnavailable):
                await engine.idempotency_release(key)
        raise
    answer = {"ids": ids}
    if key is not None:
        # the event is stored: if its answer cannot be, a retry publishes it again,
        # under new ids, which clients de-duplicate by content at worst
        with contextlib.suppress(EngineUnavailable):
            await engine.idempotency_store(key, answer, ttl_s)
    log(logging.INFO, "publish", event=name, channels=len(targets), idempotency=key is not None)
    return answer

"""Publishing one event: stored before it is answered, once per ``Idempotency-Key``.

A backend that retries a publish (a timeout, a lost reply, a 503) sends the same
``Idempotency-Key``. The engine keeps the first publish's ids under the key in the same
atomic step that stores the event, so a retry gets those ids and creates nothing new,
and there is no "in progress" state that a stalled request could leave behind.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .engines import Engine
from .logs import log


async def publish(engine: Engine, targets: list[str], name: str, data: dict[str, Any],
                  idempotency_key: str | None, ttl_s: int) -> dict[str, Any]:
    """Store and fan out one event; with an Idempotency-Key, a retry returns the first
    answer and creates nothing new. Raises ``EngineUnavailable`` (nothing is promised:
    retry, with the same key)."""
    ids = await engine.publish(targets, name, data, int(time.time() * 1000), idempotency_key=idempotency_key,
                               ttl_s=ttl_s)
    log(logging.INFO, "publish", event=name, channels=len(targets), idempotency=idempotency_key is not None)
    return {"ids": ids}

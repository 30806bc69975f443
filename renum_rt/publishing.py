"""Publishing events: stored before they are answered, once per ``Idempotency-Key``.

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
from .engines.base import Publication
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


async def publish_batch(engine: Engine, items: list[tuple[list[str], str, dict[str, Any], str | None]],
                        ttl_s: int) -> list[dict[str, Any]]:
    """``publish`` for each ``(targets, name, data, idempotency_key)``, stored together in
    one engine call (one script call on Redis); the answers in order. Raises
    ``EngineUnavailable``: then no event is promised."""
    ts = int(time.time() * 1000)
    answers = await engine.publish_batch([Publication(targets, name, data, ts, key, ttl_s)
                                          for targets, name, data, key in items])
    log(logging.INFO, "publish batch", events=len(items), idempotency=any(key is not None for *_, key in items))
    return [{"ids": ids} for ids in answers]

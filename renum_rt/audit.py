"""The audit log of admin actions: who did what, to what, when, from where.

Each action is written twice, because each copy serves another reader: a JSON log line
(``admin action``, warning level) for the log pipeline, which keeps everything, and an
entry in the engine's bounded list (the newest ``AUDIT_MAX``), which every node shares
and ``GET /admin/api/audit`` shows. The line is written first: an engine that cannot
store the entry (Redis down) costs the list one entry, never the trace of the action.
"""

from __future__ import annotations

import logging
import time
from typing import Any

from .engines import Engine, EngineUnavailable
from .logs import log


async def record(engine: Engine, *, by: str, action: str, target: str, address: str | None, node: str,
                 **details: Any) -> dict[str, Any]:
    """Log and store one admin action; return its entry."""
    entry = {"at": round(time.time(), 3), "by": by, "action": action, "target": target, "address": address,
             "node": node, **({"details": details} if details else {})}
    log(logging.WARNING, "admin action", **entry)
    try:
        await engine.audit_append(entry)
    except EngineUnavailable:
        log(logging.WARNING, "audit entry not stored: the engine is unreachable", action=action, target=target)
    return entry

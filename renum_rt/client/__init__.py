"""The Python SDK of renum-rt: follow events over the WebSocket, publish them over HTTP.

- ``RealtimeClient``: asyncio WebSocket client with the contract's reconnection,
  de-duplication, re-subscription and acknowledgement rules;
- ``Publisher`` / ``AsyncPublisher``: the HTTP publish API for backend services, with
  idempotent retries;
- ``Backoff`` / ``backoff_delay_ms``: the reconnection schedule both follow.

Runtime needs: tornado and ujson (already dependencies of the server). See
docs/python-sdk.md.
"""

from .backoff import Backoff, backoff_delay_ms
from .publisher import AsyncPublisher, Publisher, PublishError
from .realtime import (
    CONNECTED,
    CONNECTING,
    DISCONNECTED,
    FAILED,
    RECONNECTING,
    UNAUTHORIZED,
    ConnectionClosedError,
    Event,
    RealtimeClient,
    RealtimeError,
)

__all__ = [
    "CONNECTED",
    "CONNECTING",
    "DISCONNECTED",
    "FAILED",
    "RECONNECTING",
    "UNAUTHORIZED",
    "AsyncPublisher",
    "Backoff",
    "ConnectionClosedError",
    "Event",
    "PublishError",
    "Publisher",
    "RealtimeClient",
    "RealtimeError",
    "backoff_delay_ms",
]

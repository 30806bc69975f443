"""Who on this node receives which channel, and the fan-out of one event to them.

The hub is the hot path: an event arrives once from the engine (already JSON-encoded
by the node that published it), is framed once, and the same bytes are handed to every
subscribed connection. A subscription that is still replaying history is *warming*:
live events for it are buffered and released, without the ones the replay already
sent, when the replay ends, so a ``since`` subscription has no gap and no duplicate.
"""

from __future__ import annotations

from typing import Protocol

from .ids import IdKey, parse_id
from .protocol.wsframe import text_frame


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    def send_frame(self, frame: bytes) -> None:
        """Queue one pre-built WebSocket frame; never blocks, never raises."""


class Hub:
    def __init__(self) -> None:
        self._live: dict[str, set[Subscriber]] = {}
        self._warming: dict[str, dict[Subscriber, list[tuple[str, bytes]]]] = {}
        #: last event id fanned out per channel, where a resync after a feed outage starts
        self.last_ids: dict[str, str] = {}
        self.delivered = 0

    def channels(self) -> list[str]:
        """Channels with at least one subscriber on this node."""
        return list(self._live.keys() | self._warming.keys())

    def subscriber_count(self, channel: str) -> int:
        return len(self._live.get(channel, ())) + len(self._warming.get(channel, ()))

    def deliver(self, channel: str, event_id: str, payload: bytes) -> None:
        """Fan one event out to this node's subscribers of ``channel``."""
        live = self._live.get(channel)
        warming = self._warming.get(channel)
        if not live and not warming:
            return
        self.last_ids[channel] = event_id
        if live:
            frame = text_frame(payload)
            for sub in live:
                sub.send_frame(frame)
            self.delivered += len(live)
        if warming:
            for buffer in warming.values():
                buffer.append((event_id, payload))

    def warm(self, sub: Subscriber, channel: str) -> None:
        """Start buffering ``channel`` for ``sub`` while its history is replayed."""
        self._warming.setdefault(channel, {})[sub] = []
        live = self._live.get(channel)
        if live is not None:
            live.discard(sub)

    def go_live(self, sub: Subscriber, channel: str, after: str | None) -> list[bytes]:
        """End warming: return the buffered payloads newer than ``after`` (the last id
        the replay sent) for the caller to send, and deliver live from now on."""
        warming = self._warming.get(channel, {})
        buffer = warming.pop(sub, [])
        if not warming:
            self._warming.pop(channel, None)
        self._live.setdefault(channel, set()).add(sub)
        floor: IdKey = parse_id(after) if after is not None else (-1, -1)
        return [payload for event_id, payload in buffer if parse_id(event_id) > floor]

    def remove(self, sub: Subscriber, channel: str) -> None:
        live = self._live.get(channel)
        if live is not None:
            live.discard(sub)
            if not live:
                del self._live[channel]
        warming = self._warming.get(channel)
        if warming is not None:
            warming.pop(sub, None)
            if not warming:
                del self._warming[channel]
        if channel not in self._live and channel not in self._warming:
            self.last_ids.pop(channel, None)

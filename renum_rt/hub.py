"""Who on this node receives which channel, and the fan-out of one event to them.

The hub is the hot path: an event arrives once from the engine (already JSON-encoded
by the node that published it), is framed once, and the same bytes are handed to every
subscribed connection.

A subscription that replays history goes through three states, so that it gets every
event after its ``since`` exactly once, in order, whatever the timing of the live feed:

- *warming*: from before the history read until the replay is sent, live events for
  it are buffered;
- *catching up*: the buffer was released without what the replay covered, but the live
  feed may still carry events the replay already sent (with Redis, an event's pub/sub
  message can arrive after the history read that returned it); events up to the last
  one sent are skipped, and the first newer one makes the subscription live;
- *live*: every event is sent.

A whole channel can also be *paused* while the node re-reads what its live feed missed
during an outage (``pause`` / ``resume``), so missed and new events go out in order.
"""

from __future__ import annotations

from typing import Iterable, Protocol

from .ids import IdKey, parse_id
from .protocol.wsframe import text_frame

NO_ID: IdKey = (-1, -1)


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    def send_frame(self, frame: bytes) -> None:
        """Queue one pre-built WebSocket frame; never blocks, never raises."""


class Hub:
    def __init__(self) -> None:
        self._live: dict[str, set[Subscriber]] = {}
        self._warming: dict[str, dict[Subscriber, list[tuple[str, bytes]]]] = {}
        self._catching: dict[str, dict[Subscriber, IdKey]] = {}
        self._paused: dict[str, list[tuple[str, bytes]]] = {}
        #: last event id fanned out per channel, where a resync after a feed outage starts
        self.last_ids: dict[str, str] = {}
        self.delivered = 0

    def channels(self) -> list[str]:
        """Channels with at least one subscriber on this node."""
        return list(self._live.keys() | self._warming.keys() | self._catching.keys())

    def subscriber_count(self, channel: str) -> int:
        return sum(len(group.get(channel, ())) for group in (self._live, self._warming, self._catching))

    def deliver(self, channel: str, event_id: str, payload: bytes) -> None:
        """Fan one event out to this node's subscribers of ``channel``."""
        held = self._paused.get(channel)
        if held is not None:
            held.append((event_id, payload))
            return
        live = self._live.get(channel)
        catching = self._catching.get(channel)
        warming = self._warming.get(channel)
        if not live and not catching and not warming:
            return
        self.last_ids[channel] = event_id
        frame = text_frame(payload)
        if live:
            for sub in live:
                sub.send_frame(frame)
            self.delivered += len(live)
        if catching:
            key = parse_id(event_id)
            caught = [sub for sub, floor in catching.items() if key > floor]
            for sub in caught:  # the first event past the replay: live from now on
                del catching[sub]
                sub.send_frame(frame)
                self._live.setdefault(channel, set()).add(sub)
            self.delivered += len(caught)
            if not catching:
                del self._catching[channel]
        if warming:
            for buffer in warming.values():
                buffer.append((event_id, payload))

    def warm(self, sub: Subscriber, channel: str) -> None:
        """Start buffering ``channel`` for ``sub`` while its history is replayed."""
        self._drop(sub, channel)
        self._warming.setdefault(channel, {})[sub] = []

    def go_live(self, sub: Subscriber, channel: str, after: str | None) -> list[bytes]:
        """End warming: return the buffered payloads newer than ``after`` (the last id
        the replay sent) for the caller to send, then catch up to the last id sent."""
        warming = self._warming.get(channel, {})
        buffer = warming.pop(sub, [])
        if not warming:
            self._warming.pop(channel, None)
        floor = parse_id(after) if after is not None else NO_ID
        payloads = []
        for event_id, payload in buffer:
            key = parse_id(event_id)
            if key > floor:
                payloads.append(payload)
                floor = key
        if floor == NO_ID:
            self._live.setdefault(channel, set()).add(sub)
        else:
            self._catching.setdefault(channel, {})[sub] = floor
        return payloads

    def remove(self, sub: Subscriber, channel: str) -> None:
        self._drop(sub, channel)
        if not self.subscriber_count(channel):
            self.last_ids.pop(channel, None)

    def _drop(self, sub: Subscriber, channel: str) -> None:
        for group in (self._live, self._warming, self._catching):
            members = group.get(channel)
            if members is None:
                continue
            if isinstance(members, set):
                members.discard(sub)
            else:
                members.pop(sub, None)
            if not members:
                del group[channel]

    def pause(self, channel: str) -> None:
        """Hold live events of ``channel`` until ``resume`` (during a resync)."""
        self._paused.setdefault(channel, [])

    def resume(self, channel: str, missed: Iterable[tuple[str, bytes]]) -> None:
        """Fan out ``missed`` (read from history) and the held events, in id order,
        each once, none already fanned out; then deliver live again."""
        held = self._paused.pop(channel, [])
        last = parse_id(self.last_ids[channel]) if channel in self.last_ids else NO_ID
        for event_id, payload in [*missed, *held]:
            key = parse_id(event_id)
            if key > last:
                self.deliver(channel, event_id, payload)
                last = key

"""Who on this node receives which channel, and the fan-out of one event to them.

The hub is the hot path: an event arrives once from the engine (already JSON-encoded
by the node that published it), is framed once, and the same bytes are handed to every
subscribed connection.

Each subscription has one ``State``. One that replays history goes through three, so
that it gets every event after its ``since`` exactly once, in order, whatever the
timing of the live feed:

- ``WARMING``: from before the history read until the replay is sent, live events for
  it are buffered;
- ``CATCHING_UP``: the buffer was released without what the replay covered, but the
  live feed may still carry events the replay already sent (with Redis, an event's
  pub/sub message can arrive after the history read that returned it); events up to
  the last one sent are skipped, and the first newer one makes the subscription live;
- ``LIVE``: every event is sent.

A whole channel can also be *paused* while the node re-reads what its live feed missed
during an outage (``pause`` / ``resume``), so missed and new events go out in order.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Iterable
from typing import Protocol

from .ids import IdKey, parse_id
from .metrics import Metrics
from .protocol.wsframe import text_frame

NO_ID: IdKey = (-1, -1)


class State(enum.Enum):
    WARMING = "warming"
    CATCHING_UP = "catching_up"
    LIVE = "live"


class Subscriber(Protocol):
    """What the hub needs of a connection."""

    def send_frame(self, frame: bytes) -> None:
        """Queue one pre-built WebSocket frame; never blocks, never raises."""


class _Joining:
    """A subscription that is not live yet: its state, its buffer while warming, and
    while catching up the last id it was sent."""

    __slots__ = ("state", "buffer", "floor")

    def __init__(self) -> None:
        self.state = State.WARMING
        self.buffer: list[tuple[str, bytes]] = []
        self.floor: IdKey = NO_ID


class _Channel:
    """One channel's subscribers on this node. ``live`` is a plain set because the
    fan-out loop runs over it for every event; the few joining subscribers live apart."""

    __slots__ = ("live", "joining", "held", "last_id")

    def __init__(self) -> None:
        self.live: set[Subscriber] = set()
        self.joining: dict[Subscriber, _Joining] = {}
        #: events held while the channel is paused (None: not paused)
        self.held: list[tuple[str, bytes]] | None = None
        #: the last event id fanned out here, where a resync after a feed outage starts
        self.last_id: str | None = None

    def __len__(self) -> int:
        return len(self.live) + len(self.joining)


class Hub:
    def __init__(self, metrics: Metrics | None = None, on_empty: Callable[[str], None] = lambda channel: None) -> None:
        """``on_empty(channel)``: the last subscriber of ``channel`` on this node left (the
        engine may stop sending it here)."""
        self._channels: dict[str, _Channel] = {}
        self.metrics = metrics or Metrics()
        self._on_empty = on_empty

    def channels(self) -> list[str]:
        """Channels with at least one subscriber on this node."""
        return list(self._channels)

    def subscriber_count(self, channel: str) -> int:
        ch = self._channels.get(channel)
        return len(ch) if ch is not None else 0

    def state(self, sub: Subscriber, channel: str) -> State | None:
        """The state of ``sub``'s subscription to ``channel`` (None: not subscribed)."""
        ch = self._channels.get(channel)
        if ch is None:
            return None
        if sub in ch.live:
            return State.LIVE
        joining = ch.joining.get(sub)
        return joining.state if joining is not None else None

    def last_id(self, channel: str) -> str | None:
        ch = self._channels.get(channel)
        return ch.last_id if ch is not None else None

    def deliver(self, channel: str, event_id: str, payload: bytes) -> None:
        """Fan one event out to this node's subscribers of ``channel``."""
        ch = self._channels.get(channel)
        if ch is None:
            return
        if ch.held is not None:
            ch.held.append((event_id, payload))
            return
        ch.last_id = event_id
        frame = text_frame(payload)
        live = ch.live
        for sub in live:
            sub.send_frame(frame)
        self.metrics.delivered += len(live)
        if ch.joining:
            self._deliver_joining(ch, event_id, payload, frame)

    def _deliver_joining(self, ch: _Channel, event_id: str, payload: bytes, frame: bytes) -> None:
        key = parse_id(event_id)
        for sub, joining in list(ch.joining.items()):
            if joining.state is State.WARMING:
                joining.buffer.append((event_id, payload))
            elif key > joining.floor:  # the first event past the replay: live from now on
                del ch.joining[sub]
                ch.live.add(sub)
                sub.send_frame(frame)
                self.metrics.delivered += 1

    def warm(self, sub: Subscriber, channel: str) -> None:
        """Start buffering ``channel`` for ``sub`` while its history is replayed."""
        ch = self._channels.setdefault(channel, _Channel())
        ch.live.discard(sub)
        ch.joining[sub] = _Joining()

    def go_live(self, sub: Subscriber, channel: str, after: str | None) -> list[bytes]:
        """End warming: return the buffered payloads newer than ``after`` (the last id
        the replay sent) for the caller to send, then catch up to the last id sent."""
        ch = self._channels.setdefault(channel, _Channel())
        joining = ch.joining.pop(sub, None)
        floor = parse_id(after) if after is not None else NO_ID
        payloads = []
        for event_id, payload in joining.buffer if joining is not None else ():
            key = parse_id(event_id)
            if key > floor:
                payloads.append(payload)
                floor = key
        if floor == NO_ID:
            ch.live.add(sub)
        else:
            catching = _Joining()
            catching.state, catching.floor = State.CATCHING_UP, floor
            ch.joining[sub] = catching
        return payloads

    def remove(self, sub: Subscriber, channel: str) -> None:
        ch = self._channels.get(channel)
        if ch is None:
            return
        ch.live.discard(sub)
        ch.joining.pop(sub, None)
        if not len(ch):
            del self._channels[channel]
            self._on_empty(channel)

    def pause(self, channel: str) -> None:
        """Hold live events of ``channel`` until ``resume`` (during a resync)."""
        ch = self._channels.get(channel)
        if ch is not None and ch.held is None:
            ch.held = []

    def paused(self, channel: str) -> bool:
        ch = self._channels.get(channel)
        return ch is not None and ch.held is not None

    def resume(self, channel: str, missed: Iterable[tuple[str, bytes]]) -> None:
        """Fan out ``missed`` (read from history) and the held events, in id order,
        each once, none already fanned out; then deliver live again."""
        ch = self._channels.get(channel)
        if ch is None:
            return
        held, ch.held = ch.held or [], None
        last = parse_id(ch.last_id) if ch.last_id is not None else NO_ID
        for event_id, payload in [*missed, *held]:
            key = parse_id(event_id)
            if key > last:
                self.deliver(channel, event_id, payload)
                last = key

"""In-process engine: the default, with nothing to install.

Everything lives in dicts and deques of this process, so nothing survives a restart
and only one process can serve a deployment. It implements the whole ``Engine``
contract (the same contract suite runs against it and against Redis), which makes it
the reference for what the Redis engine must do.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from typing import Any, Callable, Sequence

from .. import channels
from ..ids import IdKey, format_id, next_id, parse_id
from ..protocol import event_frame_head, event_frame_tail
from .base import AckRefused, Engine, Event, IdempotencyInProgress, Replay, Retention


log = logging.getLogger(__name__)


class _Stream:
    """One channel's retained events, oldest first."""

    __slots__ = ("events", "last", "trimmed")

    def __init__(self) -> None:
        self.events: deque[tuple[IdKey, Event]] = deque()
        self.last: IdKey = (0, 0)
        #: the greatest id retention dropped: history after an older id has a gap
        self.trimmed: IdKey = (0, 0)


class MemoryEngine(Engine):
    name = "memory"

    def __init__(self, retention: Retention = Retention(), clock: Callable[[], float] = time.time) -> None:
        super().__init__()
        self._retention = retention
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._latest: dict[str, Event] = {}
        self._cursors: dict[str, IdKey] = {}
        self._idempotency: dict[str, tuple[float, dict[str, Any] | None]] = {}
        self._claims = 0
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._connections: dict[str, int] = {}
        #: ids before this one may have existed in an earlier process: history is incomplete
        self._floor: IdKey = (int(clock() * 1000), 0)

    async def ping(self) -> bool:
        return True

    def _trim(self, stream: _Stream, now_ms: int) -> None:
        horizon = now_ms - self._retention.max_age_s * 1000 if self._retention.max_age_s else None
        events = stream.events
        while events and (len(events) > self._retention.max_len or (horizon is not None and events[0][0][0] < horizon)):
            stream.trimmed = events.popleft()[0]

    async def publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int) -> dict[str, str]:
        now_ms = int(self._clock() * 1000)
        stored: list[tuple[Event, bytes]] = []
        tail = event_frame_tail(ts, name, data)
        for channel in channel_names:
            stream = self._streams.get(channel)
            if stream is None:
                stream = self._streams[channel] = _Stream()
            key = next_id(stream.last, now_ms)
            stream.last = key
            event = Event(channel, format_id(key), ts, name, data)
            if channels.is_stored(channel):
                stream.events.append((key, event))
                self._trim(stream, now_ms)
            if channels.keeps_latest(channel):
                self._latest[channel] = event
            stored.append((event, (event_frame_head(channel) + event.id + tail).encode()))
        for event, frame in stored:
            try:
                self._on_event(event.channel, event.id, frame)
            except Exception:  # the event is stored: a fan-out fault must not turn it into an error
                log.exception("fan-out listener failed")
        return {event.channel: event.id for event, _ in stored}

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        stream = self._streams.get(channel)
        after = parse_id(since) if since is not None else None
        if stream is None:  # nothing stored: any id is either lost with an earlier process or never handed out
            return Replay([], after is None)
        self._trim(stream, int(self._clock() * 1000))
        lower = after if after is not None else (-1, -1)
        events = [event for key, event in stream.events if key > lower]
        complete = after is None or (stream.trimmed <= after <= stream.last and after >= self._floor)
        if len(events) > max(0, limit):
            events, complete = (events[-limit:] if limit > 0 else []), False
        return Replay(events, complete)

    async def latest(self, channel: str) -> Event | None:
        return self._latest.get(channel)

    async def ack(self, channel: str, event_id: str) -> str:
        stream = self._streams.get(channel)
        acked = parse_id(event_id)
        if stream is None or acked > stream.last:
            raise AckRefused(f"{event_id} is after the newest event of {channel}")
        key = max(acked, self._cursors.get(channel, (0, 0)))
        self._cursors[channel] = key
        return format_id(key)

    async def cursor(self, channel: str) -> str | None:
        key = self._cursors.get(channel)
        return format_id(key) if key is not None else None

    async def control(self, message: dict[str, Any]) -> None:
        self._on_control(message)

    async def idempotency_claim(self, key: str, ttl_s: int) -> dict[str, Any] | None:
        now = self._clock()
        record = self._idempotency.get(key)
        if record is not None and record[0] > now:
            if record[1] is None:
                raise IdempotencyInProgress(key)
            return record[1]
        self._idempotency[key] = (now + ttl_s, None)
        self._claims += 1
        if self._claims % 1024 == 0:  # expire old records now and then, not on every claim
            self._idempotency = {k: v for k, v in self._idempotency.items() if v[0] > now}
        return None

    async def idempotency_store(self, key: str, answer: dict[str, Any], ttl_s: int) -> None:
        self._idempotency[key] = (self._clock() + ttl_s, answer)

    async def idempotency_release(self, key: str) -> None:
        self._idempotency.pop(key, None)

    async def heartbeat(self, node_id: str, stats: dict[str, Any], ttl_s: int) -> None:
        self._nodes[node_id] = (self._clock() + ttl_s, stats)

    async def nodes(self) -> list[dict[str, Any]]:
        now = self._clock()
        return [stats for expires, stats in self._nodes.values() if expires > now]

    async def connection_opened(self, node_id: str, user_id: str, limit: int) -> bool:
        count = self._connections.get(user_id, 0)
        if count >= limit:
            return False
        self._connections[user_id] = count + 1
        return True

    async def connection_closed(self, node_id: str, user_id: str) -> None:
        count = self._connections.get(user_id, 0) - 1
        if count > 0:
            self._connections[user_id] = count
        else:
            self._connections.pop(user_id, None)

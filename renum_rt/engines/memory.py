"""In-process engine: the default, with nothing to install.

Everything lives in dicts and deques of this process, so nothing survives a restart
and only one process can serve a deployment. It implements the whole ``Engine``
contract (the same contract suite runs against it and against Redis), which makes it
the reference for what the Redis engine must do.
"""

from __future__ import annotations

import itertools
import logging
import time
from collections import deque
from collections.abc import Callable, Sequence
from typing import Any

from .. import channels
from ..ids import IdKey, format_id, next_id, parse_id
from ..logs import log
from ..protocol import event_frame_head, event_frame_tail
from .base import AUDIT_MAX, IDEMPOTENCY_TTL_S, AckRefused, Engine, Event, Publication, Replay, Retention
from .inbox import InboxLimits
from .inbox_memory import MemoryInbox

#: expired idempotency answers are dropped every this many remembered ones, not on every publish
_SWEEP_EVERY = 1024


#: one retained event: its id's key, its id, ts, name and data
Record = tuple[IdKey, str, int, str, dict[str, Any]]


class _Stream:
    """One channel's retained events, oldest first, as plain tuples (``Record``), made
    into ``Event`` objects only when history is read.

    Why tuples: one tuple per retained event is one object for the garbage collector to
    walk, where a ``(key, Event)`` pair was two. While history grows, full collections
    walk all of it again and again: they cost 5-7 µs per stored event with pairs and
    3.5-4 µs with tuples (docs/benchmarks.md, section 2)."""

    __slots__ = ("events", "last", "trimmed", "head")

    def __init__(self, channel: str) -> None:
        self.events: deque[Record] = deque()
        #: the channel's ``event_frame_head``, encoded once rather than once per event
        self.head = event_frame_head(channel)
        self.last: IdKey = (0, 0)
        #: the greatest id retention dropped: history after an older id has a gap
        self.trimmed: IdKey = (0, 0)


class MemoryEngine(Engine):
    name = "memory"

    def __init__(self, retention: Retention = Retention(), clock: Callable[[], float] = time.time,
                 inbox_limits: InboxLimits = InboxLimits()) -> None:
        super().__init__()
        self.inbox = MemoryInbox(inbox_limits)
        self._retention = retention
        self._clock = clock
        self._streams: dict[str, _Stream] = {}
        self._latest: dict[str, Event] = {}
        self._cursors: dict[str, IdKey] = {}
        #: Idempotency-Key -> (expiry, the ids of its publish)
        self._answers: dict[str, tuple[float, dict[str, str]]] = {}
        self._remembered = 0
        self._nodes: dict[str, tuple[float, dict[str, Any]]] = {}
        self._connections: dict[str, int] = {}
        self._audit: deque[dict[str, Any]] = deque(maxlen=AUDIT_MAX)
        #: ids before this one may have existed in an earlier process: history is incomplete
        self._floor: IdKey = (int(clock() * 1000), 0)

    async def ping(self) -> bool:
        return True

    def _trim(self, stream: _Stream, now_ms: int) -> None:
        horizon = now_ms - self._retention.max_age_s * 1000 if self._retention.max_age_s else None
        events = stream.events
        while events and (len(events) > self._retention.max_len or (horizon is not None and events[0][0][0] < horizon)):
            stream.trimmed = events.popleft()[0]

    async def publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int,
                      idempotency_key: str | None = None, ttl_s: int = IDEMPOTENCY_TTL_S) -> dict[str, str]:
        return self._publish(channel_names, name, data, ts, idempotency_key, ttl_s)

    async def publish_batch(self, items: Sequence[Publication]) -> list[dict[str, str]]:
        """A loop: each ``_publish`` is one synchronous step already, and none can fail."""
        publish = self._publish
        return [publish(item.channels, item.name, item.data, item.ts, item.idempotency_key, item.ttl_s)
                for item in items]

    def _publish(self, channel_names: Sequence[str], name: str, data: dict[str, Any], ts: int,
                 idempotency_key: str | None, ttl_s: int) -> dict[str, str]:
        """``publish`` as one synchronous step (no await): the answer of a key and its
        events are stored together, as the Redis engine's script does. A plain function,
        so that a batch does not pay a coroutine per event."""
        now = self._clock()
        if idempotency_key is not None:
            answer = self._answer(idempotency_key, now)
            if answer is not None:
                return answer
        now_ms = int(now * 1000)
        stored: list[tuple[str, str, bytes]] = []
        tail = event_frame_tail(ts, name, data)
        for channel in channel_names:
            stream = self._streams.get(channel)
            if stream is None:
                stream = self._streams[channel] = _Stream(channel)
            key = next_id(stream.last, now_ms)
            stream.last = key
            event_id = format_id(key)
            if channels.is_stored(channel):
                stream.events.append((key, event_id, ts, name, data))
                self._trim(stream, now_ms)
            if channels.keeps_latest(channel):
                self._latest[channel] = Event(channel, event_id, ts, name, data)
            stored.append((channel, event_id, (stream.head + event_id + tail).encode()))
        ids = {channel: event_id for channel, event_id, _ in stored}
        if idempotency_key is not None:
            self._remember(idempotency_key, ids, now + ttl_s)
        for channel, event_id, frame in stored:
            try:
                self._on_event(channel, event_id, frame)
            except Exception:  # the event is stored: a fan-out fault must not turn it into an error
                log(logging.ERROR, "fan-out listener failed", channel=channel, exc_info=True)
        return ids

    def _answer(self, key: str, now: float) -> dict[str, str] | None:
        """The ids a publish with ``key`` got, while they are kept."""
        record = self._answers.get(key)
        return record[1] if record is not None and record[0] > now else None

    def _remember(self, key: str, ids: dict[str, str], expires: float) -> None:
        self._answers[key] = (expires, ids)
        self._remembered += 1
        if self._remembered % _SWEEP_EVERY == 0:
            now = self._clock()
            self._answers = {k: v for k, v in self._answers.items() if v[0] > now}

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        stream = self._streams.get(channel)
        after = parse_id(since) if since is not None else None
        if stream is None:  # nothing stored: any id is either lost with an earlier process or never handed out
            return Replay([], after is None)
        self._trim(stream, int(self._clock() * 1000))
        lower = after if after is not None else (-1, -1)
        records = [record for record in stream.events if record[0] > lower]
        complete = after is None or (stream.trimmed <= after <= stream.last and after >= self._floor)
        if len(records) > max(0, limit):
            records, complete = (records[-limit:] if limit > 0 else []), False
        return Replay([Event(channel, event_id, ts, name, data) for _, event_id, ts, name, data in records], complete)

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

    async def audit_append(self, entry: dict[str, Any]) -> None:
        self._audit.appendleft(entry)

    async def audit_list(self, limit: int) -> list[dict[str, Any]]:
        return list(itertools.islice(self._audit, max(0, limit)))

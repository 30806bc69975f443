"""Adding a channel to a connection with no gap and no duplicate, and the resync of
every channel after the live feed was interrupted.

Both read history from the engine while live events keep arriving; the hub's
subscription states (``hub.State``) and channel pauses are what make the hand-over
exact. Whatever fails, a subscription never stays half-made: it ends live (when the
connection already had it) or gone, never warming with a buffer that grows for good.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Coroutine
from typing import Any

from . import channels
from .config import Settings
from .connections import Connection
from .engines import Engine, EngineUnavailable
from .engines.base import Event
from .hub import Hub
from .logs import log
from .metrics import Metrics
from .protocol import ProtocolError, event_frame
from .protocol.wsframe import text_frame


def unavailable(ref: str | None = None) -> ProtocolError:
    return ProtocolError("unavailable", "the event store is unreachable; retry shortly", ref=ref)


def _frame(event: Event) -> bytes:
    return text_frame(event_frame(event.channel, event.id, event.ts, event.name, event.data))


class Subscriptions:
    def __init__(self, settings: Settings, engine: Engine, hub: Hub, metrics: Metrics,
                 is_open: Callable[[Connection], bool],
                 spawn: Callable[[Coroutine[Any, Any, None]], None]) -> None:
        self.settings = settings
        self.engine = engine
        self.hub = hub
        self.metrics = metrics
        self._is_open = is_open
        self._spawn = spawn

    async def attach(
        self,
        conn: Connection,
        channel: str,
        *,
        since: str | None = None,
        history: bool = False,
        latest: bool = False,
        ref: str | None = None,
        announce: dict[str, Any] | None = None,
    ) -> None:
        """Add ``channel`` to ``conn`` with no gap and no duplicate.

        Live events are buffered (``State.WARMING``) from before the history read
        until the replay is sent; then the buffer is released without what the replay
        already covered. ``history`` replays everything after ``since`` (all retained
        events when ``since`` is None); ``latest`` sends the channel's latest state
        first. ``announce`` is a frame (the ``subscribed`` reply, or ``welcome`` for the
        user channel at connect) sent before the replay, with ``recovered`` and
        ``replayed`` added, so the client knows what is coming and whether it is whole.
        Raises ``ProtocolError`` (``unavailable``) when the store cannot be read.
        """
        session = conn.session
        hub = self.hub
        hub.warm(conn, channel)
        recovered = True
        events: list[Event] = []
        try:
            await self.engine.listen(channel)
            if history:
                replay = await self.engine.history(channel, since, self.settings.replay_limit)
                events, recovered = replay.events, replay.complete
            elif latest:
                state = await self.engine.latest(channel)
                events = [state] if state is not None else []
        except BaseException as exc:
            if channel in session.channels and self._is_open(conn):
                self.flush(conn, hub.go_live(conn, channel, None))
            else:
                hub.remove(conn, channel)
            if isinstance(exc, EngineUnavailable):
                raise unavailable(ref) from None
            raise
        if not self._is_open(conn):  # closed during the read
            hub.remove(conn, channel)
            return
        session.channels.add(channel)
        if announce is not None:
            conn.send({**announce, "recovered": recovered, "replayed": len(events)})
        # an incomplete replay may be one whose ``since`` is past the newest id (a store
        # that lost its data): never skip live events up to an id that was not handed out
        last = since if recovered else None
        for event in events:
            conn.send_frame(_frame(event))
            last = event.id
        self.flush(conn, hub.go_live(conn, channel, last))

    @staticmethod
    def flush(conn: Connection, payloads: list[bytes]) -> None:
        for payload in payloads:
            conn.send_frame(text_frame(payload))

    def detach(self, conn: Connection, channel: str) -> None:
        conn.session.channels.discard(channel)
        conn.session.granted.discard(channel)
        self.hub.remove(conn, channel)

    def on_resync(self, since: str, lost: frozenset[str] | None) -> None:
        """The engine's live feed of ``lost`` channels (None: of all) was interrupted:
        hold each such channel this node serves *now* (before the feed delivers anything
        newer), then re-read."""
        served = self.hub.channels()
        held = served if lost is None else [channel for channel in served if channel in lost]
        for channel in held:
            self.hub.pause(channel)
        self.metrics.resyncs += 1
        self._spawn(self.resync(held, since))

    async def resync(self, held: list[str], since: str) -> None:
        """Deliver, in order and once, what this node's subscribers missed while the
        live feed was down: once the engine feeds a channel again (``listen``), its
        history after the last id this node fanned out on it (``since``, a mark from the
        engine, when it fanned out none), followed by what arrived live meanwhile. A
        channel whose feed or history stays unavailable is released as it is: the
        engine calls for another resync when its feed breaks again."""
        missed = 0
        for channel in held:
            events: list[Event] = []
            try:
                await self._listen(channel)
                if channels.is_stored(channel):
                    replay = await self.engine.history(channel, self.hub.last_id(channel) or since,
                                                       self.settings.replay_limit)
                    events = replay.events
            except EngineUnavailable:
                pass
            except Exception:  # never leave a channel paused for good
                log(logging.ERROR, "resync read failed", channel=channel, exc_info=True)
            self.hub.resume(channel, [(e.id, event_frame(channel, e.id, e.ts, e.name, e.data)) for e in events])
            missed += len(events)
        log(logging.INFO, "resync", channels=len(held), events=missed)

    async def _listen(self, channel: str) -> None:
        """``engine.listen``, waited for as long as the channel has subscribers here: its
        shard may take a failover to come back, and nothing is published to it meanwhile."""
        while True:
            try:
                return await self.engine.listen(channel)
            except EngineUnavailable:
                if not self.hub.subscriber_count(channel):
                    raise

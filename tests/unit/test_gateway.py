"""The gateway without sockets: fake connections over the memory engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ujson

from renum_rt.auth import Authenticator, TokenVerifier
from renum_rt.channels import Identity
from renum_rt.config import Settings
from renum_rt.engines.base import Replay
from renum_rt.engines.memory import MemoryEngine
from renum_rt.gateway import Gateway
from renum_rt.session import Session

SETTINGS = Settings(jwt_secret="s" * 32)


class FakeConnection:
    def __init__(self, user: str, closed: bool = False) -> None:
        self.session = Session(f"c-{user}", "127.0.0.1", SETTINGS, 0.0)
        self.session.authenticate(Identity(user, teams=frozenset({"t1"})))
        self.frames: list[dict[str, Any]] = []
        self.closes: list[int] = []
        self._closed = closed

    def send(self, frame: dict[str, Any]) -> None:
        self.frames.append(frame)

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(ujson.loads(frame[frame.index(b"{"):]))

    def close(self, code: int, reason: str) -> None:
        self.closes.append(code)

    def is_closed(self) -> bool:
        return self._closed

    def events(self) -> list[str]:
        return [f["id"] for f in self.frames if f["type"] == "event"]


def gateway(engine: MemoryEngine | None = None) -> Gateway:
    return Gateway(SETTINGS, engine or MemoryEngine(), Authenticator(TokenVerifier(SETTINGS)))


@pytest.mark.gen_test
async def test_a_client_that_leaves_during_admission_is_not_kept_nor_counted() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    await g.open(FakeConnection("u1", closed=True))
    await asyncio.sleep(0)
    assert g.connections == {} and g.by_user == {}
    assert await engine.connection_opened(g.node_id, "u1", 1)  # the slot was given back


class RacingHistory(MemoryEngine):
    """History reads that race live publishing: events published after the subscription
    started warming but before the read (they are in the replay *and* the live buffer),
    and events published after the read (live buffer only)."""

    def __init__(self) -> None:
        super().__init__()
        self.raced: list[str] = []

    async def _race(self, channel: str, count: int) -> None:
        for _ in range(count):
            self.raced.append((await self.publish([channel], "team.updated", {}, 0))[channel])

    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        racing = channel.startswith("team:")
        await self._race(channel, 2 if racing else 0)
        replay = await super().history(channel, since, limit)
        await self._race(channel, 3 if racing else 0)
        return replay


@pytest.mark.gen_test
async def test_subscribe_with_since_has_no_gap_and_no_duplicate_when_events_race_the_read() -> None:
    engine = RacingHistory()
    g = gateway(engine)
    before = [(await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"] for _ in range(3)]
    conn = FakeConnection("u1")
    await g.open(conn)
    await g.subscribe(conn, "team:t1", before[0], None, "r")
    assert conn.events() == before[1:] + engine.raced
    reply = next(f for f in conn.frames if f["type"] == "subscribed")
    assert reply["replayed"] == 4 and reply["recovered"] is True


@pytest.mark.gen_test
async def test_resync_delivers_what_the_live_feed_missed() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    await g.subscribe(conn, "team:t1", None, None, "r")
    first = (await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"]
    engine.set_listeners(lambda *a: None, lambda m: None, lambda since: None)  # the feed goes deaf
    missed = [(await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"] for _ in range(2)]
    engine.set_listeners(g.hub.deliver, lambda m: None, g._on_resync)
    g._on_resync("0-0")
    again = (await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"]  # live, during the re-read
    await asyncio.gather(*g._tasks)
    assert conn.events()[-4:] == [first, *missed, again]


@pytest.mark.gen_test
async def test_idle_and_expired_connections_are_swept() -> None:
    g = gateway()
    idle, expired, fine = FakeConnection("a"), FakeConnection("b"), FakeConnection("c")
    expired.session.authenticate(Identity("b", exp=100.0))
    for conn in (idle, expired, fine):
        await g.open(conn)
    idle.session.last_active = -SETTINGS.idle_timeout - 1
    expired.session.last_active = fine.session.last_active = 200.0
    g.sweep(200.0)
    assert idle.closes == [4008] and expired.closes == [4001] and fine.closes == []

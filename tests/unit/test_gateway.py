"""The gateway without sockets: fake connections over the memory engine."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ujson

from renum_rt.auth import Authenticator, TokenVerifier, issue_token
from renum_rt.channels import Identity
from renum_rt.config import Settings
from renum_rt.engines.base import EngineUnavailable, Replay
from renum_rt.engines.memory import MemoryEngine
from renum_rt.gateway import Gateway
from renum_rt.protocol import ClientFrame, ProtocolError
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


def subscribe(channel: str, since: str | None = None) -> ClientFrame:
    return ClientFrame("subscribe", "r", {"channel": channel, **({"since": since} if since else {})})


def gateway(engine: MemoryEngine | None = None) -> Gateway:
    return Gateway(SETTINGS, engine or MemoryEngine(), Authenticator(TokenVerifier(SETTINGS)))


@pytest.mark.gen_test
async def test_a_client_that_leaves_during_admission_is_not_kept_nor_counted() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    await g.open(FakeConnection("u1", closed=True))
    await asyncio.sleep(0)
    assert len(g.registry) == 0 and g.registry.by_user == {}
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
    await g.handle(conn, subscribe("team:t1", since=before[0]))
    assert conn.events() == before[1:] + engine.raced
    reply = next(f for f in conn.frames if f["type"] == "subscribed")
    assert reply["replayed"] == 4 and reply["recovered"] is True


@pytest.mark.gen_test
async def test_resync_delivers_what_the_live_feed_missed() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    await g.handle(conn, subscribe("team:t1"))
    first = (await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"]
    engine.set_listeners(lambda *a: None, lambda m: None, lambda since, lost: None)  # the feed goes deaf
    missed = [(await engine.publish(["team:t1"], "team.updated", {}, 0))["team:t1"] for _ in range(2)]
    engine.set_listeners(g.hub.deliver, lambda m: None, g.subscriptions.on_resync)
    g.subscriptions.on_resync("0-0", None)
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


class SlowCursor(MemoryEngine):
    """A store whose cursor read takes a while, during which a system event is published."""

    async def cursor(self, channel: str) -> str | None:
        await self.publish(["system"], "system.announcement", {"title": "t", "message": "m", "level": "info"}, 0)
        await asyncio.sleep(0)
        return await super().cursor(channel)


@pytest.mark.gen_test
async def test_welcome_is_the_first_frame_even_when_a_system_event_arrives_during_the_cursor_read() -> None:
    g = gateway(SlowCursor())
    conn = FakeConnection("u1")
    await g.open(conn)
    assert [f["type"] for f in conn.frames] == ["welcome", "unread_count", "event"]
    assert conn.frames[2]["channel"] == "system"
    assert conn.session.channels == {"system", "user:u1"}


class BrokenUserChannel(MemoryEngine):
    async def history(self, channel: str, since: str | None, limit: int) -> Replay:
        if channel.startswith("user:"):
            raise EngineUnavailable("down")
        return await super().history(channel, since, limit)


@pytest.mark.gen_test
async def test_a_connection_whose_backlog_cannot_be_read_is_closed_not_left_live_without_it() -> None:
    g = gateway(BrokenUserChannel())
    conn = FakeConnection("u1")
    await g.open(conn)
    assert conn.closes == [1012]
    assert [f["code"] for f in conn.frames] == ["unavailable"]
    assert g.hub.channels() == []  # nothing left warming


@pytest.mark.gen_test
async def test_a_bad_stored_cursor_does_not_lock_the_user_out() -> None:
    engine = MemoryEngine()
    event_id = (await engine.publish(["user:u1"], "n", {}, 0))["user:u1"]
    engine._cursors["user:u1"] = "99999999999999999999999-0"  # type: ignore[assignment]
    engine.cursor = lambda channel: _value("99999999999999999999999-0")  # type: ignore[method-assign]
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    assert conn.closes == [] and conn.events() == [event_id]


async def _value(value: Any) -> Any:
    return value


@pytest.mark.gen_test
async def test_a_failing_history_read_leaves_no_buffer_behind() -> None:
    class Failing(MemoryEngine):
        async def history(self, channel: str, since: str | None, limit: int) -> Replay:
            if channel.startswith("team:"):
                raise RuntimeError("boom")
            return await super().history(channel, since, limit)

    g = gateway(Failing())
    conn = FakeConnection("u1")
    await g.open(conn)
    with pytest.raises(RuntimeError):
        await g.handle(conn, subscribe("team:t1", since="1-0"))
    assert "team:t1" not in g.hub.channels() and "team:t1" not in conn.session.channels


@pytest.mark.gen_test
async def test_ack_beyond_the_newest_event_is_refused_and_not_stored() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    newest = (await engine.publish(["user:u1"], "n", {}, 0))["user:u1"]
    with pytest.raises(ProtocolError) as refused:
        await g.handle(conn, ClientFrame("ack", "a", {"channel": "user:u1", "id": "9999999999999-0"}))
    assert (refused.value.code, refused.value.field) == ("bad_request", "id")
    assert await engine.cursor("user:u1") is None
    await g.handle(conn, ClientFrame("ack", "b", {"channel": "user:u1", "id": newest}))
    assert await engine.cursor("user:u1") == newest


@pytest.mark.gen_test
async def test_since_beyond_the_newest_event_is_not_recovered_and_goes_live() -> None:
    engine = MemoryEngine()
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    await engine.publish(["team:t1"], "n", {}, 0)
    await g.handle(conn, subscribe("team:t1", since="9999999999999-0"))
    reply = next(f for f in conn.frames if f["type"] == "subscribed")
    assert (reply["recovered"], reply["replayed"]) == (False, 0)
    later = (await engine.publish(["team:t1"], "n", {}, 0))["team:t1"]
    assert conn.events()[-1] == later


@pytest.mark.gen_test
async def test_a_refresh_with_fewer_rights_ends_the_subscriptions_it_no_longer_allows() -> None:
    secret = SETTINGS.jwt_secret
    g = gateway()
    conn = FakeConnection("u1")
    conn.session.authenticate(Identity("u1", is_admin=True, teams=frozenset({"t1"})))
    await g.open(conn)
    await g.handle(conn, subscribe("admin"))
    await g.handle(conn, subscribe("team:t1"))
    plain = issue_token(secret, "u1", ttl_s=60)
    await g.handle(conn, ClientFrame("refresh", "r2", {"token": plain}))
    dropped = sorted(f["channel"] for f in conn.frames if f["type"] == "error")
    assert dropped == ["admin", "team:t1"]
    assert conn.session.channels == {"system", "user:u1"}
    assert g.hub.subscriber_count("admin") == 0 and not conn.session.identity.is_admin  # type: ignore[union-attr]


@pytest.mark.gen_test
async def test_a_burst_of_announcements_costs_at_most_two_recounts_and_ends_exact() -> None:
    engine = MemoryEngine()
    calls: list[int] = []
    unread = engine.inbox.unread

    async def counted(users: Any, now_ms: int) -> Any:
        calls.append(len(users))
        await asyncio.sleep(0)  # a store round trip: announcements keep arriving meanwhile
        return await unread(users, now_ms)

    engine.inbox.unread = counted  # type: ignore[method-assign]
    g = gateway(engine)
    conn = FakeConnection("u1")
    await g.open(conn)
    calls.clear()
    for i in range(20):
        await g.publish(["system"], "system.announcement", {"title": f"a{i}", "message": "m", "level": "info"}, None)
    await asyncio.gather(*g._tasks)
    assert 1 <= len(calls) <= 2
    counts = [f["count"] for f in conn.frames if f["type"] == "unread_count"]
    assert counts[-1] == 20


class CountingCursor(MemoryEngine):
    """A store whose cursor read takes a loop turn or two, counting the reads in flight."""

    def __init__(self) -> None:
        super().__init__()
        self.in_flight = self.most = 0

    async def cursor(self, channel: str) -> str | None:
        self.in_flight += 1
        self.most = max(self.most, self.in_flight)
        await asyncio.sleep(0.001)
        self.in_flight -= 1
        return await super().cursor(channel)


@pytest.mark.gen_test
async def test_a_connect_storm_is_admitted_a_pool_at_a_time_and_nobody_is_turned_away() -> None:
    engine = CountingCursor()
    g = Gateway(Settings(jwt_secret="s" * 32, redis_pool_size=8, max_connections_per_address=1000), engine,
                Authenticator(TokenVerifier(SETTINGS)))
    conns = [FakeConnection(f"u{i}") for i in range(100)]
    await asyncio.gather(*(g.open(conn) for conn in conns))
    assert engine.most == 8  # the store saw at most one admission per pooled connection
    assert all(conn.frames[0]["type"] == "welcome" and not conn.closes for conn in conns)

"""Protocol v1 over real sockets: frames, channel rules, limits, recovery."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import os
import socket
import struct
from typing import Any

import pytest
import tornado.iostream
import tornado.websocket
import ujson
from tornado.iostream import StreamClosedError

from tests.integration.test_ws_basic import publish
from tests.support.wsclient import connect

STATUS = {"execution_id": "e1", "team_id": "t1", "status": "running", "progress": 1}


@pytest.mark.gen_test
async def test_welcome_reports_limits(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"), welcome=False)
    welcome = await client.recv()
    assert welcome is not None and welcome["v"] == 1 and welcome["user_id"] == "u1"
    assert welcome["limits"]["max_frame_bytes"] == 65536 and welcome["limits"]["idle_timeout_s"] == 1800
    assert welcome["limits"]["rate"] == 50 and welcome["limits"]["burst"] == 100
    client.close()


@pytest.mark.gen_test
async def test_ping_pong_echoes_ref(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    await client.send({"type": "ping", "ref": "p-1"})
    assert await client.recv() == {"type": "pong", "ref": "p-1"}
    client.close()


BAD_FRAMES = [
    ("not json", "bad_request", None),
    ("[1, 2]", "bad_request", None),
    ('{"no": "type"}', "bad_request", "type"),
    ('{"type": "dance", "ref": "x"}', "unknown_type", "type"),
    ('{"type": "subscribe", "ref": "x"}', "bad_request", "channel"),
    ('{"type": "subscribe", "channel": "nope:1", "ref": "x"}', "bad_request", "channel"),
    ('{"type": "subscribe", "channel": "system", "since": "yesterday", "ref": "x"}', "bad_request", "since"),
    ('{"type": "ack", "channel": "system", "ref": "x"}', "bad_request", "id"),
    ('{"type": "ping", "ref": "' + "r" * 65 + '"}', "bad_request", "ref"),
    ('{"type": "unsubscribe", "channel": "team:zz", "ref": "x"}', "not_found", "channel"),
    ('{"type": "auth", "token": "abc", "ref": "x"}', "bad_request", None),
]


@pytest.mark.gen_test
async def test_bad_frames_get_clear_errors_and_connection_survives(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    for text, code, field in BAD_FRAMES:
        await client.send(text)
        error = await client.recv()
        assert error is not None and error["type"] == "error", text
        assert error["code"] == code, (text, error)
        assert error.get("field") == field, (text, error)
        assert error["message"]
    await client.conn.write_message(b"\x00binary", binary=True)
    error = await client.recv()
    assert error is not None and error["code"] == "bad_request"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.gen_test
async def test_channel_rules(ws_url: str, token: Any, grant: Any) -> None:
    client = await connect(ws_url, token("u1", teams=["t1"]))

    async def sub(channel: str, **extra: Any) -> dict[str, Any]:
        return await client.request({"type": "subscribe", "channel": channel, **extra})

    assert (await sub("team:t1"))["type"] == "subscribed"
    assert (await sub("team:t2"))["code"] == "forbidden"
    assert (await sub("team:t2", token=grant("u1", "team:t2")))["type"] == "subscribed"
    assert (await sub("user:u2"))["code"] == "forbidden"
    assert (await sub("admin"))["code"] == "forbidden"
    assert (await sub("execution:e1"))["code"] == "forbidden"
    assert (await sub("execution:e1", token=grant("u2", "execution:e1")))["code"] == "forbidden"
    assert (await sub("execution:e1", token=grant("u1", "execution:e2")))["code"] == "forbidden"
    assert (await sub("execution:e1", token="garbage"))["code"] == "forbidden"
    assert (await sub("execution:e1", token=grant("u1", "execution:e1")))["type"] == "subscribed"
    reply = await client.request({"type": "unsubscribe", "channel": "team:t1"})
    assert reply == {"type": "unsubscribed", "ref": reply["ref"], "channel": "team:t1"}
    client.close()
    admin = await connect(ws_url, token("boss", app_metadata={"role": "admin"}))
    assert (await admin.request({"type": "subscribe", "channel": "admin"}))["type"] == "subscribed"
    admin.close()


@pytest.mark.settings(max_subscriptions=2)
@pytest.mark.gen_test
async def test_subscription_count_is_bounded(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1", teams=["a", "b", "c"]))
    # user:u1 and system are already there
    error = await client.request({"type": "subscribe", "channel": "team:a"})
    assert error["type"] == "error" and error["code"] == "too_large"
    client.close()


@pytest.mark.settings(rate=5, burst=5, flood_close_after=1000)
@pytest.mark.gen_test
async def test_rate_limit_answers_rate_limited_with_retry_after(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    for _ in range(12):
        await client.send({"type": "ping"})
    frames = [await client.recv() for _ in range(12)]
    limited = [f for f in frames if f and f["type"] == "error"]
    assert limited and all(f["code"] == "rate_limited" and f["retry_after_ms"] > 0 for f in limited)
    assert sum(1 for f in frames if f and f["type"] == "pong") >= 5
    await asyncio.sleep(limited[-1]["retry_after_ms"] / 1000 + 0.05)
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.settings(rate=2, burst=2, flood_close_after=5)
@pytest.mark.gen_test
async def test_flooding_client_is_closed_1008(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    for _ in range(10):
        await client.send({"type": "ping"})
    assert await client.closed() == 1008


@pytest.mark.settings(max_frame_bytes=1000, hard_frame_bytes=4000)
@pytest.mark.gen_test
async def test_frame_size_limits(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    await client.send({"type": "ping", "pad": "x" * 2000})
    error = await client.recv()
    assert error is not None and error["code"] == "too_large"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    await client.send({"type": "ping", "pad": "x" * 5000})
    assert await client.closed() == 1009


@pytest.mark.settings(idle_timeout=0.5)
@pytest.mark.gen_test
async def test_idle_connection_is_closed_4008_but_active_one_is_not(ws_url: str, token: Any) -> None:
    idle = await connect(ws_url, token("u1"))
    busy = await connect(ws_url, token("u2"))
    for _ in range(8):
        await asyncio.sleep(0.1)
        assert (await busy.request({"type": "ping"}))["type"] == "pong"
    assert await idle.closed() == 4008
    assert (await busy.request({"type": "ping"}))["type"] == "pong"
    busy.close()


@pytest.mark.settings(max_connections_per_user=2)
@pytest.mark.gen_test
async def test_connections_per_user_are_capped_4029(ws_url: str, token: Any) -> None:
    first = await connect(ws_url, token("u1"))
    second = await connect(ws_url, token("u1"))
    third = await connect(ws_url, token("u1"), welcome=False)
    error = await third.recv()
    assert error is not None and error["code"] == "rate_limited"
    assert await third.closed() == 4029
    first.close()
    await first.closed()
    for _ in range(50):  # the slot frees once the server saw the close
        fourth = await connect(ws_url, token("u1"), welcome=False)
        frame = await fourth.recv()
        if frame and frame["type"] == "welcome":
            break
        await fourth.closed()
        await asyncio.sleep(0.02)
    assert frame and frame["type"] == "welcome"
    second.close()
    fourth.close()


@pytest.mark.settings(max_connections_per_address=1)
@pytest.mark.gen_test
async def test_connections_per_address_are_capped_4029(ws_url: str, token: Any) -> None:
    first = await connect(ws_url, token("u1"))
    second = await connect(ws_url, token("u2"), welcome=False)
    assert (await second.recv())["code"] == "rate_limited"
    assert await second.closed() == 4029
    first.close()


@pytest.mark.gen_test
async def test_durable_user_channel_replays_after_ack_cursor(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    ids = []
    for n in range(3):
        response = await publish(http_client, base_url, {"users": ["u5"], "event": "execution.status",
                                                          "data": {**STATUS, "progress": n}})
        ids.append(ujson.loads(response.body)["ids"]["user:u5"])
    client = await connect(ws_url, token("u5"), welcome=False)
    welcome = await client.recv()
    assert welcome is not None and welcome["type"] == "welcome"
    assert welcome["replayed"] == 3 and welcome["recovered"] is True
    got = [(await client.recv_type("event"))["id"] for _ in range(3)]
    assert got == ids
    reply = await client.request({"type": "ack", "channel": "user:u5", "id": ids[1]})
    assert reply["type"] == "ok"
    client.close()
    again = await connect(ws_url, token("u5"))
    frame = await again.recv_type("event")
    assert frame["id"] == ids[2]
    assert (await again.request({"type": "ping"}))["type"] == "pong"  # nothing else was replayed
    # a cursor never moves backwards
    await again.request({"type": "ack", "channel": "user:u5", "id": ids[2]})
    await again.request({"type": "ack", "channel": "user:u5", "id": ids[0]})
    again.close()
    third = await connect(ws_url, token("u5"))
    assert (await third.request({"type": "ping"}))["type"] == "pong"
    third.close()


@pytest.mark.gen_test(timeout=30)
async def test_since_replays_then_live_without_gap_or_duplicate_while_publishing(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    async def pub(n: int) -> str:
        response = await publish(http_client, base_url, {"channel": "team:t1", "event": "team.updated",
                                                          "data": {"team_id": "t1", "name": f"n{n}"}})
        return ujson.loads(response.body)["ids"]["team:t1"]

    first = [await pub(n) for n in range(5)]
    client = await connect(ws_url, token("u1", teams=["t1"]))
    publisher = asyncio.ensure_future(asyncio.gather(*(pub(n) for n in range(5, 45))))
    reply = await client.request({"type": "subscribe", "channel": "team:t1", "since": first[1]})
    assert reply["recovered"] is True
    later = await publisher
    expected = first[2:] + sorted(later, key=lambda i: tuple(map(int, i.split("-"))))
    got = []
    while len(got) < len(expected):
        frame = await client.recv_type("event")
        got.append(frame["id"])
    assert got == expected
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.settings(history_max_len=3)
@pytest.mark.gen_test
async def test_since_older_than_retention_says_recovered_false(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    ids = []
    for n in range(6):
        response = await publish(http_client, base_url, {"channel": "team:t1", "event": "team.updated",
                                                          "data": {"team_id": "t1", "name": f"n{n}"}})
        ids.append(ujson.loads(response.body)["ids"]["team:t1"])
    client = await connect(ws_url, token("u1", teams=["t1"]))
    reply = await client.request({"type": "subscribe", "channel": "team:t1", "since": ids[0]})
    assert reply["recovered"] is False and reply["replayed"] == 3
    assert [(await client.recv_type("event"))["id"] for _ in range(3)] == ids[3:]
    client.close()


@pytest.mark.gen_test
async def test_events_reach_every_connection_of_a_user_and_not_others(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    tabs = [await connect(ws_url, token("u1")) for _ in range(3)]
    other = await connect(ws_url, token("u2"))
    await publish(http_client, base_url, {"users": ["u1"], "event": "custom.thing", "data": {"x": 1}})
    for tab in tabs:
        assert (await tab.recv_type("event"))["data"] == {"x": 1}
        tab.close()
    assert (await other.request({"type": "ping"}))["type"] == "pong"
    other.close()


@pytest.mark.gen_test
async def test_broadcast_reaches_everyone_on_system(http_client: Any, base_url: str, ws_url: str, token: Any) -> None:
    a = await connect(ws_url, token("a"))
    b = await connect(ws_url, token("b"))
    data = {"title": "Maintenance", "message": "at noon", "level": "warning"}
    response = await publish(http_client, base_url, {"event": "system.announcement", "data": data},
                             path="/api/v1/broadcast")
    assert response.code == 200
    for client in (a, b):
        frame = await client.recv_type("event")
        assert frame["channel"] == "system" and frame["data"] == data
        client.close()


async def stalled_client(port: int, token: str) -> tornado.iostream.IOStream:
    """A WebSocket client that completes the handshake and then never reads: a frozen
    browser tab. Its receive buffer is made small so the server's queue fills quickly."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    stream = tornado.iostream.IOStream(sock)
    await stream.connect(("127.0.0.1", port))
    key = base64.b64encode(os.urandom(16)).decode()
    await stream.write(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = await stream.read_until(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 101"), head
    return stream


@pytest.mark.settings(max_write_buffer_bytes=64 * 1024)
@pytest.mark.gen_test(timeout=30)
async def test_slow_consumer_is_closed_and_others_keep_receiving(
    http_port: int, ws_url: str, token: Any, node: Any
) -> None:
    stalled = await stalled_client(http_port, token("slow"))
    received: list[Any] = []
    fast = await tornado.websocket.websocket_connect(f"{ws_url}?token={token('fast')}",
                                                     on_message_callback=received.append)
    users = node.gateway.registry.by_user
    big = {"blob": "x" * 16000}
    sent = 0
    while "slow" in users and sent < 5000:
        await node.gateway.publish(["user:slow", "user:fast"], "custom.big", big, None)
        sent += 1
        await asyncio.sleep(0)
    assert "slow" not in users, "the stalled client was never dropped"
    while len([m for m in received if m and "custom.big" in m]) < sent:
        await asyncio.sleep(0.01)  # the healthy client gets every event
    # the stalled client reads again: whole frames, then a close frame it can read
    data = b""
    with contextlib.suppress(StreamClosedError):
        while True:
            data += await asyncio.wait_for(stalled.read_bytes(65536, partial=True), 10)
    opcodes, close_payload = [], b""
    while data:
        opcode, length, start = data[0] & 0x0F, data[1] & 0x7F, 2
        if length == 126:
            length, start = struct.unpack("!H", data[2:4])[0], 4
        elif length == 127:
            length, start = struct.unpack("!Q", data[2:10])[0], 10
        assert len(data) >= start + length, "a truncated frame"
        opcodes.append(opcode)
        if opcode == 0x8:
            close_payload = data[start:start + length]
        data = data[start + length:]
    assert opcodes[-1] == 0x8 and set(opcodes[:-1]) <= {0x1}, opcodes[-3:]
    assert struct.unpack("!H", close_payload[:2])[0] == 1008 and b"slow consumer" in close_payload
    fast.close()
    stalled.close()


@pytest.mark.settings(heartbeat_ms=100)
@pytest.mark.gen_test(timeout=15)
async def test_a_live_peer_is_pinged_every_heartbeat_by_one_timer_and_stays(ws_url: str, token: Any,
                                                                              node: Any) -> None:
    alive = await connect(ws_url, token("alive"))
    conn = node.gateway.registry.of_user("alive")[0]
    assert conn.ws_connection._ping_coroutine is None  # no Tornado ping task per connection
    pongs: list[bytes] = []
    answered = conn.on_pong

    def counted(data: bytes) -> None:
        pongs.append(data)
        answered(data)

    conn.on_pong = counted
    await asyncio.sleep(0.55)
    assert len(pongs) >= 3 and "alive" in node.gateway.registry.by_user
    assert (await alive.request({"type": "ping"}))["type"] == "pong"
    alive.close()


@pytest.mark.settings(heartbeat_ms=200)
@pytest.mark.gen_test(timeout=15)
async def test_dead_peer_that_never_answers_pings_is_dropped(http_port: int, ws_url: str, token: Any,
                                                              node: Any) -> None:
    stalled = await stalled_client(http_port, token("ghost"))
    alive = await connect(ws_url, token("alive"))  # the client library answers pings by itself
    users = node.gateway.registry.by_user
    loop = asyncio.get_running_loop()
    deadline = loop.time() + 10
    while "ghost" in users and loop.time() < deadline:
        await asyncio.sleep(0.05)
    assert "ghost" not in users and "alive" in users
    assert (await alive.request({"type": "ping"}))["type"] == "pong"
    alive.close()
    stalled.close()

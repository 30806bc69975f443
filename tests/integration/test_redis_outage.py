"""Redis outages: the gateway degrades cleanly while ``redis-server`` is down and recovers by itself.

Two real ``server.py`` processes share a ``redis-server`` of the test alone (its own port
and directory, ``appendfsync always``). The test stops that ``redis-server`` (SIGTERM),
checks what clients and services see meanwhile, then starts it again on the same port,
without touching the gateways:

- Redis down: ``/healthz`` answers 503 on every node, ``POST /api/v1/publish`` answers 503
  ``unavailable`` and stores nothing (nothing half-accepted); connected clients stay
  connected (``ping`` works) and get ``unavailable`` errors on what needs Redis
  (``subscribe`` with ``since``, ``ack``); a new connection is still welcomed.
- Redis back: ``/healthz`` is 200 again within a few seconds with no restart, publishing
  works, clients subscribed before the outage receive events published after it on every
  node, and everything accepted before the outage is still delivered;
- an event accepted in the moments after Redis answers again, before a node's pub/sub feed is
  back, still reaches that node's subscribers, even on a channel that had no event yet.

Every wait is a poll or a frame awaited with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any, Awaitable, Callable, Iterator

import jwt
import pytest
import redis
import ujson
from tornado.httpclient import AsyncHTTPClient

from renum_rt.ids import parse_id
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.wsclient import Client, connect

SECRET = "redis-outage-secret-" + "x" * 32
API_KEY = "redis-outage-key"
PREFIX = "renum-rt:"  # the default key prefix
WAIT = 10.0  # seconds to wait for any one thing that should happen
RECOVERY_S = 8.0  # "within a few seconds" of redis-server answering again


def token(sub: str, ttl_s: int = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl_s, **claims}, SECRET, algorithm="HS256")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@pytest.fixture
def nodes(own_redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    env = {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY, "RENUM_RT_REDIS_URL": own_redis_server.url,
           "RENUM_RT_LOG_LEVEL": "warning"}
    a, b = ServerProcess(env).start(), ServerProcess(env).start()
    yield a, b
    for node in (a, b):
        node.stop()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (stopping or starting redis-server) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT, interval: float = 0.05,
                     what: str = "condition") -> float:
    """Poll ``check`` until it is true; return how long it took; fail after ``timeout`` s."""
    start = time.monotonic()
    while not await check():
        assert time.monotonic() - start < timeout, f"{what}: not true after {timeout} s"
        await asyncio.sleep(interval)
    return time.monotonic() - start


async def health(node: ServerProcess) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(node.url + "/healthz", raise_error=False, request_timeout=WAIT)
    return response.code, ujson.loads(response.body)


async def publish(node: ServerProcess, body: dict[str, Any], **headers: str) -> tuple[int, Any]:
    response = await AsyncHTTPClient().fetch(
        node.url + "/api/v1/publish", method="POST", body=ujson.dumps(body), raise_error=False, request_timeout=WAIT,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json", **headers},
    )
    return response.code, ujson.loads(response.body)


async def accepted(node: ServerProcess, body: dict[str, Any]) -> dict[str, str]:
    code, answer = await publish(node, body)
    assert code == 200, answer
    ids: dict[str, str] = answer["ids"]
    return ids


async def events(client: Client, n: int, timeout: float = WAIT) -> dict[str, list[str]]:
    """The next ``n`` event frames, as ids per channel."""
    got: dict[str, list[str]] = {}
    for _ in range(n):
        event = await client.recv_type("event", timeout)
        got.setdefault(event["channel"], []).append(event["id"])
    return got


def stored(redis_server: RedisServer, channel: str) -> list[str]:
    """The ids the channel's stream holds, read straight from redis-server."""
    with redis.Redis(port=redis_server.port, socket_timeout=5) as r:
        return [i.decode() for i, _ in r.xrange(f"{PREFIX}s:{channel}")]


@pytest.mark.gen_test(timeout=60)
async def test_redis_stop_and_start(own_redis_server: RedisServer, nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    user, other, team = new_id("u"), new_id("v"), new_id("t")
    own, channel = f"user:{user}", f"team:{team}"
    on_a = await connect(a.ws_url, token(user, teams=[team]))
    on_b = await connect(b.ws_url, token(other, teams=[team]))
    for client in (on_a, on_b):
        assert (await client.request({"type": "subscribe", "channel": channel}))["type"] == "subscribed"
    before = await accepted(a, {"channel": channel, "users": [user], "event": "tick", "data": {"n": 1}})
    assert await events(on_a, 2) == {channel: [before[channel]], own: [before[own]]}
    assert await events(on_b, 1) == {channel: [before[channel]]}

    # ---- redis-server goes away
    await in_thread(own_redis_server.stop)
    for node in (a, b):
        async def down(node: ServerProcess = node) -> bool:
            code, body = await health(node)
            return code == 503 and body["status"] == "unavailable"

        await eventually(down, what="/healthz 503")

    body = {"channel": channel, "users": [user], "event": "tick", "data": {"n": 2}}
    for node, headers in ((a, {}), (b, {"Idempotency-Key": "during-the-outage"})):
        code, answer = await publish(node, body, **headers)
        assert (code, answer["error"]["code"]) == (503, "unavailable"), answer

    # connected clients stay connected; what needs Redis answers `unavailable`
    for client in (on_a, on_b):
        assert (await client.request({"type": "ping"}))["type"] == "pong"
    reply = await on_a.request({"type": "subscribe", "channel": channel, "since": before[channel]})
    assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
    reply = await on_a.request({"type": "ack", "channel": own, "id": before[own]})
    assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
    assert (await on_a.request({"type": "ping"}))["type"] == "pong"
    # a newcomer is never live without its mailbox: it is told why and closed with 1012,
    # so that its client reconnects (with backoff) and resumes once the store is back
    newcomer = await connect(b.ws_url, token(new_id("n")), welcome=False)
    error = await newcomer.recv()
    assert error is not None and (error["type"], error["code"]) == ("error", "unavailable"), error
    assert await newcomer.closed() == 1012

    # ---- redis-server is back on the same port; the gateways are not restarted
    await in_thread(own_redis_server.start)
    for node in (a, b):
        async def up(node: ServerProcess = node) -> bool:
            return (await health(node))[0] == 200

        await eventually(up, timeout=RECOVERY_S, what="/healthz 200 again")

    # nothing half-accepted: only the event published before the outage was stored
    assert stored(own_redis_server, channel) == [before[channel]]
    assert stored(own_redis_server, own) == [before[own]]

    after = await accepted(b, {"channel": channel, "users": [user], "event": "tick", "data": {"n": 3}})
    # the subscribers of before the outage get it, on both nodes, once
    assert await events(on_a, 2) == {channel: [after[channel]], own: [after[own]]}
    assert await events(on_b, 1) == {channel: [after[channel]]}
    # the key refused during the outage was not kept: it publishes now
    code, answer = await publish(b, body, **{"Idempotency-Key": "during-the-outage"})
    assert code == 200, answer
    retried = answer["ids"]
    assert await events(on_a, 2) == {channel: [retried[channel]], own: [retried[own]]}
    assert await events(on_b, 1) == {channel: [retried[channel]]}
    assert (await on_a.request({"type": "ack", "channel": own, "id": before[own]}))["type"] == "ok"

    # nothing accepted is lost: a reconnecting user gets its mailbox after the cursor,
    # and the history after the first event is whole
    again = await connect(a.ws_url, token(user, teams=[team]), welcome=False)
    welcome = await again.recv()
    assert welcome is not None and (welcome["recovered"], welcome["replayed"]) == (True, 2), welcome
    assert await events(again, 2) == {own: [after[own], retried[own]]}
    reply = await again.request({"type": "subscribe", "channel": channel, "since": before[channel]})
    assert (reply["type"], reply["recovered"], reply["replayed"]) == ("subscribed", True, 2), reply
    assert await events(again, 2) == {channel: [after[channel], retried[channel]]}
    assert stored(own_redis_server, channel) == sorted([before[channel], after[channel], retried[channel]], key=parse_id)
    for client in (on_a, on_b, again):
        client.close()


@pytest.mark.gen_test(timeout=60)
async def test_events_published_before_the_feed_is_back_reach_quiet_channels(
    own_redis_server: RedisServer, nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    user, team = new_id("u"), new_id("t")
    own, channel = f"user:{user}", f"team:{team}"
    on_a = await connect(a.ws_url, token(user, teams=[team]))  # nothing was ever delivered live to it
    assert (await on_a.request({"type": "subscribe", "channel": channel}))["type"] == "subscribed"

    await in_thread(own_redis_server.stop)

    async def backed_off() -> bool:  # A's pub/sub listener now waits its longest backoff before retrying
        return "retrying in 2.0 s" in a.log()

    await eventually(backed_off, what="the pub/sub listener of A at its longest backoff")
    await in_thread(own_redis_server.start)

    async def accepted_on_b() -> bool:
        code, answer = await publish(b, {"channel": channel, "users": [user], "event": "tick", "data": {}})
        ids.update(answer.get("ids", {}))
        return code == 200

    ids: dict[str, str] = {}
    await eventually(accepted_on_b, interval=0.01, what="a publish accepted once Redis answers")
    # A's subscriber was connected all along: it must get the accepted event, at the latest
    # once A's pub/sub is back (within its 2 s backoff) and A has re-read what it missed
    assert await events(on_a, 2, timeout=5) == {channel: [ids[channel]], own: [ids[own]]}
    on_a.close()

"""Redis outages: the gateway degrades cleanly while ``redis-server`` is down, stalled or
refusing writes, and recovers by itself.

Real ``server.py`` processes share a ``redis-server`` of the test alone (its own port and
directory, ``appendfsync always``). The first tests stop that ``redis-server`` (SIGTERM),
check what clients and services see meanwhile, then start it again on the same port,
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

Then Redis stays up but misbehaves:

- it stalls (``DEBUG SLEEP``) while a publish with an ``Idempotency-Key`` is in flight: the
  request answers 503, Redis runs it once it wakes up, and the retry with the same key gets
  that event's ids (no 409, no second copy);
- it refuses writes (out of memory with ``noeviction``, then a read-only replica):
  ``/healthz`` and publish answer 503 with nothing stored, acks answer ``unavailable``,
  connections are still welcomed; once it takes writes again everything is 200.

Every wait is a poll or a frame awaited with a deadline.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

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


def gateway_env(redis_server: RedisServer) -> dict[str, str]:
    return {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY, "RENUM_RT_REDIS_URL": redis_server.url,
            "RENUM_RT_LOG_LEVEL": "warning"}


@pytest.fixture
def nodes(own_redis_server: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a, b = ServerProcess(gateway_env(own_redis_server)).start(), ServerProcess(gateway_env(own_redis_server)).start()
    yield a, b
    for node in (a, b):
        node.stop()


@pytest.fixture
def node(own_redis_server: RedisServer) -> Iterator[ServerProcess]:
    one = ServerProcess(gateway_env(own_redis_server)).start()
    yield one
    one.stop()


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
    everything = sorted([before[channel], after[channel], retried[channel]], key=parse_id)
    assert stored(own_redis_server, channel) == everything
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
        return '"retry_in_s":2.0' in a.log()

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


async def answers(node: ServerProcess, status: int) -> bool:
    return (await health(node))[0] == status


@pytest.mark.gen_test(timeout=40)
async def test_a_stall_never_blocks_an_idempotency_key_nor_publishes_twice(
    own_redis_server: RedisServer, node: ServerProcess
) -> None:
    user = new_id("u")
    own = f"user:{user}"
    client = await connect(node.ws_url, token(user))
    first = await accepted(node, {"users": [user], "event": "tick", "data": {"n": 0}})  # pools a connection
    assert (await client.recv_type("event"))["id"] == first[own]

    def asleep() -> bool:
        with redis.Redis(port=own_redis_server.port, socket_timeout=0.2, retry=None) as probe:
            try:
                probe.ping()
            except redis.TimeoutError:
                return True
        return False

    with redis.Redis(port=own_redis_server.port, socket_timeout=30) as admin:
        # longer than the engine's timeout, twice (it retries a publish that has a key)
        stall = asyncio.ensure_future(in_thread(admin.execute_command, "DEBUG", "SLEEP", "6"))
        await eventually(lambda: in_thread(asleep), what="redis-server asleep")
        body = {"users": [user], "event": "tick", "data": {"n": 1}}
        code, answer = await publish(node, body, **{"Idempotency-Key": "stalled"})
        assert (code, answer["error"]["code"]) == (503, "unavailable"), answer
        await stall  # Redis wakes up and runs what it had received: the publish, its answer under the key

    code, answer = await publish(node, body, **{"Idempotency-Key": "stalled"})
    assert code == 200, answer  # never 409: no key is left "in progress"
    ids = answer["ids"]
    assert stored(own_redis_server, own) == [first[own], ids[own]]  # one copy, the one the retry names
    assert (await client.recv_type("event"))["id"] == ids[own]
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # and nothing else came before it
    client.close()


@pytest.mark.gen_test(timeout=60)
async def test_a_redis_refusing_writes_answers_503_then_recovers(
    own_redis_server: RedisServer, node: ServerProcess
) -> None:
    user = new_id("u")
    own = f"user:{user}"
    body = {"users": [user], "event": "tick", "data": {}}
    client = await connect(node.ws_url, token(user))
    last = (await accepted(node, body))[own]
    assert (await client.recv_type("event"))["id"] == last
    primary = RedisServer()
    primary.start()
    admin = redis.Redis(port=own_redis_server.port, socket_timeout=5)
    try:
        for refuse, allow in [
            (lambda: admin.config_set("maxmemory", 1), lambda: admin.config_set("maxmemory", 0)),  # OOM, noeviction
            (lambda: admin.replicaof("127.0.0.1", primary.port), lambda: admin.replicaof("NO", "ONE")),  # READONLY
        ]:
            before = stored(own_redis_server, own)
            await in_thread(refuse)
            await eventually(lambda: answers(node, 503), what="/healthz 503 while writes are refused")
            for headers in ({}, {"Idempotency-Key": new_id("k")}):
                code, answer = await publish(node, body, **headers)
                assert (code, answer["error"]["code"]) == (503, "unavailable"), answer
            assert set(stored(own_redis_server, own)) <= set(before)  # nothing stored
            reply = await client.request({"type": "ack", "channel": own, "id": last})
            assert (reply["type"], reply["code"]) == ("error", "unavailable"), reply
            (await connect(node.ws_url, token(new_id("n")))).close()  # reads still work: welcomed
            await in_thread(allow)
            await eventually(lambda: answers(node, 200), timeout=RECOVERY_S, what="/healthz 200 again")
            last = (await accepted(node, body))[own]
            assert (await client.recv_type("event"))["id"] == last
            assert (await client.request({"type": "ack", "channel": own, "id": last}))["type"] == "ok"
    finally:
        admin.close()
        primary.cleanup()
    client.close()

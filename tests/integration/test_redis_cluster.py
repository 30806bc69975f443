"""Several real ``server.py`` processes sharing one private ``redis-server`` behave as one service.

Two gateway processes (nodes A and B, different ports, same ``RENUM_RT_REDIS_URL``) run for
the whole module against a ``redis-server`` of this module alone (its own port, never the
machine's 6379). Tests talk to them the way browsers, backend services and operators do:
WebSockets on ``/ws``, ``POST /api/v1/publish``, the admin API. What is checked:

- an event published on either node reaches the subscribers of both nodes, once;
- an admin disconnect sent to one node closes the user's connections on every node (4009);
- an admin broadcast sent to one node reaches users on every node;
- ``/admin/api/stats`` adds up every node, and forgets a node killed with SIGKILL once its
  heartbeat expires (``RENUM_RT_NODE_HEARTBEAT_S`` is short here);
- the per-user connection cap counts connections on every node (4029 beyond it);
- an ``Idempotency-Key`` retried on the other node returns the first ids and publishes nothing new.

Every wait is a poll or a frame awaited with a deadline; users and channels are unique per
test, so the tests sharing the two nodes do not see each other's events.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import jwt
import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient

from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.wsclient import Client, connect

SECRET = "redis-cluster-secret-" + "x" * 32
API_KEY = "redis-cluster-key"
HEARTBEAT_S = 0.5  # node statistics expire max(2, 3 x this) = 2 s after a node's last heartbeat
MAX_PER_USER = 2
WAIT = 10.0  # seconds to wait for any one thing that should happen


def env(redis_server: RedisServer) -> dict[str, str]:
    return {
        "RENUM_RT_JWT_SECRET": SECRET,
        "RENUM_RT_API_KEY": API_KEY,
        "RENUM_RT_REDIS_URL": redis_server.url,
        "RENUM_RT_NODE_HEARTBEAT_S": str(HEARTBEAT_S),
        "RENUM_RT_MAX_CONNECTIONS_PER_USER": str(MAX_PER_USER),
        "RENUM_RT_LOG_LEVEL": "warning",
    }


@pytest.fixture(scope="module")
def module_redis() -> Iterator[RedisServer]:
    """A redis-server of this module alone, shared by its nodes."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="module")
def nodes(module_redis: RedisServer) -> Iterator[tuple[ServerProcess, ServerProcess]]:
    a = ServerProcess(env(module_redis)).start()
    b = ServerProcess(env(module_redis)).start()
    yield a, b
    for node in (a, b):
        node.stop()


@pytest.fixture
def spawn(module_redis: RedisServer) -> Iterator[Callable[[], ServerProcess]]:
    """``spawn()``: one more node of the test's own on the module's Redis."""
    started: list[ServerProcess] = []

    def make() -> ServerProcess:
        proc = ServerProcess(env(module_redis))
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def token(sub: str, ttl_s: int = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl_s, **claims}, SECRET, algorithm="HS256")


ADMIN = token("cluster-admin", app_metadata={"role": "admin"})


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


async def call(base: str, path: str, body: Any = None, *, bearer: str = API_KEY,
               headers: dict[str, str] | None = None) -> tuple[int, Any]:
    """GET (no body) or POST ``path`` on a node; return the status and the JSON answer."""
    response = await AsyncHTTPClient().fetch(
        base + path,
        method="GET" if body is None else "POST",
        body=None if body is None else ujson.dumps(body),
        headers={"Authorization": f"Bearer {bearer}", "Content-Type": "application/json", **(headers or {})},
        raise_error=False,
        request_timeout=WAIT,
    )
    return response.code, ujson.loads(response.body) if response.body else None


async def publish(node: ServerProcess, body: dict[str, Any], **headers: str) -> dict[str, str]:
    code, answer = await call(node.url, "/api/v1/publish", body, headers=headers)
    assert code == 200, answer
    ids: dict[str, str] = answer["ids"]
    return ids


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = WAIT, interval: float = 0.05) -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while not await check():
        assert time.monotonic() < deadline, f"not true after {timeout} s"
        await asyncio.sleep(interval)


async def next_event(client: Client, timeout: float = WAIT) -> dict[str, Any]:
    return await client.recv_type("event", timeout)


async def subscribed(client: Client, channel: str) -> dict[str, Any]:
    reply = await client.request({"type": "subscribe", "channel": channel})
    assert reply["type"] == "subscribed", reply
    return reply


async def node_id(node: ServerProcess) -> str:
    code, health = await call(node.url, "/healthz")
    assert code == 200, health
    return str(health["node"])


@pytest.mark.gen_test(timeout=30)
async def test_an_event_published_on_either_node_reaches_subscribers_on_both(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    team, u, v = new_id("t"), new_id("u"), new_id("v")
    channel = f"team:{team}"
    on_a = await connect(a.ws_url, token(u, teams=[team]))
    on_b = await connect(b.ws_url, token(v, teams=[team]))
    for client in (on_a, on_b):
        await subscribed(client, channel)

    for via, n in ((a, 1), (b, 2)):
        ids = await publish(via, {"channel": channel, "users": [u, v], "event": "cluster.tick", "data": {"n": n}})
        for client, user in ((on_a, u), (on_b, v)):
            got = {}
            for _ in range(2):  # the team event and the user's own copy, in either order
                event = await next_event(client)
                got[event["channel"]] = (event["id"], event["data"])
            assert got == {channel: (ids[channel], {"n": n}), f"user:{user}": (ids[f"user:{user}"], {"n": n})}

    # once each: nothing more arrives before a marker published afterwards
    marker = await publish(a, {"channel": channel, "event": "cluster.marker", "data": {}})
    for client in (on_a, on_b):
        event = await next_event(client)
        assert (event["channel"], event["id"], event["event"]) == (channel, marker[channel], "cluster.marker")
        client.close()


@pytest.mark.gen_test(timeout=30)
async def test_admin_disconnect_on_one_node_closes_4009_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    user, bystander = new_id("u"), new_id("u")
    on_a, on_b = await connect(a.ws_url, token(user)), await connect(b.ws_url, token(user))
    other = await connect(b.ws_url, token(bystander))

    code, answer = await call(a.url, f"/admin/api/users/{user}/disconnect", {}, bearer=ADMIN)
    assert code == 200, answer
    assert await on_b.closed(WAIT) == 4009  # the node that did not get the request
    assert await on_a.closed(WAIT) == 4009
    assert (await other.request({"type": "ping"}))["type"] == "pong"  # nobody else
    other.close()


@pytest.mark.gen_test(timeout=30)
async def test_admin_broadcast_on_one_node_reaches_users_on_every_node(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    on_a, on_b = await connect(a.ws_url, token(new_id("u"))), await connect(b.ws_url, token(new_id("u")))
    title = new_id("maintenance")
    code, answer = await call(b.url, "/admin/api/broadcast",
                              {"title": title, "message": "at noon", "level": "warning"}, bearer=ADMIN)
    assert code == 200, answer
    for client in (on_a, on_b):
        while True:  # skip announcements of other tests, if any
            event = await next_event(client)
            if event["data"].get("title") == title:
                break
        assert (event["channel"], event["event"], event["id"]) == ("system", "system.announcement",
                                                                   answer["ids"]["system"])
        assert event["data"] == {"title": title, "message": "at noon", "level": "warning"}
        client.close()


@pytest.mark.gen_test(timeout=40)
async def test_stats_add_up_every_node_and_forget_a_killed_one(
    nodes: tuple[ServerProcess, ServerProcess], spawn: Callable[[], ServerProcess],
) -> None:
    a, b = nodes
    c = await asyncio.get_running_loop().run_in_executor(None, spawn)
    ids = {"a": await node_id(a), "b": await node_id(b), "c": await node_id(c)}
    s1, s2, s3 = new_id("s"), new_id("s"), new_id("s")
    clients = [await connect(a.ws_url, token(s1)), await connect(a.ws_url, token(s1)),
               await connect(b.ws_url, token(s2)), await connect(c.ws_url, token(s3))]
    await clients[0].request({"type": "ping"})
    stats: dict[str, Any] = {}

    def per_node() -> dict[str, int]:
        return {str(n["node"]): n["connections"] for n in stats["per_node"]}

    async def shows(expected: dict[str, int], via: ServerProcess = a) -> bool:
        nonlocal stats
        code, stats = await call(via.url, "/admin/api/stats", bearer=ADMIN)
        assert code == 200, stats
        return per_node() == expected

    await eventually(lambda: shows({ids["a"]: 2, ids["b"]: 1, ids["c"]: 1}))
    for key in ("connections", "users", "nodes", "channels", "messages_in", "messages_out", "rate_limited", "uptime_s"):
        assert key in stats, key
    assert (stats["nodes"], stats["connections"], stats["users"]) == (3, 4, 3)
    assert stats["messages_in"] >= 1
    for key in ("connections", "users", "channels", "messages_in", "messages_out"):
        assert stats[key] == sum(n[key] for n in stats["per_node"]), key
    await eventually(lambda: shows({ids["a"]: 2, ids["b"]: 1, ids["c"]: 1}, via=b))  # the same from any node
    assert (stats["nodes"], stats["connections"]) == (3, 4)
    assert all("connections_sample" not in n for n in stats["per_node"])

    # the connection list of any node shows every node's connections
    code, listing = await call(b.url, "/admin/api/connections", bearer=ADMIN)
    assert code == 200 and listing["total"] == 4 and listing["complete"] is True
    assert sorted((row["user_id"], row["node"]) for row in listing["connections"]) == sorted(
        [(s1, ids["a"]), (s1, ids["a"]), (s2, ids["b"]), (s3, ids["c"])])

    c.kill()  # SIGKILL: node c never says goodbye; its heartbeat key expires
    killed_at = time.monotonic()
    await eventually(lambda: shows({ids["a"]: 2, ids["b"]: 1}), timeout=4 * HEARTBEAT_S + WAIT)
    assert (stats["nodes"], stats["connections"], stats["users"]) == (2, 3, 2)
    assert time.monotonic() - killed_at < 2 + 4 * HEARTBEAT_S + 3  # within about the heartbeat expiry
    for client in clients:
        client.close()


@pytest.mark.gen_test(timeout=30)
async def test_per_user_connection_cap_counts_every_node(nodes: tuple[ServerProcess, ServerProcess]) -> None:
    a, b = nodes
    user = new_id("u")
    first, second = await connect(a.ws_url, token(user)), await connect(a.ws_url, token(user))

    third = await connect(b.ws_url, token(user), welcome=False)
    error = await third.recv()
    assert error is not None and (error["type"], error["code"]) == ("error", "rate_limited"), error
    assert await third.closed(WAIT) == 4029

    # another user on B is not affected
    other = await connect(b.ws_url, token(new_id("u")))
    other.close()

    # one connection fewer on A: B admits the user again (once A has released the count)
    first.close()
    await first.closed(WAIT)  # the server answered the close: A is releasing the count
    admitted: list[Client] = []

    async def b_admits() -> bool:
        client = await connect(b.ws_url, token(user), welcome=False)
        frame = await client.recv()
        if frame is not None and frame["type"] == "welcome":
            admitted.append(client)
            return True
        await client.closed(WAIT)
        return False

    await eventually(b_admits)
    assert (await admitted[0].request({"type": "ping"}))["type"] == "pong"
    for client in (second, *admitted):
        client.close()


@pytest.mark.gen_test(timeout=30)
async def test_idempotency_key_retried_on_the_other_node_returns_the_first_answer(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = nodes
    user, key = new_id("u"), uuid.uuid4().hex
    watcher = await connect(b.ws_url, token(user))
    body = {"users": [user], "event": "job.done", "data": {"job": 7}}

    first = await publish(a, body, **{"Idempotency-Key": key})
    again = await publish(b, body, **{"Idempotency-Key": key})  # the retry lands on the other node
    assert again == first
    assert await publish(a, body, **{"Idempotency-Key": key}) == first

    event = await next_event(watcher)
    assert (event["id"], event["data"]) == (first[f"user:{user}"], {"job": 7})
    marker = await publish(b, {"users": [user], "event": "job.marker", "data": {}})
    event = await next_event(watcher)  # nothing in between: the event was published once
    assert (event["id"], event["event"]) == (marker[f"user:{user}"], "job.marker")

    # and a newcomer on the other node finds it once in the user's mailbox
    late = await connect(a.ws_url, token(user), welcome=False)
    welcome = await late.recv()
    assert welcome is not None and welcome["type"] == "welcome" and welcome["replayed"] == 2, welcome
    assert [(await next_event(late))["id"] for _ in range(2)] == [first[f"user:{user}"], marker[f"user:{user}"]]
    for client in (watcher, late):
        client.close()


async def first_count(client: Client) -> int:
    """The unread_count a connection gets right after its welcome."""
    frame = await client.recv_any()
    while frame is not None and frame["type"] != "unread_count":
        frame = await client.recv_any()
    assert frame is not None
    client.unread.append(frame["count"])
    return int(frame["count"])


@pytest.mark.gen_test(timeout=60)
async def test_notifications_keep_one_exact_counter_across_nodes_and_survive_a_kill_9(
    nodes: tuple[ServerProcess, ServerProcess], spawn: Callable[[], ServerProcess]
) -> None:
    a, _ = nodes
    c = spawn()  # a node of this test's own, killed below
    user = new_id("inbox")
    on_a, on_c = await connect(a.ws_url, token(user)), await connect(c.ws_url, token(user))
    # other tests of the module may have announced something: every user counts it, so
    # count from where this user starts
    base = await first_count(on_a)
    await on_c.wait_unread(base)
    code, created = await call(a.url, "/api/v1/notifications", {"users": [user], "title": "one"})
    assert code == 200, created
    code, second = await call(c.url, "/api/v1/notifications", {"users": [user], "title": "two"})
    assert code == 200, second
    await asyncio.gather(on_a.wait_unread(base + 2), on_c.wait_unread(base + 2))  # counted on both nodes
    reply = await on_c.request({"type": "notifications.read", "ids": [created["notification"]["id"]]})
    assert reply["type"] == "ok"
    await on_a.wait_unread(base + 1)  # read on node C, the badge on node A falls

    # the node that served the read is killed with SIGKILL and started again: every
    # notification and its state are kept
    c.kill()
    await on_c.closed()
    on_a.close()  # the killed node's count lingers until its heartbeat expires: stay under the cap
    await on_a.closed()
    c.start()
    again = await connect(c.ws_url, token(user))
    await again.wait_unread(base + 1)
    reply = await again.request({"type": "notifications.list"})
    mine = [(i["title"], i["status"]) for i in reply["items"] if not i["id"].startswith("g")]
    assert mine == [("two", "unread"), ("one", "read")]
    again.close()


@pytest.mark.gen_test(timeout=40)
async def test_admin_actions_reach_every_node_and_share_one_audit_log(
    nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    """Connection search, a disconnect of one connection held by the other node, 404 for
    an id no node holds, a followed user's log level, the audit log read from either
    node, and the per-node rates of the statistics."""
    a, b = nodes
    user = new_id("adm")
    on_a, on_b = await connect(a.ws_url, token(user)), await connect(b.ws_url, token(user))
    await on_b.request({"type": "ping"})

    found: dict[str, Any] = {}

    async def both_listed() -> bool:  # complete once every node with a live heartbeat answered
        nonlocal found
        code, found = await call(a.url, f"/admin/api/connections?user={user}", bearer=ADMIN)
        assert code == 200, found
        return bool(found["complete"])

    await eventually(both_listed)  # a node killed by an earlier test is awaited until its heartbeat expires
    assert found["total"] == 2, found
    assert sorted(row["node"] for row in found["connections"]) == sorted([await node_id(a), await node_id(b)])
    code, page = await call(b.url, f"/admin/api/connections?user={user}&offset=1&limit=1", bearer=ADMIN)
    assert code == 200 and page["total"] == 2 and [r["connection_id"] for r in page["connections"]] == [
        found["connections"][1]["connection_id"]]

    b_id = await node_id(b)
    held_by_b = next(row for row in found["connections"] if row["node"] == b_id)
    code, answer = await call(a.url, f"/admin/api/connections/{held_by_b['connection_id']}/disconnect", {},
                              bearer=ADMIN)
    assert code == 200 and answer["node"] == held_by_b["node"], answer
    assert await on_b.closed(WAIT) == 4009  # closed on the node that did not get the request
    assert (await on_a.request({"type": "ping"}))["type"] == "pong"  # the user's other connection stays
    code, answer = await call(b.url, f"/admin/api/connections/{held_by_b['connection_id']}/disconnect", {},
                              bearer=ADMIN)
    assert code == 404, answer

    code, answer = await call(b.url, "/admin/api/log-level", {"level": "debug", "user": user}, bearer=ADMIN)
    assert code == 200, answer

    async def follows(node: ServerProcess) -> bool:
        code, state = await call(node.url, "/admin/api/log-level", bearer=ADMIN)
        return code == 200 and user in state["followed"]

    await eventually(lambda: follows(a))  # asked of B, applied on A too
    await call(a.url, "/admin/api/log-level", {"level": "info", "user": user}, bearer=ADMIN)

    expected = [("log_level", f"user:{user}"), ("log_level", f"user:{user}"),
                ("disconnect_connection", f"connection:{held_by_b['connection_id']}")]
    for via in (a, b):  # one list, whichever node answers
        code, audit = await call(via.url, "/admin/api/audit?limit=50", bearer=ADMIN)
        mine = [(e["action"], e["target"]) for e in audit["entries"] if user in e["target"]
                or e["target"] == f"connection:{held_by_b['connection_id']}"]
        assert code == 200 and mine == expected, audit

    stats: dict[str, Any] = {}

    async def rates_reported() -> bool:
        nonlocal stats
        _, stats = await call(b.url, "/admin/api/stats", bearer=ADMIN)
        return all(n.get("messages_in_per_s", 0) >= 0 and "engine_ok" in n for n in stats["per_node"])

    await eventually(rates_reported)
    assert stats["engine_ok"] is True and stats["nodes"] >= 2
    assert stats["messages_in_per_s"] == round(sum(n["messages_in_per_s"] for n in stats["per_node"]), 2)
    on_a.close()

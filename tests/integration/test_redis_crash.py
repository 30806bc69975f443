"""Crash safety with Redis: ``kill -9`` of gateway processes loses nothing the publish API accepted.

Real ``server.py`` processes (tests/support's ``ServerProcess``; ``kill()`` is SIGKILL, so no
shutdown code runs) share a ``redis-server`` of each test alone (its own port and directory,
``appendfsync always``). What is checked:

- under steady publish load on both nodes, a node is killed (and later the other one, once
  the first is back): the Python SDK's ``RealtimeClient``, moved to a live node on reconnect,
  ends with every event that got a 200 exactly once, in per-channel order, and so does a raw
  client that keeps its last id and re-subscribes with ``since`` like the browser library;
- events published while a user is offline are delivered on connect after a kill and restart;
- ``since`` across a restart, while events keep being published, gives exactly the events
  after that id, in order;
- retention: ``recovered: false`` when the events after ``since`` (or after the ack cursor)
  are no longer all kept (``RENUM_RT_HISTORY_MAX_LEN`` small);
- a subscribe with ``since`` while events keep coming sends no event twice on the wire.

Waits are polls or frames awaited with deadlines, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import jwt
import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient

from renum_rt.client import Backoff, Event, RealtimeClient
from renum_rt.ids import parse_id
from tests.support.redis_server import RedisServer
from tests.support.server_process import ServerProcess
from tests.support.wsclient import Client, connect

SECRET = "redis-crash-secret-" + "x" * 32
API_KEY = "redis-crash-key"
WAIT = 10.0  # seconds to wait for any one thing that should happen


def token(sub: str, ttl_s: int = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl_s, **claims}, SECRET, algorithm="HS256")


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


Cluster = Callable[..., list[ServerProcess]]


@pytest.fixture
def cluster() -> Iterator[Cluster]:
    """``cluster(n, **env)``: a fresh ``redis-server`` and ``n`` started nodes sharing it."""
    redis_servers: list[RedisServer] = []
    started: list[ServerProcess] = []

    def make(n: int, **env: str) -> list[ServerProcess]:
        redis_server = RedisServer()
        redis_servers.append(redis_server)
        redis_server.start()
        base = {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY, "RENUM_RT_REDIS_URL": redis_server.url,
                "RENUM_RT_HTTP_RATE": "2000", "RENUM_RT_HTTP_BURST": "2000", "RENUM_RT_LOG_LEVEL": "warning"}
        for _ in range(n):
            started.append(ServerProcess({**base, **env}).start())
        return started[-n:]

    yield make
    for proc in started:
        proc.stop()
    for redis_server in redis_servers:
        redis_server.cleanup()


async def in_thread(fn: Callable[..., Any], *args: Any) -> Any:
    """Run a blocking call (a process kill or start) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, fn, *args)


async def eventually(check: Callable[[], bool | Awaitable[bool]], timeout: float = WAIT, interval: float = 0.02,
                     what: str = "condition") -> None:
    """Poll ``check`` until it is true; fail after ``timeout`` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        result = check()
        if not isinstance(result, bool):
            result = await result
        if result:
            return
        assert time.monotonic() < deadline, f"{what}: not true after {timeout} s"
        await asyncio.sleep(interval)


async def publish(node: ServerProcess, body: dict[str, Any]) -> dict[str, str]:
    response = await AsyncHTTPClient().fetch(
        node.url + "/api/v1/publish", method="POST", body=ujson.dumps(body), raise_error=False,
        headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"}, request_timeout=WAIT,
    )
    assert response.code == 200, response.body
    ids: dict[str, str] = ujson.loads(response.body)["ids"]
    return ids


class Load:
    """Background publishers: each request goes to the next node in turn (dead ones too);
    only the answers 200 count as accepted."""

    def __init__(self, nodes: list[ServerProcess], body: Callable[[int], dict[str, Any]], workers: int = 2,
                 pause_s: float = 0.004) -> None:
        self.nodes = nodes
        self.body = body
        self.accepted: list[dict[str, str]] = []  # the ids of every 200, in the order the answers came
        self.failed = 0  # refused connections, resets, 503s: not accepted, so not promised
        self._seq = itertools.count()
        self._turn = itertools.count()
        self._pause_s = pause_s
        self._stopping = False
        self._http = AsyncHTTPClient(force_instance=True, max_clients=workers)
        self._tasks = [asyncio.ensure_future(self._work()) for _ in range(workers)]

    async def _work(self) -> None:
        while not self._stopping:
            node = self.nodes[next(self._turn) % len(self.nodes)]
            try:
                response = await self._http.fetch(
                    node.url + "/api/v1/publish", method="POST", body=ujson.dumps(self.body(next(self._seq))),
                    headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json"},
                    raise_error=False, connect_timeout=2, request_timeout=WAIT,
                )
            except Exception:  # refused, reset by the kill, timed out
                self.failed += 1
            else:
                if response.code == 200:
                    self.accepted.append(ujson.loads(response.body)["ids"])
                else:
                    self.failed += 1
            await asyncio.sleep(self._pause_s)

    def ids(self, channel: str) -> list[str]:
        return [ids[channel] for ids in self.accepted]

    async def more(self, n: int) -> None:
        """Wait until ``n`` more publishes have been accepted."""
        target = len(self.accepted) + n
        await eventually(lambda: len(self.accepted) >= target, what=f"{n} more accepted publishes")

    async def stop(self) -> None:
        self._stopping = True
        await asyncio.gather(*self._tasks)
        self._http.close()


class Follower:
    """A raw client that behaves like the browser library on one channel: it drops an
    event whose id it has already seen (counting it in ``dropped``), keeps the last id
    and, after any disconnect, connects to the next URL in turn and subscribes again
    with ``since``."""

    def __init__(self, urls: list[str], user: str, channel: str, **claims: Any) -> None:
        self.urls = urls
        self.token = token(user, **claims)
        self.channel = channel
        self.ids: list[str] = []  # the event ids kept, in the order they came
        self.dropped = 0  # event frames whose id was not after the last one kept
        self.replies: list[dict[str, Any]] = []  # the subscribed (or error) reply of each connection
        self.client: Client | None = None
        self.url: str | None = None  # the node it is connected to now
        self._task = asyncio.ensure_future(self._run())

    async def _run(self) -> None:
        for turn in itertools.count():
            try:
                client = await connect(self.urls[turn % len(self.urls)], self.token)
            except Exception:  # the node is down: try the next one
                await asyncio.sleep(0.05)
                continue
            self.client, self.url = client, self.urls[turn % len(self.urls)]
            try:
                frame: dict[str, Any] = {"type": "subscribe", "channel": self.channel, "ref": f"s{turn}"}
                if self.ids:
                    frame["since"] = self.ids[-1]
                await client.send(frame)
                while (message := await client.recv(timeout=60)) is not None:
                    if message["type"] == "event" and message["channel"] == self.channel:
                        if self.ids and parse_id(message["id"]) <= parse_id(self.ids[-1]):
                            self.dropped += 1
                        else:
                            self.ids.append(message["id"])
                    elif message.get("ref") == frame["ref"]:
                        self.replies.append(message)
            except Exception:  # the connection died under us
                pass
            finally:
                self.client = self.url = None
                client.close()

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)
        if self.client is not None:
            self.client.close()


def kept(ids: list[str]) -> list[str]:
    """What a client library keeps of what came: the ids after the last one kept."""
    out: list[str] = []
    for event_id in ids:
        if not out or parse_id(event_id) > parse_id(out[-1]):
            out.append(event_id)
    return out


async def drain(client: Client, channel: str, until: str) -> list[str]:
    """Every event id the server sends on ``channel`` (duplicates included) until ``until``
    has come, then until the reply to a ``ping`` (anything sent before it)."""
    ids: list[str] = []
    ref = f"drain-{uuid.uuid4().hex[:6]}"
    while True:
        frame = await client.recv(WAIT)
        assert frame is not None, f"closed ({client.close_code}) before {until}"
        if frame["type"] == "event" and frame["channel"] == channel:
            ids.append(frame["id"])
            if frame["id"] == until:
                await client.send({"type": "ping", "ref": ref})
        elif frame.get("ref") == ref:
            return ids


def assert_in_order_once(received: list[str], accepted: list[str], what: str) -> None:
    """Every accepted id received exactly once; what was received is strictly ordered."""
    assert len(received) == len(set(received)), f"{what}: duplicates {len(received) - len(set(received))}"
    keys = [parse_id(i) for i in received]
    assert keys == sorted(keys), f"{what}: out of order"
    missing = set(accepted) - set(received)
    assert not missing, f"{what}: {len(missing)} of {len(accepted)} accepted events missing, e.g. {sorted(missing)[:3]}"


@pytest.mark.gen_test(timeout=60)
async def test_kill_9_under_load_loses_and_doubles_nothing(cluster: Cluster) -> None:
    a, b = cluster(2)
    user, watcher, team = new_id("u"), new_id("w"), new_id("t")
    own, channel = f"user:{user}", f"team:{team}"
    urls = [a.ws_url, b.ws_url]

    # the SDK client: it moves to the other node when its connection is lost
    received: list[Event] = []
    states: list[str] = []
    client = RealtimeClient(
        urls, lambda: token(user, teams=[team]), backoff=Backoff(attempts=100, base_ms=50, max_ms=300),
        on_event=received.append, on_state=states.append,
    )
    await client.connect()
    assert (await client.subscribe(channel))["recovered"] is True
    follower = Follower(urls, watcher, channel, teams=[team])  # a raw client, on A too
    await eventually(lambda: len(follower.replies) == 1, what="follower subscribed")

    load = Load([a, b], lambda n: {"channel": channel, "users": [user], "event": "load.tick", "data": {"n": n}})
    await load.more(40)

    await in_thread(a.kill)  # kill -9 of the node both clients are connected to
    await load.more(40)
    await eventually(lambda: client.state == "connected" and client.url == b.ws_url, what="SDK client on B")
    await eventually(lambda: follower.url == b.ws_url and len(follower.replies) == 2, what="follower on B")
    await load.more(40)

    await in_thread(a.start)  # the same port: A is back in the publishers' rotation
    await load.more(40)
    await in_thread(b.kill)  # now the node they moved to
    await load.more(40)
    await eventually(lambda: client.state == "connected" and client.url == a.ws_url, what="SDK client back on A")
    await eventually(lambda: follower.url == a.ws_url and len(follower.replies) == 3, what="follower on A")
    await load.more(40)
    await load.stop()

    accepted_user, accepted_team = set(load.ids(own)), set(load.ids(channel))

    def got(name: str) -> list[str]:
        return [e.id for e in received if e.channel == name]

    await eventually(lambda: accepted_user <= set(got(own)) and accepted_team <= set(got(channel))
                     and accepted_team <= set(follower.ids), timeout=15, what="every accepted event delivered")
    assert_in_order_once(got(own), load.ids(own), "SDK client, user channel")
    assert_in_order_once(got(channel), load.ids(channel), "SDK client, team channel")
    assert_in_order_once(follower.ids, load.ids(channel), "raw client, team channel")
    assert all(reply["type"] == "subscribed" and reply["recovered"] is True for reply in follower.replies)
    # events whose publish got no answer (the node died first) may arrive too, but only those
    assert len(got(channel)) - len(accepted_team) <= load.failed
    assert states.count("connected") == 3 and "failed" not in states
    assert len(load.accepted) >= 240

    await follower.stop()
    await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_events_for_an_offline_user_are_delivered_after_kill_9_and_restart(cluster: Cluster) -> None:
    (node,) = cluster(1)
    user = new_id("u")
    own = f"user:{user}"
    first = await connect(node.ws_url, token(user))
    before = (await publish(node, {"users": [user], "event": "inbox.item", "data": {"n": 0}}))[own]
    assert (await first.recv_type("event"))["id"] == before
    assert (await first.request({"type": "ack", "channel": own, "id": before}))["type"] == "ok"
    first.close()
    await first.closed()

    offline = [(await publish(node, {"users": [user], "event": "inbox.item", "data": {"n": n}}))[own]
               for n in (1, 2, 3)]
    await in_thread(node.kill)
    await in_thread(node.start)  # same port, same Redis
    offline.append((await publish(node, {"users": [user], "event": "inbox.item", "data": {"n": 4}}))[own])

    back = await connect(node.ws_url, token(user), welcome=False)
    welcome = await back.recv()
    assert welcome is not None and welcome["type"] == "welcome", welcome
    assert (welcome["recovered"], welcome["replayed"]) == (True, 4)
    events = [await back.recv_type("event") for _ in offline]
    assert [(e["id"], e["data"]["n"]) for e in events] == list(zip(offline, (1, 2, 3, 4), strict=True))
    assert (await back.request({"type": "ping"}))["type"] == "pong"  # nothing else came before the pong
    back.close()


@pytest.mark.gen_test(timeout=40)
async def test_since_across_a_restart_while_events_keep_coming(cluster: Cluster) -> None:
    (node,) = cluster(1)
    team = new_id("t")
    channel = f"team:{team}"
    follower = Follower([node.ws_url], new_id("w"), channel, teams=[team])
    await eventually(lambda: len(follower.replies) == 1, what="follower subscribed")
    start = (await publish(node, {"channel": channel, "event": "tick", "data": {"n": -1}}))[channel]
    await eventually(lambda: follower.ids == [start], what="first event")

    await in_thread(node.kill)
    await in_thread(node.start)
    load = Load([node], lambda n: {"channel": channel, "event": "tick", "data": {"n": n}}, workers=2)
    # the follower reconnects and subscribes with since while publishes keep coming
    await eventually(lambda: len(follower.replies) == 2, what="follower subscribed again")
    await load.more(30)
    # newcomers subscribe with since from three points of the history, during the load
    accepted = load.ids(channel)
    points = [start, accepted[0], accepted[len(accepted) // 2]]
    late = [await connect(node.ws_url, token(new_id("w"), teams=[team])) for _ in points]
    replies = [await c.request({"type": "subscribe", "channel": channel, "since": since})
               for c, since in zip(late, points, strict=True)]
    await load.more(30)
    await load.stop()
    assert load.failed == 0

    everything = sorted([start, *load.ids(channel)], key=parse_id)  # answers may come back out of id order
    await eventually(lambda: set(everything) <= set(follower.ids), what="follower has every accepted event")
    assert_in_order_once(follower.ids, everything, "follower across the restart")
    assert len(follower.ids) == len(everything)
    assert follower.replies[1]["recovered"] is True
    for c, since, reply in zip(late, points, replies, strict=True):
        assert reply["type"] == "subscribed" and reply["recovered"] is True, reply
        wanted = everything[everything.index(since) + 1:]
        # exactly what came after since, in order, with no gap and no duplicate
        assert await drain(c, channel, until=everything[-1]) == wanted
        c.close()
    await follower.stop()


@pytest.mark.gen_test(timeout=30)
async def test_retention_gives_recovered_false_after_a_restart(cluster: Cluster) -> None:
    (node,) = cluster(1, RENUM_RT_HISTORY_MAX_LEN="5")
    user, team = new_id("u"), new_id("t")
    own, channel = f"user:{user}", f"team:{team}"
    first = await connect(node.ws_url, token(user, teams=[team]))
    seen = (await publish(node, {"users": [user], "event": "inbox.item", "data": {"n": 0}}))[own]
    assert (await first.recv_type("event"))["id"] == seen
    assert (await first.request({"type": "ack", "channel": own, "id": seen}))["type"] == "ok"
    first.close()
    await first.closed()

    published = [await publish(node, {"users": [user], "channel": channel, "event": "tick", "data": {"n": n}})
                 for n in range(1, 13)]  # 12 events while offline; only the last 5 are kept
    await in_thread(node.kill)
    await in_thread(node.start)

    back = await connect(node.ws_url, token(user, teams=[team]), welcome=False)
    welcome = await back.recv()
    assert welcome is not None and welcome["type"] == "welcome", welcome
    assert (welcome["recovered"], welcome["replayed"]) == (False, 5)  # the ack cursor is older than what is kept
    assert [(await back.recv_type("event"))["id"] for _ in range(5)] == [p[own] for p in published[-5:]]

    reply = await back.request({"type": "subscribe", "channel": channel, "since": published[0][channel]})
    assert (reply["type"], reply["recovered"], reply["replayed"]) == ("subscribed", False, 5)
    assert [(await back.recv_type("event"))["id"] for _ in range(5)] == [p[channel] for p in published[-5:]]

    # from an id still within retention, the history is whole again
    reply = await back.request({"type": "subscribe", "channel": channel, "since": published[-5][channel]})
    assert (reply["type"], reply["recovered"], reply["replayed"]) == ("subscribed", True, 4)
    assert [(await back.recv_type("event"))["id"] for _ in range(4)] == [p[channel] for p in published[-4:]]
    back.close()


@pytest.mark.gen_test(timeout=40)
async def test_since_under_concurrent_publishing_sends_no_duplicate(cluster: Cluster) -> None:
    (node,) = cluster(1)
    team = new_id("t")
    channel = f"team:{team}"
    load = Load([node], lambda n: {"channel": channel, "event": "tick", "data": {"n": n}}, workers=3, pause_s=0)
    await load.more(10)
    seen: list[tuple[str, str, list[str]]] = []  # since, until, what came on the wire
    for _ in range(60):  # one after the other, each from a recent point, while publishes keep coming
        since = max(load.ids(channel), key=parse_id)
        client = await connect(node.ws_url, token(new_id("w"), teams=[team]))
        reply = await client.request({"type": "subscribe", "channel": channel, "since": since})
        assert reply["type"] == "subscribed" and reply["recovered"] is True, reply
        await load.more(3)
        until = max(load.ids(channel), key=parse_id)
        seen.append((since, until, await drain(client, channel, until=until)))
        client.close()
    await load.stop()
    everything = sorted(load.ids(channel), key=parse_id)
    doubled = 0
    for since, until, wire in seen:
        wanted = [i for i in everything if parse_id(since) < parse_id(i) <= parse_id(until)]
        assert kept([i for i in wire if parse_id(i) <= parse_id(until)]) == wanted  # no gap, in order
        doubled += len(wire) - len(set(wire))
    assert doubled == 0, f"{doubled} events sent twice to {len(seen)} since-subscribers"

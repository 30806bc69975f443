"""The Python SDK against a real server process.

Each test talks to ``python server.py`` started as a subprocess (tests/support's
``ServerProcess``; in-memory engine, or Redis when ``RENUM_RT_REDIS_URL`` is set), the way a backend service and a
Python
consumer would: ``Publisher``/``AsyncPublisher`` over HTTP, ``RealtimeClient`` over
``/ws``. The restart test kills the process with SIGKILL, so nothing is closed cleanly,
and starts a new one on the same port. Waits are bounded polls or awaited events with
timeouts, never fixed sleeps.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Callable, Iterator
from typing import Any

import jwt
import pytest
import ujson
from tornado.httpclient import AsyncHTTPClient

from renum_rt.client import (
    AsyncPublisher,
    Backoff,
    ConnectionClosedError,
    Event,
    Publisher,
    PublishError,
    RealtimeClient,
    RealtimeError,
)
from tests.support.server_process import ServerProcess

SECRET = "sdk-test-secret-" + "x" * 32
API_KEY = "sdk-test-key"
WAIT = 10.0  # seconds to wait for any one thing that should happen
ENV = {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY, "RENUM_RT_LOG_LEVEL": "warning"}


@pytest.fixture(scope="module")
def server() -> Iterator[ServerProcess]:
    proc = ServerProcess(ENV).start()
    yield proc
    proc.stop()


@pytest.fixture
def spawn() -> Iterator[Callable[..., ServerProcess]]:
    """``spawn(**env)``: a started server of the test's own, which it may kill or
    restart on the same port; ``env`` adds to its environment."""
    started: list[ServerProcess] = []

    def make(**env: str) -> ServerProcess:
        proc = ServerProcess({**ENV, **env})
        started.append(proc)
        return proc.start()

    yield make
    for proc in started:
        proc.stop()


def user_token(sub: str, ttl_s: int = 600, **claims: Any) -> str:
    return jwt.encode({"sub": sub, "exp": int(time.time()) + ttl_s, **claims}, SECRET, algorithm="HS256")


def grant(sub: str, channel: str) -> str:
    """A subscription token: ``sub``, ``channel``, ``exp``."""
    return user_token(sub, channel=channel)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


class Probe:
    """A ``RealtimeClient`` whose events, states and other frames land in queues."""

    def __init__(self, url: str, user: str, **kwargs: Any) -> None:
        self.events: asyncio.Queue[Event] = asyncio.Queue()
        self.states: list[str] = []
        self.close_codes: list[int | None] = []  # the client's close_code at each state change
        self._state_queue: asyncio.Queue[str] = asyncio.Queue()
        self.frames: asyncio.Queue[dict[str, Any]] = asyncio.Queue()
        kwargs.setdefault("token_provider", lambda: user_token(user))
        self.client = RealtimeClient(
            url, on_event=self.events.put_nowait, on_state=self._state, on_frame=self.frames.put_nowait, **kwargs
        )

    def _state(self, state: str) -> None:
        self.states.append(state)
        self.close_codes.append(self.client.close_code)
        self._state_queue.put_nowait(state)

    async def event(self) -> Event:
        return await asyncio.wait_for(self.events.get(), WAIT)

    async def state(self, wanted: str) -> None:
        while await asyncio.wait_for(self._state_queue.get(), WAIT) != wanted:
            pass

    async def frame(self, match: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        while True:
            frame = await asyncio.wait_for(self.frames.get(), WAIT)
            if match(frame):
                return frame


async def in_thread(fn: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """Run a blocking call (the sync Publisher, a process restart) off the event loop."""
    return await asyncio.get_running_loop().run_in_executor(None, lambda: fn(*args, **kwargs))


@pytest.mark.gen_test(timeout=30)
async def test_publish_reaches_a_client_on_the_user_channel(server: ServerProcess) -> None:
    user = new_id("u")
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    assert probe.client.user_id == user and probe.client.state == "connected"

    ids = await in_thread(Publisher(server.url, API_KEY).publish, "report.ready", {"n": 1}, users=[user])
    event = await probe.event()
    assert (event.channel, event.event, event.data, event.id) == (
        f"user:{user}",
        "report.ready",
        {"n": 1},
        ids[f"user:{user}"],
    )

    ids = await AsyncPublisher(server.url, API_KEY).publish("report.ready", {"n": 2}, users=[user])
    event = await probe.event()
    assert event.data == {"n": 2} and event.id == ids[f"user:{user}"]
    await probe.client.close()
    assert probe.client.state == "disconnected"


@pytest.mark.gen_test(timeout=30)
async def test_execution_status_reaches_a_subscriber_with_a_subscription_token(server: ServerProcess) -> None:
    user, other, execution = new_id("u"), new_id("u"), new_id("e")
    channel = f"execution:{execution}"
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    reply = await probe.client.subscribe(channel, token=grant(user, channel))
    assert reply["type"] == "subscribed" and reply["channel"] == channel

    ids = await AsyncPublisher(server.url, API_KEY).execution_status(
        execution, "t1", "running", 40, users=[other], step={"name": "search"}
    )
    assert set(ids) == {channel, f"user:{other}"}
    event = await probe.event()
    assert event.channel == channel and event.event == "execution.status" and event.id == ids[channel]
    assert event.data == {
        "execution_id": execution,
        "team_id": "t1",
        "status": "running",
        "progress": 40,
        "step": {"name": "search"},
    }
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_subscribe_refused_raises_realtime_error(server: ServerProcess) -> None:
    user = new_id("u")
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    with pytest.raises(RealtimeError) as caught:
        await probe.client.subscribe(f"execution:{new_id('e')}")  # no subscription token
    assert caught.value.code == "forbidden"
    with pytest.raises(RealtimeError) as caught:
        await probe.client.subscribe("execution:e1", token=grant(user, "execution:e2"))
    assert caught.value.code == "forbidden"
    assert await probe.client.ping() >= 0  # the connection stays usable
    await probe.client.close()


@pytest.mark.gen_test(timeout=60)
async def test_reconnects_and_resubscribes_after_the_server_is_killed(spawn: Callable[..., ServerProcess]) -> None:
    own_server = spawn()
    user, execution = new_id("u"), new_id("e")
    channel = f"execution:{execution}"
    attempts: list[tuple[int, float]] = []
    probe = Probe(
        own_server.ws_url,
        user,
        backoff=Backoff(attempts=40, base_ms=50, max_ms=500),
        on_reconnecting=lambda attempt, delay: attempts.append((attempt, delay)),
    )
    await probe.client.connect()
    await probe.client.subscribe(channel, token=grant(user, channel))
    publisher = AsyncPublisher(own_server.url, API_KEY)
    before = await publisher.execution_status(execution, "t1", "running", 10)
    assert (await probe.event()).id == before[channel]
    await publisher.announcement("before", "restart")
    assert (await probe.event()).event == "system.announcement"
    assert (await probe.event()).event == "notification.created"  # the announcement in everybody's inbox

    own_server.kill()
    await probe.state("reconnecting")
    await in_thread(own_server.start)  # same port, same environment
    await probe.state("connected")
    # ``system`` resumed at connect (from ``system_since``, before the reply to the resubscription)
    resumed = await probe.frame(lambda f: f.get("type") == "subscribed" and f.get("channel") == "system")
    assert resumed["ref"] is None
    resubscribed = await probe.frame(lambda f: f.get("type") == "subscribed" and f.get("channel") == channel)
    assert resubscribed["ref"] is not None
    assert attempts and attempts[0][0] == 1
    assert probe.states.count("connected") == 2 and "failed" not in probe.states

    after = await publisher.execution_status(execution, "t1", "completed", 100)
    event = await probe.event()
    assert event.id == after[channel] and event.data["status"] == "completed"
    ids = await publisher.publish("x.after", {}, users=[user])  # the user channel is back too
    assert (await probe.event()).id == ids[f"user:{user}"]
    assert probe.events.empty()
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_publish_error_carries_the_field(server: ServerProcess) -> None:
    with pytest.raises(PublishError) as caught:
        await AsyncPublisher(server.url, API_KEY).execution_status(new_id("e"), "t1", "running", 150)
    assert (caught.value.status, caught.value.code, caught.value.field) == (400, "bad_request", "data.progress")

    with pytest.raises(PublishError) as caught:
        await in_thread(Publisher(server.url, API_KEY).execution_status, new_id("e"), "t1", "paused", 5)
    assert caught.value.status == 400 and caught.value.field == "data.status"

    with pytest.raises(PublishError) as caught:
        await in_thread(Publisher(server.url, "wrong-key").announcement, "a", "b")
    assert caught.value.status == 401 and caught.value.code == "unauthorized"


@pytest.mark.gen_test(timeout=30)
async def test_same_idempotency_key_gives_the_same_ids_and_one_event(server: ServerProcess) -> None:
    user, key = new_id("u"), uuid.uuid4().hex
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    publisher = AsyncPublisher(server.url, API_KEY)
    first = await publisher.publish("job.done", {"job": 1}, users=[user], idempotency_key=key)
    second = await in_thread(
        Publisher(server.url, API_KEY).publish, "job.done", {"job": 1}, users=[user], idempotency_key=key
    )
    assert first == second
    assert (await probe.event()).id == first[f"user:{user}"]
    marker = await publisher.publish("job.marker", {}, users=[user])
    assert (await probe.event()).id == marker[f"user:{user}"]  # nothing in between: published once
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_duplicates_from_a_replay_are_dropped(server: ServerProcess) -> None:
    user, execution = new_id("u"), new_id("e")
    channel = f"execution:{execution}"
    token = grant(user, channel)
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    await probe.client.subscribe(channel, token=token)
    publisher = AsyncPublisher(server.url, API_KEY)
    ids = [(await publisher.execution_status(execution, "t1", "running", p))[channel] for p in (10, 20)]
    assert [(await probe.event()).id for _ in ids] == ids
    # Ask the server, behind the client's back, to replay from before both events.
    reply = await probe.client.request(
        "subscribe", channel=channel, since=f"{int(ids[0].split('-')[0]) - 1}-0", token=token
    )
    assert reply["replayed"] == 2
    last = await publisher.execution_status(execution, "t1", "running", 30)
    assert (await probe.event()).id == last[channel]  # the replayed two were dropped
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_user_events_are_acknowledged_once_processed(server: ServerProcess) -> None:
    user = new_id("u")
    publisher = AsyncPublisher(server.url, API_KEY)
    first = (await publisher.publish("inbox.item", {"n": 1}, users=[user]))[f"user:{user}"]

    no_ack = Probe(server.ws_url, user, auto_ack=False)
    await no_ack.client.connect()
    assert (await no_ack.event()).id == first  # durable: delivered from the ack cursor at connect
    await no_ack.client.close()

    acking = Probe(server.ws_url, user)
    await acking.client.connect()
    assert (await acking.event()).id == first  # not acknowledged, so delivered again
    await acking.client.ping()  # the ack was sent before this ping, and frames are served in order
    await acking.client.close()

    third = Probe(server.ws_url, user)
    await third.client.connect()
    second = (await publisher.publish("inbox.item", {"n": 2}, users=[user]))[f"user:{user}"]
    assert (await third.event()).id == second  # the first one was acknowledged: not replayed
    await third.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_events_iterator_and_manual_ack(server: ServerProcess) -> None:
    user = new_id("u")
    client = RealtimeClient(server.ws_url, lambda: user_token(user), auto_ack=False)
    await client.connect()
    ids = await AsyncPublisher(server.url, API_KEY).publish("x.one", {}, users=[user])
    async for event in client.events():
        assert event.id == ids[f"user:{user}"]
        await client.ack(event.channel, event.id)  # returns once the server confirmed
        break
    await client.close()

    again = Probe(server.ws_url, user)
    await again.client.connect()
    marker = await AsyncPublisher(server.url, API_KEY).publish("x.marker", {}, users=[user])
    assert (await again.event()).id == marker[f"user:{user}"]
    await again.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_auth_frame_instead_of_url_token(server: ServerProcess) -> None:
    user = new_id("u")
    probe = Probe(server.ws_url, user, send_auth_frame=True)
    await probe.client.connect()
    assert probe.client.user_id == user
    await probe.client.close()

    bad = Probe(
        server.ws_url,
        user,
        send_auth_frame=True,
        token_provider=lambda: "not-a-jwt",
        backoff=Backoff(base_ms=10, max_ms=10),
    )
    with pytest.raises(ConnectionClosedError) as caught:
        await bad.client.connect()
    assert caught.value.code == "unauthorized" and caught.value.close_code == 4001
    assert bad.client.state == "unauthorized"


@pytest.mark.gen_test(timeout=30)
async def test_4001_asks_for_a_fresh_token_once(server: ServerProcess) -> None:
    user = new_id("u")
    tokens = [user_token(user, ttl_s=-60), user_token(user)]  # expired, then fresh
    calls: list[str] = []

    async def provider() -> str:
        calls.append("call")
        return tokens[len(calls) - 1]

    probe = Probe(server.ws_url, user, token_provider=provider, backoff=Backoff(base_ms=10, max_ms=10))
    await probe.client.connect()
    assert len(calls) == 2 and probe.client.user_id == user
    await probe.client.close()

    calls.clear()

    def bad_provider() -> str:
        calls.append("call")
        return user_token(user, ttl_s=-60)

    stale = Probe(server.ws_url, user, token_provider=bad_provider, backoff=Backoff(base_ms=10, max_ms=10))
    with pytest.raises(ConnectionClosedError) as caught:
        await stale.client.connect()
    assert caught.value.code == "unauthorized"
    assert len(calls) == 2 and stale.client.state == "unauthorized" and "failed" not in stale.states


@pytest.mark.gen_test(timeout=30)
async def test_admin_disconnect_4009_does_not_reconnect(server: ServerProcess) -> None:
    user = new_id("u")
    probe = Probe(server.ws_url, user, backoff=Backoff(base_ms=10, max_ms=10))
    await probe.client.connect()
    admin = user_token(new_id("admin"), app_metadata={"role": "admin"})
    response = await AsyncHTTPClient().fetch(
        f"{server.url}/admin/api/users/{user}/disconnect",
        method="POST",
        body=b"{}",
        headers={"Authorization": f"Bearer {admin}"},
        raise_error=False,
    )
    assert response.code < 300, response.body
    await probe.state("disconnected")
    assert probe.client.close_code == 4009
    assert "reconnecting" not in probe.states
    with pytest.raises(ConnectionClosedError):
        await probe.client.ping()
    # an explicit connect() is still possible
    await probe.client.connect()
    assert probe.client.state == "connected"
    await probe.client.close()
    assert ujson.loads(response.body) is not None


@pytest.mark.gen_test(timeout=30)
async def test_a_reconnect_gets_the_system_events_it_missed_in_id_order(server: ServerProcess) -> None:
    """``system`` resumes from the connection's ``system_since``: an announcement published
    right after ``welcome`` (here from the ``connected`` callback, before the client sends
    anything) comes after the one missed while away, and neither is dropped as old."""
    user, note = new_id("u"), new_id("note").replace("-", "_")
    publisher = Publisher(server.url, API_KEY)
    events: asyncio.Queue[Event] = asyncio.Queue()
    states: asyncio.Queue[str] = asyncio.Queue()
    published: list[str] = []

    def on_state(state: str) -> None:
        states.put_nowait(state)
        if state == "connected" and published:  # the reconnection: announce before anything else happens
            published.append(publisher.broadcast(f"x.{note}", {"n": 3})["system"])

    def on_event(event: Event) -> None:
        if event.channel == "system" and event.event == f"x.{note}":
            events.put_nowait(event)

    client = RealtimeClient(server.ws_url, lambda: user_token(user), on_state=on_state, on_event=on_event)

    async def state(wanted: str) -> None:
        while await asyncio.wait_for(states.get(), WAIT) != wanted:
            pass

    await client.connect()
    published.append((await in_thread(publisher.broadcast, f"x.{note}", {"n": 1}))["system"])
    assert (await asyncio.wait_for(events.get(), WAIT)).id == published[0]
    admin = user_token(new_id("admin"), app_metadata={"role": "admin"})
    response = await AsyncHTTPClient().fetch(f"{server.url}/admin/api/users/{user}/disconnect", method="POST",
                                             body=b"{}", headers={"Authorization": f"Bearer {admin}"})
    assert response.code < 300
    await state("disconnected")
    published.append((await in_thread(publisher.broadcast, f"x.{note}", {"n": 2}))["system"])  # missed
    await client.connect()
    received = [(await asyncio.wait_for(events.get(), WAIT)) for _ in range(2)]
    assert [(e.id, e.data["n"]) for e in received] == [(published[1], 2), (published[2], 3)]
    await client.close()


@pytest.mark.gen_test(timeout=30)
async def test_graceful_restart_1012_reconnects(spawn: Callable[..., ServerProcess]) -> None:
    own_server = spawn()
    user = new_id("u")
    probe = Probe(own_server.ws_url, user, backoff=Backoff(attempts=40, base_ms=50, max_ms=500))
    await probe.client.connect()
    await in_thread(own_server.stop)  # SIGTERM: the server closes every connection with 1012
    await probe.state("reconnecting")
    assert probe.close_codes[probe.states.index("reconnecting")] == 1012
    await in_thread(own_server.start)  # same port, same environment
    await probe.state("connected")
    assert await probe.client.ping() >= 0
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_gives_up_after_the_backoff_attempts(spawn: Callable[..., ServerProcess]) -> None:
    own_server = spawn()
    user = new_id("u")
    attempts: list[int] = []
    client = RealtimeClient(
        own_server.ws_url,
        lambda: user_token(user),
        backoff=Backoff(attempts=3, base_ms=10, max_ms=20),
        on_reconnecting=lambda attempt, delay: attempts.append(attempt),
    )
    await client.connect()
    events = client.events()
    own_server.kill()
    with pytest.raises(StopAsyncIteration):  # the iterator ends when the client stops
        await asyncio.wait_for(events.__anext__(), WAIT)
    assert client.state == "failed" and attempts == [1, 2, 3]
    with pytest.raises(ConnectionClosedError) as caught:
        await client.subscribe("system")
    assert caught.value.code == "failed"


@pytest.mark.gen_test(timeout=30)
async def test_idle_close_4008_reconnects_on_the_next_activity(spawn: Callable[..., ServerProcess]) -> None:
    own_server = spawn(RENUM_RT_IDLE_TIMEOUT="1")
    user = new_id("u")
    probe = Probe(own_server.ws_url, user, backoff=Backoff(base_ms=10, max_ms=10))
    await probe.client.connect()
    await probe.state("disconnected")  # within a tenth of the idle timeout after it passes
    assert probe.client.close_code == 4008 and "reconnecting" not in probe.states
    assert await probe.client.ping() >= 0  # activity: connects again first
    assert probe.client.state == "connected"
    await probe.client.close()


@pytest.mark.gen_test(timeout=30)
async def test_notify_and_the_inbox_from_python(server: ServerProcess) -> None:
    user = new_id("inbox")
    publisher = AsyncPublisher(server.url, API_KEY)
    created = await publisher.notify(
        [user],
        "Report ready",
        "The weekly report is ready",
        level="success",
        category="report",
        data={"report_id": "r1"},
        link="/reports/r1",
    )
    assert created["status"] == "unread" and created["title"] == "Report ready"
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    page = await probe.client.notifications.list()
    assert [i["id"] for i in page["items"]] == [created["id"]] and page["unread"] == 1
    await probe.frame(lambda f: f.get("type") == "unread_count" and f["count"] == 1)
    assert probe.client.unread_count == 1
    await probe.client.notifications.read([created["id"]])
    await probe.frame(lambda f: f.get("type") == "unread_count" and f["count"] == 0)
    assert probe.client.unread_count == 0
    with pytest.raises(RealtimeError) as refused:
        await probe.client.notifications.dismiss(["1-0"])
    assert refused.value.code == "not_found"
    await probe.client.notifications.read_all()
    await probe.client.close()


@pytest.mark.gen_test(timeout=60)
async def test_auto_acks_are_coalesced_so_a_fast_stream_never_trips_the_frame_rate_limit(server: ServerProcess) -> None:
    user = new_id("fast")
    probe = Probe(server.ws_url, user)
    await probe.client.connect()
    publisher = AsyncPublisher(server.url, API_KEY)
    ids = []
    for _batch in range(6):  # 600 events in about a second: one ack frame each would be 12x the limit
        sent = await asyncio.gather(*(publisher.publish("x.tick", {"i": i}, users=[user]) for i in range(100)))
        ids += [s[f"user:{user}"] for s in sent]
    received = [(await probe.event()).id for _ in ids]
    assert sorted(received) == sorted(ids)
    await probe.client.ping()  # after every frame sent so far: any refusal has arrived
    errors = []
    while not probe.frames.empty():
        frame = probe.frames.get_nowait()
        if frame.get("type") == "error":
            errors.append(frame)
    assert errors == []  # no rate_limited
    await probe.client.close()  # sends the last coalesced ack first
    again = Probe(server.ws_url, user)
    await again.client.connect()
    assert again.client.welcome["replayed"] == 0  # everything was acknowledged
    await again.client.close()

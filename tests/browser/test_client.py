"""static/renum-rt.js in headless Chromium, against real server processes: events,
the reconnection schedule, close codes, catch-up after a restart, one connection per
browser shared by its tabs, idle and offline rules."""

from __future__ import annotations

import time
import urllib.request
from collections.abc import Callable
from typing import Any

from playwright.sync_api import BrowserContext, Page
from playwright.sync_api import TimeoutError as PlaywrightTimeoutError

from tests.browser.harness import (
    ADMIN_TOKEN,
    ENV,
    connections_of,
    http,
    publish,
    user_token,
)
from tests.support.redis_server import RedisServer, free_port
from tests.support.server_process import ServerProcess

OpenPage = Callable[..., Page]
FAST = {"attempts": 5, "baseDelayMs": 100, "maxDelayMs": 1000, "factor": 2, "jitter": False}


def wait_for(page: Page, expression: str, arg: Any = None, timeout: float = 10_000) -> None:
    """Wait until ``expression`` holds in the page; on timeout, fail showing what the client logged."""
    try:
        page.wait_for_function(expression, arg=arg, timeout=timeout)
    except PlaywrightTimeoutError:
        raise AssertionError(f"{expression} still false after {timeout} ms: {page.evaluate('log')}") from None


def wait_state(page: Page, state: str, timeout: float = 10_000) -> None:
    wait_for(page, "s => window.rt && rt.state === s", state, timeout)


def until(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    """Poll a condition checked from Python (a server's view) until it holds."""
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def wait_subscribed(page: Page, channel: str) -> None:
    """A subscription without ``since`` is live once the server has answered it."""
    wait_for(page, "ch => log.subscribed.includes(ch)", channel)


def numbers(page: Page, channel: str) -> list[int]:
    return [n for ch, _, n in page.evaluate("log.events") if ch == channel]


def test_backoff_delay_and_id_order_are_pure_functions(server: ServerProcess, open_page: OpenPage) -> None:
    page = open_page(server.port)
    result = page.evaluate("""() => {
      const delay = lib.backoffDelay, quarter = () => 0.25;
      let refused = null;
      try { delay(0); } catch (error) { refused = error.name; }
      return {
        plain: [1, 2, 3, 4, 5, 6, 7, 8].map((n) => delay(n, { jitter: false })),
        jitter: [1, 2, 3, 7].map((n) => delay(n, { jitter: true }, quarter)),
        defaults: delay(1, undefined, quarter),
        custom: [1, 2, 3, 4].map((n) => delay(n, { baseDelayMs: 100, factor: 3, maxDelayMs: 1000, jitter: false })),
        refused,
        ids: [lib.compareIds("1700000000000-10", "1700000000000-9"), lib.compareIds("999-5", "1000-0"),
              lib.compareIds("5-5", "5-5"), lib.compareIds("12345678901234567890-1", "12345678901234567890-0")],
        policies: [1000, 1006, 1012, 4001, 4003, 4008, 4009, 4029, null].map(lib.reconnectPolicy),
      };
    }""")
    assert result["plain"] == [500, 1000, 2000, 4000, 8000, 16000, 30000, 30000]
    assert result["jitter"] == [125, 250, 500, 7500] and result["defaults"] == 125
    assert result["custom"] == [100, 300, 900, 1000] and result["refused"] == "RangeError"
    assert result["ids"] == [1, -1, 0, 1]
    assert result["policies"] == ["never", "backoff", "soon", "refresh_token", "never", "on_activity", "never",
                                  "backoff", "backoff"]


def test_events_published_over_http_reach_handlers_and_user_events_are_acked_in_batches(
        server: ServerProcess, context: BrowserContext, open_page: OpenPage) -> None:
    with urllib.request.urlopen(server.url + "/static/renum-rt.js") as response:
        assert "javascript" in response.headers["Content-Type"]
    token = user_token("u-events", teams=["t1"])
    page = open_page(server.port)
    page.evaluate("t => start({ tokens: [t], channels: ['team:t1'], throwing: true })", token)
    wait_subscribed(page, "team:t1")
    # the token travels in the first frame, never in the URL (where access logs would keep it)
    assert page.evaluate("log.sent[0]") == {"type": "auth", "token": token}
    assert page.sockets == [f"ws://127.0.0.1:{server.port}/ws"]  # type: ignore[attr-defined]
    for n in range(1, 4):
        publish(server, channel="team:t1", data={"n": n})
    ids = [publish(server, users=["u-events"], data={"n": n})["ids"]["user:u-events"] for n in range(1, 31)]
    wait_for(page, "log.all.filter(([ch]) => ch === 'user:u-events').length === 30")
    assert numbers(page, "team:t1") == [1, 2, 3]  # delivered although another handler of the channel threw
    assert [n for ch, _, n in page.evaluate("log.all") if ch.startswith("user:")] == list(range(1, 31))
    assert any("a broken handler" in text for text in page.errors)  # type: ignore[attr-defined]
    # acks are coalesced (not one frame per event) and end on the newest id
    wait_for(page, "i => log.sent.filter(f => f.type === 'ack').at(-1)?.id === i", ids[-1])
    acks = [sent for sent in page.evaluate("log.sent") if sent["type"] == "ack"]
    assert 1 <= len(acks) <= 6 and {ack["channel"] for ack in acks} == {"user:u-events"}
    # the server kept the cursor: a new connection of the user gets no replay, only what follows
    page.evaluate("rt.close()")
    other = open_page(server.port)
    other.evaluate("t => start({ tokens: [t], shared: false })", token)
    wait_state(other, "connected")
    publish(server, users=["u-events"], data={"n": 31})
    wait_for(other, "log.all.length === 1")
    assert [n for _, _, n in other.evaluate("log.all")] == [31]


def test_reconnect_schedule_while_the_server_is_down_then_failed_then_retry(
        context: BrowserContext, open_page: OpenPage) -> None:
    port = free_port()  # nothing listens there yet
    page = open_page(port, static_from_disk=True)
    page.evaluate("([t, r]) => start({ tokens: [t], reconnect: r })", [user_token("u-down"), FAST])
    wait_state(page, "failed", timeout=15_000)
    log = page.evaluate("log")
    schedule = [(r["attempt"], r["delayMs"]) for r in log["reconnecting"]]
    assert schedule == [(1, 100), (2, 200), (3, 400), (4, 800), (5, 1000)]
    # each attempt really waited its delay: the next announcement comes after it, not much later
    times = [r["at"] for r in log["reconnecting"]] + [log["stateTimes"][-1]]
    for (_, delay), start, end in zip(schedule, times[:-1], times[1:], strict=True):
        assert delay - 20 <= end - start <= delay + 1500
    assert log["states"] == ["connecting", "reconnecting", "failed"]
    server = ServerProcess(ENV, port=port).start()
    try:
        page.evaluate("rt.retry()")
        wait_state(page, "connected")
        assert page.evaluate("log.states") == ["connecting", "reconnecting", "failed", "connecting", "connected"]
    finally:
        server.stop()


def test_catch_up_after_a_server_restart_has_no_gap_and_no_duplicate(
        context: BrowserContext, open_page: OpenPage) -> None:
    redis = RedisServer()
    redis.start()
    server = ServerProcess({**ENV, "RENUM_RT_REDIS_URL": redis.url}).start()
    try:
        page = open_page(server.port)
        slow = {"attempts": 5, "baseDelayMs": 2500, "maxDelayMs": 2500, "factor": 1, "jitter": False}
        page.evaluate("([t, r]) => start({ tokens: [t], channels: ['team:t9'], reconnect: r })",
                      [user_token("u-restart", teams=["t9"]), slow])
        wait_subscribed(page, "team:t9")
        for n in range(1, 4):
            publish(server, channel="team:t9", data={"n": n})
            publish(server, users=["u-restart"], data={"n": n})
        wait_for(page, "log.all.length === 6")
        server.stop()  # SIGTERM: the server closes with 1012
        wait_state(page, "reconnecting")
        server.start()
        for n in range(4, 7):  # while the client waits for its next attempt
            publish(server, channel="team:t9", data={"n": n})
            publish(server, users=["u-restart"], data={"n": n})
        assert page.evaluate("rt.state") == "reconnecting"
        wait_state(page, "connected")
        publish(server, channel="team:t9", data={"n": 7})
        wait_for(page, "log.events.length === 7")
        assert numbers(page, "team:t9") == [1, 2, 3, 4, 5, 6, 7]
        assert [n for ch, _, n in page.evaluate("log.all") if ch == "user:u-restart"] == [1, 2, 3, 4, 5, 6]
        resubscribe = [s for s in page.evaluate("log.sent") if s["type"] == "subscribe"][-1]
        assert resubscribe["channel"] == "team:t9" and resubscribe["since"] == page.evaluate("log.events[2][1]")
    finally:
        server.stop()
        redis.cleanup()


def test_admin_disconnect_4009_does_not_reconnect(server: ServerProcess, open_page: OpenPage) -> None:
    page = open_page(server.port)
    page.evaluate("([t, r]) => start({ tokens: [t], reconnect: r })", [user_token("u-kicked"), FAST])
    wait_state(page, "connected")
    http("POST", server.url + "/admin/api/users/u-kicked/disconnect", ADMIN_TOKEN, {})
    wait_state(page, "disconnected")
    time.sleep(0.3)  # three times the first delay of the schedule: a reconnection would have started
    assert page.evaluate("[rt.state, log.reconnecting.length, log.tokenCalls]") == ["disconnected", 0, 2]
    assert connections_of(server, "u-kicked") == 0
    page.evaluate("rt.connect()")  # an explicit connect does reconnect
    wait_state(page, "connected")


def test_system_events_missed_while_away_arrive_in_order_before_newer_ones(
        server: ServerProcess, open_page: OpenPage) -> None:
    """``system`` resumes from the auth frame's ``system_since``: an announcement published
    as soon as the client is connected again comes after the one it missed, and both are
    delivered. (A resubscription of ``system`` with ``since``, here held back as a slow
    network would, was served after that announcement and the missed event dropped.)"""
    page = open_page(server.port)
    page.evaluate("([t, r]) => start({ tokens: [t], reconnect: r })", [user_token("u-system"), FAST])
    wait_state(page, "connected")
    seen = publish(server, channel="system", data={"n": 1})["ids"]["system"]
    wait_for(page, "i => log.all.some(([ch, id]) => ch === 'system' && id === i)", seen)
    http("POST", server.url + "/admin/api/users/u-system/disconnect", ADMIN_TOKEN, {})
    wait_state(page, "disconnected")
    missed = publish(server, channel="system", data={"n": 2})["ids"]["system"]
    page.evaluate("""() => {
      const send = WebSocket.prototype.send;
      WebSocket.prototype.send = function (data) {
        if (JSON.parse(data).channel !== "system") return send.call(this, data);
        setTimeout(() => send.call(this, data), 1500);
      };
    }""")
    page.evaluate("rt.connect()")
    wait_state(page, "connected")
    live = publish(server, channel="system", data={"n": 3})["ids"]["system"]
    wait_for(page, "i => log.all.some(([ch, id]) => ch === 'system' && id === i)", live)
    time.sleep(0.3)  # anything late (a replay) would come now
    assert [(i, n) for ch, i, n in page.evaluate("log.all") if ch == "system"] == [(seen, 1), (missed, 2), (live, 3)]
    auths = [sent for sent in page.evaluate("log.sent") if sent["type"] == "auth"]
    assert [auth.get("system_since") for auth in auths] == [None, seen]
    assert not [sent for sent in page.evaluate("log.sent") if sent.get("channel") == "system"]


def test_4001_asks_get_token_once_more(server: ServerProcess, open_page: OpenPage) -> None:
    good = user_token("u-token")
    recovers = open_page(server.port)
    # shared: false, so that getToken is asked only for connections (a shared client also asks
    # it once at start, to group the tabs by user)
    recovers.evaluate("([t, r]) => start({ tokens: ['not-a-jwt', t], reconnect: r, shared: false })", [good, FAST])
    wait_state(recovers, "connected")
    assert recovers.evaluate("[log.tokenCalls, log.states, log.errors]") == [
        2, ["connecting", "reconnecting", "connected"], [["unauthorized", None]]]

    stuck = open_page(server.port)
    expired = user_token("u-token-expired", ttl_s=-120)
    stuck.evaluate("([t, r]) => start({ tokens: [t], reconnect: r, shared: false })", [expired, FAST])
    wait_state(stuck, "unauthorized")
    time.sleep(0.3)  # longer than the schedule's delays: no further attempt, no further token asked
    assert stuck.evaluate("[log.tokenCalls, log.reconnecting.length, rt.state]") == [2, 1, "unauthorized"]
    stuck.evaluate("rt.retry()")  # starts over: asks again
    wait_for(stuck, "log.tokenCalls === 4 && rt.state === 'unauthorized'")


def test_two_tabs_share_one_websocket_and_the_survivor_takes_over_without_loss_or_repeat(
        server: ServerProcess, context: BrowserContext, open_page: OpenPage) -> None:
    token = user_token("u-tabs", teams=["t2"])
    pages = [open_page(server.port), open_page(server.port)]
    for page in pages:
        page.evaluate("t => start({ tokens: [t], channels: ['team:t2'] })", token)
    for page in pages:
        wait_subscribed(page, "team:t2")
    assert sorted(page.evaluate("rt.leader") for page in pages) == [False, True]
    assert connections_of(server, "u-tabs") == 1
    for n in range(1, 4):
        publish(server, channel="team:t2", data={"n": n})
    publish(server, users=["u-tabs"], data={"n": 100})
    for page in pages:
        wait_for(page, "log.events.length === 3 && log.all.length === 4")
        assert numbers(page, "team:t2") == [1, 2, 3]
    leader, survivor = sorted(pages, key=lambda page: not page.evaluate("rt.leader"))
    leader.close()
    for n in range(4, 7):  # while the survivor takes the lock and connects
        publish(server, channel="team:t2", data={"n": n})
    wait_for(survivor, "rt.leader && rt.state === 'connected'")
    publish(server, channel="team:t2", data={"n": 7})
    wait_for(survivor, "log.events.length >= 7")
    assert numbers(survivor, "team:t2") == [1, 2, 3, 4, 5, 6, 7]
    assert [n for ch, _, n in survivor.evaluate("log.all") if ch == "user:u-tabs"] == [100]
    until(lambda: connections_of(server, "u-tabs") == 1)


def test_shared_false_gives_one_connection_per_tab(server: ServerProcess, open_page: OpenPage) -> None:
    token = user_token("u-alone", teams=["t3"])
    pages = [open_page(server.port), open_page(server.port)]
    for page in pages:
        page.evaluate("t => start({ tokens: [t], channels: ['team:t3'], shared: false })", token)
    for page in pages:
        wait_subscribed(page, "team:t3")
    assert [page.evaluate("rt.leader") for page in pages] == [True, True]
    assert connections_of(server, "u-alone") == 2
    publish(server, channel="team:t3", data={"n": 1})
    for page in pages:
        wait_for(page, "log.events.length === 1")


def test_idle_close_4008_reconnects_on_the_next_user_activity(open_page: OpenPage) -> None:
    server = ServerProcess({**ENV, "RENUM_RT_IDLE_TIMEOUT": "1"}).start()
    try:
        page = open_page(server.port)
        page.evaluate("([t, r]) => start({ tokens: [t], reconnect: r })", [user_token("u-idle"), FAST])
        wait_state(page, "connected")
        wait_state(page, "disconnected", timeout=5_000)  # closed with 4008 after 1 s without a frame
        assert page.evaluate("log.reconnecting.length") == 0
        page.keyboard.press("a")
        wait_state(page, "connected")
        assert page.evaluate("[log.states, log.reconnecting.length]") == [
            ["connecting", "connected", "disconnected", "connecting", "connected"], 0]
    finally:
        server.stop()


def test_offline_counts_no_attempt_and_online_reconnects_at_once(
        server: ServerProcess, context: BrowserContext, open_page: OpenPage) -> None:
    page = open_page(server.port)
    page.evaluate("([t, r]) => start({ tokens: [t], reconnect: r })", [user_token("u-offline"), FAST])
    wait_state(page, "connected")
    context.set_offline(True)
    wait_state(page, "reconnecting")
    time.sleep(0.5)  # longer than the first attempts of the schedule: none is made while offline
    assert page.evaluate("log.reconnecting.length") == 0
    context.set_offline(False)
    wait_state(page, "connected")
    assert page.evaluate("log.reconnecting.map(r => [r.attempt, r.delayMs])") == [[1, 0]]


def test_the_token_is_refreshed_before_it_expires_without_reconnecting(
        server: ServerProcess, open_page: OpenPage) -> None:
    short, fresh = user_token("u-refresh", ttl_s=2), user_token("u-refresh", ttl_s=3600)
    page = open_page(server.port)
    page.evaluate("ts => start({ tokens: ts, shared: false })", [short, fresh])
    wait_state(page, "connected")
    # a tenth of a 2 s lifetime before exp: getToken is asked again and a refresh frame sent
    wait_for(page, "t => log.sent.some(f => f.type === 'refresh' && f.token === t)", fresh, timeout=5_000)
    seen = page.evaluate("[log.tokenCalls, log.states, log.errors, log.sent.filter(f => f.type === 'auth').length]")
    assert seen == [2, ["connecting", "connected"], [], 1]


def test_a_follower_tabs_channels_go_through_the_leader_and_leave_with_the_tab(
        server: ServerProcess, open_page: OpenPage) -> None:
    token = user_token("u-follower", teams=["t5"])
    leader = open_page(server.port)
    leader.evaluate("t => start({ tokens: [t] })", token)
    wait_for(leader, "rt.leader && rt.state === 'connected'")
    follower = open_page(server.port)
    follower.evaluate("t => start({ tokens: [t], channels: ['team:t5'] })", token)
    wait_subscribed(follower, "team:t5")
    assert follower.evaluate("[rt.leader, rt.state]") == [False, "connected"]

    def channels() -> list[str]:
        listing = http("GET", server.url + "/admin/api/connections", ADMIN_TOKEN)["connections"]
        rows = [row for row in listing if row["user_id"] == "u-follower"]
        assert len(rows) == 1
        return list(rows[0]["channels"])

    assert "team:t5" in channels()
    publish(server, channel="team:t5", data={"n": 1})
    wait_for(follower, "log.events.length === 1")
    assert leader.evaluate("log.all") == []  # the leader relays the channel but does not deliver it
    follower.close()
    until(lambda: "team:t5" not in channels())

"""A reconnecting client resumes ``system``: does it get, in id order, what was published
while it was away?

The protocol says events of one channel arrive in id order, and the client libraries drop
an event whose id is not after the last one they kept. ``system`` is subscribed at
connect; a client that resubscribed it with ``since`` after ``welcome`` got an
announcement published in between live first, the replay of what it missed after it, and
dropped the missed ones (bench/reconnect_storm.py, docs/benchmarks.md section 7: with
1,000 clients, 3,909 of the 36,000 ``system`` deliveries came after a newer one on the
same connection). Now the client names the last ``system`` id it kept at connect
(``system_since``, on the URL or in ``auth``) and the server replays ``system`` from there
before it goes live, with no gap (docs/protocol.md, Connecting). The old way, a
``subscribe`` with ``since`` on a live ``system``, still answers.
"""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from tests.integration.test_ws_auth import refused
from tests.integration.test_ws_basic import publish
from tests.support.wsclient import Client, connect


async def announce(http_client: Any, base_url: str, n: int) -> str:
    response = await publish(http_client, base_url, {"channel": "system", "event": "bench.note", "data": {"n": n}})
    assert response.code == 200, response.body
    return str(ujson.loads(response.body)["ids"]["system"])


async def resume(ws_url: str, user_token: str, since: str, how: str) -> Client:
    """Connect with ``system_since`` on the URL or in the ``auth`` frame; ``welcome`` read."""
    if how == "url":
        return await connect(f"{ws_url}?system_since={since}", user_token)
    client = await connect(ws_url, welcome=False)
    await client.send({"type": "auth", "token": user_token, "system_since": since})
    assert (await client.recv_type("welcome"))["user_id"]
    return client


def kept_by_a_client(order: list[str]) -> list[str]:
    """What a client that drops an id not after the last one it kept (the SDK, the browser
    library) keeps of events arriving in ``order``."""
    kept: list[str] = []
    for frame_id in order:
        if not kept or [int(x) for x in frame_id.split("-")] > [int(x) for x in kept[-1].split("-")]:
            kept.append(frame_id)
    return kept


@pytest.mark.parametrize("how", ["url", "auth"])
@pytest.mark.gen_test(timeout=20)
async def test_system_events_missed_during_a_reconnect_arrive_in_id_order(
    http_client: Any, base_url: str, ws_url: str, token: Any, how: str
) -> None:
    client = await connect(ws_url, token("u1"))
    seen = await announce(http_client, base_url, 1)
    assert (await client.recv_type("event"))["id"] == seen
    client.close()
    missed = await announce(http_client, base_url, 2)  # while the client is away
    client = await resume(ws_url, token("u1"), seen, how)
    live = await announce(http_client, base_url, 3)  # during the admission, or just after it
    subscribed = await client.recv_type("subscribed")  # before any system event of this connection
    assert subscribed == {"type": "subscribed", "ref": None, "channel": "system", "recovered": True,
                          "replayed": subscribed["replayed"]}
    assert subscribed["replayed"] in (1, 2)  # the missed one, and the live one if stored before the read
    order = [(await client.recv_type("event"))["id"] for _ in range(2)]
    assert order == [missed, live] == kept_by_a_client(order)
    assert (await client.request({"type": "ping"}))["type"] == "pong"  # nothing else came: no duplicate
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_a_resubscribe_of_live_system_with_since_still_answers(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    """Old clients: no ``system_since``, ``system`` live at connect, then ``subscribe``
    with ``since`` replays what came after it (the order race is theirs to keep)."""
    seen = await announce(http_client, base_url, 1)
    missed = await announce(http_client, base_url, 2)
    client = await connect(ws_url, token("u1"))
    reply = await client.request({"type": "subscribe", "channel": "system", "since": seen, "ref": "s"})
    assert (reply["type"], reply["channel"], reply["recovered"], reply["replayed"]) == ("subscribed", "system", True, 1)
    assert (await client.recv_type("event"))["id"] == missed
    live = await announce(http_client, base_url, 3)
    assert (await client.recv_type("event"))["id"] == live
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_system_since_past_the_newest_id_answers_not_recovered_then_live(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    newest = await announce(http_client, base_url, 1)
    ahead = f"{int(newest.split('-')[0]) + 3_600_000}-0"  # an id never handed out (a store that lost its data)
    client = await resume(ws_url, token("u1"), ahead, "url")
    subscribed = await client.recv_type("subscribed")
    assert (subscribed["channel"], subscribed["recovered"], subscribed["replayed"]) == ("system", False, 0)
    live = await announce(http_client, base_url, 2)  # older than ``ahead``, delivered all the same
    assert (await client.recv_type("event"))["id"] == live
    client.close()


BAD_IDS = ["1", "abc", "1-2-3", "1" * 20 + "-0", ""]


@pytest.mark.parametrize("bad", BAD_IDS)
@pytest.mark.gen_test
async def test_a_bad_system_since_on_the_url_is_refused_before_the_upgrade(ws_url: str, token: Any,
                                                                          bad: str) -> None:
    status, body = await refused(f"{ws_url}?system_since={bad}&token={token('u1')}")
    assert status == 400
    assert body["error"]["code"] == "bad_request" and body["error"]["field"] == "system_since"


@pytest.mark.parametrize("bad", [*BAD_IDS, 12])
@pytest.mark.gen_test
async def test_a_bad_system_since_in_auth_gets_bad_request_and_the_connection_waits_for_a_good_auth(
    ws_url: str, token: Any, bad: Any
) -> None:
    client = await connect(ws_url, welcome=False)
    error = await client.request({"type": "auth", "token": token("u1"), "system_since": bad, "ref": "a"})
    assert (error["type"], error["code"], error["field"]) == ("error", "bad_request", "system_since")
    await client.send({"type": "auth", "token": token("u1")})
    assert (await client.recv_type("welcome"))["user_id"] == "u1"
    client.close()

"""Bad input and abuse over real sockets, on both engines: each is refused clearly, the
connection and the server keep serving, and nothing refused is stored (issue 13)."""

from __future__ import annotations

from typing import Any

import pytest
import tornado.httpclient
import ujson

from tests.integration.test_ws_basic import publish
from tests.support.wsclient import connect


@pytest.mark.settings(max_connections_per_address=3)
@pytest.mark.gen_test(timeout=20)
async def test_unauthenticated_sockets_count_against_the_per_address_cap(ws_url: str, token: Any) -> None:
    idle = [await connect(ws_url, welcome=False) for _ in range(3)]  # no auth frame: waiting for one
    refused = await connect(ws_url, welcome=False)
    error = await refused.recv()
    assert error is not None and (error["code"], error["retry_after_ms"] > 0) == ("rate_limited", True)
    assert await refused.closed() == 4029
    idle[0].close()
    await idle[0].closed()
    # a slot freed by a socket that went away is usable again (polled: the close travels)
    for _ in range(50):
        client = await connect(ws_url, token("u1"), welcome=False)
        first = await client.recv()
        if first is not None and first["type"] == "welcome":
            break
        await client.closed()
    else:
        pytest.fail("the freed slot was never reusable")
    client.close()
    for other in idle[1:]:
        other.close()


@pytest.mark.gen_test
async def test_a_subscription_token_does_not_open_a_session(ws_url: str, grant: Any) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await connect(ws_url, grant("u1", "execution:e1"))
    assert refused.value.code == 401
    client = await connect(ws_url, welcome=False)
    await client.send({"type": "auth", "token": grant("u1", "execution:e1")})
    error = await client.recv()
    assert error is not None and error["code"] == "unauthorized"
    assert await client.closed() == 4001


@pytest.mark.parametrize("bad_id", ["99999999999999999999999-0", "18446744073709551616-0", "1-x", "-1"])
@pytest.mark.gen_test
async def test_malformed_ids_are_refused_and_never_stored(ws_url: str, token: Any, bad_id: str) -> None:
    client = await connect(ws_url, token("u1"))
    for frame in ({"type": "ack", "channel": "user:u1", "id": bad_id},
                  {"type": "subscribe", "channel": "system", "since": bad_id}):
        reply = await client.request(frame)
        assert (reply["type"], reply["code"], reply["field"]) == ("error", "bad_request", "id" if
                                                                    frame["type"] == "ack" else "since"), reply
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()
    again = await connect(ws_url, token("u1"))  # the user can still connect
    again.close()


@pytest.mark.gen_test
async def test_an_ack_past_the_newest_event_is_refused_and_later_events_still_arrive(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    client = await connect(ws_url, token("u1"))
    body = {"users": ["u1"], "event": "custom.note", "data": {"n": 1}}
    first = ujson.loads((await publish(http_client, base_url, body)).body)["ids"]["user:u1"]
    assert (await client.recv_type("event"))["id"] == first
    reply = await client.request({"type": "ack", "channel": "user:u1", "id": "9999999999999-0"})
    assert (reply["code"], reply["field"]) == ("bad_request", "id")
    client.close()
    second = ujson.loads((await publish(http_client, base_url, {**body, "data": {"n": 2}})).body)["ids"]["user:u1"]
    again = await connect(ws_url, token("u1"), welcome=False)
    welcome = await again.recv_type("welcome")
    assert welcome["recovered"] is True
    ids = [(await again.recv_type("event"))["id"] for _ in range(welcome["replayed"])]
    assert second in ids  # nothing hidden by the refused cursor
    again.close()


@pytest.mark.gen_test
async def test_since_past_the_newest_event_is_not_recovered_and_goes_live(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    client = await connect(ws_url, token("u1", teams=["t1"]))
    reply = await client.request({"type": "subscribe", "channel": "team:t1", "since": "9999999999999-0"})
    assert (reply["type"], reply["recovered"], reply["replayed"]) == ("subscribed", False, 0)
    body = {"channel": "team:t1", "event": "team.updated", "data": {"team_id": "t1", "name": "n"}}
    sent = ujson.loads((await publish(http_client, base_url, body)).body)["ids"]["team:t1"]
    assert (await client.recv_type("event"))["id"] == sent
    client.close()


@pytest.mark.gen_test
async def test_a_refused_origin_gets_403_and_the_log_says_which_setting_to_change(
    ws_url: str, token: Any, caplog: pytest.LogCaptureFixture
) -> None:
    with pytest.raises(tornado.httpclient.HTTPClientError) as refused:
        await connect(ws_url, token("u1"), headers={"Origin": "http://localhost:5173"})
    assert refused.value.code == 403
    assert any("RENUM_RT_ALLOWED_ORIGINS" in str(getattr(r, "fields", {})) for r in caplog.records)


@pytest.mark.settings(dev=True)
@pytest.mark.gen_test
async def test_dev_mode_accepts_a_page_from_a_local_dev_server(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"), headers={"Origin": "http://localhost:5173"})
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.settings(max_connections_per_address=2)
@pytest.mark.gen_test(timeout=20)
async def test_an_unexpected_error_at_connect_closes_1012_and_frees_every_count(
    ws_url: str, token: Any, node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    gateway = node.gateway
    real_unread = gateway.engine.inbox.unread

    async def broken(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("a bug")

    monkeypatch.setattr(gateway.engine.inbox, "unread", broken)
    for _ in range(3):  # more than the per-address cap: each failed connection gave its slot back
        client = await connect(ws_url, token("u1"), welcome=False)
        assert await client.closed() == 1012
        assert client.close_reason == "internal error; reconnect"
    assert len(gateway.registry) == 0
    monkeypatch.setattr(gateway.engine.inbox, "unread", real_unread)
    client = await connect(ws_url, token("u1"))  # welcome: nothing stayed counted
    client.close()

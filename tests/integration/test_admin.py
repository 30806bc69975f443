"""Admin API: who may call it, statistics, connections, disconnect, broadcast."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from tests.support.wsclient import connect


async def admin_call(http_client: Any, base_url: str, path: str, token: str | None, body: Any = None) -> Any:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    if body is not None:
        headers["Content-Type"] = "application/json"
    return await http_client.fetch(base_url + path, method="POST" if body is not None else "GET",
                                   body=ujson.dumps(body) if body is not None else None, headers=headers,
                                   raise_error=False)


@pytest.fixture
def admin_token(token: Any) -> str:
    return token("boss", app_metadata={"role": "admin"})


@pytest.mark.parametrize("path", ["/admin/api/stats", "/admin/api/connections"])
@pytest.mark.gen_test
async def test_admin_routes_need_an_admin_token(http_client: Any, base_url: str, token: Any, path: str) -> None:
    assert (await admin_call(http_client, base_url, path, None)).code == 401
    assert (await admin_call(http_client, base_url, path, "garbage")).code == 401
    assert (await admin_call(http_client, base_url, path, token("u1"))).code == 403
    listed = token("u2", app_metadata={"role": ["editor", "admin"]})
    assert (await admin_call(http_client, base_url, path, listed)).code == 200


@pytest.mark.gen_test
async def test_stats_count_connections_users_and_messages(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    clients = [await connect(ws_url, token("a")), await connect(ws_url, token("a")), await connect(ws_url, token("b"))]
    await clients[0].request({"type": "ping"})
    stats = ujson.loads((await admin_call(http_client, base_url, "/admin/api/stats", admin_token)).body)
    for key in ("connections", "users", "nodes", "channels", "messages_in", "messages_out", "rate_limited", "uptime_s"):
        assert key in stats, key
    assert stats["connections"] == 3 and stats["users"] == 2 and stats["nodes"] == 1
    assert stats["messages_in"] >= 1 and stats["messages_out"] >= 4
    listing = ujson.loads((await admin_call(http_client, base_url, "/admin/api/connections", admin_token)).body)
    rows = listing["connections"]
    assert listing["total"] == 3 and listing["complete"] is True
    assert sorted(r["user_id"] for r in rows) == ["a", "a", "b"]
    limited = ujson.loads((await admin_call(http_client, base_url, "/admin/api/connections?limit=1",
                                            admin_token)).body)
    assert len(limited["connections"]) == 1 and limited["complete"] is False
    bad = await admin_call(http_client, base_url, "/admin/api/connections?limit=many", admin_token)
    assert bad.code == 400 and ujson.loads(bad.body)["error"]["field"] == "limit"
    assert all({"address", "connected_at", "last_active", "channels"} <= set(r) for r in rows)
    assert "user:a" in rows[0]["channels"] or "user:b" in rows[0]["channels"]
    for client in clients:
        client.close()


@pytest.mark.gen_test
async def test_disconnect_user_closes_all_their_connections_4009(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    victim = [await connect(ws_url, token("v")), await connect(ws_url, token("v"))]
    bystander = await connect(ws_url, token("w"))
    response = await admin_call(http_client, base_url, "/admin/api/users/v/disconnect", admin_token, body={})
    assert response.code == 200
    for client in victim:
        assert await client.closed() == 4009
    assert (await bystander.request({"type": "ping"}))["type"] == "pong"
    bad = await admin_call(http_client, base_url, "/admin/api/users/%20bad%20/disconnect", admin_token, body={})
    assert bad.code == 400
    bystander.close()


@pytest.mark.gen_test
async def test_admin_broadcast_reaches_every_user(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    users = [await connect(ws_url, token("x")), await connect(ws_url, token("y"))]
    body = {"title": "Deploy", "message": "new agents available", "level": "success"}
    response = await admin_call(http_client, base_url, "/admin/api/broadcast", admin_token, body=body)
    assert response.code == 200
    for client in users:
        frame = await client.recv_type("event")
        assert frame["event"] == "system.announcement" and frame["data"] == body
        client.close()
    bad = await admin_call(http_client, base_url, "/admin/api/broadcast", admin_token, body={"title": "x", "level": "loud"})
    assert bad.code == 400 and ujson.loads(bad.body)["error"]["field"]


@pytest.mark.settings(node_heartbeat_s=0.1)
@pytest.mark.gen_test
async def test_admin_channel_streams_live_stats(ws_url: str, token: Any, admin_token: str) -> None:
    admin = await connect(ws_url, admin_token)
    await admin.request({"type": "subscribe", "channel": "admin"})
    frame = await admin.recv_type("event")
    assert frame["channel"] == "admin" and frame["event"] == "admin.stats" and frame["data"]["connections"] == 1
    admin.close()


@pytest.mark.gen_test
async def test_admin_page_is_served(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/admin")
    assert response.code == 200 and b"<html" in response.body.lower() or b"<!doctype" in response.body.lower()

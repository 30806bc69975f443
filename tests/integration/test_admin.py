"""Admin API: who may call it, statistics, connections (search, pages), disconnects, broadcast,
audit log, run-time log level; and /metrics against known traffic."""

from __future__ import annotations

import asyncio
import logging
import re
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import ujson
from prometheus_client import CONTENT_TYPE_LATEST
from prometheus_client.parser import text_string_to_metric_families

from renum_rt import logs
from renum_rt.app import Node
from tests.conftest import API_KEY
from tests.integration.test_ws_basic import publish
from tests.support.server_process import ROOT
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


#: every admin route, with the body of a POST (None: GET)
ROUTES = [("/admin/api/stats", None), ("/admin/api/connections", None), ("/admin/api/audit", None),
          ("/admin/api/log-level", None), ("/admin/api/log-level", {"level": "info"}),
          ("/admin/api/users/u9/disconnect", {}), ("/admin/api/connections/c9/disconnect", {}),
          ("/admin/api/broadcast", {"title": "t", "message": "m", "level": "info"})]


@pytest.mark.parametrize(("path", "body"), ROUTES)
@pytest.mark.gen_test
async def test_admin_routes_need_an_admin_token(http_client: Any, base_url: str, token: Any, path: str,
                                                body: Any) -> None:
    expired = token("boss", ttl_s=-3600, app_metadata={"role": "admin"})
    for credential, status in ((None, 401), ("garbage", 401), (expired, 401), (token("u1"), 403)):
        response = await admin_call(http_client, base_url, path, credential, body)
        assert response.code == status, (credential, response.body)
        assert ujson.loads(response.body)["error"]["code"] == ("forbidden" if status == 403 else "unauthorized")
    if body is None:  # the GET routes answer a token whose role list holds admin
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
    bad = await admin_call(http_client, base_url, "/admin/api/broadcast", admin_token,
                           body={"title": "x", "level": "loud"})
    assert bad.code == 400 and ujson.loads(bad.body)["error"]["field"]


@pytest.mark.settings(node_heartbeat_s=0.1)
@pytest.mark.gen_test
async def test_admin_channel_streams_live_stats(ws_url: str, token: Any, admin_token: str) -> None:
    admin = await connect(ws_url, admin_token)
    await admin.request({"type": "subscribe", "channel": "admin"})
    frame = await admin.recv_type("event")
    assert frame["channel"] == "admin" and frame["event"] == "admin.stats" and frame["data"]["connections"] == 1
    admin.close()


async def listing(http_client: Any, base_url: str, admin_token: str, query: str = "") -> dict[str, Any]:
    response = await admin_call(http_client, base_url, "/admin/api/connections" + query, admin_token)
    assert response.code == 200, response.body
    body: dict[str, Any] = ujson.loads(response.body)
    return body


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 5.0) -> None:
    """Poll ``check`` until it holds (what the server does after answering: close codes)."""
    deadline = asyncio.get_running_loop().time() + timeout
    while not await check():
        assert asyncio.get_running_loop().time() < deadline, f"not true after {timeout} s"
        await asyncio.sleep(0.02)


@pytest.mark.gen_test
async def test_stats_report_rates_health_and_errors_per_node(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str, node: Node
) -> None:
    client = await connect(ws_url, token("r"))
    await node.gateway.cluster.heartbeat()  # the rates are those of the last heartbeat period
    for _ in range(3):
        await client.request({"type": "ping"})
    await node.gateway.cluster.heartbeat()
    stats = ujson.loads((await admin_call(http_client, base_url, "/admin/api/stats", admin_token)).body)
    (mine,) = stats["per_node"]
    assert mine["engine_ok"] is True and stats["engine_ok"] is True
    assert mine["messages_in_per_s"] > 0 and mine["messages_out_per_s"] > 0 and mine["published_per_s"] == 0
    for key in ("messages_in_per_s", "messages_out_per_s", "published_per_s", "errors", "rate_limited"):
        assert stats[key] == mine[key], key
    assert mine["errors"] == 0
    client.close()


@pytest.mark.gen_test
async def test_connections_are_searched_by_user_and_paged_newest_first(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    clients = [await connect(ws_url, token(user)) for user in ("p1", "p2", "p1", "p3", "p1")]
    everyone = await listing(http_client, base_url, admin_token)
    assert everyone["total"] == 5 and everyone["complete"] is True
    times = [row["connected_at"] for row in everyone["connections"]]
    assert times == sorted(times, reverse=True)
    found = await listing(http_client, base_url, admin_token, "?user=p1")
    assert found["total"] == 3 and [row["user_id"] for row in found["connections"]] == ["p1"] * 3
    pages = [await listing(http_client, base_url, admin_token, f"?user=p1&offset={offset}&limit=2")
             for offset in (0, 2)]
    assert [len(page["connections"]) for page in pages] == [2, 1]
    assert [page["total"] for page in pages] == [3, 3] and pages[0]["complete"] is False
    assert [row["connection_id"] for page in pages for row in page["connections"]] == [
        row["connection_id"] for row in found["connections"]]
    assert (await listing(http_client, base_url, admin_token, "?user=nobody"))["total"] == 0
    for query, field in (("?user=%20bad%20", "user"), ("?offset=x", "offset"), ("?limit=many", "limit")):
        bad = await admin_call(http_client, base_url, "/admin/api/connections" + query, admin_token)
        assert bad.code == 400 and ujson.loads(bad.body)["error"]["field"] == field
    for client in clients:
        client.close()


@pytest.mark.gen_test
async def test_disconnect_one_connection_4009_and_404_for_an_unknown_id(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    first, second = await connect(ws_url, token("k")), await connect(ws_url, token("k"))
    await first.request({"type": "ping"})
    rows = (await listing(http_client, base_url, admin_token, "?user=k"))["connections"]
    newest = rows[0]["connection_id"]  # the second connection
    response = await admin_call(http_client, base_url, f"/admin/api/connections/{newest}/disconnect", admin_token,
                                body={})
    assert response.code == 200 and ujson.loads(response.body)["disconnected"] == newest
    assert await second.closed() == 4009
    assert (await first.request({"type": "ping"}))["type"] == "pong"  # the user's other connection stays
    again = await admin_call(http_client, base_url, f"/admin/api/connections/{newest}/disconnect", admin_token,
                             body={})
    assert again.code == 404 and ujson.loads(again.body)["error"]["code"] == "not_found"
    first.close()


@pytest.mark.gen_test
async def test_every_admin_action_is_audited_in_the_log_and_the_list(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str, caplog: pytest.LogCaptureFixture,
    tracing: None,
) -> None:
    caplog.set_level(logging.WARNING, logger="renum_rt")
    client = await connect(ws_url, token("aud"))
    conn_id = (await listing(http_client, base_url, admin_token, "?user=aud"))["connections"][0]["connection_id"]
    actions = [(f"/admin/api/connections/{conn_id}/disconnect", {}), ("/admin/api/users/aud/disconnect", {}),
               ("/admin/api/broadcast", {"title": "Hello", "message": "world", "level": "info"}),
               ("/admin/api/log-level", {"level": "debug", "user": "aud"})]
    for path, body in actions:
        assert (await admin_call(http_client, base_url, path, admin_token, body)).code == 200, path
    await client.closed()
    answer = await admin_call(http_client, base_url, "/admin/api/audit", admin_token)
    entries = ujson.loads(answer.body)["entries"]
    expected = [("log_level", "user:aud"), ("broadcast", "system"), ("disconnect_user", "user:aud"),
                ("disconnect_connection", f"connection:{conn_id}")]
    assert [(e["action"], e["target"]) for e in entries] == expected  # newest first
    assert all(e["by"] == "boss" and e["address"] == "127.0.0.1" and e["at"] > 0 and e["node"] for e in entries)
    assert entries[0]["details"] == {"level": "debug"} and entries[1]["details"]["title"] == "Hello"
    limited = ujson.loads((await admin_call(http_client, base_url, "/admin/api/audit?limit=1", admin_token)).body)
    assert limited["entries"] == entries[:1]
    lines = [getattr(r, "fields", {}) for r in caplog.records if r.getMessage() == "admin action"]
    assert [(line["action"], line["by"], line["address"]) for line in lines] == [
        (action, "boss", "127.0.0.1") for action, _ in reversed(expected)]


@pytest.fixture
def tracing() -> Iterator[None]:
    """Puts the process's log level and followed users back after the test."""
    level, tornado_level = logs.logger.level, logging.getLogger("tornado").level
    yield
    logs.TRACING.followed.clear()
    logs.TRACING.set_level(logging.getLevelName(level or logging.WARNING))
    logging.getLogger("tornado").setLevel(tornado_level)
    logs.logger.setLevel(level)


@pytest.mark.gen_test
async def test_log_level_changes_at_run_time_and_one_user_can_be_followed(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str, caplog: pytest.LogCaptureFixture,
    tracing: None,
) -> None:
    caplog.set_level(logging.INFO, logger="renum_rt")
    caplog.handler.setLevel(logging.DEBUG)  # the node logs at info; followed frames are debug lines
    followed, other = await connect(ws_url, token("traced")), await connect(ws_url, token("quiet"))
    answer = await admin_call(http_client, base_url, "/admin/api/log-level", admin_token,
                              {"level": "debug", "user": "traced"})
    assert answer.code == 200
    state = ujson.loads((await admin_call(http_client, base_url, "/admin/api/log-level", admin_token)).body)
    assert state["level"] == "info" and state["followed"] == ["traced"]
    for client in (followed, other):
        await client.request({"type": "ping", "ref": "traceme"})

    def frames() -> list[tuple[str, Any]]:
        return [(r.getMessage(), getattr(r, "fields", {}).get("user")) for r in caplog.records
                if r.getMessage().startswith("frame ")]

    assert frames() == [("frame in", "traced"), ("frame out", "traced")]  # the node itself logs at info
    caplog.clear()
    await admin_call(http_client, base_url, "/admin/api/log-level", admin_token, {"level": "info", "user": "traced"})
    await followed.request({"type": "ping"})
    assert frames() == []
    everything = await admin_call(http_client, base_url, "/admin/api/log-level", admin_token, {"level": "debug"})
    assert everything.code == 200
    assert logs.debug_enabled()
    await other.request({"type": "ping"})
    assert ("frame in", "quiet") in frames()  # the whole node, every connection (already open ones too)
    for body, field in (({"level": "loud"}, "level"), ({"level": "debug", "user": 7}, "user"),
                        ({"level": "debug", "user": " x "}, "user")):
        bad = await admin_call(http_client, base_url, "/admin/api/log-level", admin_token, body)
        assert bad.code == 400 and ujson.loads(bad.body)["error"]["field"] == field
    for client in (followed, other):
        client.close()


async def scrape(http_client: Any, base_url: str, key: str | None = API_KEY) -> dict[str, Any]:
    """``/metrics`` parsed by prometheus_client: {sample name + sorted labels: value}."""
    headers = {"Authorization": f"Bearer {key}"} if key else {}
    response = await http_client.fetch(base_url + "/metrics", headers=headers)
    assert response.headers["Content-Type"] == CONTENT_TYPE_LATEST
    samples: dict[str, Any] = {}
    for family in text_string_to_metric_families(response.body.decode()):
        for sample in family.samples:
            labels = ",".join(f"{k}={v}" for k, v in sorted(sample.labels.items()) if k != "le")
            if "le" not in sample.labels:
                samples[f"{sample.name}{{{labels}}}" if labels else sample.name] = sample.value
    return samples


@pytest.mark.gen_test
async def test_metrics_count_known_traffic(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    clients = [await connect(ws_url, token(user)) for user in ("m1", "m1", "m2")]
    for _ in range(2):
        await clients[2].request({"type": "ping"})
    await clients[2].request({"type": "subscribe", "channel": "team:nope"})  # refused: forbidden
    for n in range(3):
        await publish(http_client, base_url, {"users": ["m1"], "event": "m.tick", "data": {"n": n}})
    for client in clients[:2]:
        for _ in range(3):
            await client.recv_type("event")
    await admin_call(http_client, base_url, "/admin/api/stats", "garbage")  # an auth failure
    before = await scrape(http_client, base_url)
    assert before["renum_rt_connections"] == 3 and before["renum_rt_users"] == 2
    assert before["renum_rt_subscriptions"] == 6  # user and system channels of each connection
    assert before["renum_rt_messages_in_total{type=ping}"] == 2
    assert before["renum_rt_messages_in_total{type=subscribe}"] == 1
    assert before["renum_rt_messages_out_total{type=pong}"] == 2
    assert before["renum_rt_messages_out_total{type=error}"] == 1
    assert before["renum_rt_messages_out_total{type=welcome}"] == 3
    assert before["renum_rt_messages_out_total{type=event}"] == 6  # 3 events x 2 connections of m1
    assert before["renum_rt_published_total"] == 3
    assert before["renum_rt_publish_seconds_count{route=/api/v1/publish}"] == 3
    assert before["renum_rt_fanout_seconds_count"] >= 3
    assert before["renum_rt_auth_failures_total"] == 1
    assert before["renum_rt_engine_up"] == 1 and before["renum_rt_engine_errors_total"] == 0
    assert before["renum_rt_event_loop_lag_seconds"] >= 0
    assert before["renum_rt_notifications_created_total"] == 0

    await admin_call(http_client, base_url, "/admin/api/users/m1/disconnect", admin_token, body={})
    for client in clients[:2]:
        assert await client.closed() == 4009

    async def counted() -> bool:
        return (await scrape(http_client, base_url)).get("renum_rt_closes_total{code=4009}") == 2

    await eventually(counted)
    assert (await scrape(http_client, base_url))["renum_rt_connections"] == 1
    clients[2].close()


@pytest.mark.gen_test
async def test_metrics_need_the_api_key(http_client: Any, base_url: str, admin_token: str) -> None:
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Bearer {admin_token}"}):
        response = await http_client.fetch(base_url + "/metrics", headers=headers, raise_error=False)
        assert response.code == 401 and ujson.loads(response.body)["error"]["code"] == "unauthorized"


@pytest.mark.settings(metrics_allowed_addresses=("10.0.0.0/8", "127.0.0.1"))
@pytest.mark.gen_test
async def test_metrics_from_an_allowed_address_need_no_key(http_client: Any, base_url: str) -> None:
    assert "renum_rt_connections" in await scrape(http_client, base_url, key=None)


@pytest.mark.parametrize("path", ["/admin", "/admin/"])
@pytest.mark.gen_test
async def test_the_admin_page_loads_its_code_from_static_files_only(http_client: Any, base_url: str,
                                                                    path: str) -> None:
    response = await http_client.fetch(base_url + path)
    page = response.body.decode()
    assert response.headers["Cache-Control"] == "no-store"
    assert "/static/admin/admin.js" in page and "/static/admin/admin.css" in page
    assert "<style" not in page and " style=" not in page and "<script>" not in page
    for asset in ("/static/admin/admin.js", "/static/admin/admin.css", "/static/renum-rt.js"):
        assert (await http_client.fetch(base_url + asset)).code == 200, asset


@pytest.mark.gen_test
async def test_the_shipped_dashboard_and_scrape_config_name_only_real_metrics(
    http_client: Any, base_url: str, ws_url: str, token: Any, admin_token: str
) -> None:
    client = await connect(ws_url, token("dash"))
    await publish(http_client, base_url, {"users": ["dash"], "event": "d.tick", "data": {}})
    await client.recv_type("event")
    await admin_call(http_client, base_url, "/admin/api/users/dash/disconnect", admin_token, body={})
    await client.closed()

    async def every_family() -> set[str]:
        response = await http_client.fetch(base_url + "/metrics", headers={"Authorization": f"Bearer {API_KEY}"})
        return {sample.name for family in text_string_to_metric_families(response.body.decode())
                for sample in family.samples}

    names: set[str] = set()

    async def closes_counted() -> bool:
        nonlocal names
        names = await every_family()
        return "renum_rt_closes_total" in names

    await eventually(closes_counted)
    for doc in ("docs/grafana-dashboard.json", "docs/prometheus.yml"):
        used = set(re.findall(r"renum_rt_[a-z_]+", (ROOT / doc).read_text()))
        assert used and used <= names, (doc, used - names)

"""Notifications over real sockets, on both engines: every source, every operation, bad
ids, two connections of one user, offline catch-up, concurrent operations."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import ujson

from tests.integration.test_ws_basic import publish
from tests.support.schemas import is_valid
from tests.support.wsclient import Client, connect

FAILED = {"execution_id": "ex-42", "team_id": "t1", "status": "failed", "progress": 60,
          "error": {"code": "tool_error", "message": "The search tool timed out", "details": {"tool": "search"}}}


async def notify(http_client: Any, base_url: str, body: dict[str, Any], **headers: str) -> Any:
    return await publish(http_client, base_url, body, path="/api/v1/notifications", headers=headers)


async def count(client: Client, expected: int) -> None:
    await client.wait_unread(expected)


async def inbox(client: Client, **frame: Any) -> dict[str, Any]:
    reply = await client.request({"type": "notifications.list", **frame})
    assert reply["type"] == "notifications", reply
    return reply


@pytest.mark.gen_test
async def test_a_failed_execution_for_an_offline_user_waits_with_its_error_and_the_counter_follows_read(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    # the user is offline when the execution fails
    response = await publish(http_client, base_url, {"users": ["u1"], "event": "execution.status", "data": FAILED})
    assert response.code == 200, response.body
    first = await connect(ws_url, token("u1"))
    await count(first, 1)
    page = await inbox(first)
    (item,) = page["items"]
    assert page["unread"] == 1 and item["status"] == "unread" and item["level"] == "error"
    assert item["body"] == "The search tool timed out" and item["link"] == "/executions/ex-42"
    assert item["data"]["error"]["code"] == "tool_error"
    second = await connect(ws_url, token("u1"))
    await count(second, 1)
    reply = await first.request({"type": "notifications.read", "ids": [item["id"]]})
    assert reply["type"] == "ok"
    await count(second, 0)  # the other connection's badge falls too
    await count(first, 0)
    updated = await second.recv_until(lambda f: f["type"] == "event" and f["event"] == "notification.updated",
                                      "notification.updated")
    assert updated["data"] == {"ids": [item["id"]], "status": "read"}
    first.close()
    second.close()


@pytest.mark.gen_test
async def test_post_notifications_creates_one_per_user_pushed_live_and_is_idempotent(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    client = await connect(ws_url, token("u1"))
    await count(client, 0)
    body = {"users": ["u1", "u2"], "title": "Report ready", "body": "Your weekly report is ready",
            "level": "success", "category": "report", "data": {"report_id": "r1"}, "link": "/reports/r1"}
    response = await notify(http_client, base_url, body, **{"Idempotency-Key": "report-r1"})
    assert response.code == 200, response.body
    assert is_valid("http.json", ujson.loads(response.body), "notification_response")
    created = ujson.loads(response.body)["notification"]
    event = await client.recv_until(lambda f: f["type"] == "event" and f["event"] == "notification.created",
                                    "notification.created")
    assert event["data"]["id"] == created["id"] and event["data"]["title"] == "Report ready"
    await count(client, 1)
    again = await notify(http_client, base_url, body, **{"Idempotency-Key": "report-r1"})
    assert ujson.loads(again.body)["notification"]["id"] == created["id"]
    assert (await inbox(client))["unread"] == 1  # the retry created nothing
    client.close()


@pytest.mark.parametrize("body, field", [
    ({"title": "t"}, "users"),
    ({"users": ["u1"]}, "title"),
    ({"users": ["u1"], "title": ""}, "title"),
    ({"users": ["u1"], "title": "t", "level": "loud"}, "level"),
    ({"users": ["u1"], "title": "t", "data": [1]}, "data"),
    ({"users": ["not a user"], "title": "t"}, "users[0]"),
    ({"users": ["u1"], "title": "t", "link": 5}, "link"),
])
@pytest.mark.gen_test
async def test_bad_notification_bodies_are_refused_naming_the_field(
    http_client: Any, base_url: str, body: dict[str, Any], field: str
) -> None:
    response = await notify(http_client, base_url, body)
    assert response.code == 400
    assert ujson.loads(response.body)["error"]["field"] == field


@pytest.mark.gen_test
async def test_unknown_ids_and_another_users_ids_are_not_found_and_change_nothing(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    mine = ujson.loads((await notify(http_client, base_url, {"users": ["u1"], "title": "mine"})).body)["notification"]
    theirs = ujson.loads((await notify(http_client, base_url, {"users": ["u2"], "title": "x"})).body)["notification"]
    client = await connect(ws_url, token("u1"))
    await count(client, 1)
    for ids in ([theirs["id"]], [mine["id"], theirs["id"]], ["nonsense"]):
        reply = await client.request({"type": "notifications.dismiss", "ids": ids})
        assert (reply["type"], reply["code"]) == ("error", "not_found"), reply
    assert (await inbox(client))["unread"] == 1
    reply = await client.request({"type": "notifications.read", "ids": []})
    assert (reply["code"], reply["field"]) == ("bad_request", "ids")
    reply = await client.request({"type": "notifications.list", "cursor": "not-an-id"})
    assert (reply["code"], reply["field"]) == ("bad_request", "cursor")
    client.close()


@pytest.mark.gen_test
async def test_list_pages_newest_first_and_read_all_keeps_newer_ones_unread(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    ids = []
    for i in range(5):
        created = await notify(http_client, base_url, {"users": ["u1"], "title": f"n{i}"})
        ids.append(ujson.loads(created.body)["notification"]["id"])
    client = await connect(ws_url, token("u1"))
    await count(client, 5)
    first = await inbox(client, limit=2)
    second = await inbox(client, limit=2, cursor=first["next_cursor"])
    third = await inbox(client, limit=2, cursor=second["next_cursor"])
    assert [i["id"] for p in (first, second, third) for i in p["items"]] == ids[::-1]
    assert third["next_cursor"] is None
    reply = await client.request({"type": "notifications.read_all", "before": ids[2]})
    assert reply["type"] == "ok"
    await count(client, 2)
    assert [i["id"] for i in (await inbox(client, status="unread"))["items"]] == [ids[4], ids[3]]
    client.close()


@pytest.mark.gen_test
async def test_an_announcement_reaches_every_user_online_or_never_seen(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    online = await connect(ws_url, token("online"))
    await count(online, 0)
    response = await publish(http_client, base_url, {"event": "system.announcement",
                                                     "data": {"title": "Maintenance", "message": "Tonight 22:00",
                                                              "level": "warning"}}, path="/api/v1/broadcast")
    assert response.code == 200
    await count(online, 1)
    created = await online.recv_until(lambda f: f["type"] == "event" and f["event"] == "notification.created",
                                      "notification.created")
    assert created["channel"] == "system" and created["data"]["title"] == "Maintenance"
    newcomer = await connect(ws_url, token("never-connected-before"))
    await count(newcomer, 1)
    (item,) = (await inbox(newcomer))["items"]
    assert (item["body"], item["level"], item["category"]) == ("Tonight 22:00", "warning", "announcement")
    await newcomer.request({"type": "notifications.dismiss", "ids": [item["id"]]})
    await count(newcomer, 0)
    assert (await inbox(online))["unread"] == 1  # one user's dismissal is theirs alone
    online.close()
    newcomer.close()


@pytest.mark.gen_test
async def test_team_events_with_users_notify_them_and_progress_events_do_not(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    client = await connect(ws_url, token("u1"))
    await count(client, 0)
    running = {**FAILED, "status": "running", "error": None}
    del running["error"]
    await publish(http_client, base_url, {"users": ["u1"], "event": "execution.status", "data": running})
    await publish(http_client, base_url, {"users": ["u1"], "event": "team.created",
                                          "data": {"team_id": "t9", "name": "Market research"}})
    await count(client, 1)
    (item,) = (await inbox(client))["items"]
    assert item["category"] == "team" and "Market research" in item["title"] and item["link"] == "/teams/t9"
    client.close()


@pytest.mark.settings(notifications_from_events=False)
@pytest.mark.gen_test
async def test_event_notifications_can_be_turned_off(http_client: Any, base_url: str, ws_url: str,
                                                     token: Any) -> None:
    await publish(http_client, base_url, {"users": ["u1"], "event": "execution.status", "data": FAILED})
    client = await connect(ws_url, token("u1"))
    await count(client, 0)
    assert (await inbox(client))["items"] == []
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_two_connections_reading_at_once_end_with_the_same_exact_counter(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    ids = [ujson.loads((await notify(http_client, base_url, {"users": ["u1"], "title": f"n{i}"})).body)
           ["notification"]["id"] for i in range(10)]
    a, b = await connect(ws_url, token("u1")), await connect(ws_url, token("u1"))
    await asyncio.gather(count(a, 10), count(b, 10))
    # every frame sent before any reply is read: the operations race on the server
    frames = {a: [{"type": "notifications.read", "ids": ids[0::2], "ref": "a1"},
                  {"type": "notifications.read", "ids": ids[1::2], "ref": "a2"}],
              b: [{"type": "notifications.read_all", "ref": "b1"},
                  {"type": "notifications.dismiss", "ids": ids[:3], "ref": "b2"}]}
    for client, sent in frames.items():
        for frame in sent:
            await client.send(frame)
    for client, sent in frames.items():
        for frame in sent:
            ref = frame["ref"]
            reply = await client.recv_until(lambda f, ref=ref: f.get("ref") == ref, ref)
            assert reply["type"] == "ok", reply
    await asyncio.gather(count(a, 0), count(b, 0))
    assert (await inbox(a))["unread"] == 0 and len((await inbox(b, status="dismissed"))["items"]) == 3
    a.close()
    b.close()


@pytest.mark.gen_test
async def test_rest_operations_for_backend_services(http_client: Any, base_url: str, ws_url: str,
                                                    token: Any) -> None:
    created = ujson.loads((await notify(http_client, base_url, {"users": ["u1"], "title": "a"})).body)["notification"]
    listed = await http_client.fetch(f"{base_url}/api/v1/users/u1/notifications?status=unread&limit=5",
                                     headers={"Authorization": "Bearer test-api-key"}, raise_error=False)
    assert listed.code == 200, listed.body
    body = ujson.loads(listed.body)
    assert is_valid("http.json", body, "notifications_page")
    assert [i["id"] for i in body["items"]] == [created["id"]] and body["unread"] == 1
    client = await connect(ws_url, token("u1"))
    await count(client, 1)
    read = await publish(http_client, base_url, {"ids": [created["id"]]}, path="/api/v1/users/u1/notifications/read")
    assert read.code == 200 and ujson.loads(read.body)["unread"] == 0
    assert is_valid("http.json", ujson.loads(read.body), "notification_change")
    await count(client, 0)
    missing = await publish(http_client, base_url, {"ids": [created["id"]]},
                            path="/api/v1/users/u2/notifications/dismiss")
    assert missing.code == 404 and ujson.loads(missing.body)["error"]["code"] == "not_found"
    done = await publish(http_client, base_url, {}, path="/api/v1/users/u1/notifications/read_all")
    assert done.code == 200
    client.close()

"""The HTTP API for backend services: publish, broadcast, errors, idempotency."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from tests.conftest import API_KEY
from tests.integration.test_ws_basic import publish
from tests.support.schemas import load
from tests.support.wsclient import connect

STATUS = {"execution_id": "e1", "team_id": "t1", "status": "failed", "progress": 60,
          "error": {"code": "agent_crashed", "message": "agent 3 stopped", "details": {"agent": 3}}}


def error_of(response: Any) -> dict[str, Any]:
    return ujson.loads(response.body)["error"]


async def post_text(http_client: Any, base_url: str, text: str, path: str = "/api/v1/publish",
                    headers: dict[str, str] | None = None) -> Any:
    """POST ``text`` as it is: JSON that ``ujson.dumps`` would never write (NaN, lone
    surrogate escapes), or no JSON at all."""
    return await http_client.fetch(base_url + path, method="POST", body=text.encode(), raise_error=False,
                                   headers={"Authorization": f"Bearer {API_KEY}", "Content-Type": "application/json",
                                            **(headers or {})})


async def stored(node: Any, channel: str) -> list[Any]:
    """The events the engine holds on ``channel``."""
    return (await node.gateway.engine.history(channel, None, 100)).events


@pytest.mark.gen_test
async def test_publish_to_channel_and_users_answers_every_id(http_client: Any, base_url: str) -> None:
    response = await publish(http_client, base_url, {"channel": "execution:e1", "users": ["a", "b"],
                                                      "event": "execution.status", "data": STATUS})
    assert response.code == 200
    assert set(ujson.loads(response.body)["ids"]) == {"execution:e1", "user:a", "user:b"}


BAD_BODIES = [
    ({"users": ["a"], "data": {}}, "event"),
    ({"users": ["a"], "event": "x.y"}, "data"),
    ({"users": ["a"], "event": "x.y", "data": [1]}, "data"),
    ({"event": "x.y", "data": {}}, "channel"),
    ({"channel": "admin", "event": "x.y", "data": {}}, "channel"),
    ({"channel": "weird:1", "event": "x.y", "data": {}}, "channel"),
    ({"users": ["ok", 7], "event": "x.y", "data": {}}, "users[1]"),
    ({"users": ["a"], "event": "execution.status", "data": {**STATUS, "progress": 150}}, "data.progress"),
    ({"users": ["a"], "event": "execution.status", "data": {**STATUS, "status": "exploded"}}, "data.status"),
    ({"users": ["a"], "event": "execution.status", "data": {**STATUS, "error": {"message": "m"}}}, "data.error.code"),
]


@pytest.mark.parametrize("body,field", BAD_BODIES)
@pytest.mark.gen_test
async def test_bad_body_is_400_naming_the_field(http_client: Any, base_url: str, body: Any, field: str) -> None:
    response = await publish(http_client, base_url, body)
    assert response.code == 400
    error = error_of(response)
    assert error["code"] == "bad_request" and error["field"] == field and error["message"]


@pytest.mark.gen_test
async def test_body_that_is_not_json_is_400(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/api/v1/publish", method="POST", body="{nope", raise_error=False,
                                       headers={"Authorization": "Bearer test-api-key"})
    assert response.code == 400 and error_of(response)["code"] == "bad_request"


@pytest.mark.parametrize("header", [None, "Bearer wrong", "Basic dGVzdA==", "Bearer "])
@pytest.mark.gen_test
async def test_missing_or_wrong_key_is_401(http_client: Any, base_url: str, header: str | None) -> None:
    headers = {"Authorization": header} if header is not None else {}
    response = await http_client.fetch(base_url + "/api/v1/publish", method="POST", raise_error=False,
                                       body=ujson.dumps({"users": ["a"], "event": "x.y", "data": {}}), headers=headers)
    assert response.code == 401 and error_of(response)["code"] == "unauthorized"


@pytest.mark.settings(api_key=("key-one", "key-two"))
@pytest.mark.gen_test
async def test_several_keys_are_accepted(http_client: Any, base_url: str) -> None:
    for key in ("key-one", "key-two"):
        response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}}, key=key)
        assert response.code == 200


@pytest.mark.settings(http_max_body_bytes=1000)
@pytest.mark.gen_test
async def test_body_above_limit_is_413(http_client: Any, base_url: str) -> None:
    response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {"p": "x" * 2000}})
    assert response.code == 413 and error_of(response)["code"] == "too_large"


@pytest.mark.settings(http_rate=1, http_burst=2)
@pytest.mark.gen_test
async def test_rate_limit_per_key_is_429_with_retry_after(http_client: Any, base_url: str) -> None:
    codes = []
    for _ in range(4):
        response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}})
        codes.append(response.code)
    assert codes[:2] == [200, 200] and 429 in codes[2:]
    limited = next(r for r in [await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}})])
    assert limited.code == 429 and int(limited.headers["Retry-After"]) >= 1
    assert error_of(limited)["code"] == "rate_limited"


@pytest.mark.gen_test
async def test_idempotency_key_makes_a_retry_take_effect_once(
    http_client: Any, base_url: str, ws_url: str, token: Any
) -> None:
    client = await connect(ws_url, token("idem"))
    body = {"users": ["idem"], "event": "x.y", "data": {"n": 1}}
    first = await publish(http_client, base_url, body, headers={"Idempotency-Key": "k-1"})
    again = await publish(http_client, base_url, body, headers={"Idempotency-Key": "k-1"})
    assert first.code == again.code == 200 and first.body == again.body
    other = await publish(http_client, base_url, {**body, "data": {"n": 2}}, headers={"Idempotency-Key": "k-2"})
    events = [await client.recv_type("event"), await client.recv_type("event")]
    assert [e["data"]["n"] for e in events] == [1, 2]
    assert events[1]["id"] == ujson.loads(other.body)["ids"]["user:idem"]
    client.close()


@pytest.mark.gen_test
async def test_bad_idempotency_key_is_400(http_client: Any, base_url: str) -> None:
    response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}},
                             headers={"Idempotency-Key": "k" * 300})
    assert response.code == 400 and error_of(response)["field"] == "Idempotency-Key"


@pytest.mark.gen_test
async def test_broadcast_validates_announcement(http_client: Any, base_url: str) -> None:
    response = await publish(http_client, base_url, {"event": "system.announcement", "data": {"title": "t"}},
                             path="/api/v1/broadcast")
    assert response.code == 400 and error_of(response)["field"].startswith("data.")


@pytest.mark.gen_test
async def test_openapi_document_is_served(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/api/v1/openapi.json")
    document = ujson.loads(response.body)
    assert document["openapi"].startswith("3.") and "/api/v1/publish" in document["paths"]
    assert document == load("openapi.json")


@pytest.mark.gen_test
async def test_healthz(http_client: Any, base_url: str, settings: Any) -> None:
    response = await http_client.fetch(base_url + "/healthz")
    body = ujson.loads(response.body)
    assert response.code == 200 and body["status"] == "ok"
    assert body["engine"] == ("redis" if settings.redis_url else "memory")


@pytest.mark.gen_test
async def test_unknown_route_is_json_404(http_client: Any, base_url: str) -> None:
    response = await http_client.fetch(base_url + "/api/v1/nope", raise_error=False)
    assert response.code == 404 and error_of(response)["code"] == "not_found"


@pytest.mark.settings(api_key=("service-a", "service-b"))
@pytest.mark.gen_test
async def test_idempotency_keys_are_scoped_per_api_key(http_client: Any, base_url: str) -> None:
    body = {"users": ["a"], "event": "x.y", "data": {}}
    first = await publish(http_client, base_url, body, key="service-a", headers={"Idempotency-Key": "same"})
    second = await publish(http_client, base_url, body, key="service-b", headers={"Idempotency-Key": "same"})
    assert first.code == second.code == 200 and first.body != second.body


@pytest.mark.settings(max_users_per_publish=2)
@pytest.mark.gen_test
async def test_users_per_publish_are_bounded(http_client: Any, base_url: str) -> None:
    response = await publish(http_client, base_url, {"users": ["a", "b", "c"], "event": "x.y", "data": {}})
    assert response.code == 400 and error_of(response)["field"] == "users"


UNSENDABLE_TEXT = [
    # (body text, field): JSON the parser accepts but no client could be sent
    ('{"event": "x.y", "users": ["u-bad"], "data": {"title": "\\ud83d"}}', "data.title"),
    ('{"event": "x.y", "users": ["u-bad"], "data": {"a": [{"\\udc00": 1}]}}', "data.a[0].\\udc00"),
    ('{"event": "x.y", "users": ["u-bad", "\\ud83d"], "data": {}}', "users[1]"),
    ('{"event": "x.y", "users": ["u-bad"], "data": {"n": NaN}}', "data.n"),
    ('{"event": "x.y", "users": ["u-bad"], "data": {"n": [Infinity]}}', "data.n[0]"),
    ('{"event": "x.y", "users": ["u-bad"], "data": {"n": -Infinity}}', "data.n"),
    ('{"event": "x.y", "users": ["u-bad"], "data": {"n": 1e999}}', "data.n"),
]


@pytest.mark.parametrize("text,field", UNSENDABLE_TEXT)
@pytest.mark.gen_test
async def test_text_or_numbers_json_cannot_carry_are_400_and_nothing_is_stored(
    http_client: Any, base_url: str, node: Any, ws_url: str, token: Any, text: str, field: str
) -> None:
    response = await post_text(http_client, base_url, text)
    assert response.code == 400, response.body
    assert error_of(response)["code"] == "bad_request" and error_of(response)["field"] == field
    assert await stored(node, "user:u-bad") == []
    client = await connect(ws_url, token("u-bad"))  # the user's connections still work
    assert (await client.request({"type": "ping", "ref": "p"}))["type"] == "pong"
    client.close()


@pytest.mark.gen_test
async def test_broadcast_refuses_a_lone_surrogate(http_client: Any, base_url: str, node: Any) -> None:
    response = await post_text(http_client, base_url, '{"event": "x.y", "data": {"title": "\\ud83d"}}',
                               path="/api/v1/broadcast")
    assert response.code == 400 and error_of(response)["field"] == "data.title"
    assert await stored(node, "system") == []


@pytest.mark.gen_test
async def test_admin_broadcast_refuses_a_lone_surrogate(http_client: Any, base_url: str, node: Any, token: Any) -> None:
    admin = token("boss", app_metadata={"role": "admin"})
    response = await post_text(http_client, base_url, '{"title": "\\ud83d", "message": "m", "level": "info"}',
                               path="/admin/api/broadcast", headers={"Authorization": f"Bearer {admin}"})
    assert response.code == 400 and error_of(response)["field"] == "title"
    assert await stored(node, "system") == []

"""End to end over real sockets: connect, subscribe, publish over HTTP, receive."""

from __future__ import annotations

from typing import Any

import pytest
import ujson

from tests.conftest import API_KEY
from tests.support.wsclient import connect


async def publish(http_client: Any, base_url: str, body: dict[str, Any], key: str = API_KEY,
                  path: str = "/api/v1/publish", headers: dict[str, str] | None = None) -> Any:
    return await http_client.fetch(
        base_url + path, method="POST", body=ujson.dumps(body), raise_error=False,
        headers={"Authorization": f"Bearer {key}", "Content-Type": "application/json", **(headers or {})},
    )


@pytest.mark.gen_test
async def test_user_receives_execution_status(http_client: Any, base_url: str, ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"))
    data = {"execution_id": "e1", "team_id": "t1", "status": "running", "progress": 40}
    response = await publish(http_client, base_url, {"users": ["u1"], "event": "execution.status", "data": data})
    assert response.code == 200, response.body
    ids = ujson.loads(response.body)["ids"]
    frame = await client.recv_type("event")
    assert frame["channel"] == "user:u1" and frame["event"] == "execution.status" and frame["data"] == data
    assert frame["id"] == ids["user:u1"]
    client.close()


@pytest.mark.gen_test
async def test_subscribe_execution_with_grant_gets_latest_then_live(
    http_client: Any, base_url: str, ws_url: str, token: Any, grant: Any
) -> None:
    done = {"execution_id": "e9", "team_id": "t1", "status": "running", "progress": 10}
    await publish(http_client, base_url, {"channel": "execution:e9", "event": "execution.status", "data": done})
    client = await connect(ws_url, token("u1"))
    reply = await client.request({"type": "subscribe", "channel": "execution:e9", "token": grant("u1", "execution:e9")})
    assert reply["type"] == "subscribed" and reply["replayed"] == 1
    latest = await client.recv_type("event")
    assert latest["data"]["progress"] == 10
    done = {**done, "status": "completed", "progress": 100}
    await publish(http_client, base_url, {"channel": "execution:e9", "event": "execution.status", "data": done})
    live = await client.recv_type("event")
    assert live["data"]["status"] == "completed"
    client.close()

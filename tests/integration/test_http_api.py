"""The HTTP API for backend services: publish, broadcast, errors, idempotency."""

from __future__ import annotations

import asyncio
import json
import logging
import re
from typing import Any
from urllib.parse import urlsplit

import hypothesis
import pytest
import ujson
from hypothesis.strategies import SearchStrategy
from tornado.httpclient import AsyncHTTPClient

from renum_rt import channels
from renum_rt.engines import EngineUnavailable
from renum_rt.protocol import CODES
from tests.conftest import API_KEY, SECRET
from tests.integration.test_ws_basic import publish
from tests.support.schemas import is_valid, load
from tests.support.server_process import ServerProcess
from tests.support.wsclient import connect
from tests.unit.test_fuzz import BODIES

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


async def raw_request(base_url: str, headers: dict[str, str], body_parts: tuple[bytes, ...] = (),
                      path: str = "/api/v1/publish") -> tuple[int, dict[str, Any]]:
    """POST over a bare socket: the headers, then each of ``body_parts`` (all of it,
    or less than the headers announce), then the answer, which must come within 5 s
    without the rest of the body: a server that waits for it fails the test."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    try:
        head = f"POST {path} HTTP/1.1\r\nHost: {address.netloc}\r\n"
        head += "".join(f"{name}: {value}\r\n" for name, value in headers.items()) + "\r\n"
        writer.write(head.encode())
        for part in body_parts:
            writer.write(part)
        await writer.drain()
        answer_head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
        status = int(answer_head.split(b" ", 2)[1])
        length = next(int(line.split(b":", 1)[1]) for line in answer_head.split(b"\r\n")
                      if line.lower().startswith(b"content-length:"))
        return status, ujson.loads(await asyncio.wait_for(reader.readexactly(length), 5))
    finally:
        writer.close()


def chunk(data: bytes) -> bytes:
    """One chunk of a ``Transfer-Encoding: chunked`` body."""
    return b"%x\r\n%s\r\n" % (len(data), data)


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
    response = await post_text(http_client, base_url, "{nope")
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


JSON = {"Content-Type": "application/json"}
KEY = {"Authorization": f"Bearer {API_KEY}"}


@pytest.mark.parametrize("auth", [{}, {"Authorization": "Bearer wrong"}])
@pytest.mark.gen_test
async def test_the_key_is_checked_before_the_body_is_read(
    http_server: Any, base_url: str, auth: dict[str, str]
) -> None:
    """An unauthenticated upload is answered from its headers: nothing of it is read."""
    status, body = await raw_request(base_url, {**auth, **JSON, "Content-Length": str(4 << 20)})
    assert status == 401 and body["error"]["code"] == "unauthorized"


@pytest.mark.settings(http_max_body_bytes=1000)
@pytest.mark.gen_test
async def test_a_declared_length_above_the_limit_is_413_before_the_body_is_read(
    http_server: Any, base_url: str
) -> None:
    status, body = await raw_request(base_url, {**KEY, **JSON, "Content-Length": "1001"})
    assert status == 413 and body["error"]["code"] == "too_large"


@pytest.mark.settings(http_max_body_bytes=1000)
@pytest.mark.gen_test
async def test_a_chunked_body_is_refused_once_it_passes_the_limit(http_server: Any, base_url: str, node: Any) -> None:
    """No Content-Length to check: the answer comes as soon as the limit is passed,
    without waiting for the rest (the last chunk is never sent)."""
    headers = {**KEY, **JSON, "Transfer-Encoding": "chunked"}
    status, body = await raw_request(base_url, headers, (chunk(b'{"event": "x.y", "users": ["big"], "data": {"p": "'),
                                                         chunk(b"x" * 1000)))
    assert status == 413 and body["error"]["code"] == "too_large"
    assert await stored(node, "user:big") == []


@pytest.mark.settings(http_max_body_bytes=1000)
@pytest.mark.gen_test
async def test_a_chunked_body_within_the_limit_is_published(http_server: Any, base_url: str, node: Any) -> None:
    text = ujson.dumps({"event": "x.y", "users": ["chunked"], "data": {"p": "x" * 500}}).encode()
    status, body = await raw_request(base_url, {**KEY, **JSON, "Transfer-Encoding": "chunked"},
                                     (chunk(text[:100]), chunk(text[100:]), b"0\r\n\r\n"))
    assert status == 200 and set(body["ids"]) == {"user:chunked"}
    assert len(await stored(node, "user:chunked")) == 1


@pytest.mark.parametrize("content_type", ["application/json", "application/json; charset=utf-8",
                                          "Application/JSON;charset=UTF-8", 'application/json; charset="utf-8"'])
@pytest.mark.gen_test
async def test_json_content_types_are_accepted(http_client: Any, base_url: str, content_type: str) -> None:
    response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}},
                             headers={"Content-Type": content_type})
    assert response.code == 200


@pytest.mark.parametrize("path", ["/api/v1/publish", "/api/v1/broadcast", "/admin/api/broadcast"])
@pytest.mark.parametrize("content_type", [None, "text/plain", "application/x-www-form-urlencoded",
                                          "application/json; charset=latin-1", "application/jsonx"])
@pytest.mark.gen_test
async def test_other_content_types_are_415(
    http_server: Any, base_url: str, node: Any, token: Any, path: str, content_type: str | None
) -> None:
    bearer = token("boss", app_metadata={"role": "admin"}) if path.startswith("/admin") else API_KEY
    text = ujson.dumps({"users": ["a"], "event": "x.y", "data": {}} if path == "/api/v1/publish" else
                       {"event": "x.y", "data": {}, "title": "t", "message": "m"}).encode()
    headers = {"Authorization": f"Bearer {bearer}", "Content-Length": str(len(text))}
    if content_type is not None:
        headers["Content-Type"] = content_type
    status, body = await raw_request(base_url, headers, (text,), path=path)
    assert status == 415 and body["error"]["code"] == "bad_request" and "application/json" in body["error"]["message"]
    assert await stored(node, "user:a") == [] and await stored(node, "system") == []


@pytest.mark.settings(http_max_body_bytes=1000)
@pytest.mark.gen_test
async def test_checks_before_the_body_run_key_then_size_then_content_type(http_server: Any, base_url: str) -> None:
    too_long = {"Content-Length": "5000"}
    assert (await raw_request(base_url, {"Content-Type": "text/plain", **too_long}))[0] == 401
    assert (await raw_request(base_url, {**KEY, "Content-Type": "text/plain", **too_long}))[0] == 413
    assert (await raw_request(base_url, {**KEY, "Content-Type": "text/plain", "Content-Length": "10"}))[0] == 415


def failure_lines(caplog: pytest.LogCaptureFixture) -> list[dict[str, Any]]:
    return [record.fields for record in caplog.records if record.getMessage() == "http failure"]  # type: ignore[attr-defined]


@pytest.mark.parametrize("raised,status", [(EngineUnavailable("redis unavailable: Connection refused"), 503),
                                           (RuntimeError("engine bug"), 500)])
@pytest.mark.gen_test
async def test_every_5xx_logs_why(http_client: Any, base_url: str, node: Any, monkeypatch: pytest.MonkeyPatch,
                                  caplog: pytest.LogCaptureFixture, raised: Exception, status: int) -> None:
    async def failing(*args: Any, **kwargs: Any) -> dict[str, str]:
        raise raised

    monkeypatch.setattr(node.gateway.engine, "publish", failing)
    caplog.set_level(logging.WARNING, logger="renum_rt")
    response = await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}})
    assert response.code == status and error_of(response)["code"] == ("unavailable" if status == 503 else "internal")
    [line] = failure_lines(caplog)
    assert line == {"method": "POST", "path": "/api/v1/publish", "status": status,
                    "error": type(raised).__name__, "reason": str(raised)}
    assert API_KEY not in caplog.text


@pytest.mark.gen_test
async def test_admin_503_logs_why(http_client: Any, base_url: str, node: Any, token: Any,
                                  monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    async def failing() -> dict[str, Any]:
        raise EngineUnavailable("redis unavailable: Timeout")

    monkeypatch.setattr(node.gateway.cluster, "stats", failing)
    caplog.set_level(logging.WARNING, logger="renum_rt")
    admin = token("boss", app_metadata={"role": "admin"})
    response = await http_client.fetch(base_url + "/admin/api/stats", raise_error=False,
                                       headers={"Authorization": f"Bearer {admin}"})
    assert response.code == 503
    [line] = failure_lines(caplog)
    assert line["path"] == "/admin/api/stats" and line["error"] == "EngineUnavailable" and "Timeout" in line["reason"]
    assert admin not in caplog.text


async def closed_by_server(base_url: str, sent: bytes, within: float = 5.0) -> bool:
    """Send ``sent`` and nothing more: True once the server closes the connection."""
    address = urlsplit(base_url)
    reader, writer = await asyncio.open_connection(address.hostname, address.port)
    writer.write(sent)
    try:
        await asyncio.wait_for(reader.read(), within)  # b"" at the close: the request was never answered
        return True
    except TimeoutError:
        return False
    finally:
        writer.close()


@pytest.mark.settings(http_header_timeout_s=0.3)
@pytest.mark.gen_test
async def test_headers_sent_too_slowly_close_the_connection(http_server: Any, base_url: str) -> None:
    assert await closed_by_server(base_url, b"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\n")


@pytest.mark.settings(http_body_timeout_s=0.3)
@pytest.mark.gen_test
async def test_a_body_sent_too_slowly_closes_the_connection(http_server: Any, base_url: str) -> None:
    head = (f"POST /api/v1/publish HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer {API_KEY}\r\n"
            "Content-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"event\"")
    assert await closed_by_server(base_url, head.encode())


async def seen_address(http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture, **headers: str) -> str:
    """The client address the server saw for one request (its access log line)."""
    caplog.clear()
    with caplog.at_level(logging.DEBUG, logger="renum_rt"):
        await http_client.fetch(base_url + "/healthz", headers={k.replace("_", "-"): v for k, v in headers.items()})
    [line] = [r.fields for r in caplog.records if r.getMessage() == "http"]  # type: ignore[attr-defined]
    return str(line["ip"])


@pytest.mark.gen_test
async def test_forwarding_headers_from_an_untrusted_peer_are_ignored(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert await seen_address(http_client, base_url, caplog, X_Forwarded_For="203.0.113.7") == "127.0.0.1"
    assert await seen_address(http_client, base_url, caplog, X_Real_Ip="203.0.113.7") == "127.0.0.1"


@pytest.mark.settings(trusted_proxies=("10.0.0.0/8", "::1"))
@pytest.mark.gen_test
async def test_forwarding_headers_from_a_peer_outside_trusted_proxies_are_ignored(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert await seen_address(http_client, base_url, caplog, X_Forwarded_For="203.0.113.7") == "127.0.0.1"


@pytest.mark.settings(trusted_proxies=("127.0.0.1",))
@pytest.mark.gen_test
async def test_a_trusted_proxy_names_the_client(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    assert await seen_address(http_client, base_url, caplog, X_Forwarded_For="203.0.113.7") == "203.0.113.7"
    assert await seen_address(http_client, base_url, caplog, X_Real_Ip="198.51.100.2") == "198.51.100.2"
    # the next request on the server is judged on its own headers
    assert await seen_address(http_client, base_url, caplog) == "127.0.0.1"


@pytest.mark.settings(trusted_proxies=("127.0.0.0/8",))
@pytest.mark.gen_test
async def test_a_chain_of_trusted_proxies_names_the_client(
    http_client: Any, base_url: str, caplog: pytest.LogCaptureFixture
) -> None:
    """Load balancer, then a local proxy: the addresses of trusted networks are skipped."""
    assert await seen_address(http_client, base_url, caplog,
                              X_Forwarded_For="198.51.100.9, 203.0.113.7, 127.0.0.9") == "203.0.113.7"


@pytest.mark.gen_test(timeout=30)
async def test_the_command_bounds_slow_clients_and_ignores_untrusted_forwarding() -> None:
    """renum-rt as a process builds its server from the same options."""
    server = ServerProcess({"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY,
                            "RENUM_RT_HTTP_HEADER_TIMEOUT_S": "0.5"}).start()
    try:
        assert await closed_by_server(server.url, b"GET /healthz HTTP/1.1\r\n")
        response = await AsyncHTTPClient().fetch(server.url + "/nowhere", headers={"X-Forwarded-For": "203.0.113.7"},
                                                 raise_error=False)
        assert response.code == 404
    finally:
        server.stop()
    lines = [ujson.loads(line) for line in server.log().splitlines() if line.startswith("{")]
    assert [line["ip"] for line in lines if line["msg"] == "http" and line["path"] == "/nowhere"] == ["127.0.0.1"]


@pytest.mark.parametrize("path", ["/admin", "/admin/"])
@pytest.mark.gen_test
async def test_the_admin_page_cannot_be_framed_sniffed_or_injected(http_client: Any, base_url: str, path: str) -> None:
    response = await http_client.fetch(base_url + path)
    headers = response.headers
    assert (headers["X-Frame-Options"], headers["X-Content-Type-Options"], headers["Referrer-Policy"]) == (
        "DENY", "nosniff", "no-referrer")
    csp = headers["Content-Security-Policy"]
    policy = {name: value.split() for name, _, value in (part.strip().partition(" ") for part in csp.split(";"))}
    host = urlsplit(base_url).netloc
    assert policy["default-src"] == policy["script-src"] == policy["style-src"] == policy["form-action"] == ["'self'"]
    assert policy["frame-ancestors"] == policy["base-uri"] == ["'none'"]
    assert policy["img-src"] == ["'self'", "data:"]
    assert policy["connect-src"] == ["'self'", f"ws://{host}", f"wss://{host}"]
    assert "unsafe" not in csp and "*" not in csp and "sha256" not in csp
    # nothing inline to allow: the page's script and style are files under /static/
    blocks = re.findall(rb"<(script|style)\b([^>]*)>(.*?)</\1>", response.body, re.DOTALL)
    assert blocks and all(kind == b"script" and b"src=" in attributes and not body.strip()
                          for kind, attributes, body in blocks)


@pytest.mark.gen_test
async def test_json_answers_are_not_sniffed(http_client: Any, base_url: str) -> None:
    answers = [await publish(http_client, base_url, {"users": ["a"], "event": "x.y", "data": {}}),
               await publish(http_client, base_url, {"users": ["a"]}),
               await http_client.fetch(base_url + "/nowhere", raise_error=False),
               await http_client.fetch(base_url + "/healthz")]
    assert [a.headers.get("X-Content-Type-Options") for a in answers] == ["nosniff"] * 4


def generated(strategy: SearchStrategy[Any], count: int) -> list[Any]:
    """About ``count`` values drawn by Hypothesis from ``strategy`` (generation only:
    the server is checked on all of them below, not shrunk per example)."""
    values: list[Any] = []

    @hypothesis.settings(max_examples=count, deadline=None, database=None, phases=[hypothesis.Phase.generate])
    @hypothesis.given(strategy)
    def collect(value: Any) -> None:
        values.append(value)

    collect()
    return values


def channels_named(body: Any) -> set[str]:
    """The publishable channels ``body`` names: the only ones a request can store into."""
    names: list[object] = ["system"]
    if isinstance(body, dict):
        listed = body.get("users") if isinstance(body.get("users"), list) else []
        names += [body.get("channel")] + [f"user:{u}" for u in listed if isinstance(u, str)]
    publishable = set()
    for name in names:
        try:
            publishable.add(channels.check_publishable(name))
        except channels.ChannelError:
            pass
    return publishable


@pytest.mark.parametrize("settings", ["memory"], indirect=True)
@pytest.mark.gen_test(timeout=60)
async def test_generated_bodies_get_a_json_answer_and_only_accepted_ones_are_stored(
    http_client: Any, base_url: str, node: Any
) -> None:
    accepted: set[tuple[str, str]] = set()
    named: set[str] = set()
    for body in generated(BODIES, 250):
        text = json.dumps(body)  # NaN and Infinity as ujson reads them, lone surrogates as \u escapes
        targeted = isinstance(body, dict) and ("channel" in body or "users" in body)
        path = "/api/v1/publish" if targeted else "/api/v1/broadcast"
        response = await post_text(http_client, base_url, text, path=path)
        if response.code == 200:
            accepted |= set(ujson.loads(response.body)["ids"].items())
        else:
            assert 400 <= response.code < 500, (response.code, text)
            assert error_of(response)["code"] in CODES and error_of(response)["message"], text
        named |= channels_named(body)
    assert (await http_client.fetch(base_url + "/healthz")).code == 200
    assert accepted, "no generated body was accepted: the strategy no longer tests the accepting path"
    # the server's own events (notification.created for an announcement or a failed
    # execution) are not from a request
    kept = {(name, event.id) for name in named for event in await stored(node, name)
            if not event.name.startswith("notification.")}
    assert kept == accepted


BATCH = "/api/v1/publish/batch"


@pytest.mark.gen_test
async def test_a_batch_stores_valid_events_in_order_and_refuses_invalid_ones_alone(
    http_client: Any, base_url: str, ws_url: str, token: Any, node: Any
) -> None:
    client = await connect(ws_url, token("nb"))
    events = [{"users": ["nb"], "event": "x.y", "data": {"n": 1}},
              {"users": ["nb"], "event": "execution.status", "data": {**STATUS, "progress": 400}},
              {"users": ["nb"], "event": "execution.status", "data": STATUS},  # failed: a notification too
              [],
              {"users": ["nb"], "event": "x.y", "data": {"": "@NAN@"}},
              {"channel": "team:t9", "users": ["nb"], "event": "x.y", "data": {"n": 2}}]
    response = await post_text(http_client, base_url, ujson.dumps({"events": events}).replace('"@NAN@"', "NaN"),
                               path=BATCH)
    assert response.code == 200, response.body
    answer = ujson.loads(response.body)
    assert is_valid("http.json", answer, "publish_batch_response")
    results = answer["results"]
    assert [sorted(r) for r in results] == [["ids"], ["error"], ["ids"], ["error"], ["error"], ["ids"]]
    assert [r["error"]["field"] for r in results if "error" in r] == [
        "events[1].data.progress", "events[3]", 'events[4].data[""]']
    assert all(r["error"]["code"] == "bad_request" for r in results if "error" in r)
    ids = [r["ids"]["user:nb"] for r in results if "ids" in r]
    assert [e.id for e in await stored(node, "user:nb") if e.name != "notification.created"] == ids
    assert [e.id for e in await stored(node, "team:t9")] == [results[5]["ids"]["team:t9"]]
    got = [await client.recv_until(lambda f: f["type"] == "event" and f["channel"] == "user:nb", "event")
           for _ in range(4)]  # the three events in order, and the failed execution's notification
    assert [f["id"] for f in got if f["event"] != "notification.created"] == ids
    assert [f["event"] for f in got].count("notification.created") == 1
    client.close()


@pytest.mark.parametrize(("body", "field"), [([], "body"), ({"events": []}, "events"), ({"events": {}}, "events"),
                                             ({}, "events")])
@pytest.mark.gen_test
async def test_a_batch_body_that_is_wrong_as_a_whole_is_400(http_client: Any, base_url: str, body: Any,
                                                            field: str) -> None:
    response = await publish(http_client, base_url, body, path=BATCH)
    assert response.code == 400 and error_of(response)["field"] == field


@pytest.mark.settings(max_events_per_batch=3)
@pytest.mark.gen_test
async def test_a_batch_beyond_max_events_per_batch_is_413_and_stores_nothing(
    http_client: Any, base_url: str, node: Any
) -> None:
    event = {"channel": "team:big", "event": "x.y", "data": {}}
    response = await publish(http_client, base_url, {"events": [event] * 4}, path=BATCH)
    assert response.code == 413 and error_of(response) == {
        "code": "too_large", "field": "events", "message": error_of(response)["message"]}
    assert await stored(node, "team:big") == []
    assert (await publish(http_client, base_url, {"events": [event] * 3}, path=BATCH)).code == 200
    response = await post_text(http_client, base_url, "{}", path=BATCH, headers={"Content-Type": "text/plain"})
    assert response.code == 415


@pytest.mark.settings(http_rate=1, http_burst=2)
@pytest.mark.gen_test
async def test_a_batch_takes_one_rate_limit_token_and_checks_the_key_first(http_client: Any, base_url: str) -> None:
    body = {"events": [{"users": ["a"], "event": "x.y", "data": {}}] * 10}
    assert (await publish(http_client, base_url, body, path=BATCH, key="wrong")).code == 401
    codes = [(await publish(http_client, base_url, body, path=BATCH)).code for _ in range(3)]
    assert codes[:2] == [200, 200] and codes[2] == 429


@pytest.mark.gen_test
async def test_a_batch_with_an_idempotency_key_stores_each_event_once(
    http_client: Any, base_url: str, node: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    body = {"events": [{"channel": "team:idb", "event": "x.y", "data": {"n": n}} for n in range(3)]
               + [{"event": "x.y", "data": {}}]}
    first = await publish(http_client, base_url, body, path=BATCH, headers={"Idempotency-Key": "b-1"})
    again = await publish(http_client, base_url, body, path=BATCH, headers={"Idempotency-Key": "b-1"})
    assert first.code == again.code == 200 and first.body == again.body
    assert [e.data["n"] for e in await stored(node, "team:idb")] == [0, 1, 2]
    # a single publish with the same key is another route: its own key
    single = await publish(http_client, base_url, body["events"][0], headers={"Idempotency-Key": "b-1"})
    assert ujson.loads(single.body)["ids"] != ujson.loads(first.body)["results"][0]["ids"]

    async def down(*args: Any, **kwargs: Any) -> Any:
        raise EngineUnavailable("test: the store is down")

    monkeypatch.setattr(node.gateway.engine, "publish_batch", down)
    failed = await publish(http_client, base_url, body, path=BATCH, headers={"Idempotency-Key": "b-2"})
    assert failed.code == 503 and error_of(failed)["code"] == "unavailable"

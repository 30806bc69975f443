"""Authentication and the upgrade: URL tokens, the auth frame, versions, origins, expiry."""

from __future__ import annotations

import asyncio
from typing import Any

import jwt
import pytest
import tornado.httpclient
import tornado.websocket
import ujson

from tests.conftest import SECRET
from tests.support.wsclient import connect


async def refused(ws_url: str, **kw: Any) -> tuple[int, dict[str, Any]]:
    """Try to open ``ws_url``; return the HTTP status and JSON body of the refusal."""
    request = tornado.httpclient.HTTPRequest(ws_url, **kw)
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await tornado.websocket.websocket_connect(request, subprotocols=kw.pop("subprotocols", None))
    response = info.value.response
    assert response is not None
    return info.value.code, ujson.loads(response.body)


BAD_URL_TOKENS = {
    "garbage": lambda t: "not-a-jwt",
    "expired": lambda t: t("u1", ttl_s=-3600),
    "bad signature": lambda t: jwt.encode({"sub": "u1", "exp": 9999999999}, "another-secret-" + "y" * 32, "HS256"),
    "alg none": lambda t: jwt.encode({"sub": "u1", "exp": 9999999999}, None, algorithm="none"),
    "no sub": lambda t: jwt.encode({"exp": 9999999999}, SECRET, "HS256"),
}


@pytest.mark.parametrize("case", sorted(BAD_URL_TOKENS))
@pytest.mark.gen_test
async def test_bad_url_token_is_refused_before_upgrade(ws_url: str, token: Any, case: str) -> None:
    status, body = await refused(f"{ws_url}?token={BAD_URL_TOKENS[case](token)}")
    assert status == 401
    assert body["error"]["code"] == "unauthorized" and body["error"]["message"]


@pytest.mark.gen_test
async def test_auth_frame_authenticates(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, welcome=False)
    await client.send({"type": "auth", "token": token("u7")})
    welcome = await client.recv()
    assert welcome is not None and welcome["type"] == "welcome" and welcome["user_id"] == "u7"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.gen_test
async def test_bad_auth_frame_gets_error_then_4001(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, welcome=False)
    await client.send({"type": "auth", "token": token("u1", ttl_s=-3600), "ref": "a"})
    error = await client.recv()
    assert error is not None and error["type"] == "error" and error["code"] == "unauthorized" and error["ref"] == "a"
    assert await client.closed() == 4001


@pytest.mark.gen_test
async def test_frame_before_auth_is_refused(ws_url: str) -> None:
    client = await connect(ws_url, welcome=False)
    await client.send({"type": "subscribe", "channel": "system"})
    error = await client.recv()
    assert error is not None and error["code"] == "unauthorized"
    assert await client.closed() == 4001


@pytest.mark.settings(auth_timeout_s=0.3)
@pytest.mark.gen_test
async def test_no_auth_frame_within_deadline_closes_4001(ws_url: str) -> None:
    client = await connect(ws_url, welcome=False)
    error = await client.recv()
    assert error is not None and error["code"] == "unauthorized"
    assert await client.closed() == 4001


@pytest.mark.gen_test
async def test_subprotocol_renum_v1_is_selected(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"), subprotocols=["renum.v1"])
    assert client.conn.selected_subprotocol == "renum.v1"
    client.close()


@pytest.mark.gen_test
async def test_unknown_version_is_refused_with_supported_list(ws_url: str, token: Any) -> None:
    request = tornado.httpclient.HTTPRequest(f"{ws_url}?token={token('u1')}")
    with pytest.raises(tornado.httpclient.HTTPClientError) as info:
        await tornado.websocket.websocket_connect(request, subprotocols=["renum.v9"])
    assert info.value.code == 400
    body = ujson.loads(info.value.response.body)
    assert body["error"]["code"] == "unsupported_version" and body["error"]["supported"] == ["renum.v1"]


@pytest.mark.gen_test
async def test_foreign_origin_is_refused(ws_url: str, token: Any) -> None:
    status, body = await refused(f"{ws_url}?token={token('u1')}", headers={"Origin": "https://evil.example"})
    assert status == 403 and body["error"]["code"] == "forbidden"


@pytest.mark.settings(allowed_origins=("https://app.renum.example",))
@pytest.mark.gen_test
async def test_allowed_origin_connects(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"), headers={"Origin": "https://app.renum.example"})
    client.close()


@pytest.mark.settings(jwt_leeway_s=0)
@pytest.mark.gen_test
async def test_token_expiring_unrefreshed_closes_4001(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1", ttl_s=1))
    error = await client.recv_type("error", timeout=5)
    assert error["code"] == "unauthorized"
    assert await client.closed() == 4001


@pytest.mark.settings(jwt_leeway_s=0)
@pytest.mark.gen_test
async def test_refresh_replaces_token_in_place(ws_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1", ttl_s=1))
    reply = await client.request({"type": "refresh", "token": token("u1", ttl_s=3600)})
    assert reply["type"] == "ok"
    await asyncio.sleep(1.5)  # past the first token's expiry: the connection must still serve
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    other = await client.request({"type": "refresh", "token": token("someone-else")})
    assert other["type"] == "error" and other["code"] == "forbidden"
    bad = await client.request({"type": "refresh", "token": "nope"})
    assert bad["type"] == "error" and bad["code"] == "unauthorized"
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.gen_test(timeout=20)
async def test_rs256_tokens_verified_with_keys_from_a_jwks_url() -> None:
    """A real JWKS endpoint over HTTP: the key is fetched on first use and again when
    a token names a new kid (key rotation)."""
    import json
    import time

    import tornado.httpserver
    import tornado.web
    from cryptography.hazmat.primitives.asymmetric import rsa

    from renum_rt.app import Node
    from renum_rt.config import Settings
    from tests.support.server_process import free_port

    keys = {kid: rsa.generate_private_key(public_exponent=65537, key_size=2048) for kid in ("k1", "k2")}
    published = ["k1"]
    fetches = []

    class Jwks(tornado.web.RequestHandler):
        def get(self) -> None:
            fetches.append(1)
            entries = []
            for kid in published:
                jwk = json.loads(jwt.algorithms.RSAAlgorithm.to_jwk(keys[kid].public_key()))
                entries.append({**jwk, "kid": kid, "alg": "RS256", "use": "sig"})
            self.write({"keys": entries})

    jwks_port, port = free_port(), free_port()
    jwks_server = tornado.httpserver.HTTPServer(tornado.web.Application([(r"/jwks", Jwks)]))
    jwks_server.listen(jwks_port, "127.0.0.1")
    node = Node(Settings(jwks_url=f"http://127.0.0.1:{jwks_port}/jwks", port=port))
    await node.start()
    server = tornado.httpserver.HTTPServer(node.app)
    server.listen(port, "127.0.0.1")

    def sign(kid: str, sub: str) -> str:
        return jwt.encode({"sub": sub, "exp": int(time.time()) + 600}, keys[kid], "RS256", headers={"kid": kid})

    try:
        url = f"ws://127.0.0.1:{port}/ws"
        first = await connect(url, sign("k1", "rs-user"))
        first.close()
        published.append("k2")  # rotation: the IdP starts signing with k2
        assert len(fetches) == 1
        node.gateway.access.auth._fetched_at = -1e9  # the 10 s refetch guard is unit-tested; skip it here
        second = await connect(url, sign("k2", "rs-user"))
        second.close()
        assert len(fetches) == 2
        status, body = await refused(f"{url}?token={jwt.encode({'sub': 'x', 'exp': 9999999999}, 'h' * 32, 'HS256')}")
        assert status == 401
    finally:
        server.stop()
        jwks_server.stop()
        await node.stop()


@pytest.mark.gen_test
async def test_same_origin_is_allowed_by_default(ws_url: str, base_url: str, token: Any) -> None:
    client = await connect(ws_url, token("u1"), headers={"Origin": base_url})
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()


@pytest.mark.gen_test
async def test_an_open_connection_keeps_no_url_token(ws_url: str, token: Any, node: Any) -> None:
    """Tornado keeps the upgrade request as long as the connection: its URL (which held
    the token) is reduced to the path once the connection is open."""
    secret = token("u8")
    client = await connect(f"{ws_url}?token={secret}")
    conn = node.gateway.registry.of_user("u8")[0]
    request = conn.request
    assert (request.uri, request.query, request.query_arguments, request.arguments) == ("/ws", "", {}, {})
    assert secret not in repr(request)
    assert (await client.request({"type": "ping"}))["type"] == "pong"
    client.close()

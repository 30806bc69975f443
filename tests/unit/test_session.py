"""Session: one connection's state machine driven with plain strings and explicit times."""

from __future__ import annotations

import json
from typing import Any

import pytest

from renum_rt.channels import Identity
from renum_rt.config import Settings
from renum_rt.protocol import PROTOCOL_VERSION, ProtocolError
from renum_rt.protocol.errors import CLOSE_POLICY, CLOSE_UNAUTHORIZED
from renum_rt.session import Session

T0 = 1_700_000_000.0
PING = '{"type":"ping"}'


def settings(**changes: Any) -> Settings:
    return Settings(jwt_secret="x" * 32, **changes)


def session(now: float = T0, identity: Identity | None = None, **changes: Any) -> Session:
    s = Session("c1", "10.0.0.1", settings(**changes), now, origin="https://app.example")
    if identity is not None:
        s.authenticate(identity)
    return s


def authed(now: float = T0, **changes: Any) -> Session:
    return session(now, Identity("u1", exp=T0 + 3600), **changes)


def error(s: Session, message: str | bytes, now: float = T0) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        s.receive(message, now)
    return info.value


def frame(**fields: Any) -> str:
    return json.dumps(fields)


# ---------------------------------------------------------------- rate limiting


def test_burst_then_rate_limited_with_retry_after() -> None:
    s = authed(rate=4.0, burst=3)
    for _ in range(3):
        assert s.receive(PING, T0).type == "ping"
    err = error(s, PING, T0)
    assert err.code == "rate_limited" and err.close is None
    assert err.retry_after_ms == 250
    assert err.frame()["retry_after_ms"] == 250
    # half-way to the next token
    err = error(s, PING, T0 + 0.125)
    assert err.code == "rate_limited" and err.retry_after_ms == 125


def test_retry_after_ms_is_at_least_one() -> None:
    s = authed(rate=4.0, burst=1)
    s.receive(PING, T0)
    err = error(s, PING, T0 + 0.2499)  # 0.1 ms short of a token
    assert err.code == "rate_limited" and err.retry_after_ms == 1


def test_refill_over_time() -> None:
    s = authed(rate=4.0, burst=3)
    for _ in range(3):
        s.receive(PING, T0)
    error(s, PING, T0)
    s.receive(PING, T0 + 0.25)  # one token back
    error(s, PING, T0 + 0.25)
    for _ in range(3):  # a full burst after long enough, never more
        s.receive(PING, T0 + 100)
    assert error(s, PING, T0 + 100).code == "rate_limited"


def test_flood_closes_with_1008_after_flood_close_after_limited_frames_in_a_row() -> None:
    s = authed(rate=1.0, burst=1, flood_close_after=3)
    s.receive(PING, T0)
    first, second = error(s, PING, T0), error(s, PING, T0)
    assert first.close is None and second.close is None
    assert first.retry_after_ms is not None
    third = error(s, PING, T0)
    assert third.code == "rate_limited" and third.close == CLOSE_POLICY


def test_a_served_frame_resets_the_flood_count() -> None:
    s = authed(rate=1.0, burst=1, flood_close_after=3)
    s.receive(PING, T0)
    error(s, PING, T0)
    error(s, PING, T0)
    s.receive(PING, T0 + 1)  # a token came back: served
    assert s.limited_in_row == 0
    assert error(s, PING, T0 + 1).close is None
    assert error(s, PING, T0 + 1).close is None
    assert error(s, PING, T0 + 1).close == CLOSE_POLICY


def test_malformed_frames_cost_tokens_too() -> None:
    s = authed(rate=1.0, burst=2)
    assert error(s, "not json").code == "bad_request"
    assert error(s, b"\x00binary").code == "bad_request"
    assert error(s, PING).code == "rate_limited"


# ---------------------------------------------------------------- size


def test_too_large_above_max_frame_bytes_counts_as_activity() -> None:
    s = authed(max_frame_bytes=100)
    pad = '{"type":"ping","pad":"%s"}'
    exactly = pad % ("a" * (100 - len(pad % "")))
    assert len(exactly) == 100
    assert s.receive(exactly, T0).type == "ping"
    err = error(s, pad % ("a" * 90), T0 + 500)
    assert err.code == "too_large" and err.close is None
    assert s.last_active == T0 + 500
    assert error(s, b"x" * 101, T0 + 501).code == "too_large"


def test_too_large_counts_utf8_bytes_not_characters() -> None:
    s = authed(max_frame_bytes=100)
    message = '{"type":"ping","pad":"%s"}' % ("é" * 70)  # 92 characters, 162 bytes
    assert len(message) <= 100 < len(message.encode())
    assert error(s, message).code == "too_large"


# ---------------------------------------------------------------- malformed frames


@pytest.mark.parametrize(
    "message, code, field, ref",
    [
        ("{nope", "bad_request", None, None),
        ("", "bad_request", None, None),
        ("[1, 2]", "bad_request", None, None),
        ('"ping"', "bad_request", None, None),
        ("null", "bad_request", None, None),
        ('{"ref":"r1"}', "bad_request", "type", "r1"),
        ('{"type":5,"ref":"r2"}', "bad_request", "type", "r2"),
        ('{"type":"launch","ref":"r3"}', "unknown_type", "type", "r3"),
        ('{"type":"ping","ref":7}', "bad_request", "ref", None),
        ('{"type":"ping","ref":"%s"}' % ("r" * 65), "bad_request", "ref", None),
        ('{"type":"subscribe","ref":"r4"}', "bad_request", "channel", "r4"),
        (b'{"type":"ping"}', "bad_request", None, None),
    ],
)
def test_malformed_frame_errors(message: str | bytes, code: str, field: str | None, ref: str | None) -> None:
    err = error(authed(), message)
    assert (err.code, err.field, err.ref, err.close) == (code, field, ref, None)
    out = err.frame()
    assert out["type"] == "error" and out["code"] == code and out["ref"] == ref
    assert isinstance(out["message"], str) and out["message"]
    assert out.get("field") == field
    assert "retry_after_ms" not in out


def test_ref_is_echoed_on_a_valid_frame() -> None:
    f = authed().receive('{"type":"ping","ref":"%s"}' % ("r" * 64), T0)
    assert f.ref == "r" * 64


# ---------------------------------------------------------------- authentication


@pytest.mark.parametrize("message", [PING, '{"type":"subscribe","channel":"system","ref":"a"}',
                                     '{"type":"refresh","token":"t"}'])
def test_frames_before_auth_are_unauthorized_with_close_4001(message: str) -> None:
    s = session()
    err = error(s, message)
    assert err.code == "unauthorized" and err.close == CLOSE_UNAUTHORIZED
    assert err.ref == json.loads(message).get("ref")


def test_auth_frame_before_auth_passes() -> None:
    s = session()
    f = s.receive('{"type":"auth","token":"abc","ref":"a1"}', T0)
    assert (f.type, f.ref, f.fields) == ("auth", "a1", {"token": "abc"})
    assert s.user_id is None


def test_malformed_auth_frame_is_bad_request() -> None:
    err = error(session(), '{"type":"auth"}')
    assert err.code == "bad_request" and err.field == "token"


def test_second_auth_is_bad_request() -> None:
    s = authed()
    err = error(s, '{"type":"auth","token":"abc","ref":"a2"}')
    assert err.code == "bad_request" and err.ref == "a2" and err.close is None


def test_authenticate_and_refresh() -> None:
    s = authed()
    assert s.user_id == "u1"
    fresh = Identity("u1", exp=T0 + 7200, teams=frozenset({"t1"}))
    s.refresh(fresh, "r1")
    assert s.identity is fresh


def test_refresh_for_another_user_is_forbidden() -> None:
    s = authed()
    before = s.identity
    with pytest.raises(ProtocolError) as info:
        s.refresh(Identity("u2", exp=T0 + 7200), "r9")
    err = info.value
    assert (err.code, err.ref, err.field, err.close) == ("forbidden", "r9", "token", None)
    assert s.identity is before


# ---------------------------------------------------------------- subscriptions


def test_check_subscribe_matrix() -> None:
    s = session(identity=Identity("u1", teams=frozenset({"t1"})))
    assert s.check_subscribe("user:u1", None, "a") == "user:u1"
    assert s.check_subscribe("system", None, "a") == "system"
    assert s.check_subscribe("team:t1", None, "a") == "team:t1"
    assert s.check_subscribe("execution:e1", {"sub": "u1", "channel": "execution:e1"}, "a") == "execution:e1"
    for channel, grant in [
        ("user:u2", None),
        ("team:t2", None),
        ("execution:e1", None),
        ("execution:e1", {"sub": "u2", "channel": "execution:e1"}),
        ("execution:e1", {"sub": "u1", "channel": "execution:e2"}),
        ("admin", None),
        ("admin", {"sub": "u1", "channel": "admin"}),
    ]:
        with pytest.raises(ProtocolError) as info:
            s.check_subscribe(channel, grant, "ref-x")
        assert (info.value.code, info.value.ref, info.value.field) == ("forbidden", "ref-x", "channel"), channel


def test_check_subscribe_bad_channel_name() -> None:
    s = authed()
    with pytest.raises(ProtocolError) as info:
        s.check_subscribe("weird:thing", None, "a")
    assert (info.value.code, info.value.field) == ("bad_request", "channel")


def test_admin_channel_only_for_admins() -> None:
    admin = session(identity=Identity("boss", is_admin=True))
    assert admin.check_subscribe("admin", None, None) == "admin"


def test_max_subscriptions_is_too_large() -> None:
    s = session(identity=Identity("u1", teams=frozenset({"t1", "t2"})), max_subscriptions=3)
    s.channels.update({"user:u1", "system"})
    s.channels.add(s.check_subscribe("team:t1", None, "a"))
    with pytest.raises(ProtocolError) as info:
        s.check_subscribe("team:t2", None, "b")
    assert (info.value.code, info.value.ref, info.value.close) == ("too_large", "b", None)
    # subscribing again to a channel already held is not a new subscription
    assert s.check_subscribe("team:t1", None, "c") == "team:t1"
    # forbidden wins over too_large
    with pytest.raises(ProtocolError) as info:
        s.check_subscribe("user:u2", None, "d")
    assert info.value.code == "forbidden"


# ---------------------------------------------------------------- clocks


def test_is_idle_only_after_idle_timeout_without_client_frames() -> None:
    s = authed(idle_timeout=60.0)
    assert not s.is_idle(T0 + 60)
    assert s.is_idle(T0 + 60.5)
    s.receive(PING, T0 + 50)
    assert not s.is_idle(T0 + 110)
    assert s.is_idle(T0 + 111)
    # rate-limited and malformed frames are client frames too
    s2 = authed(idle_timeout=60.0, rate=1.0, burst=1)
    s2.receive(PING, T0)
    assert error(s2, PING, T0 + 0.5).code == "rate_limited"
    assert not s2.is_idle(T0 + 60.5)
    assert s2.is_idle(T0 + 61)
    assert error(s2, "junk", T0 + 100).code == "bad_request"
    assert not s2.is_idle(T0 + 150)
    assert error(s2, "x" * 70000, T0 + 200).code == "too_large"
    assert not s2.is_idle(T0 + 250)


def test_token_expired_with_leeway() -> None:
    s = session(identity=Identity("u1", exp=T0 + 100), jwt_leeway_s=30)
    assert not s.token_expired(T0 + 100)
    assert not s.token_expired(T0 + 130)
    assert s.token_expired(T0 + 130.5)
    assert not session().token_expired(T0 + 10**9)  # no identity yet
    assert not session(identity=Identity("u1")).token_expired(T0 + 10**9)  # no exp


def test_welcome_frame() -> None:
    s = authed(rate=10.0, burst=20, max_frame_bytes=4096, max_subscriptions=7, max_connections_per_user=3,
               idle_timeout=600.0, heartbeat_ms=15000)
    assert s.welcome() == {
        "type": "welcome",
        "v": PROTOCOL_VERSION,
        "connection_id": "c1",
        "user_id": "u1",
        "heartbeat_ms": 15000,
        "limits": {
            "rate": 10.0,
            "burst": 20,
            "max_frame_bytes": 4096,
            "max_subscriptions": 7,
            "max_connections_per_user": 3,
            "idle_timeout_s": 600.0,
        },
    }
    assert PROTOCOL_VERSION == 1


def test_welcome_reports_default_contract_limits() -> None:
    limits = authed().welcome()["limits"]
    assert limits == {"rate": 50.0, "burst": 100, "max_frame_bytes": 65536, "max_subscriptions": 100,
                      "max_connections_per_user": 20, "idle_timeout_s": 1800.0}


def test_counters_and_initial_state() -> None:
    s = session()
    assert (s.id, s.address, s.origin, s.connected_at, s.last_active) == (
        "c1", "10.0.0.1", "https://app.example", T0, T0)
    assert s.channels == set() and s.granted == set() and s.user_id is None


def test_granted_channels_are_kept_once_the_set_is_made_on_first_use() -> None:
    s = session()
    assert "team:t1" not in s.granted
    s.granted.add("team:t1")
    assert s.granted == {"team:t1"}
    s.granted.discard("team:t1")
    assert s.granted == set()

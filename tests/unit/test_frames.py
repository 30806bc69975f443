"""Protocol v1 frames: client frame parsing, server frame building, RFC 6455 framing."""

from __future__ import annotations

import json
import struct
from typing import Any

import pytest
import ujson

from renum_rt.protocol import (
    CODES,
    PROTOCOL_VERSION,
    SUBPROTOCOLS,
    ClientFrame,
    ProtocolError,
    encode,
    event_frame,
    event_frame_head,
    event_frame_tail,
    parse_client_frame,
)
from renum_rt.protocol.frames import CLIENT_TYPES, MAX_REF, MAX_TOKEN
from renum_rt.protocol.wsframe import text_frame


def parse(obj: Any) -> ClientFrame:
    return parse_client_frame(json.dumps(obj))


def refused(obj: Any) -> ProtocolError:
    with pytest.raises(ProtocolError) as info:
        parse_client_frame(obj if isinstance(obj, (str, bytes)) else json.dumps(obj))
    return info.value


# ---------------------------------------------------------------- client frames


def test_protocol_constants() -> None:
    assert PROTOCOL_VERSION == 1
    assert SUBPROTOCOLS[0] == "renum.v1"
    assert {"auth", "refresh", "subscribe", "unsubscribe", "ack", "ping"} <= CLIENT_TYPES
    assert CODES == {"bad_request", "unknown_type", "unauthorized", "forbidden", "not_found", "rate_limited",
                     "too_large", "unsupported_version", "unavailable", "internal"}


@pytest.mark.parametrize(
    "obj, fields",
    [
        ({"type": "auth", "token": "t.o.k"}, {"token": "t.o.k"}),
        ({"type": "refresh", "token": "t.o.k"}, {"token": "t.o.k"}),
        ({"type": "subscribe", "channel": "team:t1"}, {"channel": "team:t1"}),
        ({"type": "subscribe", "channel": "team:t1", "since": "1700000000000-0", "token": "g"},
         {"channel": "team:t1", "since": "1700000000000-0", "token": "g"}),
        ({"type": "subscribe", "channel": "team:t1", "since": None, "token": None}, {"channel": "team:t1"}),
        ({"type": "unsubscribe", "channel": "team:t1"}, {"channel": "team:t1"}),
        ({"type": "ack", "channel": "user:u1", "id": "5-1"}, {"channel": "user:u1", "id": "5-1"}),
        ({"type": "ping"}, {}),
    ],
)
def test_every_client_type_parses(obj: dict[str, Any], fields: dict[str, Any]) -> None:
    for ref in (None, "r-1"):
        frame = parse({**obj, "ref": ref} if ref else obj)
        assert frame == ClientFrame(obj["type"], ref, fields)
        for name, value in fields.items():
            assert frame.get(name) == value
        assert frame.get("absent", "dflt") == "dflt"


def test_unknown_fields_are_ignored() -> None:
    frame = parse({"type": "subscribe", "channel": "system", "v": 2, "extra": {"a": [1]}, "priority": "high"})
    assert frame.fields == {"channel": "system"}
    assert parse({"type": "ping", "ts": 1, "nested": {"type": "auth"}}).fields == {}


def test_ref_limits() -> None:
    assert parse({"type": "ping", "ref": "r" * MAX_REF}).ref == "r" * MAX_REF
    assert parse({"type": "ping", "ref": ""}).ref == ""
    assert parse({"type": "ping", "ref": None}).ref is None
    for bad in ("r" * (MAX_REF + 1), 5, True, ["r"], {"r": 1}):
        err = refused({"type": "ping", "ref": bad})
        assert (err.code, err.field, err.ref) == ("bad_request", "ref", None)


@pytest.mark.parametrize(
    "obj, code, field",
    [
        ({"type": "auth"}, "bad_request", "token"),
        ({"type": "auth", "token": ""}, "bad_request", "token"),
        ({"type": "auth", "token": 5}, "bad_request", "token"),
        ({"type": "auth", "token": "x" * (MAX_TOKEN + 1)}, "bad_request", "token"),
        ({"type": "refresh"}, "bad_request", "token"),
        ({"type": "subscribe"}, "bad_request", "channel"),
        ({"type": "subscribe", "channel": ""}, "bad_request", "channel"),
        ({"type": "subscribe", "channel": ["system"]}, "bad_request", "channel"),
        ({"type": "subscribe", "channel": "c" * 201}, "bad_request", "channel"),
        ({"type": "subscribe", "channel": "system", "since": "yesterday"}, "bad_request", "since"),
        ({"type": "subscribe", "channel": "system", "since": 5}, "bad_request", "since"),
        ({"type": "subscribe", "channel": "system", "token": ""}, "bad_request", "token"),
        ({"type": "unsubscribe"}, "bad_request", "channel"),
        ({"type": "ack", "channel": "user:u1"}, "bad_request", "id"),
        ({"type": "ack", "channel": "user:u1", "id": "5"}, "bad_request", "id"),
        ({"type": "ack", "id": "5-0"}, "bad_request", "channel"),
        ({"type": "welcome"}, "unknown_type", "type"),
        ({"type": "PING"}, "unknown_type", "type"),
        ({"type": ""}, "unknown_type", "type"),
        ({"type": None}, "bad_request", "type"),
        ({"type": ["ping"]}, "bad_request", "type"),
        ({}, "bad_request", "type"),
    ],
)
def test_invalid_frames_name_the_field_and_echo_the_ref(obj: dict[str, Any], code: str, field: str) -> None:
    err = refused({**obj, "ref": "q"})
    assert (err.code, err.field, err.ref, err.close) == (code, field, "q", None)
    assert err.frame() == {"type": "error", "ref": "q", "code": code, "message": err.message, "field": field}


def test_max_token_is_accepted() -> None:
    assert parse({"type": "auth", "token": "x" * MAX_TOKEN}).fields["token"] == "x" * MAX_TOKEN


@pytest.mark.parametrize("text", ["", "{", "nope", '{"type":"ping"} trailing', "[]", "[1]", '"s"', "1", "null", "true"])
def test_not_a_json_object(text: str) -> None:
    err = refused(text)
    assert err.code == "bad_request" and err.ref is None


def test_binary_frames_are_refused() -> None:
    err = refused(b'{"type":"ping"}')
    assert err.code == "bad_request" and "text" in err.message


def test_unknown_type_message_is_bounded() -> None:
    err = refused({"type": "x" * 5000})
    assert err.code == "unknown_type" and len(err.message) < 100


def test_ref_that_is_accepted_can_be_echoed() -> None:
    try:
        frame = parse_client_frame('{"type":"ping","ref":"\\ud800"}')
    except ProtocolError as err:
        assert err.code == "bad_request"
        return
    encode({"type": "pong", "ref": frame.ref}).encode("utf-8")


def test_error_frame_shape() -> None:
    assert ProtocolError("rate_limited", "slow down", retry_after_ms=120).frame() == {
        "type": "error", "ref": None, "code": "rate_limited", "message": "slow down", "retry_after_ms": 120}
    with pytest.raises(AssertionError):
        ProtocolError("not_a_code", "x")


# ---------------------------------------------------------------- server frames


def test_encode_keeps_non_ascii_slashes_and_html_characters() -> None:
    value = {"url": "https://x.example/a/b", "name": "Relatório ✓ 日本", "q": 'say "hi"\n', "h": "<b>&</b>"}
    text = encode(value)
    assert text == ('{"url":"https://x.example/a/b","name":"Relatório ✓ 日本","q":"say \\"hi\\"\\n",'
                    '"h":"<b>&</b>"}')
    assert json.loads(text)["name"] == "Relatório ✓ 日本"
    # the positional options mean what their names say
    assert text == ujson.dumps(value, ensure_ascii=False, encode_html_chars=False, escape_forward_slashes=False)


def test_event_frame_is_head_id_tail() -> None:
    data = {"execution_id": "e1", "progress": 40, "url": "https://x/y", "msg": "olá"}
    head = event_frame_head("execution:e1")
    tail = event_frame_tail(1700000000123, "execution.status", data)
    raw = event_frame("execution:e1", "1700000000123-4", 1700000000123, "execution.status", data)
    assert isinstance(raw, bytes)
    assert raw == (head + "1700000000123-4" + tail).encode("utf-8")
    frame = json.loads(raw)
    assert list(frame) == ["type", "v", "channel", "id", "ts", "event", "data"]
    assert frame == {"type": "event", "v": 1, "channel": "execution:e1", "id": "1700000000123-4",
                     "ts": 1700000000123, "event": "execution.status", "data": data}
    assert "olá".encode() in raw and b"https://x/y" in raw


def test_event_frame_tail_is_shared_across_channels() -> None:
    tail = event_frame_tail(5, "team.updated", {"team_id": "t1", "name": 'A "quoted" name'})
    for channel in ("team:t1", "user:u1", "system"):
        frame = json.loads(event_frame_head(channel) + "9-0" + tail)
        assert frame["channel"] == channel and frame["data"]["name"] == 'A "quoted" name'


def test_event_frame_with_empty_and_nested_data() -> None:
    assert json.loads(event_frame("system", "1-0", 0, "system.announcement", {}))["data"] == {}
    nested = {"a": [1, {"b": None, "c": True}], "d": 1.5}
    assert json.loads(event_frame("system", "1-0", 0, "x", nested))["data"] == nested


# ---------------------------------------------------------------- RFC 6455 framing


def decode_ws_frame(raw: bytes) -> tuple[bool, int, bytes, bytes]:
    """A tiny RFC 6455 decoder: (fin, opcode, payload, rest)."""
    b0, b1 = raw[0], raw[1]
    fin, rsv, opcode = bool(b0 & 0x80), b0 & 0x70, b0 & 0x0F
    assert rsv == 0, "no extension was negotiated"
    masked, length = bool(b1 & 0x80), b1 & 0x7F
    pos = 2
    if length == 126:
        (length,) = struct.unpack("!H", raw[pos:pos + 2])
        pos += 2
        assert length >= 126, "minimal encoding (RFC 6455 5.2)"
    elif length == 127:
        (length,) = struct.unpack("!Q", raw[pos:pos + 8])
        pos += 8
        assert length > 0xFFFF and length < 2**63, "minimal encoding, most significant bit 0"
    mask = b""
    if masked:
        mask, pos = raw[pos:pos + 4], pos + 4
    payload = raw[pos:pos + length]
    assert len(payload) == length, "truncated frame"
    if masked:
        payload = bytes(c ^ mask[i % 4] for i, c in enumerate(payload))
    assert not masked, "server frames are never masked"
    return fin, opcode, payload, raw[pos + length:]


@pytest.mark.parametrize("size, header", [(0, 2), (1, 2), (125, 2), (126, 4), (127, 4), (65535, 4), (65536, 10),
                                          (70000, 10)])
def test_text_frame_sizes(size: int, header: int) -> None:
    payload = bytes((i * 7) % 251 for i in range(size))
    raw = text_frame(payload)
    assert len(raw) == header + size
    fin, opcode, body, rest = decode_ws_frame(raw)
    assert fin is True and opcode == 0x1
    assert body == payload and rest == b""


def test_text_frame_of_event_parses_back() -> None:
    payload = event_frame("user:u1", "1-0", 1, "notification.created", {"title": "ação"})
    fin, opcode, body, _ = decode_ws_frame(text_frame(payload))
    assert json.loads(body.decode("utf-8"))["data"]["title"] == "ação"


def test_concatenated_frames_decode_in_sequence() -> None:
    stream = text_frame(b"a" * 130) + text_frame(b"") + text_frame(b"xyz")
    out = []
    while stream:
        _, _, body, stream = decode_ws_frame(stream)
        out.append(body)
    assert out == [b"a" * 130, b"", b"xyz"]

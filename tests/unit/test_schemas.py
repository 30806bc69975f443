"""The shipped JSON Schemas: valid, true to the contract, and in step with the code.

The schemas are what client authors read; events.py and frames.py are what the server
runs. The consistency tests here are what keeps the two from telling different stories.
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator
from typing import Any

import pytest
from jsonschema import Draft202012Validator

from renum_rt import channels, ids
from renum_rt.protocol import errors, events, frames
from renum_rt.protocol.errors import ProtocolError
from tests.support.schemas import (
    SCHEMA_DIR,
    SCHEMA_FILES,
    assert_client_frame,
    assert_event,
    assert_server_frame,
    is_valid,
    load,
)

from .test_events import INVALID_EVENTS, INVALID_PUBLISH, VALID_EVENTS, VALID_PUBLISH

DRAFT = "https://json-schema.org/draft/2020-12/schema"


# -- the files themselves -----------------------------------------------------------


def test_every_shipped_file_is_checked() -> None:
    assert sorted(p.name for p in SCHEMA_DIR.glob("*.json")) == sorted([*SCHEMA_FILES, "openapi.json", "codes.json"])


@pytest.mark.parametrize("name", SCHEMA_FILES)
def test_schema_is_valid_draft_2020_12(name: str) -> None:
    schema = load(name)
    assert schema["$schema"] == DRAFT
    Draft202012Validator.check_schema(schema)
    # every $def is itself a valid schema, and every local $ref resolves
    for definition in schema.get("$defs", {}).values():
        Draft202012Validator.check_schema(definition)
    for ref in _refs(schema):
        assert ref.startswith("#/$defs/"), ref
        assert ref.removeprefix("#/$defs/") in schema["$defs"], ref


def test_openapi_is_valid_openapi_3_1() -> None:
    import openapi_spec_validator as validator  # in the test extra: a missing one fails, never skips

    doc = load("openapi.json")
    assert doc["openapi"].startswith("3.1.")
    validator.validate(doc)


def test_openapi_schemas_are_the_http_schemas() -> None:
    rewritten = json.loads(json.dumps(load("http.json")["$defs"]).replace("#/$defs/", "#/components/schemas/"))
    assert load("openapi.json")["components"]["schemas"] == rewritten


def test_openapi_examples_fit_their_schemas() -> None:
    doc = load("openapi.json")
    for path, item in doc["paths"].items():
        for op in item.values():
            body = op.get("requestBody", {}).get("content", {}).get("application/json")
            if body:
                definition = body["schema"]["$ref"].rsplit("/", 1)[1]
                for example in body["examples"].values():
                    assert is_valid("http.json", example["value"], definition), (path, example)
    responses = list(doc["components"]["responses"].values())
    responses += [r for item in doc["paths"].values() for op in item.values() for r in op["responses"].values()]
    checked = 0
    for response in responses:
        content = response.get("content", {}).get("application/json", {})
        if "example" in content:
            definition = content["schema"]["$ref"].rsplit("/", 1)[1]
            assert is_valid("http.json", content["example"], definition), content
            checked += 1
    assert checked >= 10


def _refs(node: Any) -> Iterator[str]:
    if isinstance(node, dict):
        for key, value in node.items():
            if key == "$ref":
                yield value
            else:
                yield from _refs(value)
    elif isinstance(node, list):
        for value in node:
            yield from _refs(value)


# -- server frames ------------------------------------------------------------------

LIMITS = {
    "rate": 50,
    "burst": 100,
    "max_frame_bytes": 65536,
    "max_subscriptions": 100,
    "max_connections_per_user": 20,
    "idle_timeout_s": 1800,
}
WELCOME = {
    "type": "welcome",
    "v": 1,
    "connection_id": "c-7f3a",
    "user_id": "u1",
    "heartbeat_ms": 25000,
    "limits": LIMITS,
}
EVENT = json.loads(
    frames.event_frame(
        "execution:ex-42", "1700000000000-0", 1700000000000, "execution.status", dict(VALID_EVENTS[0][1])
    )
)
NOTIFICATION = {
    "id": "n1",
    "title": "Execution finished",
    "body": "Research team finished in 4 min",
    "level": "success",
    "category": "execution",
    "data": {"execution_id": "ex-42"},
    "link": "/executions/ex-42",
    "created_at": 1700000000000,
    "status": "unread",
}

VALID_SERVER_FRAMES: list[dict[str, Any]] = [
    WELCOME,
    {**WELCOME, "extra": "fields are allowed"},
    {**WELCOME, "limits": {**LIMITS, "rate": 2.5, "idle_timeout_s": 90.5}},
    EVENT,
    json.loads(frames.event_frame("user:u1", "1-0", 0, "report.ready", {})),
    {"type": "subscribed", "ref": "s1", "channel": "team:t1", "recovered": True, "replayed": 3},
    {"type": "subscribed", "ref": None, "channel": "system", "recovered": False, "replayed": 0},
    {"type": "unsubscribed", "ref": "u1", "channel": "team:t1"},
    {"type": "pong", "ref": None},
    {"type": "pong", "ref": "p" * 64},
    {"type": "unread_count", "count": 0},
    {"type": "error", "ref": "s1", "code": "forbidden", "message": "team channels need a subscription token"},
    {"type": "error", "ref": None, "code": "bad_request", "message": "frame is not valid JSON", "field": "channel"},
    {"type": "error", "ref": "x", "code": "rate_limited", "message": "slow down", "retry_after_ms": 120},
    {"type": "ok", "ref": "r1"},
    {
        "type": "notifications",
        "ref": "l1",
        "items": [NOTIFICATION, {"id": "n2", "title": "t"}],
        "next_cursor": None,
        "unread": 1,
    },
    ProtocolError("unknown_type", "unknown frame type 'x'", ref="r", field="type").frame(),
    ProtocolError("rate_limited", "too many frames", retry_after_ms=20).frame(),
]


def broken(frame: dict[str, Any], path: str, value: Any = ...) -> dict[str, Any]:
    """``frame`` with the field at dotted ``path`` set to ``value`` (removed if omitted)."""
    out = copy.deepcopy(frame)
    *parents, last = path.split(".")
    node = out
    for key in parents:
        node = node[key]
    if value is ...:
        del node[last]
    else:
        node[last] = value
    return out


INVALID_SERVER_FRAMES: list[dict[str, Any]] = [
    {"v": 1},
    {"type": "hello"},
    {"type": 1},
    broken(WELCOME, "v", 2),
    broken(WELCOME, "user_id"),
    broken(WELCOME, "heartbeat_ms", "25s"),
    broken(WELCOME, "limits.idle_timeout_s"),
    broken(WELCOME, "limits.rate", "50"),
    broken(WELCOME, "limits.burst", 100.5),
    broken(WELCOME, "limits", None),
    broken(EVENT, "id", "abc"),
    broken(EVENT, "id", "17-0-1"),
    broken(EVENT, "ts", "1700000000000"),
    broken(EVENT, "data", []),
    broken(EVENT, "channel", "room:1"),
    broken(EVENT, "event", "Execution.Status"),
    broken(EVENT, "v"),
    {"type": "subscribed", "ref": "s1", "channel": "team:t1", "replayed": 0},
    {"type": "subscribed", "ref": "s1", "channel": "team:t1", "recovered": "yes", "replayed": 0},
    {"type": "subscribed", "ref": "s1", "channel": "team:t1", "recovered": True, "replayed": -1},
    {"type": "unsubscribed", "ref": "u1"},
    {"type": "pong"},
    {"type": "pong", "ref": "p" * 65},
    {"type": "unread_count", "count": -1},
    {"type": "unread_count"},
    {"type": "error", "ref": None, "code": "oops", "message": "m"},
    {"type": "error", "code": "internal", "message": "m"},
    {"type": "error", "ref": None, "code": "internal"},
    {"type": "error", "ref": None, "code": "rate_limited", "message": "slow down"},
    ProtocolError("rate_limited", "too many frames").frame(),
    {"type": "ok"},
    {"type": "notifications", "ref": None, "items": [{"id": "n1"}], "next_cursor": None, "unread": 0},
    {"type": "notifications", "ref": None, "items": [], "unread": 0},
]


@pytest.mark.parametrize("frame", VALID_SERVER_FRAMES)
def test_valid_server_frames(frame: dict[str, Any]) -> None:
    assert_server_frame(frame)


@pytest.mark.parametrize("frame", INVALID_SERVER_FRAMES)
def test_invalid_server_frames(frame: dict[str, Any]) -> None:
    assert not is_valid("frames.server.json", frame)
    with pytest.raises(AssertionError):
        assert_server_frame(frame)


def test_event_frames_carry_valid_domain_events() -> None:
    bad = json.loads(frames.event_frame("execution:ex-42", "1-0", 1, "execution.status", {"progress": 5}))
    assert is_valid("frames.server.json", bad)  # the frame shape is fine...
    with pytest.raises(AssertionError, match="execution.status"):
        assert_server_frame(bad)  # ...its data is not


def test_error_codes_are_the_contract_codes() -> None:
    server = load("frames.server.json")["$defs"]["error"]["properties"]["code"]["enum"]
    http = load("http.json")["$defs"]["error_response"]["properties"]["error"]["properties"]["code"]["enum"]
    assert set(server) == set(http) == errors.CODES


# -- client frames ------------------------------------------------------------------

VALID_CLIENT_FRAMES: list[dict[str, Any]] = [
    {"type": "auth", "token": "eyJhbGciOiJIUzI1NiJ9.e30.x"},
    {"type": "auth", "token": "t", "ref": "a1"},
    {"type": "refresh", "token": "t", "ref": ""},
    {"type": "subscribe", "channel": "team:t1"},
    {"type": "subscribe", "channel": "execution:ex-42", "since": "1700000000000-0", "token": "sub.jwt", "ref": "s1"},
    {"type": "subscribe", "channel": "user:u1", "since": "0-0", "future_field": 1},
    {"type": "unsubscribe", "channel": "system", "ref": "r" * 64},
    {"type": "ack", "channel": "user:u1", "id": "1700000000000-12"},
    {"type": "ping"},
    {"type": "ping", "ref": "p1"},
]
VALID_NOTIFICATION_FRAMES: list[dict[str, Any]] = [
    {"type": "notifications.list"},
    {"type": "notifications.list", "status": "unread", "limit": 20, "cursor": "c1", "ref": "l"},
    {"type": "notifications.read", "ids": ["n1", "n2"]},
    {"type": "notifications.dismiss", "ids": ["n1"], "ref": "d"},
    {"type": "notifications.read_all"},
    {"type": "notifications.read_all", "before": "n9"},
]
INVALID_CLIENT_FRAMES: list[dict[str, Any]] = [
    {},
    {"type": "hello"},
    {"type": "ping", "ref": "r" * 65},
    {"type": "ping", "ref": 5},
    {"type": "auth"},
    {"type": "auth", "token": ""},
    {"type": "auth", "token": "t" * 8193},
    {"type": "refresh", "token": 5},
    {"type": "subscribe"},
    {"type": "subscribe", "channel": "room:1"},
    {"type": "subscribe", "channel": "team:"},
    {"type": "subscribe", "channel": "team:t1", "since": "yesterday"},
    {"type": "subscribe", "channel": "team:t1", "since": 1700000000000},
    {"type": "unsubscribe"},
    {"type": "ack", "channel": "user:u1"},
    {"type": "ack", "id": "1-0"},
    {"type": "ack", "channel": "user:u1", "id": "1"},
    {"type": "notifications.list", "status": "archived"},
    {"type": "notifications.list", "limit": 0},
    {"type": "notifications.read", "ids": []},
    {"type": "notifications.read"},
    {"type": "notifications.dismiss", "ids": "n1"},
]


@pytest.mark.parametrize("frame", VALID_CLIENT_FRAMES + VALID_NOTIFICATION_FRAMES)
def test_valid_client_frames(frame: dict[str, Any]) -> None:
    assert_client_frame(frame)


@pytest.mark.parametrize("frame", INVALID_CLIENT_FRAMES)
def test_invalid_client_frames(frame: dict[str, Any]) -> None:
    assert not is_valid("frames.client.json", frame)
    with pytest.raises(AssertionError):
        assert_client_frame(frame)


@pytest.mark.parametrize("frame", VALID_CLIENT_FRAMES)
def test_the_server_parses_what_the_schema_allows(frame: dict[str, Any]) -> None:
    parsed = frames.parse_client_frame(json.dumps(frame))
    assert parsed.type == frame["type"]
    assert parsed.ref == frame.get("ref")


def test_client_frame_types_match_the_parser() -> None:
    defs = load("frames.client.json")["$defs"]
    schema_types = {name for name, d in defs.items() if "const" in d.get("properties", {}).get("type", {})}
    notification_types = {f["type"] for f in VALID_NOTIFICATION_FRAMES}
    # every type the parser knows is documented; the only documented types it may not
    # know (yet) are the contract's notifications.* frames
    assert frames.CLIENT_TYPES <= schema_types
    assert schema_types - frames.CLIENT_TYPES <= notification_types


# -- shared patterns ----------------------------------------------------------------

CHANNEL_SAMPLES = [
    "user:u1",
    "team:t1",
    "execution:ex-42",
    "system",
    "admin",
    "user:" + "x" * 128,
    "user:" + "x" * 129,
    "user:a@b.c",
    "team:a|b=c+d-e_f.g",
    "user:",
    "user",
    "team:a b",
    "team:a/b",
    "room:1",
    "System",
    "system:1",
    "user:u1:extra",
    "",
    "execution:é",
    "admin:1",
]


@pytest.mark.parametrize("channel", CHANNEL_SAMPLES)
def test_channel_pattern_matches_channels_py(channel: str) -> None:
    try:
        channels.parse(channel)
        expected = True
    except channels.ChannelError:
        expected = False
    for name in ("frames.server.json", "frames.client.json"):
        assert is_valid(name, channel, "channel") is expected, name
    body = {"event": "custom", "data": {}, "channel": channel}
    assert is_valid("http.json", body, "publish_request") is (expected and channel != "admin")


@pytest.mark.parametrize(
    "event_id",
    [
        "0-0",
        "1700000000000-0",
        "1700000000000-123",
        "1-",
        "-1",
        "1",
        "a-b",
        "1-1-1",
        "",
        " 1-1",
        "9" * 19 + "-" + "9" * 19,
        "9" * 20 + "-0",
        "0-" + "9" * 20,
        "99999999999999999999999-0",
    ],
)
def test_event_id_pattern_matches_ids_py(event_id: str) -> None:
    for name in ("frames.server.json", "frames.client.json", "http.json"):
        assert is_valid(name, event_id, "event_id") is ids.is_valid_id(event_id), name


def test_shared_definitions_are_identical() -> None:
    names = [load(n)["$defs"]["event_name"] for n in ("frames.server.json", "events.json", "http.json")]
    assert names[0] == names[1] == names[2]
    assert load("frames.server.json")["$defs"]["notification"] == load("events.json")["$defs"]["notification"]
    assert load("http.json")["$defs"]["notification"] == load("events.json")["$defs"]["notification"]
    assert load("frames.server.json")["$defs"]["channel"] == load("frames.client.json")["$defs"]["channel"]


# -- events.json and events.py accept exactly the same events ------------------------

WRONG_VALUES: list[Any] = [
    None,
    "",
    "x",
    "running",
    "read",
    "info",
    0,
    50,
    100,
    101,
    -1,
    1.5,
    3.0,
    True,
    [],
    ["a"],
    [1],
    {},
    {"code": "c", "message": "m"},
]


def _mutations(data: dict[str, Any]) -> Iterator[dict[str, Any]]:
    """``data`` with each field (and each field of a nested object) removed or replaced."""
    for key, value in data.items():
        yield {k: v for k, v in data.items() if k != key}
        for wrong in WRONG_VALUES:
            yield {**data, key: wrong}
        if isinstance(value, dict):
            for inner in _mutations(value):
                yield {**data, key: inner}


def _event_samples() -> Iterator[tuple[Any, Any]]:
    for name, data in VALID_EVENTS:
        yield name, data
        if name in events.KNOWN_EVENTS:
            yield from ((name, m) for m in _mutations(data))
        for other in events.KNOWN_EVENTS:  # the data of one event published under another name
            yield other, data
    for name, data, _ in INVALID_EVENTS:
        if not (isinstance(data, dict) and any(isinstance(v, float) and math.isnan(v) for v in data.values())):
            yield name, data  # NaN is not JSON: jsonschema compares it as "not below 0"


EVENT_SAMPLES = list(_event_samples())


def _python_accepts_event(name: Any, data: Any) -> bool:
    try:
        events.validate_event(name, data)
    except events.FieldError:
        return False
    return True


def test_the_consistency_table_covers_both_outcomes() -> None:
    outcomes = [_python_accepts_event(n, d) for n, d in EVENT_SAMPLES]
    assert len(EVENT_SAMPLES) > 1000 and outcomes.count(True) > 100 and outcomes.count(False) > 100


@pytest.mark.parametrize(("name", "data"), EVENT_SAMPLES)
def test_events_py_and_events_json_agree(name: Any, data: Any) -> None:
    assert _python_accepts_event(name, data) is is_valid("events.json", {"event": name, "data": data})


def test_domain_events_of_events_json_are_known_to_events_py() -> None:
    defs = load("events.json")["$defs"]
    conditional = {branch["if"]["properties"]["event"]["const"] for branch in load("events.json")["allOf"]}
    assert conditional == events.KNOWN_EVENTS
    assert events.KNOWN_EVENTS <= set(defs)


def test_assert_event_helper() -> None:
    assert_event("execution.status", VALID_EVENTS[0][1])
    with pytest.raises(AssertionError):
        assert_event("execution.status", {})


# -- http.json and events.py accept exactly the same bodies --------------------------

PUBLISH_SAMPLES = (
    [body for body, _ in VALID_PUBLISH]
    + [body for body, _ in INVALID_PUBLISH]
    + [
        {"event": "custom", "data": {}, "channel": "team:t1", "users": []},
        {"event": "custom", "data": {}, "channel": "", "users": ["u1"]},
        {"event": "custom", "data": {}, "users": ["u"] * 1000},
    ]
)
BROADCAST_SAMPLES = [
    {"event": "system.announcement", "data": {"title": "t", "message": "m", "level": "info"}},
    {"event": "system.announcement", "data": {"title": "t", "message": "m"}},
    {"event": "custom", "data": {}, "channel": None, "users": None, "other": 1},
    {"event": "custom", "data": {}, "channel": "system"},
    {"event": "custom", "data": {}, "users": []},
    {"event": "custom"},
    {"data": {}},
    [],
]


def _accepts(fn: Any, body: Any) -> bool:
    try:
        fn(body)
    except events.FieldError:
        return False
    return True


@pytest.mark.parametrize("body", PUBLISH_SAMPLES)
def test_publish_body_schema_and_code_agree(body: Any) -> None:
    schema_ok = is_valid("http.json", body, "publish_request") and (
        not isinstance(body, dict) or is_valid("events.json", {"event": body.get("event"), "data": body.get("data")})
    )
    assert _accepts(events.validate_publish, body) is schema_ok


@pytest.mark.parametrize("body", BROADCAST_SAMPLES)
def test_broadcast_body_schema_and_code_agree(body: Any) -> None:
    schema_ok = is_valid("http.json", body, "broadcast_request") and (
        not isinstance(body, dict) or is_valid("events.json", {"event": body.get("event"), "data": body.get("data")})
    )
    assert _accepts(events.validate_broadcast, body) is schema_ok


def test_publish_answers_fit_the_response_schema() -> None:
    assert is_valid(
        "http.json", {"ids": {"execution:ex-42": "1700000000000-0", "user:u1": "1700000000000-1"}}, "publish_response"
    )
    assert not is_valid("http.json", {"ids": {"system": "x"}}, "publish_response")
    assert not is_valid("http.json", {"ids": {}}, "publish_response")
    assert is_valid(
        "http.json", {"error": {"code": "bad_request", "message": "m", "field": "users[3]"}}, "error_response"
    )
    assert not is_valid("http.json", {"error": {"code": "conflict", "message": "m"}}, "error_response")

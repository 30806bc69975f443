"""Domain-event and publish-body validation: which field is named, and how."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import pytest

from renum_rt.protocol.events import (
    KNOWN_EVENTS,
    MAX_DEPTH,
    FieldError,
    PublishRequest,
    TooManyEvents,
    validate_batch,
    validate_broadcast,
    validate_event,
    validate_publish,
)

EXECUTION = {"execution_id": "ex-42", "team_id": "t1", "status": "running", "progress": 40}


def execution(**changes: Any) -> dict[str, Any]:
    data = dict(EXECUTION)
    for key, value in changes.items():
        if value is ...:
            data.pop(key)
        else:
            data[key] = value
    return data


VALID_EVENTS: list[tuple[str, dict[str, Any]]] = [
    ("execution.status", EXECUTION),
    ("execution.status", execution(progress=0)),
    ("execution.status", execution(progress=100.0, status="completed")),
    ("execution.status", execution(progress=12.5, step={"name": "search", "index": 2})),
    ("execution.status", execution(status="failed", error={"code": "timeout", "message": "agent timed out"})),
    ("execution.status", execution(error={"code": "x", "message": "y", "details": [1, 2]})),
    ("execution.status", execution(step=None, error=None)),
    ("execution.status", execution(extra_field="allowed")),
    ("team.created", {"team_id": "t1", "name": "Research"}),
    ("team.updated", {"team_id": "t1", "name": "Research", "changes": {"name": ["R", "Research"]}}),
    ("team.updated", {"team_id": "t1", "name": "Research", "changes": ["name"]}),
    ("system.announcement", {"title": "Maintenance", "message": "at 22:00 UTC", "level": "warning"}),
    ("notification.created", {"id": "n1", "title": "Done"}),
    (
        "notification.created",
        {
            "id": "n1",
            "title": "Done",
            "body": "",
            "level": "success",
            "category": "execution",
            "data": {"execution_id": "ex-42"},
            "link": "/executions/ex-42",
            "created_at": 1700000000000,
            "status": "unread",
        },
    ),
    ("notification.created", {"id": "n1", "title": "Done", "created_at": "2024-01-01T00:00:00Z", "link": None}),
    ("notification.updated", {"ids": ["n1", "n2"], "status": "read"}),
    ("notification.updated", {"ids": [], "status": "dismissed"}),
    ("billing.invoice_paid", {"anything": ["goes"]}),
    ("custom", {}),
    ("a" * 64, {}),
]

INVALID_EVENTS: list[tuple[Any, Any, str]] = [
    # (name, data, field)
    ("Execution.Status", EXECUTION, "event"),
    ("execution..status", EXECUTION, "event"),
    ("execution.", {}, "event"),
    ("1abc", {}, "event"),
    ("a-b", {}, "event"),
    ("a" * 65, {}, "event"),
    ("", {}, "event"),
    (None, {}, "event"),
    (42, {}, "event"),
    ("custom", [], "data"),
    ("custom", "text", "data"),
    ("custom", None, "data"),
    ("execution.status", execution(execution_id=...), "data.execution_id"),
    ("execution.status", execution(execution_id=""), "data.execution_id"),
    ("execution.status", execution(execution_id=42), "data.execution_id"),
    ("execution.status", execution(team_id=None), "data.team_id"),
    ("execution.status", execution(status="done"), "data.status"),
    ("execution.status", execution(status=...), "data.status"),
    ("execution.status", execution(progress=...), "data.progress"),
    ("execution.status", execution(progress=-1), "data.progress"),
    ("execution.status", execution(progress=100.5), "data.progress"),
    ("execution.status", execution(progress="50"), "data.progress"),
    ("execution.status", execution(progress=True), "data.progress"),
    ("execution.status", execution(progress=math.nan), "data.progress"),
    ("execution.status", execution(step="search"), "data.step"),
    ("execution.status", execution(step=[1]), "data.step"),
    ("execution.status", execution(error="boom"), "data.error"),
    ("execution.status", execution(error={"message": "boom"}), "data.error.code"),
    ("execution.status", execution(error={"code": "x"}), "data.error.message"),
    ("execution.status", execution(error={"code": 1, "message": "m"}), "data.error.code"),
    ("team.created", {"name": "Research"}, "data.team_id"),
    ("team.created", {"team_id": "t1"}, "data.name"),
    ("team.updated", {"team_id": "t1", "name": ""}, "data.name"),
    ("team.updated", {"team_id": "t1", "name": "R", "changes": "name"}, "data.changes"),
    ("system.announcement", {"message": "m", "level": "info"}, "data.title"),
    ("system.announcement", {"title": "t", "level": "info"}, "data.message"),
    ("system.announcement", {"title": "t", "message": "m"}, "data.level"),
    ("system.announcement", {"title": "t", "message": "m", "level": "critical"}, "data.level"),
    ("notification.created", {"title": "Done"}, "data.id"),
    ("notification.created", {"id": "n1"}, "data.title"),
    ("notification.created", {"id": "n1", "title": "Done", "level": "fatal"}, "data.level"),
    ("notification.created", {"id": "n1", "title": "Done", "status": "archived"}, "data.status"),
    ("notification.created", {"id": "n1", "title": "Done", "data": []}, "data.data"),
    ("notification.created", {"id": "n1", "title": "Done", "created_at": True}, "data.created_at"),
    ("notification.updated", {"status": "read"}, "data.ids"),
    ("notification.updated", {"ids": "n1", "status": "read"}, "data.ids"),
    ("notification.updated", {"ids": ["n1", 2], "status": "read"}, "data.ids[1]"),
    ("notification.updated", {"ids": ["n1", None], "status": "read"}, "data.ids[1]"),
    ("notification.updated", {"ids": ["n1"], "status": "unread"}, "data.status"),
]


@pytest.mark.parametrize(("name", "data"), VALID_EVENTS)
def test_valid_events(name: str, data: dict[str, object]) -> None:
    validate_event(name, data)


@pytest.mark.parametrize(("name", "data", "field"), INVALID_EVENTS)
def test_invalid_events_name_the_field(name: object, data: object, field: str) -> None:
    with pytest.raises(FieldError) as info:
        validate_event(name, data)  # type: ignore[arg-type]
    assert info.value.field == field
    assert field in info.value.message
    assert str(info.value) == info.value.message


def test_every_domain_event_of_the_contract_is_known() -> None:
    assert KNOWN_EVENTS == {
        "execution.status",
        "team.created",
        "team.updated",
        "system.announcement",
        "notification.created",
        "notification.updated",
    }


@pytest.mark.parametrize(
    ("name", "data", "message"),
    [
        ("execution.status", execution(progress=101), "data.progress must be a number from 0 to 100"),
        ("execution.status", execution(progress=...), "execution.status needs data.progress: a number from 0 to 100"),
        (
            "execution.status",
            execution(status="done"),
            "data.status must be one of queued, running, completed, failed, cancelled",
        ),
        (
            "execution.status",
            execution(error={"code": "x"}),
            "execution.status needs data.error.message: a non-empty string",
        ),
        ("custom", [], "data must be a JSON object"),
    ],
)
def test_messages_are_plain_english(name: str, data: object, message: str) -> None:
    with pytest.raises(FieldError) as info:
        validate_event(name, data)
    assert info.value.message == message


# -- POST /api/v1/publish ------------------------------------------------------------

PUBLISH = {"event": "execution.status", "data": EXECUTION, "channel": "execution:ex-42"}

VALID_PUBLISH: list[tuple[dict[str, Any], PublishRequest]] = [
    (PUBLISH, PublishRequest("execution.status", EXECUTION, "execution:ex-42", ())),
    (
        {"event": "custom", "data": {}, "users": ["u1", "u2", "u1"]},
        PublishRequest("custom", {}, None, ("u1", "u2")),
    ),
    (
        {"event": "custom", "data": {}, "channel": "team:t1", "users": ["u1"], "other": "ignored"},
        PublishRequest("custom", {}, "team:t1", ("u1",)),
    ),
    ({"event": "custom", "data": {}, "channel": "system", "users": None}, PublishRequest("custom", {}, "system", ())),
    (
        {"event": "custom", "data": {}, "channel": None, "users": ["a@b.c"]},
        PublishRequest("custom", {}, None, ("a@b.c",)),
    ),
    (
        {"event": "custom", "data": {}, "channel": "user:u1"},
        PublishRequest("custom", {}, "user:u1", ()),
    ),
    (
        {"event": "custom", "data": {}, "users": ["x" * 128, "550e8400-e29b-41d4-a716-446655440000"]},
        PublishRequest("custom", {}, None, ("x" * 128, "550e8400-e29b-41d4-a716-446655440000")),
    ),
]

INVALID_PUBLISH: list[tuple[Any, str]] = [
    # (body, field)
    ([], "body"),
    ("text", "body"),
    (None, "body"),
    ({"data": {}, "channel": "system"}, "event"),
    ({"event": "Bad Name", "data": {}, "channel": "system"}, "event"),
    ({"event": "custom", "channel": "system"}, "data"),
    ({"event": "custom", "data": [], "channel": "system"}, "data"),
    ({**PUBLISH, "data": execution(progress=150)}, "data.progress"),
    ({**PUBLISH, "data": execution(error={"code": ""})}, "data.error.code"),
    ({"event": "custom", "data": {}}, "channel"),
    ({"event": "custom", "data": {}, "channel": None, "users": None}, "channel"),
    ({"event": "custom", "data": {}, "channel": "admin"}, "channel"),
    ({"event": "custom", "data": {}, "channel": "room:1"}, "channel"),
    ({"event": "custom", "data": {}, "channel": "user:"}, "channel"),
    ({"event": "custom", "data": {}, "channel": 7}, "channel"),
    ({"event": "custom", "data": {}, "users": []}, "users"),
    ({"event": "custom", "data": {}, "users": "u1"}, "users"),
    ({"event": "custom", "data": {}, "users": {"u1": True}}, "users"),
    ({"event": "custom", "data": {}, "users": ["u"] * 1001}, "users"),
    ({"event": "custom", "data": {}, "users": ["u1", "u2", "u3", 4]}, "users[3]"),
    ({"event": "custom", "data": {}, "users": ["u1", ""]}, "users[1]"),
    ({"event": "custom", "data": {}, "users": ["u1", "a b"]}, "users[1]"),
    ({"event": "custom", "data": {}, "users": ["x" * 129]}, "users[0]"),
    ({"event": "custom", "data": {}, "users": ["u1:team"]}, "users[0]"),
    ({"event": "custom", "data": {}, "users": [None]}, "users[0]"),
    ({"event": "custom", "data": {}, "channel": "team:t1", "users": ["ok", "no/slash"]}, "users[1]"),
]


@pytest.mark.parametrize(("body", "expected"), VALID_PUBLISH)
def test_valid_publish(body: dict[str, object], expected: PublishRequest) -> None:
    assert validate_publish(body) == expected


@pytest.mark.parametrize(("body", "field"), INVALID_PUBLISH)
def test_invalid_publish_names_the_field(body: object, field: str) -> None:
    with pytest.raises(FieldError) as info:
        validate_publish(body)
    assert info.value.field == field


def test_users_limit_is_a_parameter() -> None:
    body = {"event": "custom", "data": {}, "users": ["a", "b", "c"]}
    assert validate_publish(body, max_users=3).users == ("a", "b", "c")
    with pytest.raises(FieldError) as info:
        validate_publish(body, max_users=2)
    assert info.value.field == "users"
    assert "at most 2" in info.value.message


def test_users_at_the_limit_are_accepted() -> None:
    users = [f"u{i}" for i in range(1000)]
    assert len(validate_publish({"event": "custom", "data": {}, "users": users}).users) == 1000


def test_targets_list_each_channel_once() -> None:
    request = validate_publish({"event": "custom", "data": {}, "channel": "user:a", "users": ["a", "b", "a"]})
    assert request.targets == ("user:a", "user:b")
    assert validate_publish(PUBLISH).targets == ("execution:ex-42",)


def test_publish_request_is_frozen() -> None:
    request = validate_publish(PUBLISH)
    with pytest.raises(dataclasses.FrozenInstanceError):
        request.event = "other"  # type: ignore[misc]


# -- POST /api/v1/broadcast ----------------------------------------------------------

ANNOUNCEMENT = {"title": "Maintenance", "message": "at 22:00 UTC", "level": "info"}


def test_broadcast_goes_to_system() -> None:
    request = validate_broadcast({"event": "system.announcement", "data": ANNOUNCEMENT})
    assert request == PublishRequest("system.announcement", ANNOUNCEMENT, "system", ())
    assert request.targets == ("system",)
    assert validate_broadcast({"event": "custom", "data": {}, "channel": None}).channel == "system"


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([], "body"),
        ({"data": {}}, "event"),
        ({"event": "custom"}, "data"),
        ({"event": "system.announcement", "data": {**ANNOUNCEMENT, "level": "loud"}}, "data.level"),
        ({"event": "custom", "data": {}, "channel": "team:t1"}, "channel"),
        ({"event": "custom", "data": {}, "users": ["u1"]}, "users"),
    ],
)
def test_invalid_broadcast_names_the_field(body: object, field: str) -> None:
    with pytest.raises(FieldError) as info:
        validate_broadcast(body)
    assert info.value.field == field


# -- values JSON cannot carry: lone surrogates, NaN and infinities, deep nesting ------

LONE = "\ud83d"  # half of a surrogate pair: valid in a JSON string escape, not encodable as UTF-8

UNSENDABLE: list[tuple[dict[str, Any], str]] = [
    # (body, field): every string and number of the body is checked, keys included, at any depth
    ({"event": "custom", "data": {"title": LONE}, "users": ["u1"]}, "data.title"),
    ({"event": "custom", "data": {"title": "ok " + LONE + " ok"}, "users": ["u1"]}, "data.title"),
    ({"event": "custom", "data": {"a": {"b": [1, ["x", LONE]]}}, "users": ["u1"]}, "data.a.b[1][1]"),
    ({"event": "custom", "data": {"a": {LONE: 1}}, "users": ["u1"]}, "data.a.\\ud83d"),
    ({**PUBLISH, "data": execution(step={"name": LONE})}, "data.step.name"),
    ({"event": "custom" + LONE, "data": {}, "users": ["u1"]}, "event"),
    ({"event": "custom", "data": {}, "channel": "team:" + LONE}, "channel"),
    ({"event": "custom", "data": {}, "users": ["u1", LONE]}, "users[1]"),
    ({"event": "custom", "data": {}, "users": ["u1"], "note": LONE}, "note"),
    ({"event": "custom", "data": {"n": math.nan}, "users": ["u1"]}, "data.n"),
    ({"event": "custom", "data": {"n": [0, math.inf]}, "users": ["u1"]}, "data.n[1]"),
    ({"event": "custom", "data": {"n": {"m": -math.inf}}, "users": ["u1"]}, "data.n.m"),
    ({**PUBLISH, "data": execution(progress=math.inf)}, "data.progress"),
    ({"event": "custom", "data": {}, "users": ["u1"], "extra": math.nan}, "extra"),
    ({"event": "custom", "data": {"": [LONE]}, "users": ["u1"]}, 'data[""][0]'),
    ({"event": "custom", "data": {}, "users": ["u1"], "": LONE}, '[""]'),
]


@pytest.mark.parametrize(("body", "field"), UNSENDABLE)
def test_text_and_numbers_json_cannot_carry_are_refused_naming_the_field(body: dict[str, Any], field: str) -> None:
    with pytest.raises(FieldError) as info:
        validate_publish(body)
    assert info.value.field == field
    # the answer itself must be sendable: no lone surrogate in the field or the message
    assert (info.value.field + info.value.message).encode()


@pytest.mark.parametrize(("body", "field"), [(b, f) for b, f in UNSENDABLE if "channel" not in b and f != "users[1]"])
def test_broadcast_refuses_them_too(body: dict[str, Any], field: str) -> None:
    body = {key: value for key, value in body.items() if key != "users"}
    with pytest.raises(FieldError) as info:
        validate_broadcast(body)
    assert info.value.field == field


@pytest.mark.parametrize(
    ("data", "field"),
    [({"title": LONE, "message": "m", "level": "info"}, "data.title"), ({"x": [math.nan]}, "data.x[0]")],
)
def test_validate_event_refuses_them(data: dict[str, Any], field: str) -> None:
    """The admin broadcast calls validate_event directly."""
    name = "system.announcement" if "title" in data else "custom"
    with pytest.raises(FieldError) as info:
        validate_event(name, data)
    assert info.value.field == field


def nested(depth: int) -> dict[str, Any]:
    """``{"k": {"k": ... {}}}``: ``depth`` objects, the outermost included."""
    value: dict[str, Any] = {}
    for _ in range(depth - 1):
        value = {"k": value}
    return value


def test_nesting_is_bounded() -> None:
    # the body is one level, data the second: data may hold MAX_DEPTH - 2 more
    deepest = {"event": "custom", "data": nested(MAX_DEPTH - 1), "users": ["u1"]}
    assert validate_publish(deepest).data == deepest["data"]
    with pytest.raises(FieldError) as info:
        validate_publish({**deepest, "data": nested(MAX_DEPTH)})
    assert info.value.field == "data" + ".k" * (MAX_DEPTH - 1)
    assert str(MAX_DEPTH) in info.value.message


def test_unicode_that_is_valid_passes() -> None:
    data = {"emoji": "\U0001f600", "accents": "déjà vu", "cjk": "中文", "n": 1e308, "big": 10**30}
    assert validate_publish({"event": "custom", "data": data, "users": ["u1"]}).data == data


def test_a_batch_names_each_refused_event_by_its_index_and_keeps_the_others() -> None:
    good = {"channel": "team:t1", "event": "x.y", "data": {}}
    checked = validate_batch({"events": [good, 3, {**good, "data": {"": float("nan")}}, {**good, "users": ["a", 1]}]},
                             max_events=4)
    assert isinstance(checked[0], PublishRequest)
    assert [c.field for c in checked[1:] if isinstance(c, FieldError)] == ["events[1]", 'events[2].data[""]',
                                                                          "events[3].users[1]"]
    with pytest.raises(TooManyEvents):
        validate_batch({"events": [good] * 5}, max_events=4)
    for body, field in [([good], "body"), ({"events": []}, "events"), ({"events": good}, "events")]:
        with pytest.raises(FieldError) as refused:
            validate_batch(body, max_events=4)
        assert refused.value.field == field

"""Property tests (Hypothesis) of what comes in from outside: client frames and publish bodies.

Whatever a client or a backend sends, the parsers answer with a result or with the
protocol's own refusal (``ProtocolError`` with a known code, ``FieldError`` naming a
field), never with another exception (which would be a 500 or a dropped connection);
and whatever a publish validator accepts can be sent to every client as strict JSON.
The strategies are shared with tests/integration/test_http_api.py, which posts such
bodies to a real server.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import example, given, settings
from hypothesis import strategies as st

from renum_rt.protocol import CODES, ClientFrame, ProtocolError, event_frame, parse_client_frame
from renum_rt.protocol.events import (
    KNOWN_EVENTS,
    MAX_DEPTH,
    FieldError,
    _surely_clean,
    _walk,
    check_json,
    validate_broadcast,
    validate_publish,
)

#: Each property runs well under ten seconds on a loaded machine.
FAST = settings(max_examples=300, deadline=None)

LONE_SURROGATES = st.sampled_from(["\ud83d", "\udc00", "\udfff"])


def _spoiled_sometimes(text: str, roll: int, lone: str) -> str:
    """One string in twenty ends with a lone surrogate (which Hypothesis's text never
    holds): often enough to find, rarely enough that most bodies are otherwise valid."""
    return text + lone if roll == 0 else text


#: any text: letters of every script, control characters, and now and then a lone surrogate
TEXT = st.builds(_spoiled_sometimes, st.text(max_size=20), st.integers(0, 19), LONE_SURROGATES)
NUMBERS = (st.integers(min_value=-(10**30), max_value=10**30)
           | st.floats(allow_nan=True, allow_infinity=True))
SCALARS = st.none() | st.booleans() | NUMBERS | TEXT

#: what a JSON parser can produce: objects, arrays, text, numbers (NaN and infinities
#: included: ujson parses them), true/false/null
JSON_VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(TEXT, inner, max_size=4),
    max_leaves=12,
)

EVENT_NAMES = st.sampled_from(sorted(KNOWN_EVENTS)) | st.sampled_from(["custom", "report.ready", "a.b_2"]) | TEXT
CHANNELS = st.sampled_from(["team:t1", "execution:e1", "system", "user:u1", "admin", "team:", "room:1"]) | TEXT
USER_IDS = st.sampled_from(["u1", "u2", "a@b.c"]) | TEXT
DOMAIN_DATA = st.fixed_dictionaries(
    {},
    optional={
        "execution_id": TEXT | st.just("e1"), "team_id": TEXT | st.just("t1"), "name": TEXT,
        "status": st.sampled_from(["running", "failed", "read"]) | TEXT, "progress": NUMBERS | TEXT,
        "title": TEXT, "message": TEXT, "level": st.sampled_from(["info", "warning"]) | TEXT,
        "id": TEXT, "ids": st.lists(TEXT, max_size=3) | JSON_VALUES,
        "error": st.fixed_dictionaries({}, optional={"code": TEXT, "message": TEXT, "details": JSON_VALUES}),
        "step": JSON_VALUES, "changes": JSON_VALUES, "extra": JSON_VALUES,
    },
)
#: publish bodies that are nearly right: real event names and channels, data of any shape
#: (so NaN, infinities and lone surrogates turn up in otherwise valid bodies)
NEAR_VALID = st.fixed_dictionaries(
    {
        "event": st.sampled_from(["custom", "report.ready", "x.y", "system.announcement", "execution.status"]),
        "data": st.dictionaries(TEXT, JSON_VALUES, max_size=4) | DOMAIN_DATA,
    },
    optional={
        "channel": st.sampled_from(["team:t1", "execution:e1", "system", "user:u3"]),
        "users": st.lists(st.sampled_from(["u1", "u2", "a@b.c"]), min_size=1, max_size=3),
    },
)
#: and bodies of any shape: objects with the fields the validators read, each of any
#: type, or any JSON value at all
ANY_SHAPE = st.fixed_dictionaries(
    {},
    optional={
        "event": EVENT_NAMES | JSON_VALUES,
        "data": DOMAIN_DATA | JSON_VALUES,
        "channel": CHANNELS | JSON_VALUES,
        "users": st.lists(USER_IDS, max_size=4) | JSON_VALUES,
        "other": JSON_VALUES,
    },
) | JSON_VALUES
#: three nearly right bodies for one of any shape, so that the accepting path is exercised
#: too (``one_of`` would weigh every alternative of ANY_SHAPE as much as NEAR_VALID)
BODIES = st.integers(0, 3).flatmap(lambda roll: ANY_SHAPE if roll == 0 else NEAR_VALID)


def strict_json(text: str) -> Any:
    """``json.loads`` without its extensions: NaN and the infinities are refused."""

    def refuse(constant: str) -> Any:
        raise ValueError(f"{constant} is not JSON")

    return json.loads(text, parse_constant=refuse)


def sendable(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


# -- client frames --------------------------------------------------------------

FRAME_FIELDS = st.sampled_from(["token", "channel", "since", "id", "ref", "type"])
FRAMES = st.dictionaries(FRAME_FIELDS, JSON_VALUES | CHANNELS, max_size=4).flatmap(
    lambda fields: st.sampled_from(["auth", "refresh", "subscribe", "unsubscribe", "ack", "ping", "nope"]).map(
        lambda kind: {"type": kind, **fields}
    )
)


def check_frame(text: str) -> None:
    try:
        frame = parse_client_frame(text)
    except ProtocolError as error:
        assert error.code in CODES
    else:
        assert isinstance(frame, ClientFrame)


@FAST
@given(FRAMES | JSON_VALUES)
def test_any_json_frame_is_parsed_or_refused_with_a_protocol_error(value: Any) -> None:
    check_frame(json.dumps(value))  # NaN and Infinity written as ujson reads them; surrogates as \u escapes


@FAST
@given(st.text())
@example("[" * 100_000)
@example('{"type": "ping", "ref": "\\ud83d"}')
@example('{"type": "subscribe", "channel": "team:t1", "since": 1e999}')
def test_any_text_frame_is_parsed_or_refused_with_a_protocol_error(text: str) -> None:
    check_frame(text)


@FAST
@given(st.binary(max_size=64))
def test_binary_frames_are_refused(data: bytes) -> None:
    check_frame(data)  # type: ignore[arg-type]


# -- publish bodies -------------------------------------------------------------

def check_body(body: Any, validate: Any) -> None:
    try:
        request = validate(body)
    except FieldError as error:
        assert error.field and sendable(error.field) and sendable(error.message)
        return
    frame = event_frame(request.targets[0], "1700000000000-0", 1700000000000, request.event, request.data)
    assert strict_json(frame.decode())["data"] == request.data


@FAST
@given(BODIES)
@example({"event": "custom", "users": ["u1"], "data": {"n": float("nan")}})
@example({"event": "custom", "channel": "system", "data": {"\ud83d": 1}})
def test_publish_bodies_validate_or_name_a_field_and_what_validates_is_strict_json(body: Any) -> None:
    check_body(body, validate_publish)


@FAST
@given(BODIES)
@example({"event": "custom", "data": {"t": "\ud83d", "n": float("-inf")}})
def test_broadcast_bodies_validate_or_name_a_field_and_what_validates_is_strict_json(body: Any) -> None:
    check_body(body, validate_broadcast)


def _nested(depth: int, leaf: Any) -> Any:
    """``leaf`` inside ``depth`` alternating objects and arrays."""
    for level in range(depth):
        leaf = {"k": leaf} if level % 2 else [leaf]
    return leaf


@FAST
@given(JSON_VALUES | st.builds(_nested, st.integers(MAX_DEPTH - 2, MAX_DEPTH + 2), JSON_VALUES))
@example(_nested(MAX_DEPTH, 1))
@example(_nested(MAX_DEPTH + 1, 1))
@example(["[{" * 40, "NaN", "Infinity"])  # in strings: not surely clean, yet clean
@example({"n": 10**30, "b": b"bytes", "t": (float("nan"),)})  # what ujson refuses or the walk does not enter
def test_the_fast_check_never_accepts_what_the_walk_refuses(value: Any) -> None:
    """``check_json`` skips its walk when ``_surely_clean`` says so: it must then refuse
    exactly what the walk alone refuses, naming the same field."""
    def outcome(check: Any) -> str | None:
        try:
            check(value, "data")
        except FieldError as error:
            return error.field
        return None

    walked = outcome(_walk)
    if _surely_clean(value):
        assert walked is None
    assert outcome(check_json) == walked

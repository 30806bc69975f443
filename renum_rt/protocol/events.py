"""Domain events and HTTP publish bodies, validated where they enter: at publish time.

Why at the door: a malformed ``execution.status`` caught here is a 400 naming the field
for the backend developer who sent it; caught nowhere, it is a broken page for every user
who receives it. The rules are a table (``_DOMAIN``) rather than the jsonschema package,
which is a test dependency only. ``schemas/events.json`` and ``schemas/http.json`` state
the same rules for clients and tooling, and tests/unit/test_schemas.py checks that both
accept exactly the same events.

Rules shared with the schemas:

- an event name that is not in the table is accepted with any object as data: the
  contract lets backends publish their own events;
- a field whose value is ``null`` counts as absent (as in client frames), so an optional
  field may be null and a required one may not;
- fields the table does not list are allowed: the protocol adds fields compatibly.

Before any rule, one walk over the whole body refuses what JSON cannot carry to every
client: text holding a lone surrogate (``"\\ud83d"`` parses, but cannot be encoded as
UTF-8, so storing it would break every later delivery on its channels), NaN and the
infinities (which ujson parses, ``1e999`` included, but which are not JSON), and
nesting deeper than ``MAX_DEPTH``.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

from .. import channels
from .frames import _encodable, encode

EVENT_NAME_MAX = 64
#: Most user ids one publish request may name (``validate_publish(max_users=...)``).
MAX_USERS = 1000
#: Deepest nesting of objects and arrays in a body (the body itself is level 1): far
#: beyond real payloads, well inside what the parsers of every client accept, and it
#: keeps the walk below bounded however the body was built.
MAX_DEPTH = 64
_EVENT_NAME = re.compile(r"[a-z][a-z0-9_]*(?:\.[a-z][a-z0-9_]*)*")


class FieldError(ValueError):
    """A body or event that cannot be accepted, naming the offending field.

    ``field`` is a dotted path into the HTTP body (``"event"``, ``"data.progress"``,
    ``"data.error.code"``, ``"users[3]"``), or ``"body"`` when the body as a whole is
    wrong (not a JSON object), as for a body that is not JSON at all.
    """

    def __init__(self, field: str, message: str) -> None:
        super().__init__(message)
        self.field = field
        self.message = message


@dataclass(frozen=True, slots=True)
class Rule:
    """How one field is checked: ``check`` must accept the value, which is then described
    to the developer as ``must_be``. ``fields`` checks an object's own fields, ``items``
    each element of a list."""

    check: Callable[[Any], bool]
    must_be: str
    required: bool = True
    fields: Mapping[str, Rule] | None = None
    items: Rule | None = None


def _optional(rule: Rule) -> Rule:
    return replace(rule, required=False)


def _is_number(v: object) -> bool:
    # bool is an int to Python but not a number to JSON
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_integer(v: object) -> bool:
    # JSON Schema counts 3.0 as an integer; so do we
    if isinstance(v, float):
        return v.is_integer()
    return isinstance(v, int) and not isinstance(v, bool)


def _enum(*values: str) -> Rule:
    return Rule(lambda v: isinstance(v, str) and v in values, "one of " + ", ".join(values))


TEXT = Rule(lambda v: isinstance(v, str) and v != "", "a non-empty string")
STRING = Rule(lambda v: isinstance(v, str), "a string")
OBJECT = Rule(lambda v: isinstance(v, dict), "an object")
LEVEL = _enum("info", "success", "warning", "error")

_TEAM = {
    "team_id": TEXT,
    "name": TEXT,
    "changes": Rule(lambda v: isinstance(v, (dict, list)), "an object or a list", required=False),
}

#: what a notification says: the fields of ``POST /api/v1/notifications`` besides
#: ``users``, and of the ``notification.created`` event besides what the server adds
NOTIFICATION_CONTENT: dict[str, Rule] = {
    "title": TEXT,
    "body": _optional(STRING),
    "level": _optional(LEVEL),
    "category": _optional(STRING),
    "data": _optional(OBJECT),
    "link": _optional(STRING),
}

#: event name -> rules for its data (contract v1, "Domain events").
_DOMAIN: dict[str, Mapping[str, Rule]] = {
    "execution.status": {
        "execution_id": TEXT,
        "team_id": TEXT,
        "status": _enum("queued", "running", "completed", "failed", "cancelled"),
        "progress": Rule(lambda v: _is_number(v) and 0 <= v <= 100, "a number from 0 to 100"),
        "step": _optional(OBJECT),
        "error": Rule(
            lambda v: isinstance(v, dict),
            "an object with code and message",
            required=False,
            fields={"code": TEXT, "message": TEXT},
        ),
    },
    "team.created": _TEAM,
    "team.updated": _TEAM,
    "system.announcement": {"title": TEXT, "message": TEXT, "level": LEVEL},
    "notification.created": {
        "id": TEXT,
        **NOTIFICATION_CONTENT,
        "created_at": Rule(
            lambda v: isinstance(v, str) or _is_integer(v),
            "an integer or a string",
            required=False,
        ),
        "status": _optional(_enum("unread", "read", "dismissed")),
    },
    "notification.updated": {
        "ids": Rule(lambda v: isinstance(v, list), "a list of notification ids", items=TEXT),
        "status": _enum("read", "dismissed"),
    },
}

#: Names of the domain events whose data is checked.
KNOWN_EVENTS = frozenset(_DOMAIN)


@dataclass(frozen=True, slots=True)
class PublishRequest:
    """A validated publish or broadcast: ``users`` without duplicates, in the order given."""

    event: str
    data: dict[str, Any]
    channel: str | None
    users: tuple[str, ...]

    @property
    def targets(self) -> tuple[str, ...]:
        """Every channel the event goes to, each once: ``channel`` then the user channels."""
        names = ([self.channel] if self.channel else []) + [channels.user_channel(u) for u in self.users]
        return tuple(dict.fromkeys(names))


def _apply(rule: Rule, value: Any, path: str, owner: str) -> None:
    if not rule.check(value):
        raise FieldError(path, f"{path} must be {rule.must_be}")
    if rule.items is not None:
        for i, item in enumerate(value):
            where = f"{path}[{i}]"
            if item is None:
                raise FieldError(where, f"{where} must be {rule.items.must_be}")
            _apply(rule.items, item, where, owner)
    if rule.fields is not None:
        _check_fields(value, rule.fields, path, owner)


def _check_fields(obj: Mapping[str, Any], rules: Mapping[str, Rule], path: str, owner: str) -> None:
    for name, rule in rules.items():
        where = f"{path}.{name}"
        value = obj.get(name)
        if value is None:
            if rule.required:
                raise FieldError(where, f"{owner} needs {where}: {rule.must_be}")
            continue
        _apply(rule, value, where, owner)


def _child(path: str, key: str | int | None) -> str:
    """The dotted path of ``key`` under ``path`` (``""`` is the body itself; no key:
    ``path`` itself); an empty key is written ``[""]``, so that a field is never empty."""
    if key is None:
        return path
    if isinstance(key, int):
        return f"{path}[{key}]"
    if not key:
        return f'{path}[""]'
    return f"{path}.{key}" if path else key


_NOT_TEXT = "must be valid Unicode text: it holds a lone surrogate such as \\ud83d"
_NOT_FINITE = "must be a finite number: NaN and Infinity are not JSON"


def _surely_clean(value: object) -> bool:
    """True when ``check_json`` would find nothing in ``value``: it is written as JSON
    text (``encode``) that is valid Unicode (ujson copies a lone surrogate through),
    holds no ``NaN`` and no ``Infinity`` (how ujson writes those numbers) and at most
    ``MAX_DEPTH`` brackets (so nothing nests deeper).

    Why: these are a few C calls, where the walk costs a few Python operations per
    value (a third of the validation of a publish, docs/benchmarks.md section 2). False
    proves nothing (text that holds "NaN" or a bracket, an object ujson cannot write):
    the walk then decides, and names the field.
    """
    try:
        text = encode(value)
    except (ValueError, OverflowError, TypeError, RecursionError):
        return False
    return ((text.isascii() or _encodable(text)) and "NaN" not in text and "Infinity" not in text
            and text.count("{") + text.count("[") <= MAX_DEPTH)


def check_json(value: object, path: str) -> None:
    """Raise ``FieldError`` at the first string (object keys included) with a lone
    surrogate, number that is NaN or infinite, or container nested deeper than
    ``MAX_DEPTH`` in ``value``, found at ``path`` (``""`` for a whole body).

    Most values are clean, which ``_surely_clean`` tells at C speed; the others are
    walked (``_walk``), which names the field.
    """
    if not _surely_clean(value):
        _walk(value, path)


def _walk(value: object, path: str) -> None:
    """``check_json`` in Python: one iterative walk does all three checks, so a body is
    visited once and deep input cannot exhaust the Python stack; leaves are checked in
    place and a path is built only for a container or an error. A bad key is named with
    backslash escapes, so that the 400 answer naming it can itself be encoded."""
    # each entry: the path of a container, its (key, value) pairs, its depth; the first
    # one holds ``value`` itself, under no key
    stack: list[tuple[str, Iterable[tuple[str | int | None, Any]], int]] = [(path, ((None, value),), 0)]
    while stack:
        where, items, depth = stack.pop()
        for key, item in items:
            if isinstance(key, str) and not (key.isascii() or _encodable(key)):
                field = _child(where, key.encode("utf-8", "backslashreplace").decode())
                raise FieldError(field, f"the key {field} {_NOT_TEXT}")
            if isinstance(item, str):
                if not (item.isascii() or _encodable(item)):
                    raise FieldError(_child(where, key), f"{_child(where, key)} {_NOT_TEXT}")
            elif isinstance(item, float):
                if not math.isfinite(item):
                    raise FieldError(_child(where, key), f"{_child(where, key)} {_NOT_FINITE}")
            elif isinstance(item, (dict, list)):
                field = _child(where, key)
                if depth == MAX_DEPTH:
                    raise FieldError(field, f"{field} is nested more than {MAX_DEPTH} levels deep")
                stack.append((field, item.items() if isinstance(item, dict) else enumerate(item), depth + 1))


def is_event_name(name: object) -> bool:
    """True for names like ``execution.status``: lowercase dotted words, at most 64 characters."""
    return isinstance(name, str) and len(name) <= EVENT_NAME_MAX and _EVENT_NAME.fullmatch(name) is not None


def validate_event(name: str, data: object) -> None:
    """Raise ``FieldError`` unless ``name`` is a valid event name and ``data`` an object
    JSON can carry (``check_json``) fitting that event (when it is a domain event of the
    contract)."""
    check_json(data, "data")
    _check_event(name, data)


def _check_event(name: str, data: object) -> None:
    if not is_event_name(name):
        raise FieldError(
            "event",
            f"event must be a name such as \"execution.status\": lowercase words of letters, digits and _ "
            f"joined by dots, each starting with a letter, at most {EVENT_NAME_MAX} characters",
        )
    if not isinstance(data, dict):
        raise FieldError("data", "data must be a JSON object")
    rules = _DOMAIN.get(name)
    if rules is not None:
        _check_fields(data, rules, "data", name)


def _event_of(body: object) -> tuple[dict[str, Any], str, dict[str, Any]]:
    if not isinstance(body, dict):
        raise FieldError("body", "the body must be a JSON object")
    check_json(body, "")
    name, data = body.get("event"), body.get("data")
    if name is None:
        raise FieldError("event", "event is required: the event name, such as \"execution.status\"")
    if data is None:
        raise FieldError("data", "data is required: a JSON object (it may be empty)")
    _check_event(name, data)
    return body, name, data


def _is_user_id(uid: object) -> bool:
    # The user-id rule lives in channels.py: a user id is whatever names a user channel.
    if not isinstance(uid, str):
        return False
    try:
        return channels.parse(channels.user_channel(uid)) == ("user", uid)
    except channels.ChannelError:
        return False


def _users(listed: object, max_users: int) -> tuple[str, ...]:
    """A ``users`` list: 1 to ``max_users`` user ids, without duplicates, in order."""
    if not isinstance(listed, list) or not listed:
        raise FieldError("users", f"users must be a list of 1 to {max_users} user ids")
    if len(listed) > max_users:
        raise FieldError(
            "users", f"users may list at most {max_users} user ids per request (got {len(listed)}): split the list"
        )
    for i, uid in enumerate(listed):
        if not _is_user_id(uid):
            where = f"users[{i}]"
            raise FieldError(where, f"{where} is not a user id (one that names a user:<id> channel): {uid!r:.80}")
    return tuple(dict.fromkeys(listed))


def validate_publish(body: object, *, max_users: int = MAX_USERS) -> PublishRequest:
    """Parse the decoded JSON body of ``POST /api/v1/publish``; raise ``FieldError``."""
    body, name, data = _event_of(body)
    channel = body.get("channel")
    if channel is not None:
        try:
            channel = channels.check_publishable(channel)
        except channels.ChannelError as e:
            raise FieldError("channel", e.message) from None
    listed = body.get("users")
    users = _users(listed, max_users) if listed is not None else ()
    if channel is None and not users:
        raise FieldError("channel", "publish needs a channel, a users list, or both")
    return PublishRequest(name, data, channel, users)


class TooManyEvents(FieldError):
    """A batch listing more events than one request may carry (HTTP 413)."""


def validate_batch(body: object, *, max_events: int,
                   max_users: int = MAX_USERS) -> list[PublishRequest | FieldError]:
    """Parse the body of ``POST /api/v1/publish/batch``: per event, in order, its
    ``PublishRequest`` or the ``FieldError`` refusing it alone, its field prefixed with
    ``events[i]``. Raise ``FieldError`` (``TooManyEvents`` past ``max_events``) when the
    body as a whole is wrong: then no event is taken."""
    if not isinstance(body, dict):
        raise FieldError("body", "the body must be a JSON object")
    listed = body.get("events")
    if not isinstance(listed, list) or not listed:
        raise FieldError("events", f"events must be a list of 1 to {max_events} publish bodies")
    if len(listed) > max_events:
        raise TooManyEvents("events", f"a batch may hold at most {max_events} events (got {len(listed)}): split it")
    results: list[PublishRequest | FieldError] = []
    for i, event in enumerate(listed):
        try:
            results.append(validate_publish(event, max_users=max_users))
        except FieldError as exc:
            where = f"events[{i}]"
            if exc.field == "body":
                field = where
            else:  # a path starting with [""] (an empty key) takes no dot
                field = where + (exc.field if exc.field.startswith("[") else "." + exc.field)
            results.append(FieldError(field, f"{where}: {exc.message}"))
    return results


def validate_broadcast(body: object) -> PublishRequest:
    """Parse the decoded JSON body of ``POST /api/v1/broadcast``; the result's channel is
    ``system``. Raise ``FieldError``."""
    body, name, data = _event_of(body)
    for field in ("channel", "users"):
        if body.get(field) is not None:
            raise FieldError(field, f"a broadcast goes to every user on system: use /api/v1/publish to choose {field}")
    return PublishRequest(name, data, channels.SYSTEM, ())


def validate_notification(body: object, *, max_users: int = MAX_USERS) -> tuple[tuple[str, ...], dict[str, Any]]:
    """Parse the body of ``POST /api/v1/notifications``: the users, and the notification
    fields (absent ones left out). Raise ``FieldError``."""
    if not isinstance(body, dict):
        raise FieldError("body", "the body must be a JSON object")
    check_json(body, "")
    if body.get("users") is None:
        raise FieldError("users", f"users is required: a list of 1 to {max_users} user ids")
    users = _users(body["users"], max_users)
    fields = {}
    for name, rule in NOTIFICATION_CONTENT.items():
        value = body.get(name)
        if value is None:
            if rule.required:
                raise FieldError(name, f"a notification needs {name}: {rule.must_be}")
            continue
        _apply(rule, value, name, "a notification")
        fields[name] = value
    return users, fields

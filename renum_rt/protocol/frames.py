"""Client frames in, server frames out (protocol v1).

Parsing is strict about what the server needs and lenient about the rest: unknown
fields are ignored so that a newer client keeps working with this server, and a frame
the server cannot serve raises ``ProtocolError`` naming the field, never a traceback.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import ujson

from ..ids import is_notification_id, is_valid_id
from .errors import ProtocolError

PROTOCOL_VERSION = 1
#: Subprotocols this server speaks, newest first.
SUBPROTOCOLS = ("renum.v1",)
MAX_REF = 64
MAX_TOKEN = 8192
#: notification ids in one notifications.read / notifications.dismiss frame
MAX_NOTIFICATION_IDS = 100


def encode(frame: Any) -> str:
    """JSON text of one server frame (or of one value inside a frame): UTF-8 kept as is,
    ``/`` and ``<>&`` not escaped.

    The options are passed by position (ensure_ascii, encode_html_chars,
    escape_forward_slashes, ujson's order since its first release): as keywords they
    cost more than writing a small frame (0.7 µs a call, three calls per event stored;
    docs/benchmarks.md section 2)."""
    return ujson.dumps(frame, False, False, False)


def event_frame_head(channel: str) -> str:
    """The ``event`` frame JSON up to its id: ``head + id + tail`` is the whole frame.

    The id is known only once the store has appended the event (a Redis ``XADD`` inside
    a script), so the frame is encoded in two parts and the id spliced in between;
    the tail, which holds the payload, is encoded once however many channels get it.
    """
    return '{"type":"event","v":%d,"channel":%s,"id":"' % (PROTOCOL_VERSION, encode(channel))  # noqa: UP031 (hot path: % is the fastest)


def event_frame_tail(ts: int, name: str, data: dict[str, Any]) -> str:
    """The ``event`` frame JSON after its id (see ``event_frame_head``)."""
    return '","ts":%d,"event":%s,"data":%s}' % (ts, encode(name), encode(data))  # noqa: UP031


def event_frame(channel: str, event_id: str, ts: int, name: str, data: dict[str, Any]) -> bytes:
    """UTF-8 JSON of the ``event`` frame: built once per event, sent to every subscriber."""
    return (event_frame_head(channel) + event_id + event_frame_tail(ts, name, data)).encode()


@dataclass(frozen=True, slots=True)
class ClientFrame:
    """A validated client frame: its ``type``, its ``ref`` and its other fields."""

    type: str
    ref: str | None
    fields: dict[str, Any]

    def get(self, name: str, default: Any = None) -> Any:
        return self.fields.get(name, default)


def _string(limit: int) -> Callable[[Any], bool]:
    return lambda v: isinstance(v, str) and 0 < len(v) <= limit


_TOKEN = (_string(MAX_TOKEN), f"a non-empty string of at most {MAX_TOKEN} characters")
_CHANNEL = (_string(200), "a channel name")
_ID = (is_valid_id, "an event id such as \"1700000000000-0\"")
_NOTIFICATION = (is_notification_id, "a notification id such as \"1700000000000-0\"")
_NOTIFICATION_IDS = (
    lambda v: isinstance(v, list) and 0 < len(v) <= MAX_NOTIFICATION_IDS
    and all(isinstance(i, str) and 0 < len(i) <= MAX_REF for i in v),
    f"a list of 1 to {MAX_NOTIFICATION_IDS} notification ids",
)
_STATUS = (lambda v: v in ("unread", "read", "dismissed"), "one of unread, read, dismissed")
_LIMIT = (lambda v: type(v) is int and v >= 1, "a whole number from 1")

#: type -> {field: (check, description, required)}
_SCHEMA: dict[str, dict[str, tuple[Callable[[Any], bool], str, bool]]] = {
    "auth": {"token": (*_TOKEN, True), "system_since": (*_ID, False)},
    "refresh": {"token": (*_TOKEN, True)},
    "subscribe": {"channel": (*_CHANNEL, True), "since": (*_ID, False), "token": (*_TOKEN, False)},
    "unsubscribe": {"channel": (*_CHANNEL, True)},
    "ack": {"channel": (*_CHANNEL, True), "id": (*_ID, True)},
    "ping": {},
    "notifications.list": {"status": (*_STATUS, False), "limit": (*_LIMIT, False), "cursor": (*_NOTIFICATION, False)},
    "notifications.read": {"ids": (*_NOTIFICATION_IDS, True)},
    "notifications.dismiss": {"ids": (*_NOTIFICATION_IDS, True)},
    "notifications.read_all": {"before": (*_NOTIFICATION, False)},
}

CLIENT_TYPES = frozenset(_SCHEMA)


def _encodable(text: str) -> bool:
    """False for strings holding lone surrogates, which cannot be echoed as UTF-8."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def parse_client_frame(text: str | bytes) -> ClientFrame:
    """Parse and validate one client frame; raise ``ProtocolError`` if it cannot be served."""
    if isinstance(text, bytes):
        raise ProtocolError("bad_request", "frames must be text frames holding one JSON object")
    try:
        obj = ujson.loads(text)
    except (ValueError, OverflowError):
        raise ProtocolError("bad_request", "frame is not valid JSON") from None
    if not isinstance(obj, dict):
        raise ProtocolError("bad_request", "frame must be a JSON object")
    ref = obj.get("ref")
    if ref is not None and not (isinstance(ref, str) and len(ref) <= MAX_REF and _encodable(ref)):
        raise ProtocolError("bad_request", f"ref must be a string of at most {MAX_REF} characters", field="ref")
    kind = obj.get("type")
    if not isinstance(kind, str):
        raise ProtocolError("bad_request", "frame needs a string field 'type'", ref=ref, field="type")
    schema = _SCHEMA.get(kind)
    if schema is None:
        raise ProtocolError("unknown_type", f"unknown frame type {kind[:40]!r}", ref=ref, field="type")
    fields: dict[str, Any] = {}
    for name, (check, description, required) in schema.items():
        value = obj.get(name)
        if value is None:
            if required:
                raise ProtocolError("bad_request", f"'{kind}' needs '{name}': {description}", ref=ref, field=name)
            continue
        if not check(value):
            raise ProtocolError("bad_request", f"'{name}' must be {description}", ref=ref, field=name)
        fields[name] = value
    return ClientFrame(kind, ref, fields)

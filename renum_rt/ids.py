"""Event ids: ``"<ms>-<seq>"`` strings, the format of Redis stream entry ids.

Both engines hand out ids in this one format so that the code comparing them (replay
hand-over, ack cursors, client de-duplication) is the same whichever engine runs.
Clients treat ids as opaque strings; only the server orders them.
"""

from __future__ import annotations

IdKey = tuple[int, int]
#: digits in each part of an id: 19 always fits the unsigned 64-bit numbers of Redis ids,
#: so a client cannot hand the store an id it would reject
MAX_DIGITS = 19


def parse_id(event_id: str) -> IdKey:
    """Return the sortable key of ``event_id``; raise ``ValueError`` if it is not an id."""
    ms, sep, seq = event_id.partition("-")
    if (not sep or not event_id.isascii() or not ms.isdigit() or not seq.isdigit()
            or len(ms) > MAX_DIGITS or len(seq) > MAX_DIGITS):
        raise ValueError(f"not an event id: {event_id[:48]!r}")
    return int(ms), int(seq)


def is_valid_id(event_id: object) -> bool:
    """True when ``event_id`` is a string ``parse_id`` accepts."""
    if not isinstance(event_id, str):
        return False
    try:
        parse_id(event_id)
    except ValueError:
        return False
    return True


def format_id(key: IdKey) -> str:
    return f"{key[0]}-{key[1]}"


def next_id(last: IdKey, now_ms: int) -> IdKey:
    """The id after ``last`` at time ``now_ms``: never smaller, even if the clock goes back."""
    if now_ms > last[0]:
        return (now_ms, 0)
    return (last[0], last[1] + 1)


# ---------------------------------------------------------------- notification ids
# ``"<ms>-<seq>"`` for a user's own notifications, ``"g<ms>-<seq>"`` for global ones,
# from one generator, so that both kinds merge into one order (engines/inbox.py).

#: notification ids handed out in one millisecond before the generator moves to the next
NOTIFICATION_SEQ = 1024


def parse_notification_id(notification_id: str) -> tuple[bool, int, int]:
    """``(is_global, ms, seq)``; ``ValueError`` for anything else."""
    is_global = notification_id.startswith("g")
    ms, sep, seq = notification_id[1 if is_global else 0:].partition("-")
    if not (sep and ms.isascii() and ms.isdigit() and seq.isascii() and seq.isdigit()
            and len(ms) <= 15 and len(seq) <= 4 and int(seq) < NOTIFICATION_SEQ):
        raise ValueError(f"not a notification id: {notification_id[:48]!r}")
    return is_global, int(ms), int(seq)


def notification_key(notification_id: str) -> int:
    """The order of a notification id (newer is larger); ``ValueError`` if malformed."""
    _, ms, seq = parse_notification_id(notification_id)
    return ms * NOTIFICATION_SEQ + seq


def is_notification_id(value: object) -> bool:
    if not isinstance(value, str):
        return False
    try:
        parse_notification_id(value)
    except ValueError:
        return False
    return True

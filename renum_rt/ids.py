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

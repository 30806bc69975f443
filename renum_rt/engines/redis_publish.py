"""How a group of publishes becomes calls of the publish script (``redis_lua.PUBLISH``).

With one primary, the whole group is one call. In a Redis Cluster a script may only
touch one hash slot, and each channel's keys share its own hash tag, so the group is
split by slot: one call per slot holds, in group order, each item's channels of that
slot. Each such part keeps its own answer under its own idempotency key, tagged like
its first channel (``pub:{<channel>}:<key>``), so a retry after a lost reply stores no
part twice and completes the parts that failed; an item is answered only once every
part of it is stored.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import ujson

from .. import channels
from ..protocol import encode, event_frame_tail
from .base import Publication

#: ``key(kind, name)``: the Redis key of one thing (a channel's stream, an answer, ...)
KeyOf = Callable[[str, str], str]


@dataclass(slots=True)
class Call:
    """One call of the publish script, and for each of its parts the item it belongs to."""

    keys: list[str] = field(default_factory=list)
    args: list[str | int] = field(default_factory=list)
    #: per part: the index of its item in the group, and its channels
    parts: list[tuple[int, Sequence[str]]] = field(default_factory=list)
    #: does every part carry an idempotency key (then the call may be retried)
    keyed: bool = True

    def add(self, index: int, item: Publication, chosen: Sequence[str], key_of: KeyOf, answer_key: str | None,
            tail: str, data: str) -> None:
        self.parts.append((index, chosen))
        self.keyed = self.keyed and answer_key is not None
        self.args += [tail, item.name, data, item.ts, item.ttl_s if answer_key else 0, len(chosen)]
        for channel in chosen:
            if not channels.is_stored(channel):
                self.keys.append(key_of("id", channel))
                mode = "c"
            elif channels.keeps_latest(channel):
                self.keys += [key_of("s", channel), key_of("latest", channel)]
                mode = "l"
            else:
                self.keys.append(key_of("s", channel))
                mode = "s"
            self.args += [channel, mode]
        if answer_key is not None:
            self.keys.append(answer_key)


def plan(items: Sequence[Publication], key_of: KeyOf, slot_of: Callable[[str], int] | None) -> list[Call]:
    """The script calls storing ``items`` in order: one, or one per slot (``slot_of``
    given: a cluster). Each event is encoded once, whatever the number of calls."""
    calls: dict[int, Call] = {}
    for index, item in enumerate(items):
        tail, data = event_frame_tail(item.ts, item.name, item.data), encode(item.data)
        by_slot: dict[int, list[str]] = {}
        for channel in item.channels:
            by_slot.setdefault(slot_of(channel) if slot_of else 0, []).append(channel)
        for slot, chosen in by_slot.items():
            answer_key = None
            if item.idempotency_key is not None:
                answer_key = key_of("pub", item.idempotency_key) if slot_of is None else \
                    f"{key_of('pub', chosen[0])}:{item.idempotency_key}"
            calls.setdefault(slot, Call()).add(index, item, chosen, key_of, answer_key, tail, data)
    return list(calls.values())


def answers(call: Call, result: list[list[Any]]) -> list[tuple[int, dict[str, str]]]:
    """Each part's ``{channel: id}`` from the script's result: the ids it stored, or the
    answer an earlier publish with the same key kept."""
    out = []
    for (index, chosen), (kept, *ids) in zip(call.parts, result, strict=True):
        if kept is not None:
            out.append((index, ujson.loads(kept)))
        else:
            out.append((index, {channel: id_.decode() for channel, id_ in zip(chosen, ids, strict=True)}))
    return out

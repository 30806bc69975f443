"""The memory engine keeps one object per retained event for the garbage collector to
walk, not two (docs/benchmarks.md, section 2)."""

from __future__ import annotations

import asyncio
import gc

from renum_rt.engines.base import Event
from renum_rt.engines.memory import MemoryEngine
from renum_rt.protocol import event_frame


def test_a_retained_event_is_one_tracked_object_and_reads_back_as_an_event() -> None:
    engine = MemoryEngine()
    data = {"execution_id": "e1", "status": "running", "progress": 5}
    asyncio.run(engine.publish(["user:u1", "team:t1"], "execution.status", data, 1700000000000))  # streams made
    gc.collect()
    tracked = len(gc.get_objects())
    for _ in range(500):
        asyncio.run(engine.publish(["user:u1", "team:t1"], "execution.status", data, 1700000000000))
    gc.collect()
    assert len(gc.get_objects()) - tracked <= 1000 + 50  # one per event and channel (a (key, Event) pair was two)
    retained = list(engine._streams["user:u1"].events)
    replay = asyncio.run(engine.history("user:u1", None, 10))
    assert len(replay.events) == 10 and not replay.complete
    assert replay.events[-1] == Event("user:u1", retained[-1][1], 1700000000000, "execution.status", data)


def test_the_frame_fanned_out_is_the_event_frame_with_the_stored_id() -> None:
    engine = MemoryEngine()
    frames: list[tuple[str, str, bytes]] = []
    engine.set_listeners(lambda channel, event_id, frame: frames.append((channel, event_id, frame)),
                         lambda message: None, lambda since, channels: None)
    odd = chr(34) + chr(92) + "é/"  # a quote, a backslash, non-ASCII and a slash: each written as JSON needs
    data = {"title": odd, "n": [1, 2.5]}
    for _ in range(2):  # the channel's head is made once, with its stream
        ids = asyncio.run(engine.publish(["team:t1", "user:" + odd], "x.y", data, 17))
    assert [(c, i) for c, i, _ in frames[-2:]] == list(ids.items())
    for channel, event_id, frame in frames:
        assert frame == event_frame(channel, event_id, 17, "x.y", data)

"""Hub: fan-out of one event to this node's subscribers, warming hand-over."""

from __future__ import annotations

import struct

import pytest

from renum_rt.hub import Hub, State
from renum_rt.protocol.wsframe import text_frame


class Sub:
    """A fake connection recording the frames it was handed."""

    def __init__(self, name: str) -> None:
        self.name = name
        self.frames: list[bytes] = []

    def send_frame(self, frame: bytes) -> None:
        self.frames.append(frame)

    def payloads(self) -> list[bytes]:
        out = []
        for frame in self.frames:
            assert frame[0] == 0x81
            n = frame[1]
            start = 2
            if n == 126:
                (n,) = struct.unpack("!H", frame[2:4])
                start = 4
            elif n == 127:
                (n,) = struct.unpack("!Q", frame[2:10])
                start = 10
            assert len(frame) == start + n
            out.append(frame[start:])
        return out

    def __repr__(self) -> str:
        return f"Sub({self.name})"


def payload(event_id: str) -> bytes:
    return b'{"type":"event","id":"%s"}' % event_id.encode()


def live_hub(channel: str, *subs: Sub) -> Hub:
    hub = Hub()
    for sub in subs:
        assert hub.go_live(sub, channel, None) == []
    return hub


def test_deliver_to_every_live_subscriber_with_the_same_bytes_object() -> None:
    a, b, c = Sub("a"), Sub("b"), Sub("c")
    hub = live_hub("team:t1", a, b)
    hub.go_live(c, "team:t2", None)
    hub.deliver("team:t1", "1-0", payload("1-0"))
    assert len(a.frames) == 1 and len(b.frames) == 1 and c.frames == []
    assert a.frames[0] is b.frames[0]
    assert a.frames[0] == text_frame(payload("1-0"))
    assert a.payloads() == [payload("1-0")]
    assert hub.metrics.delivered == 2


def test_deliver_in_order() -> None:
    a = Sub("a")
    hub = live_hub("system", a)
    ids = ["1-0", "1-1", "2-0", "10-0"]
    for event_id in ids:
        hub.deliver("system", event_id, payload(event_id))
    assert a.payloads() == [payload(i) for i in ids]
    assert hub.metrics.delivered == 4


def test_deliver_to_a_channel_without_subscribers_is_harmless() -> None:
    hub = Hub()
    hub.deliver("team:t9", "1-0", payload("1-0"))
    assert hub.metrics.delivered == 0
    assert hub.subscriber_count("team:t9") == 0


def test_warming_buffers_and_go_live_drops_what_the_replay_sent() -> None:
    a, other = Sub("a"), Sub("other")
    hub = live_hub("team:t1", other)
    hub.warm(a, "team:t1")
    for event_id in ["5-0", "6-0", "6-1", "7-0", "10-0"]:
        hub.deliver("team:t1", event_id, payload(event_id))
    assert a.frames == []  # nothing live while warming
    assert len(other.frames) == 5
    assert hub.subscriber_count("team:t1") == 2
    # the replay ended with 6-1: 5-0, 6-0 and 6-1 itself are dropped; numeric order, not text order
    assert hub.go_live(a, "team:t1", "6-1") == [payload("7-0"), payload("10-0")]
    hub.deliver("team:t1", "11-0", payload("11-0"))
    assert a.payloads() == [payload("11-0")]
    assert hub.subscriber_count("team:t1") == 2


def test_go_live_without_after_keeps_everything_buffered() -> None:
    a = Sub("a")
    hub = Hub()
    hub.warm(a, "execution:e1")
    for event_id in ["1-0", "2-0"]:
        hub.deliver("execution:e1", event_id, payload(event_id))
    assert hub.go_live(a, "execution:e1", None) == [payload("1-0"), payload("2-0")]
    assert hub.go_live(a, "execution:e1", None) == []  # buffer is gone


def test_go_live_when_replay_is_ahead_of_the_buffer() -> None:
    a = Sub("a")
    hub = Hub()
    hub.warm(a, "team:t1")
    hub.deliver("team:t1", "3-0", payload("3-0"))
    assert hub.go_live(a, "team:t1", "9-0") == []


def test_each_warming_subscriber_has_its_own_buffer() -> None:
    a, b = Sub("a"), Sub("b")
    hub = Hub()
    hub.warm(a, "team:t1")
    hub.deliver("team:t1", "1-0", payload("1-0"))
    hub.warm(b, "team:t1")
    hub.deliver("team:t1", "2-0", payload("2-0"))
    assert hub.go_live(b, "team:t1", None) == [payload("2-0")]
    hub.deliver("team:t1", "3-0", payload("3-0"))
    assert hub.go_live(a, "team:t1", "1-0") == [payload("2-0"), payload("3-0")]
    assert b.payloads() == [payload("3-0")]


def test_warm_takes_a_live_subscriber_out_of_live_delivery() -> None:
    a = Sub("a")
    hub = live_hub("team:t1", a)
    hub.warm(a, "team:t1")  # e.g. resubscribe with since
    hub.deliver("team:t1", "1-0", payload("1-0"))
    assert a.frames == []
    assert hub.subscriber_count("team:t1") == 1
    assert hub.go_live(a, "team:t1", None) == [payload("1-0")]
    assert hub.subscriber_count("team:t1") == 1


def test_remove_live_and_warming() -> None:
    a, b = Sub("a"), Sub("b")
    hub = live_hub("team:t1", a)
    hub.warm(b, "team:t1")
    hub.deliver("team:t1", "1-0", payload("1-0"))
    hub.remove(a, "team:t1")
    assert hub.subscriber_count("team:t1") == 1
    assert hub.channels() == ["team:t1"]
    hub.deliver("team:t1", "2-0", payload("2-0"))
    assert a.payloads() == [payload("1-0")]
    hub.remove(b, "team:t1")
    assert hub.subscriber_count("team:t1") == 0
    assert hub.channels() == []
    assert hub.last_id("team:t1") is None
    # removing what is not there is harmless
    hub.remove(a, "team:t1")
    hub.remove(a, "never")


def test_channels_and_subscriber_count() -> None:
    a, b = Sub("a"), Sub("b")
    hub = Hub()
    assert hub.channels() == []
    hub.go_live(a, "system", None)
    hub.go_live(b, "system", None)
    hub.go_live(a, "user:u1", None)
    hub.warm(b, "execution:e1")
    assert sorted(hub.channels()) == ["execution:e1", "system", "user:u1"]
    assert (hub.subscriber_count("system"), hub.subscriber_count("user:u1"),
            hub.subscriber_count("execution:e1"), hub.subscriber_count("team:x")) == (2, 1, 1, 0)
    hub.go_live(a, "system", None)  # twice live is still one subscriber
    assert hub.subscriber_count("system") == 2


def test_last_ids_track_the_last_delivered_id_per_channel() -> None:
    a = Sub("a")
    hub = live_hub("system", a)
    hub.warm(a, "team:t1")
    assert hub.last_id("system") is None and hub.last_id("team:t1") is None
    hub.deliver("system", "1-0", payload("1-0"))
    hub.deliver("system", "2-0", payload("2-0"))
    hub.deliver("team:t1", "5-0", payload("5-0"))
    assert (hub.last_id("system"), hub.last_id("team:t1")) == ("2-0", "5-0")
    hub.remove(a, "system")
    assert (hub.last_id("system"), hub.last_id("team:t1")) == (None, "5-0")


def test_each_subscription_has_one_state_from_warming_through_catching_up_to_live() -> None:
    a = Sub("a")
    hub = Hub()
    assert hub.state(a, "team:t1") is None
    hub.warm(a, "team:t1")
    assert hub.state(a, "team:t1") is State.WARMING
    hub.deliver("team:t1", "4-0", payload("4-0"))
    assert hub.go_live(a, "team:t1", "5-0") == []  # the replay went further than the buffer
    assert hub.state(a, "team:t1") is State.CATCHING_UP
    hub.deliver("team:t1", "5-0", payload("5-0"))  # already replayed: skipped
    assert hub.state(a, "team:t1") is State.CATCHING_UP and a.frames == []
    hub.deliver("team:t1", "6-0", payload("6-0"))
    assert hub.state(a, "team:t1") is State.LIVE and a.payloads() == [payload("6-0")]
    hub.remove(a, "team:t1")
    assert hub.state(a, "team:t1") is None


def test_a_paused_channel_holds_events_and_resume_sends_missed_then_held_once_in_order() -> None:
    a = Sub("a")
    hub = live_hub("team:t1", a)
    hub.deliver("team:t1", "1-0", payload("1-0"))
    hub.pause("team:t1")
    assert hub.paused("team:t1")
    hub.deliver("team:t1", "4-0", payload("4-0"))
    assert a.payloads() == [payload("1-0")]
    hub.resume("team:t1", [("1-0", payload("1-0")), ("2-0", payload("2-0")), ("4-0", payload("4-0"))])
    assert not hub.paused("team:t1")
    assert a.payloads() == [payload(i) for i in ("1-0", "2-0", "4-0")]


@pytest.mark.parametrize("size", [0, 125, 126, 70000])
def test_frames_of_any_size(size: int) -> None:
    a = Sub("a")
    hub = live_hub("system", a)
    body = b"x" * size
    hub.deliver("system", "1-0", body)
    assert a.payloads() == [body]

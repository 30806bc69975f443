"""The inbox contract: one suite, run against the memory inbox and the Redis one.

What the notification features rely on whichever engine runs: unread / read /
dismissed, read_all with a boundary, global announcements stored once and merged with
each user's state, exact unread counts with versions, caps and ages, refusals that
change nothing.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator
from typing import Any

import pytest
import redis.asyncio
import tornado.ioloop

from renum_rt.engines.inbox import Counter, Inbox, InboxLimits, UnknownNotification
from renum_rt.engines.inbox_memory import MemoryInbox
from renum_rt.engines.inbox_redis import RedisInbox
from renum_rt.ids import is_notification_id
from renum_rt.ids import notification_key as key

NOW = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


@pytest.fixture(params=["memory", "redis"])
def inbox(request: pytest.FixtureRequest, io_loop: tornado.ioloop.IOLoop) -> Iterator[Inbox]:
    marker = request.node.get_closest_marker("limits")
    limits = InboxLimits(**marker.kwargs) if marker else InboxLimits()
    if request.param == "memory":
        yield MemoryInbox(limits)
        return
    client = redis.asyncio.from_url(request.getfixturevalue("redis_server").url)
    yield RedisInbox(client, f"inbox-{uuid.uuid4().hex[:12]}:", limits)
    io_loop.run_sync(client.aclose)


def note(title: str = "Execution finished", **extra: Any) -> dict[str, Any]:
    return {"title": title, "body": "b", "level": "success", "category": "execution", "data": {"x": 1},
            "link": "/executions/e1", **extra}


async def unread(inbox: Inbox, user: str) -> int:
    return (await inbox.unread([user], NOW))[user].count


@pytest.mark.gen_test
async def test_create_stores_one_notification_per_user_unread_with_one_id(io_loop: object, inbox: Inbox) -> None:
    created, counts = await inbox.create(["u1", "u2", "u1"], note(), NOW)
    assert is_notification_id(created["id"]) and created["status"] == "unread" and created["created_at"] == NOW
    assert {k: created[k] for k in ("title", "body", "level", "category", "data", "link")} == note()
    assert {u: c.count for u, c in counts.items()} == {"u1": 1, "u2": 1}
    page = await inbox.list("u2", None, 10, None, NOW)
    assert page.items == [created] and page.next_cursor is None and page.unread.count == 1
    assert await unread(inbox, "u3") == 0


@pytest.mark.gen_test
async def test_list_is_newest_first_with_an_opaque_cursor_and_a_status_filter(io_loop: object, inbox: Inbox) -> None:
    ids = [(await inbox.create(["u1"], note(f"n{i}"), NOW + i))[0]["id"] for i in range(7)]
    await inbox.mark("u1", [ids[1]], "read", NOW)
    await inbox.mark("u1", [ids[2]], "dismissed", NOW)
    seen, cursor = [], None
    while True:
        page = await inbox.list("u1", None, 2, cursor, NOW)
        seen += [item["id"] for item in page.items]
        cursor = page.next_cursor
        if cursor is None:
            break
    assert seen == [ids[i] for i in (6, 5, 4, 3, 1, 0)]  # dismissed ones only on request
    assert [i["id"] for i in (await inbox.list("u1", "dismissed", 10, None, NOW)).items] == [ids[2]]
    assert [i["id"] for i in (await inbox.list("u1", "read", 10, None, NOW)).items] == [ids[1]]
    assert len((await inbox.list("u1", "unread", 10, None, NOW)).items) == 5


@pytest.mark.gen_test
async def test_read_and_dismiss_are_idempotent_and_move_the_counter(io_loop: object, inbox: Inbox) -> None:
    a = (await inbox.create(["u1"], note("a"), NOW))[0]["id"]
    b = (await inbox.create(["u1"], note("b"), NOW))[0]["id"]
    change = await inbox.mark("u1", [a, a], "read", NOW)
    assert (change.ids, change.status, change.unread.count) == ([a], "read", 1)
    again = await inbox.mark("u1", [a], "read", NOW)
    assert again.ids == [] and again.unread.count == 1
    gone = await inbox.mark("u1", [a, b], "dismissed", NOW)
    assert sorted(gone.ids) == sorted([a, b]) and gone.unread.count == 0
    # reading a dismissed notification leaves it dismissed
    assert (await inbox.mark("u1", [b], "read", NOW)).ids == []
    assert [i["status"] for i in (await inbox.list("u1", "dismissed", 10, None, NOW)).items] == ["dismissed"] * 2


@pytest.mark.gen_test
async def test_unknown_ids_and_ids_of_another_user_are_refused_and_change_nothing(io_loop: object,
                                                                                  inbox: Inbox) -> None:
    mine = (await inbox.create(["u1"], note(), NOW))[0]["id"]
    theirs = (await inbox.create(["u2"], note(), NOW))[0]["id"]
    for ids in ([theirs], [mine, theirs], [mine, "999-0"], ["g999-0"]):
        with pytest.raises(UnknownNotification):
            await inbox.mark("u1", ids, "read", NOW)
    assert await unread(inbox, "u1") == 1 and await unread(inbox, "u2") == 1


@pytest.mark.gen_test
async def test_read_all_with_a_boundary_leaves_newer_ones_unread(io_loop: object, inbox: Inbox) -> None:
    ids = [(await inbox.create(["u1"], note(f"n{i}"), NOW + i))[0]["id"] for i in range(5)]
    change = await inbox.read_all("u1", ids[2], NOW)
    assert change.ids == ids[:3] and change.unread.count == 2
    unread_now = [i["id"] for i in (await inbox.list("u1", "unread", 10, None, NOW)).items]
    assert unread_now == [ids[4], ids[3]]
    assert (await inbox.read_all("u1", None, NOW)).unread.count == 0


@pytest.mark.gen_test
async def test_an_announcement_is_stored_once_and_unread_for_everyone_even_users_never_seen(
    io_loop: object, inbox: Inbox
) -> None:
    announced, _ = await inbox.announce({"title": "Maintenance", "body": "tonight", "level": "warning",
                                         "category": "system", "data": None, "link": None}, NOW)
    assert announced["id"].startswith("g") and is_notification_id(announced["id"])
    counts = await inbox.unread([f"user{i}" for i in range(300)], NOW)  # more than one batch
    assert len(counts) == 300 and {c.count for c in counts.values()} == {1}
    page = await inbox.list("never-seen", None, 10, None, NOW)
    assert [i["id"] for i in page.items] == [announced["id"]] and page.items[0]["status"] == "unread"
    # each user's own state: one reads it, another dismisses it, a third does nothing
    assert (await inbox.mark("a", [announced["id"]], "read", NOW)).unread.count == 0
    assert (await inbox.mark("b", [announced["id"]], "dismissed", NOW)).unread.count == 0
    assert await unread(inbox, "c") == 1
    assert (await inbox.list("b", None, 10, None, NOW)).items == []
    assert (await inbox.list("a", "read", 10, None, NOW)).items[0]["id"] == announced["id"]


@pytest.mark.gen_test
async def test_read_all_covers_announcements_and_personal_ones_merged_in_order(io_loop: object, inbox: Inbox) -> None:
    first = (await inbox.create(["u1"], note("p1"), NOW))[0]["id"]
    glob = (await inbox.announce({"title": "g"}, NOW + 1))[0]["id"]
    last = (await inbox.create(["u1"], note("p2"), NOW + 2))[0]["id"]
    assert [i["id"] for i in (await inbox.list("u1", None, 10, None, NOW + 2)).items] == [last, glob, first]
    change = await inbox.read_all("u1", glob, NOW + 2)
    assert sorted(change.ids, key=key) == [first, glob] and change.unread.count == 1
    later = (await inbox.announce({"title": "g2"}, NOW + 3))[0]["id"]
    assert await unread(inbox, "u1") == 2  # an announcement after the boundary is unread
    assert (await inbox.read_all("u1", None, NOW + 3)).unread.count == 0
    assert later in [i["id"] for i in (await inbox.list("u1", "read", 10, None, NOW + 3)).items]


@pytest.mark.gen_test
async def test_versions_grow_with_every_change_so_the_newest_count_wins(io_loop: object, inbox: Inbox) -> None:
    v0 = (await inbox.unread(["u1"], NOW))["u1"].version
    _, counts = await inbox.create(["u1"], note(), NOW)
    v1 = counts["u1"].version
    v2 = (await inbox.announce({"title": "g"}, NOW)) and (await inbox.unread(["u1"], NOW))["u1"].version
    v3 = (await inbox.read_all("u1", None, NOW)).unread.version
    assert v0 < v1 < v2 < v3
    assert (await inbox.read_all("u1", None, NOW)).unread == Counter(0, v3)  # no change, same version


@pytest.mark.limits(max_per_user=3)
@pytest.mark.gen_test
async def test_the_cap_drops_dismissed_then_read_then_the_oldest_unread(io_loop: object, inbox: Inbox) -> None:
    ids = [(await inbox.create(["u1"], note(f"n{i}"), NOW + i))[0]["id"] for i in range(3)]
    await inbox.mark("u1", [ids[0]], "read", NOW)
    await inbox.mark("u1", [ids[2]], "dismissed", NOW)
    new = (await inbox.create(["u1"], note("n3"), NOW + 3))[0]["id"]  # drops the dismissed one
    kept = {i["id"] for s in ("unread", "read", "dismissed") for i in (await inbox.list("u1", s, 10, None, NOW)).items}
    assert kept == {ids[0], ids[1], new}
    newer = (await inbox.create(["u1"], note("n4"), NOW + 4))[0]["id"]  # then the read one
    kept = {i["id"] for s in ("unread", "read", "dismissed") for i in (await inbox.list("u1", s, 10, None, NOW)).items}
    assert kept == {ids[1], new, newer}
    await inbox.create(["u1"], note("n5"), NOW + 5)  # then the oldest unread
    assert await unread(inbox, "u1") == 3


@pytest.mark.limits(max_age_s=3600, global_max_age_s=60)
@pytest.mark.gen_test
async def test_old_notifications_expire(io_loop: object, inbox: Inbox) -> None:
    await inbox.create(["u1"], note(), NOW)
    await inbox.announce({"title": "g"}, NOW)
    assert await unread(inbox, "u1") == 2
    later = NOW + 61 * 1000
    assert (await inbox.unread(["u1"], later))["u1"].count == 1  # the announcement is gone
    assert (await inbox.list("u1", None, 10, None, NOW + DAY_MS)).items == []


@pytest.mark.gen_test
async def test_two_tabs_marking_at_once_change_each_notification_once(io_loop: object, inbox: Inbox) -> None:
    ids = [(await inbox.create(["u1"], note(f"n{i}"), NOW))[0]["id"] for i in range(20)]
    changes = await asyncio.gather(*(inbox.mark("u1", ids, "read", NOW) for _ in range(5)),
                                   inbox.read_all("u1", None, NOW))
    assert sorted(i for c in changes for i in c.ids) == sorted(ids)  # each id changed exactly once
    assert await unread(inbox, "u1") == 0


@pytest.mark.gen_test
async def test_ids_order_and_keys(io_loop: object, inbox: Inbox) -> None:
    ids = [(await inbox.create(["u1"], note(), NOW))[0]["id"] for _ in range(1030)]  # past one millisecond
    assert sorted(ids, key=key) == ids and len(set(ids)) == len(ids)
    assert not is_notification_id("x1-0") and not is_notification_id("1-1024") and not is_notification_id(5)


@pytest.mark.gen_test
async def test_an_idempotency_key_creates_once_and_returns_the_first_notification(io_loop: object,
                                                                                   inbox: Inbox) -> None:
    first, counts = await inbox.create(["u1"], note("once"), NOW, idempotency_key="k1")
    again, none = await inbox.create(["u1"], note("twice"), NOW + 5, idempotency_key="k1")
    assert again == first and none == {} and counts["u1"].count == 1
    assert await unread(inbox, "u1") == 1
    announced, fresh = await inbox.announce({"title": "g"}, NOW, idempotency_key="k2")
    repeated, fresh_again = await inbox.announce({"title": "g"}, NOW, idempotency_key="k2")
    assert (fresh, fresh_again) == (True, False) and repeated["id"] == announced["id"]
    assert await unread(inbox, "u1") == 2
    other, _ = await inbox.create(["u1"], note("other key"), NOW + 10, idempotency_key="k3")
    assert other["id"] != first["id"]

"""The inbox contract: one suite, run against the memory inbox and the Redis one.

What the notification features rely on whichever engine runs: unread / read /
dismissed, read_all with a boundary, global announcements stored once and merged with
each user's state, exact unread counts with versions, caps and ages, refusals that
change nothing.
"""

from __future__ import annotations

import asyncio
import itertools
import uuid
from collections.abc import Iterator
from typing import Any, cast

import pytest
import redis.asyncio
import tornado.ioloop
from redis.asyncio.cluster import ClusterNode, ClusterPipeline, RedisCluster
from redis.crc import key_slot

from renum_rt.engines.inbox import Counter, Inbox, InboxLimits, UnknownNotification
from renum_rt.engines.inbox_memory import MemoryInbox
from renum_rt.engines.inbox_redis import RedisInbox
from renum_rt.ids import is_notification_id
from renum_rt.ids import notification_key as key
from tests.support.redis_topologies import RedisClusterServers

NOW = 1_700_000_000_000
DAY_MS = 24 * 3600 * 1000


def cluster_client(cluster: RedisClusterServers) -> RedisCluster:
    return RedisCluster(startup_nodes=[ClusterNode("127.0.0.1", n.port) for n in cluster.nodes])


@pytest.fixture(params=["memory", "redis", "cluster"])
def inbox(request: pytest.FixtureRequest, io_loop: tornado.ioloop.IOLoop) -> Iterator[Inbox]:
    marker = request.node.get_closest_marker("limits")
    limits = InboxLimits(**marker.kwargs) if marker else InboxLimits()
    if request.param == "memory":
        yield MemoryInbox(limits)
        return
    prefix = f"inbox-{uuid.uuid4().hex[:12]}:"
    client: redis.asyncio.Redis | RedisCluster
    if request.param == "redis":
        client = redis.asyncio.from_url(request.getfixturevalue("redis_server").url)
    else:
        client = cluster_client(request.getfixturevalue("redis_cluster"))
    yield RedisInbox(client, prefix, limits, cluster=request.param == "cluster")
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


@pytest.mark.gen_test(timeout=30)  # 1030 creates, two round trips each on Redis
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



# ---------------------------------------------------------------- Redis only: slots, races, restarts

ON_REDIS = pytest.mark.parametrize("inbox", ["redis", "cluster"], indirect=True)
ON_CLUSTER = pytest.mark.parametrize("inbox", ["cluster"], indirect=True)


def users_on_every_node(cluster: RedisClusterServers, prefix: str, per_node: int = 2) -> list[str]:
    """User names whose inbox slots fall on every primary, ``per_node`` on each, then one
    more in the first one's slot (users of one slot share a script call)."""
    def slot(user: str) -> int:
        return key_slot(f"{prefix}ib:{{{user}}}:n".encode())

    found: dict[int, list[str]] = {node.port: [] for node in cluster.nodes}
    for i in itertools.count():
        user = f"user-{i}"
        users = found[cluster.node_of(f"{prefix}ib:{{{user}}}:n").port]
        if len(users) < per_node:
            users.append(user)
        if all(len(users) == per_node for users in found.values()):
            break
    every = [user for users in found.values() for user in users]
    return [*every, next(f"twin-{i}" for i in itertools.count() if slot(f"twin-{i}") == slot(every[0]))]


@ON_CLUSTER
@pytest.mark.gen_test
async def test_a_create_to_users_on_every_shard_stores_one_per_user_and_counts_right(
    io_loop: object, inbox: Inbox, redis_cluster: RedisClusterServers
) -> None:
    users = users_on_every_node(redis_cluster, cast(RedisInbox, inbox)._prefix)
    await inbox.announce({"title": "g"}, NOW)
    await inbox.mark(users[0], [(await inbox.list(users[0], None, 10, None, NOW)).items[0]["id"]], "read", NOW)
    created, counts = await inbox.create([*users, users[1]], note(), NOW + 1)
    assert counts == {u: Counter(1 if u == users[0] else 2, counts[u].version) for u in users}
    for user in users:
        items = (await inbox.list(user, "unread", 10, None, NOW + 1)).items
        assert [i["id"] for i in items if not i["id"].startswith("g")] == [created["id"]]
    assert await inbox.unread(users, NOW + 1) == counts


@ON_CLUSTER
@pytest.mark.gen_test
async def test_every_script_call_stays_within_one_slot(
    io_loop: object, inbox: Inbox, redis_cluster: RedisClusterServers, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Redis Cluster refuses a script on keys of two slots (CROSSSLOT) and redis-py
    refuses to send one; this records every script call of every operation anyway,
    direct or pipelined, and checks its keys against the cluster's own slot function."""
    calls: list[list[str]] = []

    def recording(execute: Any) -> Any:
        def call(self: Any, *args: Any, **kwargs: Any) -> Any:
            if str(args[0]).upper() in ("EVAL", "EVALSHA"):
                calls.append([k if isinstance(k, str) else k.decode() for k in args[3 : 3 + int(args[2])]])
            return execute(self, *args, **kwargs)
        return call

    monkeypatch.setattr(RedisCluster, "execute_command", recording(RedisCluster.execute_command))
    monkeypatch.setattr(ClusterPipeline, "execute_command", recording(ClusterPipeline.execute_command))
    users = users_on_every_node(redis_cluster, cast(RedisInbox, inbox)._prefix)
    glob = (await inbox.announce({"title": "g"}, NOW, idempotency_key="a"))[0]["id"]
    mine = (await inbox.create(users, note(), NOW, idempotency_key="c"))[0]["id"]
    await inbox.create(users, note(), NOW, idempotency_key="c")
    await inbox.mark(users[0], [mine, glob], "read", NOW)
    with pytest.raises(UnknownNotification):
        await inbox.mark(users[0], ["1-0"], "dismissed", NOW)
    await inbox.read_all(users[1], None, NOW)
    await inbox.list(users[2], None, 10, None, NOW)
    await inbox.unread(users, NOW)
    slots = [{key_slot(k.encode()) for k in keys} for keys in calls]
    assert len(calls) >= 2 * len(users) and all(len(s) == 1 for s in slots)  # a create and a count: one per user
    assert any(len(keys) == 16 for keys in calls)  # the two users of one slot, in one call
    assert len({redis_cluster.node_of(keys[0]).port for keys in calls}) == len(redis_cluster.nodes)


@ON_REDIS
@pytest.mark.gen_test
async def test_an_announcement_between_a_feed_read_and_a_users_change_is_still_counted(
    io_loop: object, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A mark reads the feed, an announcement and a count of the same user happen, then
    the mark's script runs: it must not answer a count without the announcement under
    the count's version (the newest count would then be wrong), so it reads again."""
    redis_inbox = cast(RedisInbox, inbox)
    mine = (await inbox.create(["u1"], note(), NOW))[0]["id"]
    read_feed = redis_inbox._feed
    between: list[Counter] = []

    async def feed_then_announce(now_ms: int, with_json: bool) -> Any:
        feed = await read_feed(now_ms, with_json)
        if redis_inbox._feed is feed_then_announce:  # once: the count below reads the feed too
            monkeypatch.setattr(redis_inbox, "_feed", read_feed)
            await inbox.announce({"title": "g"}, NOW)
            between.append((await inbox.unread(["u1"], NOW))["u1"])
        return feed

    monkeypatch.setattr(redis_inbox, "_feed", feed_then_announce)
    change = await inbox.mark("u1", [mine], "read", NOW)
    assert between[0].count == 2 and change.unread.count == 1 and change.unread.version > between[0].version
    assert (await inbox.unread(["u1"], NOW))["u1"] == change.unread


@ON_REDIS
@pytest.mark.gen_test
async def test_a_create_whose_users_were_not_all_stored_is_finished_by_its_retry(
    io_loop: object, inbox: Inbox, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The first call takes the idempotency key and stores u1, then fails; its retry
    stores u2 and u3 only, with the first call's id and content, and tells all three."""
    redis_inbox = cast(RedisInbox, inbox)
    pipeline = redis_inbox._pipeline

    async def fail_after_the_first_user(script: Any, calls: Any) -> Any:
        await pipeline(script, calls[:1])
        raise ConnectionError("lost")

    monkeypatch.setattr(redis_inbox, "_pipeline", fail_after_the_first_user)
    with pytest.raises(ConnectionError):
        await inbox.create(["u1", "u2", "u3"], note("first"), NOW, idempotency_key="k")
    monkeypatch.setattr(redis_inbox, "_pipeline", pipeline)
    again, counts = await inbox.create(["u1", "u2", "u3"], note("second"), NOW + 5, idempotency_key="k")
    assert again["title"] == "first" and {u: c.count for u, c in counts.items()} == {"u1": 1, "u2": 1, "u3": 1}
    for user in ("u1", "u2", "u3"):
        assert [i["id"] for i in (await inbox.list(user, None, 10, None, NOW)).items] == [again["id"]]
    assert await inbox.create(["u1", "u2", "u3"], note("third"), NOW + 9, idempotency_key="k") == (again, {})


@ON_REDIS
@pytest.mark.gen_test
async def test_a_restarted_redis_without_the_scripts_loaded_still_answers(io_loop: object, inbox: Inbox) -> None:
    await inbox.create(["u1", "u2"], note(), NOW)
    await cast(RedisInbox, inbox)._redis.script_flush()  # what a restart does to the script cache
    _, counts = await inbox.create(["u1", "u2"], note(), NOW)
    assert {u: c.count for u, c in counts.items()} == {"u1": 2, "u2": 2}
    await cast(RedisInbox, inbox)._redis.script_flush()
    assert {u: c.count for u, c in (await inbox.unread(["u1", "u2"], NOW)).items()} == {"u1": 2, "u2": 2}


@ON_REDIS
@pytest.mark.gen_test
async def test_a_feed_that_lost_writes_in_a_failover_is_taken_with_versions_still_growing(
    io_loop: object, inbox: Inbox
) -> None:
    """The feed's new primary lacks the last announcements' version increments, while a
    user's calls used the newer version: their next calls take the feed as it is (no
    refusal loop) and report no older version."""
    redis_inbox = cast(RedisInbox, inbox)
    await inbox.announce({"title": "g1"}, NOW)
    await inbox.announce({"title": "g2"}, NOW)
    before = (await inbox.unread(["u1"], NOW))["u1"]
    await redis_inbox._redis.set(redis_inbox._shared[3], 0)
    after = (await inbox.unread(["u1"], NOW))["u1"]
    assert before.count == after.count == 2 and after.version >= before.version
    assert (await inbox.create(["u1"], note(), NOW))[1]["u1"] == Counter(3, after.version + 1)

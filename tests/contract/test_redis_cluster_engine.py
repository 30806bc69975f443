"""The Redis engine on a real 3-primary Redis Cluster: what only a cluster has.

- a node receives only the channels it listens to (sharded pub/sub), and stops
  receiving one it no longer listens to;
- a publish to users in many slots is stored per slot, answered once every part is,
  and a retry with its Idempotency-Key after a shard failed completes it without
  storing any part twice;
- a shard primary killed with SIGKILL and started again: only that shard's channels
  are resynced, from a mark before what they missed, and they are fed again.

Tests that kill a shard have a cluster of their own (``own_cluster``).
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from renum_rt.engines.base import Engine, EngineUnavailable
from renum_rt.ids import parse_id
from tests.support.redis_topologies import RedisClusterServers, running

from .conftest import Feed, OpenEngine

TS = 1_700_000_000_000


@pytest.fixture
def own_cluster() -> Iterator[RedisClusterServers]:
    with running(RedisClusterServers()) as cluster:
        yield cluster


def users_on_every_shard(cluster: RedisClusterServers, prefix: str, count: int) -> list[str]:
    """``count`` user channels, spread so that every shard holds some."""
    channels = [f"user:u{i}" for i in range(count)]
    shards = {cluster.node_of(f"{prefix}s:{{{c}}}").port for c in channels}
    assert len(shards) == len(cluster.nodes)
    return channels


async def listening(open_engine: OpenEngine, cluster: RedisClusterServers, prefix: str,
                    feed: Feed) -> tuple[Engine, list[str]]:
    """An engine on ``cluster`` listening to 30 user channels spread over every shard."""
    engine = await open_engine("cluster", feed, url=cluster.url)
    channels = users_on_every_shard(cluster, prefix, 30)
    for channel in channels:
        await engine.listen(channel)
    return engine, channels


@pytest.mark.gen_test(timeout=20)
async def test_a_node_receives_only_the_channels_it_listens_to(
    io_loop: object, redis_cluster: RedisClusterServers, open_engine: OpenEngine
) -> None:
    feed_a, feed_b = Feed(), Feed()
    a = await open_engine("cluster", feed_a, url=redis_cluster.url)
    b = await open_engine("cluster", feed_b, url=redis_cluster.url)
    await a.listen("team:a")
    await b.listen("team:b")
    ids = await a.publish(["team:a", "team:b", "team:nobody"], "n", {}, TS)
    await feed_a.wait_for(lambda: len(feed_a.events) == 1)
    await feed_b.wait_for(lambda: len(feed_b.events) == 1)
    assert [(c, i) for c, i, _ in feed_a.events] == [("team:a", ids["team:a"])]
    assert [(c, i) for c, i, _ in feed_b.events] == [("team:b", ids["team:b"])]

    b.unlisten("team:b")
    await b.listen("team:a")
    later = await a.publish(["team:b", "team:a"], "n", {}, TS)
    await feed_b.wait_for(lambda: len(feed_b.events) == 2)
    assert feed_b.events[-1][:2] == ("team:a", later["team:a"])
    await feed_a.wait_for(lambda: len(feed_a.events) == 2)
    assert len(feed_b.events) == 2  # team:b's event reached no one: nobody listens to it
    assert (a.feed_messages, b.feed_messages) == (2, 2)  # what each node's pub/sub link carried


@pytest.mark.gen_test(timeout=20)
async def test_a_publish_across_slots_is_stored_once_per_channel_and_answered_whole(
    io_loop: object, redis_cluster: RedisClusterServers, open_engine: OpenEngine, prefix: str
) -> None:
    feed = Feed()
    engine, channels = await listening(open_engine, redis_cluster, prefix, feed)
    ids = await engine.publish(channels, "n", {"x": 1}, TS, idempotency_key="k", ttl_s=60)
    assert sorted(ids) == sorted(channels)
    assert await engine.publish(channels, "n", {"x": 1}, TS, idempotency_key="k", ttl_s=60) == ids
    for channel in channels:
        assert [e.id for e in (await engine.history(channel, None, 10)).events] == [ids[channel]]
    await feed.wait_for(lambda: len(feed.events) == len(channels))
    assert sorted((c, i) for c, i, _ in feed.events) == sorted(ids.items())


@pytest.mark.gen_test(timeout=60)
async def test_a_retry_after_a_shard_failed_completes_the_publish_without_duplicates(
    io_loop: object, own_cluster: RedisClusterServers, open_engine: OpenEngine, prefix: str
) -> None:
    engine = await open_engine("cluster", Feed(), url=own_cluster.url)
    channels = users_on_every_shard(own_cluster, prefix, 30)
    down = own_cluster.node_of(f"{prefix}s:{{{channels[0]}}}")
    down.kill()
    with pytest.raises(EngineUnavailable):  # the other shards stored their part; not answered
        await engine.publish(channels, "n", {}, TS, idempotency_key="k", ttl_s=60)
    down.start()
    own_cluster.wait_ok()
    ids = None
    for _ in range(50):  # the client learns the shard is back
        try:
            ids = await engine.publish(channels, "n", {}, TS, idempotency_key="k", ttl_s=60)
            break
        except EngineUnavailable:
            continue
    assert ids is not None and sorted(ids) == sorted(channels)
    for channel in channels:
        assert [e.id for e in (await engine.history(channel, None, 10)).events] == [ids[channel]]


@pytest.mark.gen_test(timeout=60)
async def test_a_killed_shard_resyncs_only_its_channels_and_feeds_them_again(
    io_loop: object, own_cluster: RedisClusterServers, open_engine: OpenEngine, prefix: str
) -> None:
    feed = Feed()
    engine, channels = await listening(open_engine, own_cluster, prefix, feed)
    seen = await engine.publish(channels, "n", {}, TS)
    await feed.wait_for(lambda: len(feed.events) == len(channels))
    down = own_cluster.node_of(f"{prefix}s:{{{channels[0]}}}")
    on_down = frozenset(c for c in channels if own_cluster.node_of(f"{prefix}s:{{{c}}}") is down)
    down.kill()
    await feed.wait_for(lambda: feed.resyncs == 1, timeout=10)
    assert feed.resync_channels == [on_down]
    assert max(parse_id(seen[c]) for c in channels if c in on_down) <= parse_id(feed.resync_marks[0])
    down.start()
    own_cluster.wait_ok()
    for channel in on_down:  # fed again once its shard is back
        for _ in range(50):
            try:
                await engine.listen(channel)
                break
            except EngineUnavailable:
                continue
    again = await engine.publish(sorted(on_down), "n", {}, TS)
    await feed.wait_for(lambda: len(feed.events) == len(channels) + len(on_down))
    assert sorted((c, i) for c, i, _ in feed.events[len(channels):]) == sorted(again.items())

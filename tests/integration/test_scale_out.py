"""Scale-out past one Redis, with real processes: gateways on a Redis Cluster, and on a
primary with a replica watched by Sentinel.

- **Cluster**: two ``server.py`` nodes on a 3-primary cluster of the test alone, raw
  clients on both following team channels spread over every shard, SDK clients of users
  spread over every shard, steady publish load on both nodes (each publish goes to a team
  and to every user, so it spans all shards). A shard primary is killed with SIGKILL and
  started again: every accepted event reaches every client once, in order.
- **Sentinel**: one node with ``redis_wait_replicas=1``, publish load, the primary killed
  with SIGKILL; Sentinel promotes the replica and the node follows (once the old primary
  is back as its replica, publishes are accepted again): every event the API accepted,
  before and after, reached the subscriber once and is in the new primary's history.

Helpers (``Load``, ``Follower``, ``token``, ...) are those of ``test_redis_crash.py``.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator

import pytest

from renum_rt.client import Backoff, Event, RealtimeClient
from tests.integration.test_redis_crash import (
    API_KEY,
    SECRET,
    Follower,
    Load,
    assert_in_order_once,
    drain,
    eventually,
    in_thread,
    new_id,
    token,
)
from tests.support.redis_topologies import RedisClusterServers, RedisSentinelServers, running
from tests.support.server_process import ServerProcess
from tests.support.wsclient import connect

PREFIX = "scale:"


def env(redis_url: str, **more: str) -> dict[str, str]:
    return {"RENUM_RT_JWT_SECRET": SECRET, "RENUM_RT_API_KEY": API_KEY, "RENUM_RT_REDIS_URL": redis_url,
            "RENUM_RT_REDIS_PREFIX": PREFIX, "RENUM_RT_HTTP_RATE": "2000", "RENUM_RT_HTTP_BURST": "2000",
            "RENUM_RT_LOG_LEVEL": "warning", **more}


@pytest.fixture
def nodes() -> Iterator[list[ServerProcess]]:
    started: list[ServerProcess] = []
    yield started
    for node in started:
        node.stop()


def spread(cluster: RedisClusterServers, kind: str, per_shard: int) -> list[str]:
    """Ids whose channels (``<kind>:<id>``) lie ``per_shard`` on each shard."""
    by_shard: dict[int, list[str]] = {node.port: [] for node in cluster.nodes}
    while any(len(ids) < per_shard for ids in by_shard.values()):
        candidate = new_id(kind[0])
        ids = by_shard[cluster.node_of(f"{PREFIX}s:{{{kind}:{candidate}}}").port]
        if len(ids) < per_shard:
            ids.append(candidate)
    return [i for ids in by_shard.values() for i in ids]


@pytest.mark.gen_test(timeout=90)
async def test_two_gateways_on_a_cluster_lose_nothing_when_a_shard_primary_is_killed(
    nodes: list[ServerProcess],
) -> None:
    with running(RedisClusterServers()) as cluster:
        a, b = (ServerProcess(env(cluster.url)).start() for _ in range(2))
        nodes += [a, b]
        teams, users = spread(cluster, "team", 3), spread(cluster, "user", 3)
        followers = [Follower([node.ws_url], new_id("w"), f"team:{team}", teams=teams)
                     for team in teams for node in (a, b)]
        received: dict[str, list[Event]] = {user: [] for user in users}
        clients = [RealtimeClient([(a, b)[i % 2].ws_url], lambda user=user: token(user),
                                  backoff=Backoff(attempts=100, base_ms=50, max_ms=300),
                                  on_event=received[user].append) for i, user in enumerate(users)]
        for client in clients:
            await client.connect()
        await eventually(lambda: all(len(f.replies) == 1 for f in followers), what="followers subscribed")

        load = Load([a, b], lambda n: {"channel": f"team:{teams[n % len(teams)]}", "users": users,
                                       "event": "load.tick", "data": {"n": n}})
        await load.more(30)
        shard = cluster.node_of(f"{PREFIX}s:{{team:{teams[0]}}}")
        await in_thread(shard.kill)
        await eventually(lambda: load.failed > 0, what="publishes refused while the shard is down")
        await in_thread(shard.start)
        await in_thread(cluster.wait_ok)
        await load.more(60)  # every shard answers again
        await load.stop()

        for follower in followers:
            accepted = [ids[follower.channel] for ids in load.accepted if follower.channel in ids]
            await eventually(lambda f=follower, acc=accepted: set(acc) <= set(f.ids), timeout=15,
                             what=f"{follower.channel} delivered")
            assert_in_order_once(follower.ids, accepted, f"follower of {follower.channel}")
        for user in users:
            own = f"user:{user}"

            def got(user: str = user, own: str = own) -> list[str]:
                return [e.id for e in received[user] if e.channel == own]

            await eventually(lambda own=own, got=got: set(load.ids(own)) <= set(got()), timeout=15,
                             what=f"{own} delivered")
            assert_in_order_once(got(), load.ids(own), own)
        for follower in followers:
            await follower.stop()
        for client in clients:
            await client.close()


@pytest.mark.gen_test(timeout=90)
async def test_a_sentinel_failover_under_load_loses_no_accepted_event(nodes: list[ServerProcess]) -> None:
    with running(RedisSentinelServers()) as servers:
        node = ServerProcess(env(servers.url, RENUM_RT_REDIS_WAIT_REPLICAS="1")).start()
        nodes.append(node)
        team = f"team:{uuid.uuid4().hex[:8]}"
        follower = Follower([node.ws_url], new_id("w"), team, teams=[team.split(":")[1]])
        await eventually(lambda: len(follower.replies) == 1, what="follower subscribed")
        load = Load([node], lambda n: {"channel": team, "event": "load.tick", "data": {"n": n}})
        await load.more(40)
        await in_thread(servers.primary.kill)
        await eventually(lambda: servers.current_primary_port() == servers.replica.port, timeout=30,
                         what="the replica promoted")
        # the old primary comes back and Sentinel makes it the new one's replica: with
        # none, WAIT cannot be satisfied and publishes are refused (503), never lost
        await in_thread(servers.primary.start)
        await in_thread(servers.wait_watched, servers.replica)
        await load.more(40)  # accepted by the new primary and its replica
        await load.stop()
        accepted = load.ids(team)
        await eventually(lambda: set(accepted) <= set(follower.ids), timeout=15, what="every accepted event")
        assert_in_order_once(follower.ids, accepted, "follower across the failover")
        await follower.stop()
        # and the new primary has them all: a client replaying from the first one gets the rest
        late = await connect(node.ws_url, token(new_id("late"), teams=[team.split(":")[1]]))
        await late.send({"type": "subscribe", "channel": team, "since": accepted[0], "ref": "s"})
        replayed = await drain(late, team, until=accepted[-1])
        assert set(accepted[1:]) <= set(replayed) and len(replayed) == len(set(replayed))
        late.close()

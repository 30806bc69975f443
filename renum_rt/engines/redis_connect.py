"""Which Redis the engine talks to, from its URL: one primary, a primary found through
Sentinel, or a Redis Cluster; and the client for each.

| URL                                                        | topology                    |
| ---------------------------------------------------------- | --------------------------- |
| ``redis://[user:password@]host:port/db`` (or ``rediss://``) | one primary                 |
| ``redis+sentinel://[user:password@]host:port[,host:port...]/<primary name>[/db]`` | the primary Sentinel names |
| ``redis+cluster://[user:password@]host:port[,host:port...]`` | a Redis Cluster (any of its nodes) |

The credentials are those of the Redis servers (Sentinels are asked without). Every
client shares the engine's rules: redis-py retries nothing on a lost connection (the
engine decides, per command, whether a retry is safe), commands wait a bounded time for
a free pooled connection, and each command has a timeout.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal
from urllib.parse import unquote

import redis.asyncio
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.connection import BlockingConnectionPool
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel, SentinelConnectionPool
from redis.backoff import NoBackoff
from redis.maint_notifications import MaintNotificationsConfig

#: a command's timeout, and a connection's
TIMEOUT_S = 2.0
#: how long a command waits for a free pooled connection before it is unavailable
POOL_WAIT_S = 5.0

Kind = Literal["single", "sentinel", "cluster"]


class BadRedisURL(ValueError):
    """The URL names no topology this engine knows, or is malformed."""


@dataclass(frozen=True, slots=True)
class Topology:
    """What a ``RENUM_RT_REDIS_URL`` names."""

    kind: Kind
    url: str
    #: the Sentinels, or the cluster nodes to start from
    hosts: tuple[tuple[str, int], ...] = ()
    #: the name Sentinel knows the primary by
    primary: str = ""
    username: str | None = None
    password: str | None = None
    db: int = 0


def _hosts(netloc: str) -> tuple[tuple[str, int], ...]:
    hosts = []
    for part in netloc.split(","):
        host, sep, port = part.strip().rpartition(":")
        if not sep or not host or not port.isdigit():
            raise BadRedisURL(f"expected host:port, got {part!r}")
        hosts.append((host.strip("[]"), int(port)))
    return tuple(hosts)


def parse(url: str) -> Topology:
    """The topology ``url`` names; raises ``BadRedisURL`` with what is wrong."""
    scheme, sep, rest = url.partition("://")
    if not sep:
        raise BadRedisURL(f"not a URL: {url[:80]!r}")
    if scheme in ("redis", "rediss", "unix"):
        return Topology("single", url)
    if scheme not in ("redis+sentinel", "redis+cluster"):
        raise BadRedisURL(f"unknown scheme {scheme!r}: expected redis, rediss, redis+sentinel or redis+cluster")
    netloc, _, path = rest.partition("/")
    userinfo, at, hostlist = netloc.rpartition("@")
    username = password = None
    if at:
        user, colon, secret = userinfo.partition(":")
        username, password = (unquote(user) or None), (unquote(secret) if colon else None)
    hosts = _hosts(hostlist)
    parts = [p for p in path.split("?")[0].split("/") if p]
    if scheme == "redis+cluster":
        if parts:
            raise BadRedisURL("redis+cluster:// takes no path: a cluster has one database")
        return Topology("cluster", url, hosts, username=username, password=password)
    if not parts or len(parts) > 2 or (len(parts) == 2 and not parts[1].isdigit()):
        raise BadRedisURL("expected redis+sentinel://host:port[,host:port...]/<primary name>[/db]")
    return Topology("sentinel", url, hosts, primary=unquote(parts[0]), username=username, password=password,
                    db=int(parts[1]) if len(parts) == 2 else 0)


class BlockingSentinelPool(SentinelConnectionPool, BlockingConnectionPool):
    """Sentinel's pool (connections go to the primary Sentinel names now, and a primary
    turned replica is left) that waits for a free connection like the single-primary
    pool, instead of failing when all are in use."""


_COMMON: dict[str, Any] = {
    "socket_timeout": TIMEOUT_S,
    "socket_connect_timeout": TIMEOUT_S,
    "retry": Retry(NoBackoff(), 0),
}


def connect(topology: Topology, pool_size: int) -> redis.asyncio.Redis | RedisCluster:
    """A client of ``topology`` with at most ``pool_size`` connections (per node, for a
    cluster). Nothing is contacted before its first command."""
    if topology.kind == "single":
        # The pool replaces connections Redis closed meanwhile (a restart) when it hands
        # them out, a check redis-py skips when maintenance notifications (a Redis
        # Enterprise feature) are on.
        pool = BlockingConnectionPool.from_url(
            topology.url, max_connections=pool_size, timeout=POOL_WAIT_S, health_check_interval=10,
            maint_notifications_config=MaintNotificationsConfig(enabled=False), **_COMMON)
        return redis.asyncio.Redis.from_pool(pool)
    if topology.kind == "sentinel":
        sentinel = Sentinel(list(topology.hosts), **_COMMON)  # type: ignore[no-untyped-call]  # untyped in redis-py
        client: redis.asyncio.Redis = sentinel.master_for(
            topology.primary, connection_pool_class=BlockingSentinelPool, max_connections=pool_size,
            timeout=POOL_WAIT_S, health_check_interval=10, db=topology.db, username=topology.username,
            password=topology.password, **_COMMON)
        return client
    return RedisCluster(
        startup_nodes=[ClusterNode(host, port) for host, port in topology.hosts], max_connections=pool_size,
        require_full_coverage=False, username=topology.username, password=topology.password,
        socket_timeout=TIMEOUT_S, socket_connect_timeout=TIMEOUT_S, retry=Retry(NoBackoff(), 0))


def node_client(cluster: RedisCluster, node: ClusterNode) -> redis.asyncio.Redis:
    """A client of one cluster node alone, with the cluster's credentials: for pub/sub,
    which stays on one connection to one node."""
    kwargs = cluster.nodes_manager.connection_kwargs
    return redis.asyncio.Redis(host=node.host, port=int(node.port), username=kwargs.get("username"),
                               password=kwargs.get("password"), health_check_interval=10, **_COMMON)

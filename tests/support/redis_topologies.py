"""Real Redis topologies for tests: a Redis Cluster, and a primary with a replica watched
by three Sentinels, each on free ports of their own (never the machine's 6379).

Both are made of ``RedisServer`` processes (AOF with ``appendfsync always``), so a test
can ``kill()`` one member and ``start()`` it again with its data. The cluster is made
the way an operator makes one (``redis-cli --cluster create``); a cluster node also
listens on its bus port, port + 10000, so its port is chosen with that one free too.
Readiness is polled, never slept for.
"""

from __future__ import annotations

import contextlib
import shutil
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from typing import TypeVar

import redis

from tests.support.redis_server import RedisServer, free_port

REDIS_CLI = shutil.which("redis-cli") or "/usr/bin/redis-cli"
PRIMARY_NAME = "renum"


def _poll(check: Callable[[], bool], timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if check():
                return
        except (redis.ConnectionError, redis.TimeoutError, redis.ResponseError):
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"{what} not ready after {timeout} s")
        time.sleep(0.05)


Servers = TypeVar("Servers", "RedisClusterServers", "RedisSentinelServers")


@contextlib.contextmanager
def running(servers: Servers) -> Iterator[Servers]:
    """``servers`` started, and cleaned up on exit whatever happens."""
    try:
        servers.start()
        yield servers
    finally:
        servers.cleanup()


def _cluster_port() -> int:
    """A free port whose bus port (port + 10000) is free as well."""
    while True:
        port = free_port()
        if port + 10000 < 65536:
            try:
                with socket.socket() as sock:
                    sock.bind(("127.0.0.1", port + 10000))
                return port
            except OSError:
                continue


class RedisClusterServers:
    """``primaries`` cluster nodes holding every slot between them, no replicas.

    A killed primary's slots are down until it is started again (from its AOF and its
    ``nodes.conf``, same node id); the others keep serving theirs
    (``cluster-require-full-coverage no``).
    """

    def __init__(self, primaries: int = 3) -> None:
        self.nodes = [RedisServer(port=_cluster_port(), extra=[
            "--cluster-enabled", "yes",
            "--cluster-config-file", "nodes.conf",
            "--cluster-node-timeout", "2000",
            "--cluster-require-full-coverage", "no",
        ]) for _ in range(primaries)]

    @property
    def url(self) -> str:
        """The URL the engine takes: ``redis+cluster://`` and every node."""
        return "redis+cluster://" + ",".join(f"127.0.0.1:{node.port}" for node in self.nodes)

    def start(self, timeout: float = 30.0) -> None:
        for node in self.nodes:
            node.start()
        subprocess.run(
            [REDIS_CLI, "--cluster", "create", *(f"127.0.0.1:{node.port}" for node in self.nodes), "--cluster-yes"],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, timeout=timeout,
        )
        self.wait_ok(timeout)

    def wait_ok(self, timeout: float = 30.0) -> None:
        """Until every node says the cluster is ok and knows every primary."""
        def ok() -> bool:
            for node in self.nodes:
                with redis.Redis(port=node.port, socket_timeout=1) as client:
                    info = client.execute_command("CLUSTER", "INFO").decode()
                    if "cluster_state:ok" not in info or f"cluster_known_nodes:{len(self.nodes)}" not in info:
                        return False
            return True

        _poll(ok, timeout, "redis cluster")

    def node_of(self, key: str) -> RedisServer:
        """The node that holds ``key``'s slot."""
        with redis.Redis(port=self.nodes[0].port, socket_timeout=1) as client:
            slot = int(client.execute_command("CLUSTER", "KEYSLOT", key))
            for start, end, primary, *_ in client.execute_command("CLUSTER", "SLOTS"):
                if start <= slot <= end:
                    port = int(primary[1])
                    return next(node for node in self.nodes if node.port == port)
        raise LookupError(key)

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


class RedisSentinelServers:
    """A primary, one replica, and three Sentinels watching them as ``PRIMARY_NAME``
    (quorum 2, a primary counted down after ``down_after_ms``)."""

    def __init__(self, down_after_ms: int = 1000) -> None:
        self.primary = RedisServer()
        self.replica = RedisServer(extra=["--replicaof", "127.0.0.1", str(self.primary.port)])
        self.sentinels = [RedisServer(sentinel=[
            f"sentinel monitor {PRIMARY_NAME} 127.0.0.1 {self.primary.port} 2",
            f"sentinel down-after-milliseconds {PRIMARY_NAME} {down_after_ms}",
            f"sentinel failover-timeout {PRIMARY_NAME} 10000",
            f"sentinel parallel-syncs {PRIMARY_NAME} 1",
        ]) for _ in range(3)]

    @property
    def url(self) -> str:
        """``redis+sentinel://`` every Sentinel, then the primary's name."""
        return "redis+sentinel://" + ",".join(f"127.0.0.1:{s.port}" for s in self.sentinels) + f"/{PRIMARY_NAME}"

    def start(self, timeout: float = 30.0) -> None:
        self.primary.start()
        self.replica.start()
        for sentinel in self.sentinels:
            sentinel.start()
        self.wait_watched(self.primary, timeout)

    def current_primary_port(self) -> int:
        with redis.Redis(port=self.sentinels[0].port, socket_timeout=1) as client:
            _, port = client.sentinel_get_master_addr_by_name(PRIMARY_NAME)
            return int(port)

    def wait_watched(self, primary: RedisServer, timeout: float = 30.0) -> None:
        """Until every Sentinel names ``primary``, knows a replica in sync and the other
        two Sentinels: a failover can happen from then on."""
        def watched() -> bool:
            for sentinel in self.sentinels:
                with redis.Redis(port=sentinel.port, socket_timeout=1) as client:
                    master = client.sentinel_master(PRIMARY_NAME)
                    if int(master["port"]) != primary.port or int(master["num-other-sentinels"]) < 2:
                        return False
                    replicas = client.sentinel_slaves(PRIMARY_NAME)
                    if not any(r.get("master-link-status") == "ok" for r in replicas):
                        return False
            return True

        _poll(watched, timeout, "redis sentinel")

    def cleanup(self) -> None:
        for server in [*self.sentinels, self.replica, self.primary]:
            server.cleanup()

"""Fixtures shared by the test suites: real redis-server processes, and an in-process
gateway on a real socket for the integration tests.

Every in-process integration test runs twice, once per engine (``memory``, ``redis``),
so the gateway behaves the same on both; each Redis run gets its own key prefix on a
session-wide private ``redis-server``. ``settings`` can be overridden per test with
``@pytest.mark.settings(key=value)``.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator
from typing import Any

import pytest

from renum_rt.app import Node
from renum_rt.auth import issue_token
from renum_rt.config import Settings
from renum_rt.httpserver import HTTPServer, http_server_options
from tests.support.redis_server import RedisServer
from tests.support.redis_topologies import RedisClusterServers, RedisSentinelServers, running

SECRET = "test-secret-" + "x" * 32
API_KEY = "test-api-key"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(**kw): override gateway settings for this test")


@pytest.fixture(scope="session")
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(scope="session")
def redis_cluster() -> Iterator[RedisClusterServers]:
    """A 3-primary Redis Cluster for the session (``.url`` is ``redis+cluster://...``)."""
    with running(RedisClusterServers()) as cluster:
        yield cluster


@pytest.fixture(scope="session")
def redis_sentinel() -> Iterator[RedisSentinelServers]:
    """A primary, a replica and three Sentinels for the session (``.url`` is
    ``redis+sentinel://.../renum``). Tests that fail it over use their own."""
    with running(RedisSentinelServers()) as servers:
        yield servers


@pytest.fixture
def own_redis_server() -> Iterator[RedisServer]:
    """A server of this test alone, for tests that stop, kill or inspect it."""
    server = RedisServer()
    server.start()
    yield server
    server.cleanup()


@pytest.fixture(params=["memory", "redis"])
def settings(request: pytest.FixtureRequest) -> Settings:
    marker = request.node.get_closest_marker("settings")
    values: dict[str, Any] = {"jwt_secret": SECRET, "api_key": (API_KEY,)}
    if request.param == "redis":
        values["redis_url"] = request.getfixturevalue("redis_server").url
        values["redis_prefix"] = f"it-{uuid.uuid4().hex[:12]}:"
    values.update(marker.kwargs if marker else {})
    return Settings(**values)


@pytest.fixture
def node(settings: Settings, io_loop: Any) -> Any:
    node = Node(settings)
    io_loop.run_sync(node.start)
    yield node
    io_loop.run_sync(node.stop)


@pytest.fixture
def app(node: Node) -> Any:
    return node.app


@pytest.fixture
def http_server(io_loop: Any, _unused_port: Any, app: Any, settings: Settings) -> Iterator[Any]:
    """pytest-tornado's server, with ``app`` as a declared dependency so that the
    engine parametrization reaches every test that talks to the server; built with
    the options the command uses (timeouts, sizes, trusted proxies)."""
    server = HTTPServer(app, **http_server_options(settings))
    server.add_socket(_unused_port[0])
    yield server
    server.stop()
    io_loop.run_sync(server.close_all_connections, timeout=5)


@pytest.fixture
def ws_url(http_server: Any, base_url: str) -> str:
    """The server's /ws URL (depending on ``http_server`` makes the server listen)."""
    return base_url.replace("http://", "ws://") + "/ws"


@pytest.fixture
def token() -> Callable[..., str]:
    """``token(sub, ttl_s=3600, **claims)``: a user token signed with the test secret."""

    def make(sub: str = "u1", ttl_s: int = 3600, **claims: Any) -> str:
        return issue_token(SECRET, sub, ttl_s, **claims)

    return make


@pytest.fixture
def grant() -> Callable[..., str]:
    """``grant(sub, channel)``: a subscription token."""

    def make(sub: str, channel: str, ttl_s: int = 600) -> str:
        return issue_token(SECRET, sub, ttl_s, channel=channel)

    return make



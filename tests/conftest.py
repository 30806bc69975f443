"""Fixtures shared by the integration tests: an in-process gateway on a real socket.

``settings`` can be overridden per test with ``@pytest.mark.settings(key=value)``.
"""

from __future__ import annotations

from typing import Any, Callable

import pytest

from renum_rt.app import Node
from renum_rt.auth import issue_token
from renum_rt.config import Settings

SECRET = "test-secret-" + "x" * 32
API_KEY = "test-api-key"


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "settings(**kw): override gateway settings for this test")


@pytest.fixture
def settings(request: pytest.FixtureRequest) -> Settings:
    marker = request.node.get_closest_marker("settings")
    values: dict[str, Any] = {"jwt_secret": SECRET, "api_key": (API_KEY,)}
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



"""Fixtures of the engine contract suite: every engine, real Redis, one feed per engine.

``engine`` runs each test once per engine ("memory", "redis"). Redis tests share one
``redis-server`` for the session (its own port and directory, never the machine's
6379) and each gets a unique key prefix, so tests do not see each other's keys or
pub/sub traffic. Mark a test ``@pytest.mark.retention(max_len=..., max_age_s=...)``
to give its engine another retention.
"""

from __future__ import annotations

import asyncio
import uuid
from typing import Any, Awaitable, Callable, Iterator

import pytest
import tornado.ioloop

from renum_rt.engines.base import Engine, Retention
from renum_rt.engines.memory import MemoryEngine
from renum_rt.engines.redis import RedisEngine

ENGINES = ["memory", "redis"]


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "retention(**kwargs): the Retention of the test's engine")


class Feed:
    """What an engine handed to its listeners, with a way to await it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []
        self.controls: list[dict[str, Any]] = []
        self.resyncs = 0
        self.resync_marks: list[str] = []
        self._changed = asyncio.Event()

    def on_event(self, channel: str, event_id: str, frame: bytes) -> None:
        self.events.append((channel, event_id, frame))
        self._changed.set()

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        self._changed.set()

    def on_resync(self, since: str) -> None:
        self.resyncs += 1
        self.resync_marks.append(since)
        self._changed.set()

    async def wait_for(self, condition: Callable[[], bool], timeout: float = 3.0) -> None:
        """Return once ``condition()`` holds; fail after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while not condition():
                self._changed.clear()
                await self._changed.wait()


async def eventually(check: Callable[[], Awaitable[bool]], timeout: float = 3.0, interval: float = 0.02) -> None:
    """Poll ``check`` until it returns True (for what only time changes: expiry)."""
    async with asyncio.timeout(timeout):
        while not await check():
            await asyncio.sleep(interval)


OpenEngine = Callable[..., Awaitable[Engine]]


@pytest.fixture
def prefix() -> str:
    return f"test-{uuid.uuid4().hex[:12]}:"


@pytest.fixture
def open_engine(io_loop: tornado.ioloop.IOLoop, prefix: str) -> Iterator[OpenEngine]:
    """``await open_engine(kind, feed, retention=..., url=..., prefix=...)``: a started
    engine listening into ``feed``, closed after the test (``url`` for "redis"; the
    prefix defaults to the test's own)."""
    opened: list[Engine] = []

    async def open_(
        kind: str, feed: Feed, retention: Retention = Retention(), url: str | None = None, prefix: str = prefix
    ) -> Engine:
        engine: Engine
        if kind == "memory":
            engine = MemoryEngine(retention)
        else:
            assert url is not None, "a redis engine needs the url of a redis_server"
            engine = RedisEngine(url, retention, prefix=prefix)
        engine.set_listeners(feed.on_event, feed.on_control, feed.on_resync)
        await engine.start()
        opened.append(engine)
        return engine

    yield open_
    for engine in opened:
        io_loop.run_sync(engine.close, timeout=5)


@pytest.fixture
def feed() -> Feed:
    return Feed()


@pytest.fixture(params=ENGINES)
def engine(
    request: pytest.FixtureRequest, io_loop: tornado.ioloop.IOLoop, open_engine: OpenEngine, feed: Feed
) -> Engine:
    """A started engine of each kind, listening into ``feed``."""
    marker = request.node.get_closest_marker("retention")
    retention = Retention(**marker.kwargs) if marker else Retention()
    url = request.getfixturevalue("redis_server").url if request.param == "redis" else None
    started: Engine = io_loop.run_sync(lambda: open_engine(request.param, feed, retention, url))
    return started

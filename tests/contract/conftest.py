"""Fixtures of the engine contract suite: every engine, real Redis, one feed per engine.

``engine`` runs each test once per engine ("memory", "redis"). Redis tests share one
``redis-server`` for the session (its own port and directory, never the machine's
6379) and each gets a unique key prefix, so tests do not see each other's keys or
pub/sub traffic. Mark a test ``@pytest.mark.retention(max_len=..., max_age_s=...)``
to give its engine another retention. ``LossyProxy`` sits between an engine and a real
``redis-server`` to lose a reply on purpose; ``engine_log`` holds what the engines logged.
"""

from __future__ import annotations

import asyncio
import logging
import uuid
from collections.abc import Awaitable, Callable, Iterator
from typing import Any

import pytest
import tornado.ioloop

from renum_rt.engines.base import Engine, Retention
from renum_rt.engines.memory import MemoryEngine
from renum_rt.engines.redis import RedisEngine
from renum_rt.logs import logger

ENGINES = ["memory", "redis", "sentinel", "cluster"]
#: the session fixture that serves each Redis topology
SERVERS = {"redis": "redis_server", "sentinel": "redis_sentinel", "cluster": "redis_cluster"}


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "retention(**kwargs): the Retention of the test's engine")


class Feed:
    """What an engine handed to its listeners, with a way to await it."""

    def __init__(self) -> None:
        self.events: list[tuple[str, str, bytes]] = []
        self.controls: list[dict[str, Any]] = []
        self.resyncs = 0
        self.resync_marks: list[str] = []
        self.resync_channels: list[frozenset[str] | None] = []
        self._changed = asyncio.Event()

    def on_event(self, channel: str, event_id: str, frame: bytes) -> None:
        self.events.append((channel, event_id, frame))
        self._changed.set()

    def on_control(self, message: dict[str, Any]) -> None:
        self.controls.append(message)
        self._changed.set()

    def on_resync(self, since: str, channels: frozenset[str] | None) -> None:
        self.resyncs += 1
        self.resync_marks.append(since)
        self.resync_channels.append(channels)
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
    """``await open_engine(kind, feed, retention=..., url=..., prefix=..., **options)``: a
    started engine listening into ``feed``, closed after the test (``url`` for "redis";
    the prefix defaults to the test's own; ``options`` go to ``RedisEngine``)."""
    opened: list[Engine] = []

    async def open_(
        kind: str, feed: Feed, retention: Retention = Retention(), url: str | None = None, prefix: str = prefix,
        **options: Any,
    ) -> Engine:
        engine: Engine
        if kind == "memory":
            engine = MemoryEngine(retention)
        else:
            assert url is not None, "a redis engine needs the url of a redis_server"
            engine = RedisEngine(url, retention, prefix=prefix, **options)
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
    url = request.getfixturevalue(SERVERS[request.param]).url if request.param in SERVERS else None
    started: Engine = io_loop.run_sync(lambda: open_engine(request.param, feed, retention, url))
    return started


class LogRecords(logging.Handler):
    """The log records of ``renum_rt`` at WARNING and above, with their fields."""

    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.records: list[logging.LogRecord] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.records.append(record)

    def lines(self, msg: str) -> list[dict[str, Any]]:
        """The fields of each record whose message is ``msg``, with its level."""
        return [{"level": r.levelname, **getattr(r, "fields", {})} for r in self.records if r.getMessage() == msg]


@pytest.fixture
def engine_log() -> Iterator[LogRecords]:
    handler = LogRecords()
    level = logger.level
    logger.addHandler(handler)
    logger.setLevel(min(level or logging.WARNING, logging.WARNING))
    yield handler
    logger.removeHandler(handler)
    logger.setLevel(level)


class LossyProxy:
    """A TCP proxy in front of a ``redis-server`` that can lose a reply: after
    ``lose_reply_to(b"EVALSHA")``, the next request carrying that command reaches Redis
    (which runs it), and then its connection is cut instead of the reply coming back,
    as when a network fails at the worst moment. Everything else passes untouched."""

    def __init__(self, target_port: int) -> None:
        self._target_port = target_port
        self._server: asyncio.Server | None = None
        self._armed: bytes | None = None
        self._writers: list[asyncio.StreamWriter] = []
        self.lost = 0  # replies lost so far

    @property
    def url(self) -> str:
        assert self._server is not None
        return f"redis://127.0.0.1:{self._server.sockets[0].getsockname()[1]}/0"

    async def start(self) -> LossyProxy:
        self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return self

    def lose_reply_to(self, command: bytes) -> None:
        self._armed = b"\r\n" + command + b"\r\n"

    async def close(self) -> None:
        for writer in self._writers:
            writer.close()
        if self._server is not None:
            self._server.close()
            await self._server.wait_closed()

    async def _serve(self, client_reader: asyncio.StreamReader, client_writer: asyncio.StreamWriter) -> None:
        redis_reader, redis_writer = await asyncio.open_connection("127.0.0.1", self._target_port)
        self._writers += [client_writer, redis_writer]
        doomed = False  # this connection's next reply is to be lost

        async def requests() -> None:
            nonlocal doomed
            while data := await client_reader.read(65536):
                if self._armed is not None and self._armed in data:
                    self._armed, doomed = None, True
                redis_writer.write(data)
                await redis_writer.drain()
            redis_writer.close()

        async def replies() -> None:
            while data := await redis_reader.read(65536):
                if doomed:
                    self.lost += 1
                    break
                client_writer.write(data)
                await client_writer.drain()
            client_writer.close()
            redis_writer.close()

        await asyncio.gather(requests(), replies(), return_exceptions=True)


@pytest.fixture
def lossy_proxy(io_loop: tornado.ioloop.IOLoop, redis_server: Any) -> Iterator[LossyProxy]:
    """A ``LossyProxy`` in front of the session's ``redis_server``."""
    proxy: LossyProxy = io_loop.run_sync(LossyProxy(redis_server.port).start)
    yield proxy
    io_loop.run_sync(proxy.close)

"""``RealtimeClient``: an asyncio client of the renum-rt WebSocket protocol v1.

For Python programs (workers, bots, test harnesses, command-line tools) that must
follow events the way the browser client does, with the guarantees the contract gives
to client libraries rather than to raw sockets:

- no event missed or doubled across reconnections: the client keeps the last event id
  of every channel, drops an event whose id it has already seen, and re-subscribes
  each channel with ``since=<last id>`` after reconnecting (``system``, which the server
  subscribes at connect, resumes from the ``system_since`` of the connection instead);
- durable ``user:`` events acknowledged only after the application processed them;
- reconnection on the contract's backoff schedule, with the behaviour its close-code
  table prescribes (stop, reconnect, or ask once for a fresh token).

One task reads frames; events go through an in-memory inbox to a single consumer
(``events()`` or the ``on_event`` callback) so that the application may await anything,
calls of this client included, while handling an event without stalling the reader.
It is not a server-side component and keeps nothing on disk: de-duplication state lives
as long as the ``RealtimeClient`` object.
"""

from __future__ import annotations

import asyncio
import collections
import functools
import inspect
import itertools
import logging
import time
import urllib.parse
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Final

import ujson
from tornado.httpclient import HTTPClientError, HTTPRequest
from tornado.iostream import StreamClosedError
from tornado.websocket import WebSocketClientConnection, WebSocketClosedError, WebSocketError, websocket_connect

from ..ids import IdKey, format_id, parse_id
from ..protocol.errors import CLOSE_FORBIDDEN, CLOSE_NORMAL, CLOSE_UNAUTHORIZED, reconnect_policy
from .backoff import Backoff
from .notifications import Notifications

log = logging.getLogger("renum_rt.client")

SUBPROTOCOL: Final = "renum.v1"
SYSTEM: Final = "system"

# Client states (contract v1, browser client): the values ``on_state`` receives.
CONNECTING: Final = "connecting"
CONNECTED: Final = "connected"
RECONNECTING: Final = "reconnecting"
DISCONNECTED: Final = "disconnected"
FAILED: Final = "failed"
UNAUTHORIZED: Final = "unauthorized"
#: States in which the client neither is connected nor tries to be.
STOPPED: Final = frozenset({DISCONNECTED, FAILED, UNAUTHORIZED})

#: How long processed durable events wait to be acknowledged together, in seconds.
ACK_DELAY_S: Final = 0.2
#: Pseudo close code for an upgrade refused with an HTTP status that retrying cannot
#: fix (400 unsupported version, 404 wrong path...): the client fails at once.
_REFUSED = -1

TokenProvider = Callable[[], "Awaitable[str] | str"]


class RealtimeError(Exception):
    """A call could not be served: a server ``error`` frame, or a client-side failure.

    ``code`` is one of the contract's error codes (``forbidden``, ``rate_limited``...)
    for an ``error`` frame, or ``timeout`` when no reply came in time.
    ``retry_after_ms`` comes with ``rate_limited``.
    """

    def __init__(self, code: str, message: str, *, retry_after_ms: int | None = None) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message
        self.retry_after_ms = retry_after_ms


class ConnectionClosedError(RealtimeError):
    """The client is not connected, or lost its connection before the reply came.

    ``code`` is ``connection_lost`` (the reply of an in-flight call was lost; the
    client is reconnecting) or the state the client stopped in (``disconnected``,
    ``failed``, ``unauthorized``); ``close_code`` is the last WebSocket close code.
    """

    def __init__(self, code: str, message: str, *, close_code: int | None = None) -> None:
        super().__init__(code, message)
        self.close_code = close_code


@dataclass(frozen=True, slots=True)
class Event:
    """One ``event`` frame: ``event`` is the event name, ``ts`` ms since the epoch."""

    channel: str
    id: str
    ts: int
    event: str
    data: dict[str, Any]


@dataclass(slots=True)
class _Session:
    """Outcome of one connection attempt."""

    close_code: int | None = None
    close_reason: str | None = None
    welcomed: bool = False


class RealtimeClient:
    """An auto-reconnecting, de-duplicating client of ``/ws`` (see the module docstring).

    ``token_provider`` returns (or resolves to) the user's JWT; it is called before each
    connection attempt, so after a close 4001 its next answer is the "fresh token" the
    contract asks for. Callbacks: ``on_event(event)`` may be a coroutine function and
    then takes the place of ``events()``; ``on_state(state)``,
    ``on_reconnecting(attempt, delay_ms)`` and ``on_frame(frame)`` (every server frame
    that answers none of your calls, except events: ``welcome``, ``unread_count``,
    unsolicited errors, replies to automatic re-subscriptions) are plain functions.
    """

    def __init__(
        self,
        url: str | Sequence[str],
        token_provider: TokenProvider,
        *,
        backoff: Backoff = Backoff(),
        on_event: Callable[[Event], Any] | None = None,
        on_state: Callable[[str], Any] | None = None,
        on_reconnecting: Callable[[int, float], Any] | None = None,
        on_frame: Callable[[dict[str, Any]], Any] | None = None,
        send_auth_frame: bool = False,
        auto_ack: bool = True,
        request_timeout: float = 10.0,
        connect_timeout: float = 10.0,
        ping_interval: float | None = 30.0,
    ) -> None:
        #: Every node URL; each reconnection attempt moves to the next one, so a client
        #: given several nodes (no load balancer) survives the loss of one.
        self.urls: list[str] = [url] if isinstance(url, str) else list(url)
        if not self.urls:
            raise ValueError("RealtimeClient needs at least one URL")
        #: The URL of the current (or next) connection attempt.
        self.url = self.urls[0]
        self.backoff = backoff
        self.auto_ack = auto_ack
        self.request_timeout = request_timeout
        self._token_provider = token_provider
        self._on_event = on_event
        self._on_state = on_state
        self._on_reconnecting = on_reconnecting
        self._on_frame = on_frame
        self._send_auth_frame = send_auth_frame
        self._connect_timeout = connect_timeout
        self._ping_interval = ping_interval

        self.state: str = DISCONNECTED
        #: From the last ``welcome``.
        self.user_id: str | None = None
        self.connection_id: str | None = None
        self.welcome: dict[str, Any] = {}
        #: The last close code and reason (``None`` for a lost connection).
        self.close_code: int | None = None
        self.close_reason: str | None = None

        self._conn: WebSocketClientConnection | None = None
        self._run_task: asyncio.Task[None] | None = None
        self._dispatch_task: asyncio.Task[None] | None = None
        self._state_changed: asyncio.Future[None] | None = None
        self._refs = itertools.count(1)
        self._pending: dict[str, asyncio.Future[dict[str, Any]]] = {}
        #: Channels subscribed by the application -> subscription token (or None).
        self._subs: dict[str, str | None] = {}
        #: channel -> key of the last event id received (de-duplication, ``since``).
        self._last: dict[str, IdKey] = {}
        #: user channel -> last event id the application finished processing.
        self._processed: dict[str, str] = {}
        self._inbox: collections.deque[Event] = collections.deque()
        self._inbox_ready = asyncio.Event()
        self._consumer = 0  # events() calls so far: the latest one consumes
        self._ack_timer: asyncio.TimerHandle | None = None
        #: durable channels with a processed event not acknowledged yet
        self._unacked: set[str] = set()
        #: The user's unread notification count, from the server's ``unread_count`` frames.
        self.unread_count: int | None = None
        #: The user's inbox: ``await client.notifications.list()`` and friends.
        self.notifications = Notifications(self)

    # -- public API ---------------------------------------------------------------

    async def connect(self) -> None:
        """Connect (or wait for the connection under way); return once welcomed.

        A first attempt that fails is retried on the backoff schedule like a lost
        connection. Raises ``ConnectionClosedError`` if the client stops instead.
        """
        if self._run_task is None or self._run_task.done():
            self._set_state(CONNECTING)
            self._run_task = asyncio.ensure_future(self._run())
            if self._on_event is not None and (self._dispatch_task is None or self._dispatch_task.done()):
                self._dispatch_task = asyncio.ensure_future(self._dispatch())
        await self._wait_connected(None)

    async def close(self) -> None:
        """Close the connection (code 1000) and stop; events not yet consumed are dropped,
        the acknowledgement of those processed is sent first."""
        if self._ack_timer is not None:
            self._ack_timer.cancel()
            self._flush_acks()
        task, self._run_task = self._run_task, None
        if task is not None and not task.done():
            task.cancel()
            await asyncio.gather(task, return_exceptions=True)
        self._inbox.clear()
        self._stop(DISCONNECTED, CLOSE_NORMAL, "closed by the client")

    async def subscribe(self, channel: str, since: str | None = None, token: str | None = None) -> dict[str, Any]:
        """Subscribe to ``channel``; return the ``subscribed`` reply.

        ``since`` (an event id) asks for everything after it first; without it, the
        last id this client saw on the channel is used, if any. ``token`` is a
        subscription token; it is presented again on every re-subscription. The
        channel stays subscribed across reconnections until ``unsubscribe``. A
        connection lost before the reply is retried on the next connection.
        """
        if since is not None:
            self._last[channel] = parse_id(since)
        while True:
            await self._ready()
            self._subs[channel] = token
            try:
                return await self._wait_reply(*self._send_subscribe(channel, token))
            except ConnectionClosedError as exc:
                self._subs.pop(channel, None)  # before the next welcome, which would re-subscribe it too
                if exc.code != "connection_lost":
                    raise
            except BaseException:
                self._subs.pop(channel, None)
                raise

    async def unsubscribe(self, channel: str) -> None:
        """Stop receiving ``channel``, here and on every later connection."""
        self._subs.pop(channel, None)
        if self.state != CONNECTED:
            return  # the next connection will not subscribe it
        try:
            await self.request("unsubscribe", channel=channel)
        except ConnectionClosedError:
            pass  # same: the connection that had it is gone

    async def ack(self, channel: str, id: str) -> None:
        """Tell the server that everything up to ``id`` on ``channel`` was processed;
        return once it confirmed (``ok``). Only needed with ``auto_ack=False``."""
        parse_id(id)
        await self.request("ack", channel=channel, id=id)

    async def ping(self) -> float:
        """Send ``ping`` (it also counts as activity); return the round trip in ms."""
        start = time.perf_counter()
        await self.request("ping")
        return (time.perf_counter() - start) * 1000

    async def request(self, type: str, **fields: Any) -> dict[str, Any]:
        """Send any client frame and return its reply, for example
        ``await client.request("notifications.list", status="unread")``.

        Raises ``RealtimeError`` for an ``error`` reply or no reply within
        ``request_timeout`` seconds, ``ConnectionClosedError`` when not connected.
        """
        await self._ready()
        ref = str(next(self._refs))
        self._send({"type": type, "ref": ref, **fields})
        return await self._wait_reply(ref, self._expect(ref))

    async def events(self) -> AsyncIterator[Event]:
        """Iterate over events, in order, until the client stops.

        Each durable (``user:``) event is acknowledged (with ``auto_ack``) when the loop
        asks for the next one, that is once the application has processed it. The
        latest ``events()`` call is the one consumer (an earlier loop ends); not usable
        together with ``on_event``.
        """
        if self._on_event is not None and asyncio.current_task() is not self._dispatch_task:
            raise RuntimeError("events() is consumed by on_event on this client")
        self._consumer += 1
        me = self._consumer
        while True:
            while not self._inbox:
                if self.state in STOPPED or me != self._consumer:
                    return
                self._inbox_ready.clear()
                await self._inbox_ready.wait()
            if me != self._consumer:
                return
            event = self._inbox.popleft()
            yield event
            self._processed_event(event)

    # -- connection loop ------------------------------------------------------------

    async def _run(self) -> None:
        try:
            await self._loop()
        except Exception:
            log.exception("realtime client failed")
            self._stop(FAILED, self.close_code, "internal error of the client")

    async def _loop(self) -> None:
        """Connect, serve, and reconnect per the close-code table until stopped."""
        attempt = 0
        refreshing = False  # the last session ended with 4001: the next token is the fresh one
        while True:
            if attempt:
                if attempt > self.backoff.attempts:
                    self._stop(FAILED, self.close_code, self.close_reason)
                    return
                delay = self.backoff.delay_ms(attempt)
                current = self.urls.index(self.url) if self.url in self.urls else -1
                self.url = self.urls[(current + 1) % len(self.urls)]
                self._set_state(RECONNECTING)
                self._call(self._on_reconnecting, attempt, delay)
                await asyncio.sleep(delay / 1000)
            else:
                self._set_state(CONNECTING)
            session = await self._session(refreshing)
            self.close_code, self.close_reason = session.close_code, session.close_reason
            self._fail_pending(ConnectionClosedError("connection_lost", "the connection closed before the reply"))
            if session.welcomed:
                attempt, refreshing = 0, False
            code = session.close_code
            if code == _REFUSED:
                self._stop(FAILED, None, session.close_reason)
                return
            policy = reconnect_policy(code)  # the protocol's close-code table decides
            if policy == "refresh_token":
                if refreshing:
                    self._stop(UNAUTHORIZED, code, session.close_reason)
                    return
                refreshing = True
            elif policy in ("never", "on_activity"):
                self._stop(DISCONNECTED, code, session.close_reason)
                return
            attempt += 1

    async def _session(self, refreshing: bool) -> _Session:
        """One connection: authenticate, wait for ``welcome``, then read until closed."""
        try:
            token = self._token_provider()
            if inspect.isawaitable(token):
                token = await token
        except Exception as exc:
            log.warning("token provider failed: %r", exc)
            if refreshing:  # no fresh token: stop as unauthorized
                return _Session(CLOSE_UNAUTHORIZED, f"token provider failed: {exc!r}")
            return _Session(None, f"token provider failed: {exc!r}")
        if not token:
            return _Session(CLOSE_UNAUTHORIZED, "the token provider gave no token")
        # where ``system`` resumes: the server replays it from there before it goes live,
        # so that what was missed comes in id order (a resubscription after ``welcome``
        # would come after announcements published meanwhile, and be dropped as old)
        resume = {"system_since": format_id(self._last[SYSTEM])} if SYSTEM in self._last else {}
        url = self.url
        if not self._send_auth_frame:
            parts = urllib.parse.urlsplit(url)
            query = urllib.parse.urlencode([*urllib.parse.parse_qsl(parts.query), *resume.items(), ("token", token)])
            url = urllib.parse.urlunsplit(parts._replace(query=query))
        try:
            conn = await websocket_connect(
                HTTPRequest(url, connect_timeout=self._connect_timeout, request_timeout=self._connect_timeout),
                subprotocols=[SUBPROTOCOL],
                ping_interval=self._ping_interval,
            )
        except HTTPClientError as exc:
            if exc.code == 401:
                return _Session(CLOSE_UNAUTHORIZED, _http_error_message(exc))
            if exc.code == 403:
                return _Session(CLOSE_FORBIDDEN, _http_error_message(exc))
            if 400 <= exc.code < 500 and exc.code not in (408, 429):
                return _Session(_REFUSED, _http_error_message(exc))
            return _Session(None, _http_error_message(exc))
        except (TimeoutError, OSError, StreamClosedError, WebSocketError) as exc:
            return _Session(None, f"cannot connect: {exc!r}")
        self._conn = conn
        session = _Session()
        try:
            if self._send_auth_frame:
                conn.write_message(ujson.dumps({"type": "auth", "token": token, **resume}))
            while True:
                message = await conn.read_message()
                if message is None:
                    session.close_code, session.close_reason = conn.close_code, conn.close_reason
                    return session
                try:
                    self._on_message(message, session)
                except ConnectionClosedError:
                    pass  # a reply could not be written: the connection is closing, read its close
        finally:
            self._conn = None
            conn.close(CLOSE_NORMAL)

    # -- frames in --------------------------------------------------------------------

    def _on_message(self, message: str | bytes, session: _Session) -> None:
        try:
            frame = ujson.loads(message)
            kind = frame["type"]
        except (ValueError, TypeError, KeyError):
            log.warning("ignoring a frame that is not a JSON object with a type: %.200r", message)
            return
        if kind == "event":
            self._on_event_frame(frame)
            return
        ref = frame.get("ref")
        future = self._pending.pop(ref, None) if isinstance(ref, str) else None
        if future is not None:
            if future.done():
                return
            if kind == "error":
                future.set_exception(_error(frame))
            else:
                future.set_result(frame)
            return
        if kind == "error":
            log.warning("server error: %s: %s", frame.get("code"), frame.get("message"))
        elif kind == "unread_count" and isinstance(frame.get("count"), int):
            self.unread_count = frame["count"]
        self._call(self._on_frame, frame)
        if kind == "welcome":
            session.welcomed = True
            self._on_welcome(frame)

    def _on_welcome(self, frame: dict[str, Any]) -> None:
        """Connected: re-acknowledge, then re-subscribe every channel from its last id.

        The server subscribes ``user:<me>`` (from the ack cursor) and ``system`` (from
        the ``system_since`` this connection was opened with) by itself: neither is
        subscribed again.
        """
        self.welcome = frame
        self.user_id = frame.get("user_id")
        self.connection_id = frame.get("connection_id")
        self._set_state(CONNECTED)
        own = f"user:{self.user_id}"
        if self.auto_ack and own in self._processed:  # an ack sent just before a drop may have been lost
            self._send({"type": "ack", "channel": own, "id": self._processed[own]})
        for channel, token in dict(self._subs).items():
            if channel == SYSTEM:
                continue
            _, future = self._send_subscribe(channel, token)
            future.add_done_callback(functools.partial(self._resubscribed, channel))

    def _resubscribed(self, channel: str, future: asyncio.Future[dict[str, Any]]) -> None:
        if future.cancelled():
            return
        exc = future.exception()
        if isinstance(exc, ConnectionClosedError):
            return  # the connection dropped again; the next welcome re-subscribes
        if isinstance(exc, RealtimeError):
            log.warning("re-subscribing %s failed: %s", channel, exc)
            self._subs.pop(channel, None)  # refused (an expired subscription token...): stop asking
            self._call(self._on_frame, {"type": "error", "channel": channel, "code": exc.code, "message": exc.message})
        elif exc is None:
            self._call(self._on_frame, future.result())

    def _on_event_frame(self, frame: dict[str, Any]) -> None:
        try:
            event = Event(frame["channel"], frame["id"], frame["ts"], frame["event"], frame.get("data") or {})
            key = parse_id(event.id)
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed event frame: %.200r", frame)
            return
        last = self._last.get(event.channel)
        if last is not None and key <= last:
            return  # already seen: a replay overlapping what was received live
        self._last[event.channel] = key
        self._inbox.append(event)
        self._inbox_ready.set()

    # -- frames out --------------------------------------------------------------------

    def _send(self, frame: dict[str, Any]) -> None:
        conn = self._conn
        if conn is None:
            raise ConnectionClosedError("connection_lost", "not connected", close_code=self.close_code)
        try:
            conn.write_message(ujson.dumps(frame, ensure_ascii=False, escape_forward_slashes=False))
        except WebSocketClosedError:
            raise ConnectionClosedError("connection_lost", "the connection is closing",
                                        close_code=self.close_code) from None

    def _send_subscribe(self, channel: str, token: str | None) -> tuple[str, asyncio.Future[dict[str, Any]]]:
        ref = str(next(self._refs))
        frame: dict[str, Any] = {"type": "subscribe", "ref": ref, "channel": channel}
        if channel in self._last:
            frame["since"] = format_id(self._last[channel])
        if token is not None:
            frame["token"] = token
        self._send(frame)
        return ref, self._expect(ref)

    def _expect(self, ref: str) -> asyncio.Future[dict[str, Any]]:
        future: asyncio.Future[dict[str, Any]] = asyncio.get_running_loop().create_future()
        self._pending[ref] = future
        return future

    async def _wait_reply(self, ref: str, future: asyncio.Future[dict[str, Any]]) -> dict[str, Any]:
        try:
            return await asyncio.wait_for(asyncio.shield(future), self.request_timeout)
        except TimeoutError:
            raise RealtimeError("timeout", f"no reply within {self.request_timeout} s") from None
        finally:
            if self._pending.get(ref) is future:
                del self._pending[ref]

    def _fail_pending(self, exc: Exception) -> None:
        pending, self._pending = self._pending, {}
        for future in pending.values():
            if not future.done():
                future.set_exception(exc)
                future.exception()  # retrieved here: a caller may have stopped waiting

    # -- delivery and acknowledgement -----------------------------------------------

    async def _dispatch(self) -> None:
        assert self._on_event is not None
        async for event in self.events():
            try:
                result = self._on_event(event)
                if inspect.isawaitable(result):
                    await result
            except Exception:
                # Still acknowledged: acks are cumulative, the next one would cover it
                # anyway, and an event that always fails must not block the mailbox.
                log.exception("on_event failed for %s %s", event.channel, event.id)

    def _processed_event(self, event: Event) -> None:
        """The application is done with ``event``: acknowledge it if durable."""
        if not event.channel.startswith("user:"):
            return
        self._processed[event.channel] = event.id
        self._unacked.add(event.channel)
        if self.auto_ack and self._ack_timer is None:
            # acks are cumulative: one frame for the newest id every ACK_DELAY_S, not one
            # per event (the server allows 50 frames per second)
            self._ack_timer = asyncio.get_running_loop().call_later(ACK_DELAY_S, self._flush_acks)

    def _flush_acks(self) -> None:
        self._ack_timer = None
        if self.state != CONNECTED:
            return  # acknowledged on the next welcome
        try:
            while self._unacked:
                channel = self._unacked.pop()
                self._send({"type": "ack", "channel": channel, "id": self._processed[channel]})
        except ConnectionClosedError:
            pass

    # -- states -------------------------------------------------------------------------

    async def _ready(self) -> None:
        """Wait until connected; after an idle close (4008), this activity reconnects."""
        if self.state in STOPPED:
            if reconnect_policy(self.close_code) == "on_activity" and self._run_task is not None:
                await self.connect()
                return
            raise ConnectionClosedError(self.state, "not connected: call connect()", close_code=self.close_code)
        await self._wait_connected(self.request_timeout)

    async def _wait_connected(self, timeout: float | None) -> None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while self.state != CONNECTED:
            if self.state in STOPPED:
                raise ConnectionClosedError(
                    self.state,
                    f"the client stopped ({self.close_reason or self.close_code})",
                    close_code=self.close_code,
                )
            if self._state_changed is None:
                self._state_changed = asyncio.get_running_loop().create_future()
            remaining = None if deadline is None else deadline - time.monotonic()
            if remaining is not None and remaining <= 0:
                raise RealtimeError("timeout", f"not connected within {timeout} s")
            try:
                await asyncio.wait_for(asyncio.shield(self._state_changed), remaining)
            except TimeoutError:
                raise RealtimeError("timeout", f"not connected within {timeout} s") from None

    def _set_state(self, state: str) -> None:
        if state == self.state:
            return
        self.state = state
        changed, self._state_changed = self._state_changed, None
        if changed is not None and not changed.done():
            changed.set_result(None)
        self._inbox_ready.set()  # an events() loop re-checks whether the client stopped
        self._call(self._on_state, state)

    def _stop(self, state: str, close_code: int | None, reason: str | None) -> None:
        self.close_code, self.close_reason = close_code, reason
        conn, self._conn = self._conn, None
        if conn is not None:
            conn.close(CLOSE_NORMAL)
        self._fail_pending(ConnectionClosedError(state, reason or "the client stopped", close_code=close_code))
        self._set_state(state)

    def _call(self, callback: Callable[..., Any] | None, *args: Any) -> None:
        if callback is None:
            return
        try:
            callback(*args)
        except Exception:
            log.exception("callback %r failed", callback)


def _error(frame: dict[str, Any]) -> RealtimeError:
    return RealtimeError(
        str(frame.get("code", "internal")), str(frame.get("message", "")), retry_after_ms=frame.get("retry_after_ms")
    )


def _http_error_message(exc: HTTPClientError) -> str:
    """The message of the JSON error body of a refused upgrade, else the HTTP reason."""
    body = exc.response.body if exc.response is not None else b""
    try:
        return str(ujson.loads(body)["error"]["message"])
    except (ValueError, TypeError, KeyError):
        return f"HTTP {exc.code}: {exc.message}"

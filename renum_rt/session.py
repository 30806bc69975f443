"""One connection's state machine, without I/O.

A ``Session`` takes raw client messages and the current time and answers with a
validated ``ClientFrame`` or a ``ProtocolError`` (which may carry a close code). It
holds everything that decides what a connection may do: who it is, which channels it
has, its token bucket, its idle and expiry clocks. The WebSocket handler feeds it and
carries out what it says; tests drive it with plain strings and a fake clock.
"""

from __future__ import annotations

from typing import Any

from . import channels
from .channels import ChannelError, Identity
from .config import Settings
from .limits import TokenBucket
from .protocol import PROTOCOL_VERSION, ClientFrame, ProtocolError, parse_client_frame
from .protocol.errors import CLOSE_POLICY, CLOSE_UNAUTHORIZED


class Session:
    __slots__ = (
        "id", "address", "settings", "identity", "channels", "_granted", "connected_at", "last_active",
        "bucket", "limited_in_row", "origin", "unread_version", "system_since",
    )

    def __init__(
        self, connection_id: str, address: str, settings: Settings, now: float, origin: str | None = None
    ) -> None:
        self.id = connection_id
        self.address = address
        self.origin = origin
        self.settings = settings
        self.identity: Identity | None = None
        self.channels: set[str] = set()
        self._granted: set[str] | None = None
        self.connected_at = now
        self.last_active = now
        self.bucket = TokenBucket(settings.rate, settings.burst, now)
        self.limited_in_row = 0
        #: version of the last ``unread_count`` sent: an older count is never sent after it
        self.unread_version = -1
        #: the last ``system`` event id the client kept (``system_since`` on the URL or in
        #: ``auth``): admission replays ``system`` after it before the channel goes live, so
        #: that a reconnecting client gets what it missed in id order (None: live from now)
        self.system_since: str | None = None

    @property
    def granted(self) -> set[str]:
        """Channels opened with a subscription token (a ``refresh`` does not re-check
        them). Made on first use: most connections never use one, and an empty set takes
        216 bytes (docs/benchmarks.md, section 1)."""
        if self._granted is None:
            self._granted = set()
        return self._granted

    @property
    def user_id(self) -> str | None:
        return self.identity.user_id if self.identity else None

    def receive(self, message: str | bytes, now: float) -> ClientFrame:
        """Account for one client message and validate it.

        Order matters: every frame counts as activity and costs a token before it is
        parsed, so malformed floods are limited like well-formed ones.
        """
        self.last_active = now
        if not self.bucket.take(now):
            self.limited_in_row += 1
            retry = max(1, int(self.bucket.retry_after(now) * 1000 + 0.999))
            if self.limited_in_row >= self.settings.flood_close_after:
                raise ProtocolError(
                    "rate_limited",
                    "too many frames after rate_limited: closing",
                    retry_after_ms=retry,
                    close=CLOSE_POLICY,
                )
            raise ProtocolError(
                "rate_limited", f"more than {self.settings.rate:g} frames per second", retry_after_ms=retry
            )
        self.limited_in_row = 0
        limit = self.settings.max_frame_bytes
        if len(message) > limit or (
            isinstance(message, str)
            and len(message) * 4 > limit
            and len(message.encode("utf-8", "surrogatepass")) > limit
        ):
            raise ProtocolError("too_large", f"frame larger than {self.settings.max_frame_bytes} bytes")
        frame = parse_client_frame(message)
        if self.identity is None:
            if frame.type != "auth":
                raise ProtocolError(
                    "unauthorized", "send an 'auth' frame first", ref=frame.ref, close=CLOSE_UNAUTHORIZED
                )
        elif frame.type == "auth":
            raise ProtocolError(
                "bad_request", "already authenticated; use 'refresh' to replace the token", ref=frame.ref
            )
        return frame

    def authenticate(self, identity: Identity) -> None:
        self.identity = identity

    def refresh(self, identity: Identity, ref: str | None) -> None:
        """Replace the token in place; it must be for the same user."""
        assert self.identity is not None
        if identity.user_id != self.identity.user_id:
            raise ProtocolError("forbidden", "the refreshed token is for another user", ref=ref, field="token")
        self.identity = identity

    def check_subscribe(self, channel: str, grant: dict[str, Any] | None, ref: str | None) -> str:
        """The channel, if this session may add it; else a ``ProtocolError``."""
        assert self.identity is not None
        try:
            channels.check_subscribe(self.identity, channel, grant)
        except ChannelError as exc:
            raise ProtocolError(exc.code, exc.message, ref=ref, field="channel") from None
        if channel not in self.channels and len(self.channels) >= self.settings.max_subscriptions:
            raise ProtocolError(
                "too_large", f"at most {self.settings.max_subscriptions} subscriptions per connection", ref=ref
            )
        return channel

    def is_idle(self, now: float) -> bool:
        return now - self.last_active > self.settings.idle_timeout

    def token_expired(self, now: float) -> bool:
        exp = self.identity.exp if self.identity else None
        return exp is not None and now > exp + self.settings.jwt_leeway_s

    def welcome(self) -> dict[str, Any]:
        assert self.identity is not None
        s = self.settings
        return {
            "type": "welcome",
            "v": PROTOCOL_VERSION,
            "connection_id": self.id,
            "user_id": self.identity.user_id,
            "heartbeat_ms": s.heartbeat_ms,
            "limits": {
                "rate": s.rate,
                "burst": s.burst,
                "max_frame_bytes": s.max_frame_bytes,
                "max_subscriptions": s.max_subscriptions,
                "max_connections_per_user": s.max_connections_per_user,
                "idle_timeout_s": s.idle_timeout,
            },
        }

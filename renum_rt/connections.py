"""This node's open connections: who they are, how many per user and per address.

The registry is what the caps, the idle sweep, admin disconnects and the connection
list read. It holds connections only once they are admitted (authenticated and counted
against the per-user cap by the engine); a connection is anything with the
``Connection`` methods, so the gateway's logic runs in tests without sockets.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from typing import Any, Protocol

from .protocol.errors import CLOSE_IDLE, CLOSE_UNAUTHORIZED, ProtocolError
from .session import Session


class Connection(Protocol):
    """What the gateway needs of one client connection (the WebSocket handler)."""

    session: Session

    def send_frame(self, frame: bytes) -> None: ...

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def is_closed(self) -> bool: ...


class Registry:
    def __init__(self) -> None:
        self.connections: dict[str, Connection] = {}
        #: a user's connections here, as a tuple: most users have one, and a 1-tuple
        #: takes 48 bytes where a set takes 216 (docs/benchmarks.md, section 1); a user
        #: has at most ``max_connections_per_user`` of them, so copying on change is cheap
        self.by_user: dict[str, tuple[Connection, ...]] = {}
        #: open WebSockets per address, authenticated or not (the per-address cap)
        self.by_address: dict[str, int] = {}

    def __len__(self) -> int:
        return len(self.connections)

    def __iter__(self) -> Iterator[Connection]:
        return iter(list(self.connections.values()))

    def __contains__(self, conn: Connection) -> bool:
        return self.connections.get(conn.session.id) is conn

    def of_user(self, user_id: str) -> list[Connection]:
        return list(self.by_user.get(user_id, ()))

    def get(self, connection_id: str) -> Connection | None:
        return self.connections.get(connection_id)

    def address_count(self, address: str) -> int:
        return self.by_address.get(address, 0)

    def count_address(self, address: str, delta: int) -> None:
        """One more (``+1``) or one fewer (``-1``) socket from ``address``."""
        left = self.by_address.get(address, 0) + delta
        if left > 0:
            self.by_address[address] = left
        else:
            self.by_address.pop(address, None)

    def add(self, conn: Connection) -> None:
        session = conn.session
        assert session.user_id is not None
        self.connections[session.id] = conn
        self.by_user[session.user_id] = (*self.by_user.get(session.user_id, ()), conn)

    def remove(self, conn: Connection) -> bool:
        """Forget ``conn``; False when it was not registered (already forgotten)."""
        session = conn.session
        if self.connections.get(session.id) is not conn:
            return False
        del self.connections[session.id]
        assert session.user_id is not None
        others = tuple(c for c in self.by_user.get(session.user_id, ()) if c is not conn)
        if others:
            self.by_user[session.user_id] = others
        else:
            self.by_user.pop(session.user_id, None)
        return True

    def sweep(self, now: float) -> None:
        """Close connections idle past the idle timeout (4008) or whose token expired
        without a refresh (4001)."""
        for conn in self:
            session = conn.session
            if session.is_idle(now):
                conn.send(ProtocolError("bad_request", "idle for longer than the idle timeout").frame())
                conn.close(CLOSE_IDLE, "idle timeout")
            elif session.token_expired(now):
                conn.send(ProtocolError("unauthorized", "token expired; reconnect with a fresh token").frame())
                conn.close(CLOSE_UNAUTHORIZED, "token expired")

    def listing(self, node_id: str, limit: int, user: str | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` connections of this node (of ``user`` only, when given)."""
        conns = self.by_user.get(user, ()) if user is not None else self.connections.values()
        return [
            {
                "connection_id": c.session.id,
                "user_id": c.session.user_id,
                "address": c.session.address,
                "origin": c.session.origin,
                "node": node_id,
                "connected_at": c.session.connected_at,
                "last_active": c.session.last_active,
                "channels": sorted(c.session.channels),
            }
            for c in itertools.islice(conns, limit)
        ]

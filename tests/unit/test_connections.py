"""The registry of a node's connections: per-user lists kept as tuples (memory)."""

from __future__ import annotations

from typing import Any

from renum_rt.channels import Identity
from renum_rt.config import Settings
from renum_rt.connections import Registry
from renum_rt.session import Session

SETTINGS = Settings(jwt_secret="s" * 32)


class Conn:
    def __init__(self, cid: str, user: str) -> None:
        self.session = Session(cid, "127.0.0.1", SETTINGS, 0.0)
        self.session.authenticate(Identity(user))

    def send_frame(self, frame: bytes) -> None: ...

    def send(self, frame: dict[str, Any]) -> None: ...

    def close(self, code: int, reason: str) -> None: ...

    def is_closed(self) -> bool:
        return False


def test_a_users_connections_are_added_and_removed_in_order_each_once() -> None:
    registry = Registry()
    a, b, c, other = Conn("a", "u1"), Conn("b", "u1"), Conn("c", "u1"), Conn("d", "u2")
    for conn in (a, b, c, other):
        registry.add(conn)
    assert registry.of_user("u1") == [a, b, c] and registry.of_user("u2") == [other]
    assert registry.remove(b) and not registry.remove(b)  # forgotten once only
    assert registry.of_user("u1") == [a, c] and b not in registry and len(registry) == 3
    assert registry.remove(a) and registry.remove(c) and registry.remove(other)
    assert registry.by_user == {} and registry.of_user("u1") == [] and len(registry) == 0

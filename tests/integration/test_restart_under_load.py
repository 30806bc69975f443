"""A node restart under load loses no event (issue 13, item 8).

One gateway process (``server.py``) on a ``redis-server`` of the test alone, 2,000 users
connected to it, each with a raw WebSocket client that behaves like the browser library
on the user channel: it acks every event, and after any close it reconnects on the
contract's schedule (full jitter; capped at 1 s here), so that the server replays the user
channel from the ack cursor.

1. Every user gets one event and acks it (2,000 acks at once: none may fail).
2. The node is stopped with SIGTERM (it closes every connection with 1012) and started
   again on the same port; all 2,000 clients reconnect at once.
3. As soon as the new process answers, one event per user is published (two publishes of
   1,000 users, which must be accepted: no 503 for the first burst after a start).
4. Within 10 s every user has that event, and no user got any event twice: a connection
   whose user channel could not be read is closed with 1012 (and reconnects) instead of
   going live without its backlog.

Helpers (the ``cluster`` fixture, ``publish``, ``token``, ...) are those of
``test_redis_crash.py``. The clients are bare ``tornado.websocket`` connections: checking
each frame against the JSON Schema (``tests/support/wsclient.py``) would cost this one
process more CPU than the 2,000 users' traffic itself.
"""

from __future__ import annotations

import asyncio
import resource
from typing import Any

import pytest
import tornado.websocket
import ujson

from renum_rt.client.backoff import backoff_delay_ms
from tests.integration.test_redis_crash import Cluster, cluster, eventually, in_thread, new_id, publish, token
from tests.support.server_process import ServerProcess

__all__ = ["cluster"]  # the fixture, used by name

USERS = 2000
BATCH = 1000  # users per publish (max_users_per_publish)
DELIVERY_S = 10.0  # every event published after the restart reaches its user within this
RECONNECT_MAX_MS = 1000  # the longest pause between two connection attempts


class Mailbox:
    """One user's client: it keeps every event id of its user channel (duplicates too),
    acks each one with the event id as ``ref``, and reconnects after any close."""

    def __init__(self, url: str, user: str) -> None:
        self.user = user
        self.channel = f"user:{user}"
        self.token = token(user)
        self.received: list[str] = []  # event ids on the user channel, in order, duplicates kept
        self.acked: list[str] = []  # ids whose ack was answered ``ok``
        self.errors: list[dict[str, Any]] = []  # error frames
        self.connects = 0
        self._task = asyncio.ensure_future(self._run(url))

    async def _run(self, url: str) -> None:
        failures = 0
        while True:
            try:
                conn = await tornado.websocket.websocket_connect(f"{url}?token={self.token}")
            except Exception:  # the node is down: try again
                failures += 1
                await asyncio.sleep(backoff_delay_ms(failures, max_ms=RECONNECT_MAX_MS) / 1000)
                continue
            failures = 0
            self.connects += 1
            try:
                while (message := await conn.read_message()) is not None:
                    await self._on_frame(conn, ujson.loads(message))
            except tornado.websocket.WebSocketClosedError:  # closed while acking
                pass
            finally:
                conn.close()
            await asyncio.sleep(backoff_delay_ms(1, max_ms=RECONNECT_MAX_MS) / 1000)

    async def _on_frame(self, conn: tornado.websocket.WebSocketClientConnection, frame: dict[str, Any]) -> None:
        if frame["type"] == "event" and frame["channel"] == self.channel:
            self.received.append(frame["id"])
            ack = {"type": "ack", "channel": self.channel, "id": frame["id"], "ref": frame["id"]}
            await conn.write_message(ujson.dumps(ack))
        elif frame["type"] == "ok":
            self.acked.append(frame["ref"])
        elif frame["type"] == "error":
            self.errors.append(frame)

    async def stop(self) -> None:
        self._task.cancel()
        await asyncio.gather(self._task, return_exceptions=True)


def enough_file_descriptors(needed: int) -> None:
    """2,000 client sockets here, as many in the server (which inherits the limit)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < needed:
        resource.setrlimit(resource.RLIMIT_NOFILE, (min(needed, hard), hard))


async def publish_to_everyone(node: ServerProcess, mailboxes: list[Mailbox], event: str) -> dict[str, str]:
    """One event per user, ``BATCH`` users per publish; ``{user channel: id}``."""
    users = [m.user for m in mailboxes]
    answers = await asyncio.gather(*(publish(node, {"users": users[i:i + BATCH], "event": event, "data": {}})
                                     for i in range(0, len(users), BATCH)))
    return {channel: event_id for ids in answers for channel, event_id in ids.items()}


@pytest.mark.gen_test(timeout=120)
async def test_every_event_published_right_after_a_restart_reaches_its_user_once(cluster: Cluster) -> None:
    enough_file_descriptors(3 * USERS)
    (node,) = cluster(1, RENUM_RT_MAX_CONNECTIONS_PER_ADDRESS=str(2 * USERS))
    mailboxes: list[Mailbox] = []

    def all_connected() -> bool:
        return all(m.connects for m in mailboxes)

    for _ in range(USERS // 100):  # connect in waves, as users arrive, not in one burst
        mailboxes += [Mailbox(node.ws_url, new_id("u")) for _ in range(100)]
        await eventually(all_connected, timeout=30, what="every user connected")

    before = await publish_to_everyone(node, mailboxes, "before.restart")
    await eventually(lambda: all(m.acked for m in mailboxes), timeout=30, what="every user acked its event")
    assert [m.errors for m in mailboxes if m.errors] == []  # 2,000 acks at once, none unavailable

    await in_thread(node.stop)  # SIGTERM: every connection is closed with 1012
    await in_thread(node.start)  # same port, same Redis; returns once /healthz answers
    after = await publish_to_everyone(node, mailboxes, "after.restart")  # while everyone reconnects

    def delivered() -> bool:
        return all(after[m.channel] in m.received for m in mailboxes)

    await eventually(delivered, timeout=DELIVERY_S, interval=0.1, what="every event published after the restart")
    await asyncio.gather(*(m.stop() for m in mailboxes))
    for m in mailboxes:  # each event once: the acked one was not replayed, the new one came once
        assert m.received == [before[m.channel], after[m.channel]], (m.user, m.received, m.errors)

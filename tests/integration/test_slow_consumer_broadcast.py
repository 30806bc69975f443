"""A slow consumer dropped in the middle of a broadcast must not cost the others that event.

The connection is closed from inside ``send_frame``, while the hub walks the channel's
subscribers; found by bench/slow_consumer.py (docs/benchmarks.md, section 5), where the
clients after the slow one in the ``system`` set missed the event that dropped it.
"""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tests.integration.test_ws_protocol import stalled_client
from tests.support.wsclient import connect


@pytest.mark.settings(max_write_buffer_bytes=64 * 1024)
@pytest.mark.gen_test(timeout=30)
async def test_every_other_subscriber_gets_the_broadcast_that_drops_a_slow_consumer(
    http_port: int, ws_url: str, token: Any, node: Any
) -> None:
    stalled = await stalled_client(http_port, token("slow"))
    clients = [await connect(ws_url, token(f"fast{i}")) for i in range(20)]
    users = node.gateway.registry.by_user
    big = {"title": "b", "message": "x" * 16000, "level": "info"}
    sent = 0
    while "slow" in users and sent < 5000:
        await node.gateway.publish(["system"], "custom.big", big, None)
        sent += 1
        await asyncio.sleep(0)
    assert "slow" not in users, "the stalled client was never dropped"
    assert node.gateway.metrics.delivered >= sent * len(clients)
    for client in clients:
        got = 0
        while got < sent:
            frame = await asyncio.wait_for(client.recv(), 5)
            assert frame is not None, f"connection closed after {got} of {sent} events"
            got += frame.get("event") == "custom.big"
        client.close()
    stalled.close()

"""The audit log in the engine contract: what every node's ``GET /admin/api/audit``
relies on, whichever engine it runs on (``conftest.engine``: memory and Redis)."""

from __future__ import annotations

from typing import Any

import pytest

from renum_rt.engines.base import AUDIT_MAX, Engine

from .conftest import Feed, OpenEngine


def entry(n: int) -> dict[str, Any]:
    return {"at": 1_700_000_000 + n, "by": "boss", "action": "disconnect_user", "target": f"user:u{n}",
            "address": "10.0.0.1", "node": "n1", "details": {"n": n, "note": "Zoë ✓"}}


@pytest.mark.gen_test
async def test_entries_come_back_newest_first_as_they_were_given(io_loop: object, engine: Engine) -> None:
    assert await engine.audit_list(10) == []
    for n in range(5):
        await engine.audit_append(entry(n))
    assert await engine.audit_list(10) == [entry(n) for n in (4, 3, 2, 1, 0)]
    assert await engine.audit_list(2) == [entry(4), entry(3)]
    assert await engine.audit_list(0) == []


@pytest.mark.gen_test(timeout=30)
async def test_the_log_keeps_the_newest_entries_only(io_loop: object, engine: Engine) -> None:
    for n in range(AUDIT_MAX + 5):
        await engine.audit_append(entry(n))
    kept = await engine.audit_list(AUDIT_MAX + 100)
    assert len(kept) == AUDIT_MAX
    assert kept[0] == entry(AUDIT_MAX + 4) and kept[-1] == entry(5)


@pytest.mark.gen_test
async def test_every_node_sharing_redis_reads_the_same_log(io_loop: object, open_engine: OpenEngine,
                                                           redis_server: Any) -> None:
    a = await open_engine("redis", Feed(), url=redis_server.url)
    b = await open_engine("redis", Feed(), url=redis_server.url)
    await a.audit_append(entry(1))
    await b.audit_append(entry(2))
    assert await a.audit_list(10) == await b.audit_list(10) == [entry(2), entry(1)]

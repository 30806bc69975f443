"""The notification inbox at size: one user's big inbox, and an announcement to many users.

    python bench/inbox.py                    # memory and Redis (a private redis-server, appendfsync always)
    python bench/inbox.py --inbox 10000 --users 100000 --runs 3

Measured on the engines' inbox directly (no HTTP, no WebSocket: those are publish.py and
fanout.py), each figure the median of --runs:
- a user with --inbox notifications: ``list`` of the first page (20) and of a page deep
  in the inbox (cursor), and ``read_all`` over all of them;
- an announcement to --users users who never connected: the time to store it, the Redis
  memory it adds (``used_memory`` before and after), and the time to compute the unread
  count of every one of those users (what the nodes do once per announcement for their
  connected users), as users per second.
The baseline in the same run is a plain Redis ``ZCARD`` round trip (for list/read_all) and
the same count computed by the memory engine. Results: JSON on stdout and a Markdown table.
Traffic to 127.0.0.1 only.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import redis.asyncio  # noqa: E402
from common import RedisServer  # noqa: E402

from renum_rt.engines.inbox import Inbox, InboxLimits  # noqa: E402
from renum_rt.engines.inbox_memory import MemoryInbox  # noqa: E402
from renum_rt.engines.inbox_redis import RedisInbox  # noqa: E402

NOW = int(time.time() * 1000)


async def timed(work: Awaitable[Any]) -> float:
    """Milliseconds ``work`` (a coroutine not started yet) takes once awaited."""
    start = time.perf_counter()
    await work
    return (time.perf_counter() - start) * 1000


async def fill(inbox: Inbox, user: str, count: int) -> list[str]:
    ids = []
    for i in range(count):
        created, _ = await inbox.create([user], {"title": f"n{i}", "body": "b", "level": "info", "category": "bench",
                                                 "data": {"i": i}, "link": None}, NOW + i)
        ids.append(created["id"])
    return ids


async def big_inbox(inbox: Inbox, size: int, runs: int) -> dict[str, float]:
    times: dict[str, list[float]] = {"list_first_page_ms": [], "list_deep_page_ms": [], "read_all_ms": []}
    for run in range(runs):
        user = f"big-{run}"
        ids = await fill(inbox, user, size)
        deep = ids[size // 2]
        times["list_first_page_ms"].append(await timed(inbox.list(user, None, 20, None, NOW + size)))
        times["list_deep_page_ms"].append(await timed(inbox.list(user, None, 20, deep, NOW + size)))
        times["read_all_ms"].append(await timed(inbox.read_all(user, None, NOW + size)))
    return {k: round(statistics.median(v), 3) for k, v in times.items()}


async def announcement(inbox: Inbox, users: int, runs: int, memory: Callable[[], Awaitable[int]] | None
                       ) -> dict[str, float]:
    store, count, added = [], [], []
    names = [f"never-{i}" for i in range(users)]
    for _ in range(runs):
        before = await memory() if memory else 0
        store.append(await timed(inbox.announce({"title": "Maintenance", "body": "tonight", "level": "warning"},
                                                 NOW)))
        added.append((await memory() if memory else 0) - before)
        count.append(await timed(inbox.unread(names, NOW)))
    return {"announce_ms": round(statistics.median(store), 3),
            "memory_added_bytes": int(statistics.median(added)),
            "count_all_users_ms": round(statistics.median(count), 1),
            "users_counted_per_s": round(users / (statistics.median(count) / 1000))}


async def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--inbox", type=int, default=10_000, help="notifications in the big inbox (default 10000)")
    p.add_argument("--users", type=int, default=100_000, help="users who never connected (default 100000)")
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args()
    limits = InboxLimits(max_per_user=args.inbox)
    results: dict[str, Any] = {"inbox": args.inbox, "users": args.users, "runs": args.runs}
    results["memory"] = {**await big_inbox(MemoryInbox(limits), args.inbox, args.runs),
                         **await announcement(MemoryInbox(limits), args.users, args.runs, None)}
    server = RedisServer("always")
    client = redis.asyncio.from_url(server.url)
    try:
        async def used() -> int:
            return int((await client.info("memory"))["used_memory"])

        results["redis_zcard_roundtrip_ms"] = round(statistics.median(
            [await timed(client.zcard("nothing")) for _ in range(200)]), 3)
        results["redis"] = {**await big_inbox(RedisInbox(client, "bench:", limits), args.inbox, args.runs),
                            **await announcement(RedisInbox(client, "bench2:", limits), args.users, args.runs, used)}
    finally:
        await client.aclose()
        server.stop()
    print(json.dumps(results, indent=2))
    rows = [
        ("list, first page of 20", "list_first_page_ms", "ms"),
        ("list, a page deep in the inbox", "list_deep_page_ms", "ms"),
        ("read_all over the whole inbox", "read_all_ms", "ms"),
        ("store one announcement", "announce_ms", "ms"),
        ("Redis memory one announcement adds", "memory_added_bytes", "bytes"),
        (f"unread count of all {args.users:,} users", "count_all_users_ms", "ms"),
        ("users counted per second", "users_counted_per_s", ""),
    ]
    print(f"\n| {args.inbox:,}-notification inbox, {args.users:,} users | memory | Redis |\n| --- | --- | --- |")
    for label, key, unit in rows:
        print(f"| {label} | {results['memory'][key]:,} {unit} | {results['redis'][key]:,} {unit} |")


if __name__ == "__main__":
    asyncio.run(main())

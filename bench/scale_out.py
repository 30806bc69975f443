"""Three gateway nodes on one Redis against three on a 3-shard Redis Cluster: publishes/s,
and each node's inbound pub/sub traffic when its clients use a third of the channels.

    python bench/scale_out.py                       # 300 team channels, 10 s of load each
    python bench/scale_out.py --duration 20 --senders 48

For each topology, in the same run: private redis-servers on free ports
(``appendfsync always``; the cluster made with ``redis-cli --cluster create``), three
renum-rt processes (bench/launch_renum.py) with the same secret, key and Redis URL, and
on each node one client per 50 channels subscribed to its own third of the channels
(node i: channels k with k % 3 == i). --senders threads publish ``bench.tick`` to a
random channel, round-robin over the nodes, each answer awaited (a closed loop) for
--duration seconds. Then each node's ``/metrics``: ``renum_rt_engine_feed_messages_total``
and ``..._bytes_total`` (what its Redis pub/sub link carried), and its clients' events.

With one Redis every node receives every event (one ``fanout`` channel); on the cluster
a node receives only the events of channels its clients use (sharded pub/sub), so its
inbound traffic follows its subscribers: about a third here. Publishes/s on this 2-core
machine measure the cost of the topology, not its scaling: three gateways, three shards
and the load generator share two cores.
Results: JSON in bench/results/scale_out-<time>/summary.json, then one line per topology.
"""

from __future__ import annotations

import argparse
import asyncio
import http.client
import json
import random
import shutil
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import common  # noqa: E402
from common import Proc, RedisServer  # noqa: E402

NODES = 3
PER_CLIENT = 50  # channels per subscribing connection (within max_subscriptions and the frame burst)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    parser.add_argument("--channels", type=int, default=300)
    parser.add_argument("--duration", type=float, default=10.0)
    parser.add_argument("--senders", type=int, default=32, help="publishing threads (closed loop)")
    return parser.parse_args()


def start_redis(kind: str) -> tuple[list[RedisServer], str]:
    """One primary, or three cluster primaries joined by redis-cli; the engine's URL."""
    if kind == "single":
        server = RedisServer()
        return [server], server.url
    ports: list[int] = []
    while len(ports) < 3:  # a cluster node also listens on port + 10000
        port = common.free_port()
        if port + 10000 < 65536 and port not in ports:
            ports.append(port)
    servers = [RedisServer(port=port, extra=("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf"))
               for port in ports]
    cli = shutil.which("redis-cli") or "redis-cli"
    subprocess.run([cli, "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports), "--cluster-yes"],
                   check=True, stdout=subprocess.DEVNULL, timeout=60)
    deadline = time.monotonic() + 30
    while not all("cluster_state:ok" in subprocess.run([cli, "-p", str(p), "cluster", "info"], capture_output=True,
                                                       text=True).stdout for p in ports):
        if time.monotonic() > deadline:
            raise RuntimeError("the cluster did not become ok")
        time.sleep(0.1)
    return servers, "redis+cluster://" + ",".join(f"127.0.0.1:{p}" for p in ports)


def start_nodes(url: str, secret: str, api_key: str, outdir: Path, kind: str) -> list[tuple[int, Proc]]:
    env = {"RENUM_RT_JWT_SECRET": secret, "RENUM_RT_API_KEY": api_key, "RENUM_RT_REDIS_URL": url,
           "RENUM_RT_HTTP_RATE": "100000", "RENUM_RT_HTTP_BURST": "100000", "RENUM_RT_LOG_LEVEL": "warning"}
    nodes = []
    for i in range(NODES):
        port = common.free_port()
        proc = Proc([common.python(), str(common.BENCH / "launch_renum.py"), "--port", str(port)],
                    outdir / f"{kind}-node-{i}.log", env=env)
        nodes.append((port, proc))
    for port, proc in nodes:
        common.wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc.proc)
    return nodes


class Subscribers:
    """On a thread of its own: per node, clients subscribed to that node's third of the
    channels, counting the events they get."""

    def __init__(self, ports: list[int], channels: list[str], secret: str) -> None:
        self.events = [0] * len(ports)
        self._ready = threading.Event()
        self._stop: asyncio.Future[None] | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread = threading.Thread(target=lambda: asyncio.run(self._main(ports, channels, secret)), daemon=True)
        self._thread.start()
        if not self._ready.wait(60):
            raise RuntimeError("subscribers did not connect")

    async def _main(self, ports: list[int], channels: list[str], secret: str) -> None:
        import tornado.websocket

        from renum_rt.auth import issue_token

        self._loop = asyncio.get_running_loop()
        self._stop = self._loop.create_future()
        teams = [c.split(":", 1)[1] for c in channels]
        tasks = []
        for i, port in enumerate(ports):
            mine = channels[i::len(ports)]
            for start in range(0, len(mine), PER_CLIENT):
                token = issue_token(secret, f"bench-{i}-{start}", 3600, teams=teams)
                conn = await tornado.websocket.websocket_connect(f"ws://127.0.0.1:{port}/ws?token={token}")
                for k, channel in enumerate(mine[start:start + PER_CLIENT]):
                    conn.write_message(json.dumps({"type": "subscribe", "channel": channel, "ref": str(k)}))
                replies = 0
                while replies < len(mine[start:start + PER_CLIENT]):
                    frame = json.loads(await conn.read_message())  # type: ignore[arg-type]
                    replies += frame["type"] == "subscribed"
                tasks.append(asyncio.ensure_future(self._count(conn, i)))
        self._ready.set()
        await self._stop
        for task in tasks:
            task.cancel()

    async def _count(self, conn: Any, node: int) -> None:
        while (message := await conn.read_message()) is not None:
            if '"type":"event"' in message:
                self.events[node] += 1

    def stop(self) -> None:
        if self._loop is not None and self._stop is not None:
            self._loop.call_soon_threadsafe(self._stop.set_result, None)
        self._thread.join(10)


def publish_load(ports: list[int], channels: list[str], api_key: str, senders: int,
                 duration: float) -> dict[str, int]:
    """Closed-loop publishing for ``duration`` seconds; the answers' statuses."""
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
    end = time.monotonic() + duration

    def sender(k: int) -> None:
        conns = [http.client.HTTPConnection("127.0.0.1", port, timeout=30) for port in ports]
        rng = random.Random(k)
        n = k
        while time.monotonic() < end:
            conn = conns[n % len(conns)]
            n += 1
            body = json.dumps({"event": "bench.tick", "channel": rng.choice(channels), "data": {"n": n}})
            status = common.post_status(conn, "/api/v1/publish", body, headers)
            with lock:
                statuses[status] = statuses.get(status, 0) + 1
        for conn in conns:
            conn.close()

    common.run_threads(sender, senders)
    return statuses


def feed_counters(port: int, api_key: str) -> tuple[int, int]:
    text = common.get_text(f"http://127.0.0.1:{port}/metrics", {"Authorization": f"Bearer {api_key}"})
    values = {}
    for line in text.splitlines():
        name, _, value = line.partition(" ")
        if name in ("renum_rt_engine_feed_messages_total", "renum_rt_engine_feed_bytes_total"):
            values[name] = int(float(value))
    return values["renum_rt_engine_feed_messages_total"], values["renum_rt_engine_feed_bytes_total"]


def run(kind: str, args: argparse.Namespace, outdir: Path) -> dict[str, Any]:
    secret, api_key = common.bench_secrets()
    channels = [f"team:t{k}" for k in range(args.channels)]
    servers, url = start_redis(kind)
    nodes: list[tuple[int, Proc]] = []
    subscribers = None
    try:
        nodes = start_nodes(url, secret, api_key, outdir, kind)
        ports = [port for port, _ in nodes]
        subscribers = Subscribers(ports, channels, secret)
        before = [feed_counters(port, api_key) for port in ports]
        t0 = time.monotonic()
        statuses = publish_load(ports, channels, api_key, args.senders, args.duration)
        elapsed = time.monotonic() - t0
        time.sleep(1.0)  # the last events reach their subscribers
        after = [feed_counters(port, api_key) for port in ports]
        accepted = statuses.get("200", 0)
        per_node = [{"feed_messages": a[0] - b[0], "feed_bytes": a[1] - b[1],
                     "feed_bytes_per_s": round((a[1] - b[1]) / elapsed),
                     "share_of_published": round((a[0] - b[0]) / accepted, 3) if accepted else None,
                     "client_events": subscribers.events[i]}
                    for i, (a, b) in enumerate(zip(after, before, strict=True))]
        return {"topology": kind, "redis_url": url, "statuses": statuses, "seconds": round(elapsed, 2),
                "publishes_per_s": round(accepted / elapsed), "per_node": per_node}
    finally:
        if subscribers is not None:
            subscribers.stop()
        for _, proc in nodes:
            proc.stop()
        for server in servers:
            server.stop()


def main() -> int:
    args = parse_args()
    common.raise_fd_limit()
    outdir = common.results_dir("scale_out")
    results = [run(kind, args, outdir) for kind in ("single", "cluster")]
    base = results[0]["publishes_per_s"] or 1
    for result in results:
        result["publishes_vs_single"] = round(result["publishes_per_s"] / base, 2)
    common.write_summary(outdir, {"machine": common.machine(), "args": vars(args), "results": results})
    for result in results:
        shares = ", ".join(f"{node['share_of_published']:.0%}" for node in result["per_node"])
        print(f"{result['topology']}: {result['publishes_per_s']} publishes/s (x{result['publishes_vs_single']}), "
              f"each node received {shares} of the events", file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

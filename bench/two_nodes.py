"""Two renum-rt nodes on one Redis: does an event published to node A reach node B's clients later?

    python bench/two_nodes.py                    # 200 clients per node, 50 events/s, 3 phases of 10 s
    python bench/two_nodes.py --clients 500 --rate 20

A private redis-server (a free port, ``appendfsync always``, core 1) and two renum-rt
processes (bench/launch_renum.py, Redis engine, both on core 0: the same share of the
same core, so neither node is favoured) share one secret and API key. One Node load
generator per node (core 1) connects --clients users to it. This script (core 1)
publishes ``bench.tick`` events to the ``system`` channel through node A's HTTP API
(``POST /api/v1/publish``), in an open loop of --rate events/s from --conns keep-alive
connections; each event carries its due time (``bt=<µs>``, CLOCK_MONOTONIC), so a late
publisher counts in the latency. Every event reaches every client of both nodes: node A
fans it out from the Redis pub/sub message like node B, so the difference between the
two groups' latency (due time -> receipt, the same events) is what crossing to another
node costs. Target (issue 11): cross-node delivery adds at most 1 ms to p99.

Per phase: p50/p99/max of each group, deliveries (every event to every client), HTTP
statuses, and each side's CPU (schedstat): the two nodes on core 0 against the load
generators, redis-server and this script on core 1. Medians over --phases.
Results: JSON on stdout and in bench/results/two_nodes-<time>/summary.json, then one
human line. Traffic to 127.0.0.1 only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOAD_CORE, SERVER_CORE, LoadGen, Proc, RedisServer, median, rnd  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--clients", type=int, default=200, help="WebSocket clients per node (default 200)")
    p.add_argument("--rate", type=float, default=50.0, help="events per second published to node A (default 50)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    p.add_argument("--phases", type=int, default=3, help="measured phases (default 3); medians reported")
    p.add_argument("--conns", type=int, default=4, help="keep-alive HTTP connections publishing (default 4)")
    p.add_argument("--log-level", default="info", help="renum-rt log level (default info, as in production)")
    return p.parse_args()


def start_node(name: str, port: int, env: dict[str, str], outdir: Path, log_level: str) -> Proc:
    argv = [common.python(), str(common.BENCH / "launch_renum.py"), "--port", str(port), "--log-level", log_level]
    proc = Proc([*common.taskset(SERVER_CORE), *argv], outdir / f"node-{name}.log", env=env)
    common.wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc.proc)
    return proc


def connect(gen: LoadGen, secret: str, prefix: str, n: int, outdir: Path) -> None:
    from renum_rt.auth import issue_token

    paths = outdir / f"paths-{prefix}.json"
    paths.write_text(json.dumps([f"/ws?token={issue_token(secret, f'{prefix}-{i}', ttl_s=3600)}"
                                 for i in range(n)]))
    got = gen.call({"cmd": "connect", "paths_file": str(paths), "proto": "renum.v1"}, "connected", timeout=300)
    if got["ok"] != n:
        raise RuntimeError(f"only {got['ok']} of {n} clients connected ({prefix}): {got['errors']}")


def publish_open_loop(port: int, api_key: str, rate: float, duration: float, conns: int) -> dict[str, int]:
    """Event i is due at start + i / rate; connection i % conns sends it then (or as soon
    as its previous answer came) with its due time as the stamp. Returns the statuses."""
    total = int(rate * duration)
    start = time.monotonic() + 0.05
    statuses: dict[str, int] = {}
    lock = threading.Lock()
    headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}

    def sender(k: int) -> None:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            for i in range(k, total, conns):
                due = start + i / rate
                time.sleep(max(0.0, due - time.monotonic()))
                body = json.dumps({"event": "bench.tick", "channel": "system",
                                   "data": {"m": f"bt={int(due * 1e6)}"}})
                status = common.post_status(conn, "/api/v1/publish", body, headers)
                with lock:
                    statuses[status] = statuses.get(status, 0) + 1
        finally:
            conn.close()

    common.run_threads(sender, conns)
    return statuses


def phase(args: argparse.Namespace, gens: dict[str, LoadGen], nodes: dict[str, Proc], redis: RedisServer,
          api_port: int, api_key: str) -> dict[str, Any]:
    expect = int(args.rate * args.duration) * args.clients
    timeout_ms = int((args.duration + 15) * 1000)
    for gen in gens.values():
        gen.call({"cmd": "arm", "marker": "bt=", "mode": "stamp", "expect": expect, "timeout_ms": timeout_ms},
                 "armed")
    server_pids = [p.pid for p in nodes.values()]
    load_pids = [g.pid for g in gens.values()] + [redis.proc.pid, os.getpid()]
    cpu0 = {pid: common.cpu_ns(pid) for pid in server_pids + load_pids}
    t0 = time.monotonic_ns()
    statuses = publish_open_loop(api_port, api_key, args.rate, args.duration, args.conns)
    done = {name: gen.expect("done", timeout=args.duration + 30) for name, gen in gens.items()}
    wall = max(1, time.monotonic_ns() - t0)
    cpu = {pid: common.cpu_ns(pid) - cpu0[pid] for pid in cpu0}
    out: dict[str, Any] = {"statuses": statuses, "expected_per_node": expect,
                           "server_core_busy": rnd(sum(cpu[p] for p in server_pids) / wall, 3),
                           "load_core_busy": rnd(sum(cpu[p] for p in load_pids) / wall, 3)}
    for name, d in done.items():
        out[name] = {"deliveries": d["count"], "complete": d["reason"] == "complete", **d["latency"],
                     "node_cpu_busy": rnd(cpu[nodes[name].pid] / wall, 3)}
    out["p99_b_minus_a_ms"] = rnd(out["B"]["p99_ms"] - out["A"]["p99_ms"], 3)
    out["p50_b_minus_a_ms"] = rnd(out["B"]["p50_ms"] - out["A"]["p50_ms"], 3)
    return out


def main() -> int:
    args = parse_args()
    common.pin_self(LOAD_CORE)
    common.raise_fd_limit()
    sys.path.insert(0, str(common.ROOT))
    outdir = common.results_dir("two_nodes")
    started = time.monotonic()
    secret, api_key = common.bench_secrets()
    redis = RedisServer("always")
    nodes: dict[str, Proc] = {}
    gens: dict[str, LoadGen] = {}
    phases = []
    try:
        env = {"RENUM_RT_JWT_SECRET": secret, "RENUM_RT_API_KEY": api_key, "RENUM_RT_REDIS_URL": redis.url,
               "RENUM_RT_HTTP_RATE": "100000", "RENUM_RT_HTTP_BURST": "100000"}
        ports = {name: common.free_port() for name in ("A", "B")}
        for name, port in ports.items():
            nodes[name] = start_node(name, port, env, outdir, args.log_level)
            gens[name] = LoadGen(port, outdir / f"loadgen-{name}.log")
            connect(gens[name], secret, f"n{name}", args.clients, outdir)
        publish_open_loop(ports["A"], api_key, args.rate, 1.0, args.conns)  # warm-up, not measured
        time.sleep(1.0)  # let the warm-up's deliveries drain before arming
        for _ in range(args.phases):
            phases.append(phase(args, gens, nodes, redis, ports["A"], api_key))
    finally:
        for gen in gens.values():
            gen.close()
        for proc in nodes.values():
            proc.stop()
        redis.stop()

    def med(group: str, key: str) -> float | None:
        return median([ph[group][key] for ph in phases])

    diff = median([ph["p99_b_minus_a_ms"] for ph in phases])
    complete = all(ph[g]["complete"] for ph in phases for g in ("A", "B"))
    summary = {
        "benchmark": "two_nodes",
        "machine": common.machine(),
        "params": {"clients_per_node": args.clients, "rate": args.rate, "duration_s": args.duration,
                   "phases": args.phases, "http_conns": args.conns, "server_core": SERVER_CORE,
                   "load_core": LOAD_CORE, "log_level": args.log_level, "redis_fsync": "always"},
        "medians": {g: {k: med(g, k) for k in ("p50_ms", "p99_ms", "max_ms", "node_cpu_busy")} for g in ("A", "B")},
        "p99_b_minus_a_ms_median": diff,
        "p99_b_minus_a_ms_per_phase": [ph["p99_b_minus_a_ms"] for ph in phases],
        "target_met": diff is not None and diff <= 1.0 and complete,
        "all_complete": complete,
        "phases": phases,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    m = summary["medians"]
    print(f"two_nodes: p50/p99 node A {m['A']['p50_ms']}/{m['A']['p99_ms']} ms, node B {m['B']['p50_ms']}/"
          f"{m['B']['p99_ms']} ms; B - A p99 {diff} ms (per phase {summary['p99_b_minus_a_ms_per_phase']}; "
          f"target <= 1 ms: {'met' if summary['target_met'] else 'MISSED'})"
          f"{'' if complete else ' [INCOMPLETE: some deliveries missing]'}")
    return 0 if complete else 1


if __name__ == "__main__":
    sys.exit(main())

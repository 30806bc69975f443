"""Broadcast fan-out: renum-rt against bare Tornado 6 and the peers, in the same run, interleaved.

The peers' scenario (see docs/benchmarks.md): the server pinned to core 0, one Node.js
load generator (bench/loadgen.mjs) pinned to core 1 holding 1,000 WebSocket connections,
then a burst of 100 broadcasts of one event (the same 175-byte JSON frame for every
server), the server yielding to its event loop between two broadcasts.

    python bench/fanout.py                       # tornado vs renum, 3 interleaved runs
    python bench/fanout.py --servers tornado,tornado-preframed,renum --runs 5
    python bench/fanout.py --servers tornado,renum,renum@/tmp/scratch   # compare two trees

Servers:
  tornado            bench/baseline_tornado.py, a loop of write_message (the baseline, 1.00)
  tornado-preframed  the frame built once, the same bytes to each IOStream.write
  renum              bench/launch_renum.py: the real renum-rt Node (memory engine); the burst
                     is published through node.gateway.publish(["system"], ...), so the
                     engine -> hub -> send_frame path is what is measured
  renum@PATH         the same from another source tree (e.g. a scratch copy with a change)
  websockets         bench/peer_websockets.py: websockets' broadcast()
  socketio-py        bench/peer_socketio.py: python-socketio on aiohttp, sio.emit()
  ws-node            bench/peer_ws.mjs: Node ws, a loop of send()
  socketio-node      bench/peer_socketio.mjs: Node socket.io 4, io.emit()
  (the peers run from the bench's own venv and npm folder, bench/results/peers/, created on
  first use by common.peers_env(); the socket.io ones are reached with Engine.IO v4 framing,
  the load generator's "sio" mode)
  all                all of the above except renum@PATH

Event-loop lag (renum only): during the burst, /metrics is scraped every 0.25 s (with the
launcher's API key) and the largest renum_rt_event_loop_lag_seconds is reported; the probe
runs every 0.5 s, so this is the worst lag a probe saw, not every stall.

Per run and server, a fresh server process and a fresh load generator:
  1. one control connection; RSS read from /proc/<pid>/status (VmRSS)
  2. 1,000 more connections; after --settle s, RSS again;
     KB per connection = (RSS with 1,000 idle connections - RSS with the control one) / 1,000
  3. the control connection is closed, so exactly 1,000 connections receive the burst
  4. burst of --broadcasts events; deliveries/s = deliveries / (last receipt - send time
     of the first event); latency per delivery = receipt - send time of its event
     (both CLOCK_MONOTONIC); server CPU per delivery from /proc/<pid>/task/*/schedstat
     over the burst (server CPU busy near 100% = the server is the limit; the load
     generator's own CPU share is reported to show it kept pace). A burst during which
     the server got less than --min-busy of its core (another process ran on core 0:
     this machine is shared) is run again, at most --retries times.
Results: a JSON summary on stdout and in bench/results/fanout-<time>/summary.json, and
one human line per server. Traffic goes to 127.0.0.1 only; every process is stopped at
the end, and each burst waits at most --timeout s.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOAD_CORE, SERVER_CORE, LagScraper, LoadGen, Proc, free_port, median, rnd  # noqa: E402

ALL = ["tornado", "tornado-preframed", "renum", "websockets", "socketio-py", "ws-node", "socketio-node"]
#: how each server is reached: WebSocket path, load generator's Socket.IO mode, burst trigger method
SIO_PATH = "/socket.io/?EIO=4&transport=websocket"

#: the peers' figures (shared/peer-figures.md, run 1 / run 2), for the summary
PEERS = {
    "tornado write_message (bare)": {"per_s": [56466, 46360], "x_bare": [1.00, 1.00], "p99_ms": 39.9, "kb": 14.3,
                                     "cpu_us": 21.5},
    "tornado pre-framed IOStream.write": {"per_s": [105233, 99429], "x_bare": [1.86, 2.14], "p99_ms": 29.5,
                                          "kb": 14.4, "cpu_us": 10.1},
    "websockets 17.4 broadcast()": {"per_s": [176031, 164194], "x_bare": [3.12, 3.54], "p99_ms": 8.8, "kb": 14.6,
                                    "cpu_us": 6.1},
    "python-socketio 5.18 + aiohttp": {"per_s": [21817, 19442], "x_bare": [0.39, 0.42], "p99_ms": 95.2, "kb": 29.9},
    "Node socket.io 4.8": {"per_s": [155463, 132312], "x_bare": [2.75, 2.85], "p99_ms": 8.5, "kb": 24.0},
    "Node ws 8.23 loop of send": {"per_s": [198483, 178692], "x_bare": [3.52, 3.85], "p99_ms": 8.9, "kb": 9.7,
                                  "cpu_us": 5.6},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--servers", default="tornado,renum",
                   help="comma-separated: tornado, tornado-preframed, renum, renum@PATH, websockets, socketio-py, "
                        "ws-node, socketio-node, or all (default tornado,renum); the first is the baseline of the "
                        "ratios")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per server (default 3); medians reported")
    p.add_argument("--connections", type=int, default=1000, help="connections receiving the burst (default 1000)")
    p.add_argument("--broadcasts", type=int, default=100, help="events in the burst (default 100)")
    p.add_argument("--settle", type=float, default=1.0, help="seconds before each RSS reading (default 1.0)")
    p.add_argument("--timeout", type=float, default=60.0, help="max seconds for one burst (default 60)")
    p.add_argument("--min-busy", type=float, default=0.85,
                   help="a burst during which the server got less than this share of its core was slowed by "
                        "another process on core 0: it is run again (default 0.85; 0 = never)")
    p.add_argument("--retries", type=int, default=2, help="at most this many re-runs of one burst (default 2)")
    p.add_argument("--per-event", action="store_true",
                   help="also record, per event of the burst, its deliveries and min/max latency")
    p.add_argument("--gc-log", action="store_true",
                   help="the servers log their full (gen 2) garbage collections; the ones during the burst "
                        "are counted in the results")
    p.add_argument("--log-level", default="info", help="renum-rt log level (default info, as in production)")
    p.add_argument("--concurrency", type=int, default=50, help="handshakes in flight while connecting (default 50)")
    p.add_argument("--no-loop-lag", action="store_true", help="do not scrape renum-rt's /metrics during the burst")
    return p.parse_args()


def start_server(kind: str, port: int, secret: str, log: Path, log_level: str, gc_log: bool = False,
                 api_key: str = "bench-unused") -> Proc:
    py = common.python()
    if kind in ("tornado", "tornado-preframed"):
        mode = "preframed" if kind == "tornado-preframed" else "write_message"
        argv = [py, str(common.BENCH / "baseline_tornado.py"), "--port", str(port), "--mode", mode,
                *(["--gc-log"] if gc_log else [])]
        env: dict[str, str] = {}
        cwd = common.ROOT
    elif kind == "renum" or kind.startswith("renum@"):
        root = Path(kind.split("@", 1)[1]).resolve() if "@" in kind else common.ROOT
        argv = [py, str(common.BENCH / "launch_renum.py"), "--port", str(port), "--root", str(root),
                "--log-level", log_level, *(["--gc-log"] if gc_log else [])]
        env = {"RENUM_RT_JWT_SECRET": secret, "RENUM_RT_API_KEY": api_key, "RENUM_RT_REDIS_URL": ""}
        cwd = root
    elif kind in ("websockets", "socketio-py"):
        script = "peer_websockets.py" if kind == "websockets" else "peer_socketio.py"
        argv = [str(common.peers_python()), str(common.BENCH / script), "--port", str(port)]
        env, cwd = {}, common.ROOT
    elif kind in ("ws-node", "socketio-node"):
        import shutil

        script = "peer_ws.mjs" if kind == "ws-node" else "peer_socketio.mjs"
        argv = [shutil.which("node") or "node", str(common.BENCH / script), "--port", str(port),
                "--peers-dir", str(common.PEERS_DIR)]
        env, cwd = {}, common.ROOT
    else:
        raise SystemExit(f"unknown server {kind!r}")
    proc = Proc([*common.taskset(SERVER_CORE), *argv], log, env=env, cwd=cwd)
    common.wait_http(f"http://127.0.0.1:{port}/healthz", proc=proc.proc)
    return proc


def ws_paths(kind: str, n: int, secret: str, prefix: str, out: Path) -> Path | None:
    """For renum-rt: one token per connection, each for its own user (the usual case:
    every connection is subscribed to system and to its own user channel)."""
    if not kind.startswith("renum"):
        return None
    sys.path.insert(0, str(common.ROOT))
    from renum_rt.auth import issue_token

    paths = [f"/ws?token={issue_token(secret, f'{prefix}-{i}', ttl_s=3600)}" for i in range(n)]
    out.write_text(json.dumps(paths))
    return out


def one_run(kind: str, args: argparse.Namespace, outdir: Path, run: int) -> dict[str, Any]:
    secret, api_key = common.bench_secrets()
    port = free_port()
    tag = kind.replace("/", "_").replace("@", "-at-")
    server_log = outdir / f"server-{tag}-{run}.log"
    server = start_server(kind, port, secret, server_log, args.log_level, args.gc_log, api_key)
    is_renum = kind.startswith("renum")
    sio = kind.startswith("socketio")
    path = SIO_PATH if sio else "/ws"
    lag: dict[str, Any] = {}
    gen = None
    try:
        gen = LoadGen(port, outdir / f"loadgen-{tag}-{run}.log")
        proto = "renum.v1" if is_renum else None
        ctrl = ws_paths(kind, 1, secret, "ctrl", outdir / "paths-ctrl.json")
        many = ws_paths(kind, args.connections, secret, f"u{run}", outdir / "paths.json")
        c1 = gen.call({"cmd": "connect", "n": 1, "path": path, "proto": proto, "sio": sio,
                       **({"paths_file": str(ctrl)} if ctrl else {})}, "connected")
        if c1["ok"] != 1:
            raise RuntimeError(f"control connection failed: {c1}")
        time.sleep(args.settle)
        rss_ctrl = common.rss_kb(server.pid)
        c2 = gen.call({"cmd": "connect", "n": args.connections, "path": path, "proto": proto, "sio": sio,
                       "concurrency": args.concurrency, **({"paths_file": str(many)} if many else {})},
                      "connected", timeout=300)
        if c2["ok"] != args.connections:
            raise RuntimeError(f"only {c2['ok']} of {args.connections} connections opened: {c2['errors']}")
        time.sleep(args.settle)
        rss_all = common.rss_kb(server.pid)
        gen.call({"cmd": "close_conn", "index": 0}, "closed_conn")
        time.sleep(0.3)
        expect = args.connections * args.broadcasts
        gen.call({"cmd": "arm", "marker": "bt=", "mode": "stamp", "expect": expect,
                  "timeout_ms": int(args.timeout * 1000), "per_event": args.per_event}, "armed")
        cpu0 = common.cpu_ns(server.pid)
        gen_cpu0 = common.cpu_ns(gen.pid)
        t0 = time.monotonic_ns()
        t0_s = time.monotonic()
        scraper = LagScraper(port, api_key, limit_s=args.timeout + 15) if is_renum and not args.no_loop_lag \
            else None
        burst_url = f"http://127.0.0.1:{port}/bench/burst?n={args.broadcasts}"
        if kind == "websockets":  # websockets' HTTP side takes GET only
            common.get_text(burst_url)
        else:
            common.post(burst_url)
        done = gen.expect("done", timeout=args.timeout + 10)
        t1 = time.monotonic_ns()
        cpu1 = common.cpu_ns(server.pid)
        gen_cpu1 = common.cpu_ns(gen.pid)
        if scraper is not None:
            time.sleep(0.6)  # the probe after a long stall reports it: one more probe period
            lag = scraper.stop()
        stats = gen.call({"cmd": "stats"}, "stats")
    finally:
        if gen is not None:
            gen.close()
        server.stop()
    count = done["count"]
    wall_ns = max(1, t1 - t0)
    gcs = []
    if args.gc_log:  # "gc gen2 <ms> ms collected=<n> at=<monotonic s>" lines of the launcher
        for line in server_log.read_text(errors="replace").splitlines():
            if line.startswith("gc gen2 "):
                parts = line.split()
                at = float(parts[-1].split("=")[1])
                if t0_s <= at <= t1 / 1e9:
                    gcs.append(float(parts[2]))
    return {
        "server": kind,
        "run": run,
        "complete": done["reason"] == "complete",
        "deliveries": count,
        "expected": expect,
        "per_s": done["per_s"],
        "span_ms": rnd(done["span_ms"]),
        "latency_ms": done["latency"],
        "server_cpu_us_per_delivery": rnd((cpu1 - cpu0) / 1000 / count, 2) if count else None,
        "server_cpu_busy": rnd((cpu1 - cpu0) / wall_ns, 3),
        "loadgen_cpu_busy": rnd((gen_cpu1 - gen_cpu0) / wall_ns, 3),
        "loadgen_cpu_ms": done["loadgen_cpu_ms"],
        "loadgen_sys_ms": done["loadgen_sys_ms"],
        "rss_kb_control": rss_ctrl,
        "rss_kb_all": rss_all,
        "kb_per_connection": rnd((rss_all - rss_ctrl) / args.connections, 1),
        "connect_ms": c2["ms"],
        "closed_by_server": stats["closed_by_server"],
        "bound": bound(cpu1 - cpu0, gen_cpu1 - gen_cpu0, wall_ns),
        **lag,
        **({"per_event": done.get("per_event")} if args.per_event else {}),
        **({"gen2_collections_in_burst": len(gcs), "gen2_ms_total": rnd(sum(gcs), 1),
            "gen2_ms_max": rnd(max(gcs), 1) if gcs else None} if args.gc_log else {}),
    }


def bound(server_ns: int, gen_ns: int, wall_ns: int, limit: float = 0.85) -> str:
    """Which side was CPU-bound during the burst: the one that used at least ``limit`` of its core."""
    s, g = server_ns / wall_ns >= limit, gen_ns / wall_ns >= limit
    return "both" if s and g else "server" if s else "load generator" if g else "neither"


def main() -> int:
    args = parse_args()
    kinds = [k.strip() for k in args.servers.split(",") if k.strip()]
    if kinds == ["all"]:
        kinds = list(ALL)
    if any(k in ("websockets", "socketio-py", "ws-node", "socketio-node") for k in kinds):
        common.peers_env()
    fd_limit = common.raise_fd_limit()
    if fd_limit < args.connections + 200:
        raise SystemExit(f"the fd limit is {fd_limit}: too low for {args.connections} connections")
    common.pin_self(LOAD_CORE)
    outdir = common.results_dir("fanout")
    started = time.monotonic()
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        order = kinds if run % 2 else list(reversed(kinds))  # alternate who goes first
        for kind in order:
            discarded: list[float | None] = []
            while True:
                r = one_run(kind, args, outdir, run)
                if r["server_cpu_busy"] >= args.min_busy or len(discarded) >= args.retries:
                    break
                discarded.append(r["per_s"])
                print(f"# run {run} {kind}: server had only {r['server_cpu_busy']} of its core "
                      f"({r['per_s']} deliveries/s): another process was on core 0; running it again",
                      file=sys.stderr, flush=True)
            r["discarded_contended_per_s"] = discarded
            runs.append(r)
            lat = r["latency_ms"]
            print(f"# run {run} {kind:>18}: {r['per_s']} deliveries/s, p99 {lat['p99_ms']} ms, "
                  f"{r['server_cpu_us_per_delivery']} µs CPU/delivery (server busy {r['server_cpu_busy']}, "
                  f"loadgen busy {r['loadgen_cpu_busy']}: {r['bound']} bound), {r['kb_per_connection']} KB/conn"
                  + (f", max loop lag {r['loop_lag_max_ms']} ms" if r.get("loop_lag_max_ms") is not None else "")
                  + (f", {r['gen2_collections_in_burst']} gen2 GCs in the burst ({r['gen2_ms_total']} ms)"
                     if "gen2_collections_in_burst" in r else ""),
                  file=sys.stderr, flush=True)
    base = kinds[0]
    by: dict[str, dict[str, Any]] = {}
    for kind in kinds:
        rs = [r for r in runs if r["server"] == kind]
        pairs = []
        for r in rs:
            b = next(x for x in runs if x["server"] == base and x["run"] == r["run"])
            if r["per_s"] and b["per_s"]:
                pairs.append(r["per_s"] / b["per_s"])
        by[kind] = {
            "deliveries_per_s": median([r["per_s"] for r in rs]),
            "x_baseline_of_medians": None,
            "x_baseline_per_run_median": rnd(median(pairs), 2),
            "x_baseline_per_run": [rnd(x, 2) for x in pairs],
            "p50_ms": median([r["latency_ms"]["p50_ms"] for r in rs]),
            "p99_ms": median([r["latency_ms"]["p99_ms"] for r in rs]),
            "max_ms": median([r["latency_ms"]["max_ms"] for r in rs]),
            "server_cpu_us_per_delivery": median([r["server_cpu_us_per_delivery"] for r in rs]),
            "server_cpu_busy": median([r["server_cpu_busy"] for r in rs]),
            "loadgen_cpu_busy": median([r["loadgen_cpu_busy"] for r in rs]),
            "kb_per_connection": median([r["kb_per_connection"] for r in rs]),
            "all_complete": all(r["complete"] for r in rs),
            "bound": [r["bound"] for r in rs],
            "loop_lag_max_ms": max((r["loop_lag_max_ms"] for r in rs if r.get("loop_lag_max_ms") is not None),
                                   default=None),
        }
    for kind in kinds:
        b, k = by[base]["deliveries_per_s"], by[kind]["deliveries_per_s"]
        by[kind]["x_baseline_of_medians"] = rnd(k / b, 2) if b and k else None
    summary = {
        "benchmark": "fanout",
        "machine": common.machine(),
        "params": {"servers": kinds, "runs": args.runs, "connections": args.connections,
                   "broadcasts": args.broadcasts, "frame_bytes": 175, "server_core": SERVER_CORE,
                   "load_core": LOAD_CORE, "renum_log_level": args.log_level, "fd_limit": fd_limit},
        "baseline": base,
        "medians": by,
        "runs": runs,
        "peers": PEERS,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    for kind in kinds:
        m = by[kind]
        print(f"fanout {kind}: {m['deliveries_per_s']:.0f} deliveries/s (x{m['x_baseline_of_medians']} of {base}; "
              f"per-run ratios {m['x_baseline_per_run']}), p99 {m['p99_ms']} ms, "
              f"{m['server_cpu_us_per_delivery']} µs server CPU/delivery, {m['kb_per_connection']} KB/connection"
              f"{'' if m['all_complete'] else ' [INCOMPLETE: some deliveries missing]'}")
    print("peers (x bare Tornado): pre-framed Tornado 1.86-2.14, websockets 3.12-3.54, Node ws 3.52-3.85, "
          "socket.io(Node) 2.75-2.85, python-socketio 0.39-0.42")
    return 0 if all(by[k]["all_complete"] for k in kinds) else 1


if __name__ == "__main__":
    sys.exit(main())

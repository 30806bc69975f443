"""The requirement "100 users connected, latency below 500 ms", through the HTTP API.

    python bench/spec_latency.py                 # memory engine, the three modes below
    python bench/spec_latency.py --redis         # the same on the Redis engine too
    python bench/spec_latency.py --modes per-user --duration 20

100 WebSocket users (one connection each, from the Node load generator on core 1) on a
real server.py process (core 0); every user gets one execution.status event every 100 ms
for 20 s, published with POST /api/v1/publish over --conns keep-alive connections,
open loop (events are due on a fixed schedule whatever the answers do).
End-to-end latency = the time the event was due -> WebSocket receipt (CLOCK_MONOTONIC on
both sides), so an event that waited for a free publisher connection (because the
server was slow to answer) has that wait in its latency; latency from the actual send
and that wait ("queue lag") are reported too.

Modes:
  batch           one request per 100 ms naming all 100 users (10 requests/s),
                  default settings
  per-user        one request per user per 100 ms, the users spread evenly over the
                  period (1,000 requests/s); the per-key rate limit raised to 2,000/s,
                  burst 4,000 (RENUM_RT_HTTP_RATE / RENUM_RT_HTTP_BURST)
  per-user-default  the same with the default limit (1000/s, burst 2000): shows what the
                  default configuration does with this traffic
PASS when every event was accepted (HTTP 200) and delivered exactly once, and the max
end-to-end latency (from due) is below --limit-ms (500). p50/p99/max reported per mode.
Results: JSON on stdout and bench/results/spec_latency-<time>/summary.json, one human
line per mode. Traffic to 127.0.0.1 only; the script stops every process it started.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOAD_CORE  # noqa: E402
from pubcommon import Setup, redis_status  # noqa: E402

MODES: dict[str, dict[str, Any]] = {
    "batch": {"batch": True, "env": {}},
    "per-user": {"batch": False, "env": {"RENUM_RT_HTTP_RATE": "2000", "RENUM_RT_HTTP_BURST": "4000"}},
    "per-user-default": {"batch": False, "env": {}},
}


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--users", type=int, default=100, help="users, one connection each (default 100)")
    p.add_argument("--period-ms", type=float, default=100.0, help="one event per user every ... ms (default 100)")
    p.add_argument("--duration", type=float, default=20.0, help="seconds of publishing per mode (default 20)")
    p.add_argument("--modes", default="batch,per-user,per-user-default",
                   help="comma-separated: batch, per-user, per-user-default (default all three)")
    p.add_argument("--conns", type=int, default=16, help="HTTP keep-alive connections of the publisher (default 16)")
    p.add_argument("--limit-ms", type=float, default=500.0, help="the latency requirement (default 500)")
    p.add_argument("--redis", action="store_true",
                   help="also on the Redis engine (private redis-server, or RENUM_RT_REDIS_URL)")
    p.add_argument("--redis-fsync", choices=["always", "everysec", "no", "none"], default="always")
    p.add_argument("--log-level", default="info", help="server log level (default info, as in production)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    common.pin_self(LOAD_CORE)
    outdir = common.results_dir("spec_latency")
    started = time.monotonic()
    modes = [m.strip() for m in args.modes.split(",") if m.strip()]
    for m in modes:
        if m not in MODES:
            raise SystemExit(f"unknown mode {m!r}; choose from {', '.join(MODES)}")
    engines = ["memory"]
    redis_note = "not requested"
    if args.redis or os.environ.get("RENUM_RT_REDIS_URL"):
        ok, redis_note = redis_status(False)
        if ok:
            engines.append("redis")
        print(f"# redis engine: {redis_note}", file=sys.stderr, flush=True)
    results: list[dict[str, Any]] = []
    for engine in engines:
        for mode in modes:
            spec = MODES[mode]
            env = {"RENUM_RT_LOG_LEVEL": args.log_level, **spec["env"]}
            tag = f"{engine}-{mode}"
            try:
                setup = Setup(engine, args.users, outdir, tag, env=env, redis_fsync=args.redis_fsync)
            except Exception as exc:  # noqa: BLE001 - reported as a failure of this mode
                results.append({"engine": engine, "mode": mode, "pass": False, "error": str(exc)})
                print(f"# {engine} {mode}: could not start: {exc}", file=sys.stderr, flush=True)
                continue
            try:
                rep = setup.phase(tag="x", duration_s=args.duration, conns=args.conns, schedule="open",
                                  period_ms=args.period_ms, batch=spec["batch"], drain_s=5.0)
            finally:
                setup.close()
            ok200 = rep["statuses"].get("200", 0)
            e2e = rep["e2e_from_due"] or {}
            planned = int(args.duration * 1000 / args.period_ms) * (1 if spec["batch"] else args.users)
            events_due = int(args.duration * 1000 / args.period_ms) * args.users
            delivered_all = rep["deliveries"] == rep["deliveries_expected"] == events_due and rep["duplicates"] == 0
            passed = (ok200 == rep["requests"] == planned and delivered_all
                      and e2e.get("max_ms") is not None and e2e["max_ms"] < args.limit_ms)
            rep.update(engine=engine, mode=mode, events_due=events_due, requests_planned=planned, **{"pass": passed})
            results.append(rep)
            print(f"# {engine} {mode}: {'PASS' if passed else 'FAIL'} e2e p50 {e2e.get('p50_ms')} p99 "
                  f"{e2e.get('p99_ms')} max {e2e.get('max_ms')} ms, {rep['deliveries']}/{events_due} delivered, "
                  f"statuses {rep['statuses']}, server busy {rep['server_cpu_busy']}", file=sys.stderr, flush=True)
    summary = {
        "benchmark": "spec_latency",
        "machine": common.machine(),
        "params": {"users": args.users, "period_ms": args.period_ms, "duration_s": args.duration, "modes": modes,
                   "conns": args.conns, "limit_ms": args.limit_ms, "engines": engines, "redis": redis_note,
                   "redis_fsync": args.redis_fsync, "log_level": args.log_level},
        "results": results,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    for r in results:
        if "error" in r:
            print(f"spec_latency {r['engine']} {r['mode']}: FAIL (could not run: {r['error']})")
            continue
        e2e = r["e2e_from_due"] or {}
        sent = r["e2e"] or {}
        refused = {s: n for s, n in r["statuses"].items() if s != "200"}
        print(f"spec_latency {r['engine']} {r['mode']}: {'PASS' if r['pass'] else 'FAIL'} "
              f"(limit {args.limit_ms:.0f} ms): e2e p50 {e2e.get('p50_ms')} ms, p99 {e2e.get('p99_ms')} ms, "
              f"max {e2e.get('max_ms')} ms (from send: p99 {sent.get('p99_ms')}, max {sent.get('max_ms')} ms); "
              f"{r['deliveries']}/{r['events_due']} events delivered"
              f"{', refused ' + str(refused) if refused else ''}; server core {r['server_cpu_busy'] * 100:.0f}% busy")
    return 0 if all(r["pass"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

"""HTTP publish throughput and end-to-end latency through the real server.py process.

    python bench/publish.py                      # bare-Tornado reference vs memory engine, 3 runs
    python bench/publish.py --redis              # tornado vs memory vs Redis (a private redis-server)
    python bench/publish.py --redis --batch 100  # also POST /api/v1/publish/batch, 100 events per request
    RENUM_RT_REDIS_URL=redis://127.0.0.1:6379/0 python bench/publish.py   # memory vs that Redis

server.py runs on core 0 (``taskset -c 0``) with a throw-away secret and API key; the
Node load generator (bench/loadgen.mjs) on core 1 connects --users WebSocket users (one
connection each, subprotocol renum.v1), then --conns HTTP/1.1 keep-alive connections
publish ``execution.status`` events as fast as answers come back (closed loop), each
request to the next user in turn (``{"users":["<id>"], ...}``), for --duration s, after
a --warmup s phase that is not measured. Reported per engine (medians of --runs
interleaved runs): requests/s (200 answers / time from first send to last answer), HTTP
answer latency, end-to-end latency publish send -> WebSocket receipt (p50/p99/max, same
CLOCK_MONOTONIC), deliveries vs accepted events, server CPU per request and busy share.

With ``--batch N``, each memory and Redis run then posts batches of N events
(``POST /api/v1/publish/batch``) from --conns threads of this process for --duration s:
events/s and server CPU per event (deliveries of batches are not matched).

Bench-only settings, through the documented environment: the per-key publish rate
limit (default 1000 requests/s, burst 2000) is raised with RENUM_RT_HTTP_RATE and
RENUM_RT_HTTP_BURST, or the limiter would be what is measured (--keep-rate-limit keeps it).
The Redis engine: with RENUM_RT_REDIS_URL set, that Redis (keys under a random prefix,
expiring after an hour); with --redis, a private redis-server on a free port on core 1,
``appendonly yes`` with ``--redis-fsync`` (default always: the durability the docs promise).
Results: JSON on stdout and bench/results/publish-<time>/summary.json, then one human
line per engine. Traffic to 127.0.0.1 only; every process is stopped at the end.
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
from common import LOAD_CORE, median  # noqa: E402
from pubcommon import Setup, redis_status  # noqa: E402


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--users", type=int, default=100, help="WebSocket users connected (default 100)")
    p.add_argument("--conns", type=int, default=16, help="concurrent HTTP keep-alive publishers (default 16)")
    p.add_argument("--duration", type=float, default=8.0, help="measured seconds per run and engine (default 8)")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds first (default 1)")
    p.add_argument("--runs", type=int, default=3, help="interleaved runs per engine (default 3)")
    p.add_argument("--engines", default="tornado,memory",
                   help="comma-separated targets, each ENGINE[@LOGLEVEL]: tornado (bare-Tornado reference "
                        "endpoint), memory, redis; default tornado,memory (+redis with --redis or "
                        "RENUM_RT_REDIS_URL). Example: memory,memory@warning compares log levels")
    p.add_argument("--redis", action="store_true", help="also the Redis engine, on a private redis-server")
    p.add_argument("--redis-fsync", choices=["always", "everysec", "no", "none"], default="always",
                   help="appendfsync of the private redis-server (none = no AOF); default always")
    p.add_argument("--check-contract", action="store_true",
                   help="run python -m pytest tests/contract -q first; skip Redis if it fails")
    p.add_argument("--keep-rate-limit", action="store_true",
                   help="keep the default per-key publish rate limit (1000/s, burst 2000)")
    p.add_argument("--batch", type=int, default=0,
                   help="also a batch phase per memory/Redis run: N events per POST /api/v1/publish/batch")
    p.add_argument("--log-level", default="info", help="server log level (default info, as in production)")
    return p.parse_args()


def main() -> int:
    args = parse_args()
    common.pin_self(LOAD_CORE)
    outdir = common.results_dir("publish")
    started = time.monotonic()
    engines = [e.strip() for e in args.engines.split(",") if e.strip()]
    redis_note = "not requested (--redis or RENUM_RT_REDIS_URL)"
    if (args.redis or os.environ.get("RENUM_RT_REDIS_URL")) and not any(e.startswith("redis") for e in engines):
        engines.append("redis")
    if any(e.startswith("redis") for e in engines):
        ok, redis_note = redis_status(args.check_contract)
        if not ok:
            engines = [e for e in engines if not e.startswith("redis")]
        print(f"# redis engine: {redis_note}", file=sys.stderr, flush=True)
    base_env = {"RENUM_RT_LOG_LEVEL": args.log_level}
    if not args.keep_rate_limit:
        base_env.update(RENUM_RT_HTTP_RATE="1000000", RENUM_RT_HTTP_BURST="1000000")
    runs: list[dict[str, Any]] = []
    for run in range(1, args.runs + 1):
        for engine in engines if run % 2 else list(reversed(engines)):
            tag = f"{engine}-{run}".replace("@", "-")
            kind, _, level = engine.partition("@")
            env = {**base_env, **({"RENUM_RT_LOG_LEVEL": level} if level else {})}
            try:
                setup = Setup(kind, args.users, outdir, tag, env=env, redis_fsync=args.redis_fsync)
            except Exception as exc:  # noqa: BLE001 - reported, the other engine still runs
                print(f"# run {run} {engine}: could not start: {exc}", file=sys.stderr, flush=True)
                runs.append({"engine": engine, "run": run, "error": str(exc)})
                continue
            try:
                if args.warmup > 0:
                    setup.phase(tag="w", duration_s=args.warmup, conns=args.conns, schedule="closed",
                                drain_s=0.5, measure=False)
                    time.sleep(0.5)
                rep = setup.phase(tag="x", duration_s=args.duration, conns=args.conns, schedule="closed")
                if args.batch > 0 and kind != "tornado":
                    rep["batch"] = setup.batch_phase(duration_s=args.duration, conns=args.conns, size=args.batch)
            finally:
                setup.close()
            rep.update(engine=engine, run=run)
            runs.append(rep)
            e2e = rep["e2e"] or {}
            print(f"# run {run} {engine:>6}: {rep['requests_per_s']} req/s, e2e p50 {e2e.get('p50_ms')} "
                  f"p99 {e2e.get('p99_ms')} ms, {rep['deliveries']}/{rep['deliveries_expected']} delivered, "
                  f"statuses {rep['statuses']}, server busy {rep['server_cpu_busy']}",
                  file=sys.stderr, flush=True)
    medians: dict[str, Any] = {}
    for engine in engines:
        rs = [r for r in runs if r.get("engine") == engine and "error" not in r]
        if not rs:
            medians[engine] = {"error": next((r["error"] for r in runs if r.get("engine") == engine), "no run")}
            continue
        medians[engine] = {
            "requests_per_s": median([r["requests_per_s"] for r in rs]),
            "http_p50_ms": median([r["http_latency"]["p50_ms"] for r in rs]),
            "http_p99_ms": median([r["http_latency"]["p99_ms"] for r in rs]),
            "e2e_p50_ms": median([r["e2e"]["p50_ms"] for r in rs]),
            "e2e_p99_ms": median([r["e2e"]["p99_ms"] for r in rs]),
            "e2e_max_ms": median([r["e2e"]["max_ms"] for r in rs]),
            "server_cpu_us_per_request": median([r["server_cpu_us_per_request"] for r in rs]),
            "server_cpu_busy": median([r["server_cpu_busy"] for r in rs]),
            "all_delivered": all(r["deliveries"] == r["deliveries_expected"] and r["duplicates"] == 0 for r in rs),
            "non_200": sum(n for r in rs for s, n in r["statuses"].items() if s != "200"),
            "runs": len(rs),
        }
        batches = [r["batch"] for r in rs if "batch" in r]
        if batches:
            medians[engine]["batch_events_per_s"] = median([b["events_per_s"] for b in batches])
            medians[engine]["batch_server_cpu_us_per_event"] = median([b["server_cpu_us_per_event"] for b in batches])
    ref = "tornado" if "tornado" in medians else None
    for engine, m in medians.items():
        for base in (ref, "memory"):
            if base and base != engine and "error" not in m and medians.get(base, {}).get("requests_per_s"):
                m[f"x_{base}"] = round(m["requests_per_s"] / medians[base]["requests_per_s"], 2)
    summary = {
        "benchmark": "publish",
        "machine": common.machine(),
        "params": {"users": args.users, "conns": args.conns, "duration_s": args.duration, "warmup_s": args.warmup,
                   "runs": args.runs, "engines": engines, "redis": redis_note, "redis_fsync": args.redis_fsync,
                   "rate_limit_raised": not args.keep_rate_limit, "log_level": args.log_level,
                   "batch": args.batch},
        "medians": medians,
        "runs": runs,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    for engine in engines:
        m = medians[engine]
        if "error" in m:
            print(f"publish {engine}: FAILED: {m['error']}")
            continue
        ratios = ", ".join(f"x{m[k]} of {k[2:]}" for k in ("x_tornado", "x_memory") if k in m)
        print(f"publish {engine}: {m['requests_per_s']:.0f} req/s with {args.conns} publishers"
              f"{' (' + ratios + ')' if ratios else ''}, "
              f"e2e p50 {m['e2e_p50_ms']} ms p99 {m['e2e_p99_ms']} ms max {m['e2e_max_ms']} ms, "
              f"HTTP p99 {m['http_p99_ms']} ms, {m['server_cpu_us_per_request']} µs server CPU/request, "
              f"{'all delivered' if m['all_delivered'] else 'DELIVERIES MISSING'}"
              f"{', ' + str(m['non_200']) + ' non-200 answers' if m['non_200'] else ''}"
              + (f"; batches of {args.batch}: {m['batch_events_per_s']} events/s, "
                 f"{m['batch_server_cpu_us_per_event']} µs server CPU/event" if "batch_events_per_s" in m else ""))
    ok = all("error" not in m and m["all_delivered"] for m in medians.values())
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Reconnect storm: 5,000 clients of one Redis-engine node come back at once after a restart.

    python bench/reconnect_storm.py                          # 5,000 clients, SIGTERM then kill -9
    python bench/reconnect_storm.py --clients 1000 --restarts term

A private redis-server (``appendfsync always``) and renum-rt (bench/launch_renum.py, Redis
engine, core 0, ``--lag-log-ms 20``). bench/storm_client.mjs (one Node process, core 1)
holds --clients connections, one user each, and behaves like the Python SDK after a drop:
it reconnects on the contract's schedule (full jitter: within 0.5 s of the drop, then
windows of 1, 2, 4... s while refused; --fast-retry: every 100-200 ms), re-acks its last user-channel
id, resubscribes ``system`` with ``since`` = the last id it saw there, drops ids already
seen, and acks its user channel once a second. This script (core 1) publishes all along
through the HTTP API, in an open loop: every user gets one ``bench.storm`` event with a
sequence number ``k`` every --user-period s (requests naming --group users each), and
``system`` one with a number ``j`` --system-rate times a second.

Each restart of --restarts: ``term`` = SIGTERM (the node closes every connection with 1012
and exits), ``kill`` = SIGKILL (connections drop, 1006); then the node is started again on
the same port. For each, from the moment the new node answers /healthz: when every client
is back (welcome) and caught up (the user channel's replay and the ``system`` replay after
``since`` received: "live"); p50/p99/max per client; the CPU of each side meanwhile.
Target (issue 11): all back and caught up within 10 s.

Events: a publish answered 200 must reach its users exactly once (no gap: every accepted
``k``/``j`` of the client arrives; no duplicate: the same number twice under new ids, or an
id twice on one connection); one whose answer was lost in the restart may arrive or not;
one refused (node down) never. Re-deliveries (ids not acked before the drop, sent again
on the next connection and dropped by the client) are counted, as the protocol allows.
The event loop must never stall more than 100 ms: every stall of 20 ms or more of the
new node (launcher's 10 ms probe, with the CPU the node used meanwhile) and the largest
``renum_rt_event_loop_lag_seconds`` of /metrics (0.25 s scrapes).
Results: JSON on stdout and in bench/results/reconnect_storm-<time>/summary.json, then
one human line per restart. Traffic to 127.0.0.1 only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import http.client
import itertools
import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOAD_CORE, SERVER_CORE, LagScraper, LoadGen, Proc, RedisServer, rnd  # noqa: E402

TARGET_S = 10.0


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--clients", type=int, default=5000, help="connections, one user each (default 5000)")
    p.add_argument("--restarts", default="term,kill", help="comma-separated: term (SIGTERM), kill (SIGKILL)")
    p.add_argument("--group", type=int, default=100, help="users named by one user-event request (default 100)")
    p.add_argument("--user-period", type=float, default=2.0, help="seconds between two events of a user (default 2)")
    p.add_argument("--system-rate", type=float, default=1.0, help="system events per second (default 1)")
    p.add_argument("--steady", type=float, default=5.0, help="seconds of traffic before each restart (default 5)")
    p.add_argument("--timeout", type=float, default=60.0, help="max seconds for the clients to come back (default 60)")
    p.add_argument("--fast-retry", action="store_true",
                   help="clients retry every 100-200 ms instead of backing off (a herd that never backs off)")
    p.add_argument("--log-level", default="info", help="renum-rt log level (default info, as in production)")
    p.add_argument("--py-spy", metavar="PATH", help="py-spy executable (from a bench venv, never a package "
                   "dependency): profile each restarted node until every client is back (profile-<mode>.txt)")
    return p.parse_args()


class Publisher:
    """Open-loop HTTP publishing in threads: request n of a stream is due at start + n / rate
    and is sent then on its own keep-alive connection. Each outcome is kept by number:
    accepted (200), refused (connection refused or an HTTP error: not stored) or unknown
    (the connection broke with the request sent: stored or not)."""

    def __init__(self, port: int, api_key: str) -> None:
        self.port = port
        self.headers = {"Authorization": f"Bearer {api_key}", "Content-Type": "application/json"}
        self.outcomes: dict[str, dict[int, str]] = {}
        self.statuses: dict[str, int] = {}
        self._stop = threading.Event()
        self._threads: list[threading.Thread] = []

    def stream(self, name: str, rate: float, body: Any) -> None:
        """Publish ``body(n)`` for n = 0, 1, ... at ``rate`` per second until ``stop``."""
        outcomes = self.outcomes.setdefault(name, {})

        def run() -> None:
            conn: http.client.HTTPConnection | None = None
            start = time.monotonic()
            for n in itertools.count():
                if self._stop.wait(max(0.0, start + n / rate - time.monotonic())):
                    break
                if conn is None:
                    conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=10)
                try:
                    conn.request("POST", "/api/v1/publish", json.dumps(body(n)), self.headers)
                    response = conn.getresponse()
                    response.read()
                    outcomes[n] = "accepted" if response.status == 200 else "refused"
                    self.statuses[str(response.status)] = self.statuses.get(str(response.status), 0) + 1
                except ConnectionRefusedError:
                    outcomes[n] = "refused"
                    conn.close()
                    conn = None
                except (OSError, http.client.HTTPException):
                    outcomes[n] = "unknown"
                    conn.close()
                    conn = None
            if conn is not None:
                conn.close()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        self._threads.append(thread)

    def stop(self) -> None:
        self._stop.set()
        for thread in self._threads:
            thread.join(15)

    def numbers(self, name: str, outcome: str) -> set[int]:
        return {n for n, o in self.outcomes[name].items() if o == outcome}


def start_node(port: int, env: dict[str, str], log: Path, log_level: str) -> tuple[Proc, float]:
    """Start the node; return it and the time it answered /healthz."""
    proc = Proc([*common.taskset(SERVER_CORE), common.python(), str(common.BENCH / "launch_renum.py"), "--port",
                 str(port), "--log-level", log_level, "--lag-log-ms", "20"], log, env=env)
    try:  # a node swamped by the clients' retries may not answer at all
        common.wait_http(f"http://127.0.0.1:{port}/healthz", timeout=60, proc=proc.proc)
    except BaseException:
        proc.stop()
        raise
    return proc, time.monotonic()


def profile(py_spy: str, pid: int, out: Path) -> subprocess.Popen[bytes]:
    """py-spy sampling ``pid`` (on the load core) until SIGINT: collapsed stacks in ``out``."""
    return subprocess.Popen([*common.taskset(LOAD_CORE), py_spy, "record", "-p", str(pid), "--format", "raw",
                             "-o", str(out), "--rate", "200"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def percentile(values: list[float], p: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))]


def check_events(report: list[dict[str, Any]], pub: Publisher, groups: int) -> dict[str, Any]:
    """Every accepted number at each client, nothing twice, nothing that was refused."""
    accepted_k, unknown_k = pub.numbers("user", "accepted"), pub.numbers("user", "unknown")
    accepted_j, unknown_j = pub.numbers("system", "accepted"), pub.numbers("system", "unknown")
    out = {"missing_user": 0, "missing_system": 0, "dup_user": 0, "dup_system": 0, "refused_delivered": 0,
           "dup_same_connection": 0, "redelivered_dropped": 0, "clients_with_gap": 0, "error_frames": {},
           "out_of_order_user": 0, "out_of_order_system": 0, "system_resubscribes_repeated": 0}
    for i, c in enumerate(report):
        mine = {k for k in accepted_k if k % groups == i % groups}
        maybe = {k for k in unknown_k if k % groups == i % groups}
        got_k, got_j = set(c["k"]), set(c["j"])
        missing = len(mine - got_k) + len(accepted_j - got_j)
        out["missing_user"] += len(mine - got_k)
        out["missing_system"] += len(accepted_j - got_j)
        out["dup_user"] += len(c["k"]) - len(got_k)
        out["dup_system"] += len(c["j"]) - len(got_j)
        out["refused_delivered"] += len(got_k - mine - maybe) + len(got_j - accepted_j - unknown_j)
        out["dup_same_connection"] += c["dup_same_conn"]
        out["redelivered_dropped"] += c["redelivered"]
        out["out_of_order_user"] += c["out_of_order"]["user"]
        out["out_of_order_system"] += c["out_of_order"]["system"]
        out["system_resubscribes_repeated"] += c["resubscribes"]
        out["clients_with_gap"] += missing > 0
        for code, n in c["errors"].items():
            out["error_frames"][code] = out["error_frames"].get(code, 0) + n
    out["accepted"] = {"user_requests": len(accepted_k), "system": len(accepted_j)}
    out["unknown"] = {"user_requests": len(unknown_k), "system": len(unknown_j)}
    out["refused"] = {"user_requests": len(pub.numbers("user", "refused")),
                      "system": len(pub.numbers("system", "refused"))}
    out["lost"] = out["missing_user"] + out["missing_system"]
    out["ok"] = out["lost"] == 0 and out["dup_user"] + out["dup_system"] + out["dup_same_connection"] == 0 \
        and out["refused_delivered"] == 0
    return out


def storm_figures(report: list[dict[str, Any]], storm: dict[str, Any]) -> dict[str, Any]:
    """Per client, the session that ended at this restart: when it was live again, after the
    node was up and after its successful attempt (the server's share: the rest is the
    client waiting on its backoff schedule)."""
    up_us, down_us = storm["up"] * 1e6, storm["down"] * 1e6
    back, served, attempts, codes = [], [], [], {}
    for c in report:
        for lost, _first, _welcome, live, tries, code, _replayed, last in c["sessions"]:
            if lost >= down_us - 1e6 and lost <= up_us:
                if live:
                    back.append((live - up_us) / 1e6)
                    served.append((live - last) / 1e6)
                attempts.append(tries)
                codes[str(code)] = codes.get(str(code), 0) + 1
                break
    return {"clients_back": len(back), "back_after_up_s": {"p50": rnd(percentile(back, 50), 2),
                                                           "p99": rnd(percentile(back, 99), 2),
                                                           "max": rnd(max(back, default=None), 2)},
            "live_after_last_attempt_s": {"p50": rnd(percentile(served, 50), 2), "p99": rnd(percentile(served, 99), 2),
                                          "max": rnd(max(served, default=None), 2)},
            "attempts": {"p50": percentile(attempts, 50), "max": max(attempts, default=None)}, "close_codes": codes}


def main() -> int:
    args = parse_args()
    common.pin_self(LOAD_CORE)
    fd_limit = common.raise_fd_limit()
    sys.path.insert(0, str(common.ROOT))
    from renum_rt.auth import issue_token

    outdir = common.results_dir("reconnect_storm")
    started = time.monotonic()
    secret, api_key = common.bench_secrets()
    port = common.free_port()
    redis = RedisServer("always")
    env = {"RENUM_RT_JWT_SECRET": secret, "RENUM_RT_API_KEY": api_key, "RENUM_RT_REDIS_URL": redis.url,
           "RENUM_RT_HTTP_RATE": "100000", "RENUM_RT_HTTP_BURST": "100000"}
    users = [f"s{i}" for i in range(args.clients)]
    groups = max(1, args.clients // args.group)
    pub = Publisher(port, api_key)
    gen: LoadGen | None = None
    server: Proc | None = None
    scraper: LagScraper | None = None
    storms: list[dict[str, Any]] = []
    try:
        server, _ = start_node(port, env, outdir / "server-0.log", args.log_level)
        gen = LoadGen(port, outdir / "clients.log", script=common.BENCH / "storm_client.mjs")
        paths = outdir / "paths.json"
        paths.write_text(json.dumps([f"/ws?token={issue_token(secret, u, ttl_s=3600)}" for u in users]))
        ready = gen.call({"cmd": "start", "paths_file": str(paths), "concurrency": 200, "fast": args.fast_retry},
                         "ready", timeout=600)
        print(f"# {ready['ok']} clients live in {ready['ms']} ms", file=sys.stderr, flush=True)
        pub.stream("user", groups / args.user_period,
                   lambda k: {"event": "bench.storm", "users": users[k % groups::groups], "data": {"k": k}})
        pub.stream("system", args.system_rate, lambda j: {"event": "bench.storm", "channel": "system",
                                                          "data": {"j": j}})
        scraper = LagScraper(port, api_key, limit_s=3600)
        for n, mode in enumerate(m.strip() for m in args.restarts.split(",") if m.strip()):
            time.sleep(args.steady)  # traffic before the restart, not a readiness wait
            down = time.monotonic()
            if mode == "kill":
                server.proc.send_signal(signal.SIGKILL)
            server.stop()  # SIGTERM (the node closes every connection with 1012), or reaps the killed one
            server, up = start_node(port, env, outdir / f"server-{n + 1}.log", args.log_level)
            spy = profile(args.py_spy, server.pid, outdir / f"profile-{mode}.txt") if args.py_spy else None
            cpu0 = {"server": common.cpu_ns(server.pid), "clients": common.cpu_ns(gen.pid),
                    "redis": common.cpu_ns(redis.proc.pid), "bench": common.cpu_ns(os.getpid())}
            status: dict[str, Any] = {}
            while time.monotonic() < up + args.timeout:
                status = gen.call({"cmd": "status"}, "status")
                if status["live"] == args.clients:
                    break
                time.sleep(0.05)
            all_live = time.monotonic()
            if spy is not None:
                spy.send_signal(signal.SIGINT)  # py-spy writes its profile and exits
                spy.wait(30)
            busy = {k: rnd((common.cpu_ns(pid) - cpu0[k]) / 1e9 / max(1e-9, all_live - up), 3)
                    for k, pid in (("server", server.pid), ("clients", gen.pid), ("redis", redis.proc.pid),
                                   ("bench", os.getpid()))}
            storms.append({"mode": mode, "down": down, "up": up, "all_live": all_live,
                           "node_down_s": rnd(up - down, 2), "all_back_after_up_s": rnd(all_live - up, 2),
                           "all_back": status.get("live") == args.clients, "cpu_busy": busy,
                           "load_core_busy": rnd(sum(v for k, v in busy.items() if k != "server"), 3),
                           **common.loop_stalls(outdir / f"server-{n + 1}.log", up, all_live + 2)})
            print(f"# {mode}: node down {up - down:.2f} s, all live {all_live - up:.2f} s after it was up",
                  file=sys.stderr, flush=True)
        time.sleep(args.steady)  # traffic after the last storm
        pub.stop()
        final: dict[str, Any] = {}
        deadline = time.monotonic() + 30  # the last events' deliveries
        expected_k = sum(len(users[k % groups::groups]) for k in pub.numbers("user", "accepted"))
        expected_j = len(pub.numbers("system", "accepted")) * args.clients
        while time.monotonic() < deadline:
            final = gen.call({"cmd": "status"}, "status")
            if final["k_total"] >= expected_k and final["j_total"] >= expected_j:
                break
            time.sleep(0.1)
        gen.call({"cmd": "report", "file": str(outdir / "clients.json")}, "report", timeout=120)
        report = json.loads((outdir / "clients.json").read_text())
    finally:
        pub.stop()
        lag = scraper.stop() if scraper is not None else {}
        if gen is not None:
            gen.close()
        if server is not None:
            server.stop()
        redis.stop()
    for storm in storms:
        storm.update(storm_figures(report, storm))
        storm["target_met"] = storm["all_back"] and storm["all_back_after_up_s"] <= TARGET_S
    events = check_events(report, pub, groups)
    summary = {
        "benchmark": "reconnect_storm",
        "machine": common.machine(),
        "params": {**vars(args), "groups": groups, "user_requests_per_s": rnd(groups / args.user_period, 1),
                   "server_core": SERVER_CORE, "load_core": LOAD_CORE, "fd_limit": fd_limit, "redis_fsync": "always"},
        "storms": storms,
        "events": events,
        "publish_statuses": pub.statuses,
        "metrics_loop_lag": lag,
        "stall_over_100ms": any(s["loop_stalls_over_100ms"] for s in storms),
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    for s in storms:
        print(f"reconnect_storm {s['mode']}: {s['clients_back']}/{args.clients} back, all live "
              f"{s['all_back_after_up_s']} s after the node was up (p50 {s['back_after_up_s']['p50']}, "
              f"p99 {s['back_after_up_s']['p99']} s; "
              f"target <= {TARGET_S:.0f} s: {'met' if s['target_met'] else 'MISSED'}); worst loop stall "
              f"{s['loop_stall_max_ms']} ms (cpu {s['loop_stall_max_cpu_ms']} ms), {len(s['loop_stalls_over_100ms'])}"
              f" over 100 ms; busy server {s['cpu_busy']['server']}, load core {s['load_core_busy']}")
    print(f"reconnect_storm events: {events['lost']} lost, {events['dup_user'] + events['dup_system']} duplicated, "
          f"{events['dup_same_connection']} twice on one connection, {events['redelivered_dropped']} re-delivered "
          f"(not acked yet, dropped by id), {events['out_of_order_system']} system events older than one already "
          f"received on their connection (a client that drops ids <= the last, like the SDK, loses them); "
          f"metrics loop lag max {lag.get('loop_lag_max_ms')} ms")
    return 0 if events["ok"] and all(s["target_met"] for s in storms) else 1


if __name__ == "__main__":
    sys.exit(main())

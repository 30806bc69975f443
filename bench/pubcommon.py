"""What bench/publish.py and bench/spec_latency.py share: a real ``server.py`` process
(memory or Redis engine) with WebSocket users connected from the Node load generator,
and one phase of HTTP publishing measured end to end (publish send -> WebSocket receipt).
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import common
from common import SERVER_CORE, LoadGen, Proc, RedisServer, free_port

#: execution.status, the domain event the backend publishes most
MARKER = '"execution_id":"'


def redis_status(check_contract: bool) -> tuple[bool, str]:
    """Whether the Redis engine can be benchmarked: the module exists and imports, and
    (with ``check_contract``) ``python -m pytest tests/contract -q`` passes."""
    path = common.ROOT / "renum_rt" / "engines" / "redis.py"
    if not path.exists():
        return False, "renum_rt/engines/redis.py does not exist yet"
    probe = subprocess.run([sys.executable, "-c", "import renum_rt.engines.redis"], cwd=common.ROOT,
                           capture_output=True, text=True, timeout=60)
    if probe.returncode:
        return False, "renum_rt.engines.redis does not import: " + probe.stderr.strip().splitlines()[-1]
    if check_contract:
        tests = subprocess.run([sys.executable, "-m", "pytest", "tests/contract", "-q", "-p", "no:cacheprovider"],
                               cwd=common.ROOT, capture_output=True, text=True, timeout=600)
        last = (tests.stdout.strip().splitlines() or ["?"])[-1]
        if tests.returncode:
            return False, f"contract tests fail: {last}"
        return True, f"contract tests pass: {last}"
    return True, "module imports (contract tests not run; --check-contract runs them)"


class Setup:
    """One server.py process on core 0 (and a private redis-server on core 1 when the
    engine is Redis and no RENUM_RT_REDIS_URL is given) plus a load generator with
    ``users`` WebSocket users connected, one connection each. ``engine``: memory, redis,
    or tornado (bench/baseline_tornado.py's bare publish endpoint instead of server.py)."""

    def __init__(self, engine: str, users: int, outdir: Path, tag: str, env: dict[str, str] | None = None,
                 redis_fsync: str = "always") -> None:
        self.secret, self.api_key = common.bench_secrets()
        self.port = free_port()
        self.redis: RedisServer | None = None
        self.gen: LoadGen | None = None
        self.server: Proc | None = None
        base_env = {
            "RENUM_RT_JWT_SECRET": self.secret,
            "RENUM_RT_API_KEY": self.api_key,
            "RENUM_RT_MAX_CONNECTIONS_PER_ADDRESS": str(max(200, users + 10)),
            "RENUM_RT_REDIS_URL": "",
            "RENUM_RT_HISTORY_MAX_AGE_S": "3600",
        }
        self.redis_url = ""
        if engine == "redis":
            given = os.environ.get("RENUM_RT_REDIS_URL", "")
            if given:
                self.redis_url = given
                base_env["RENUM_RT_REDIS_PREFIX"] = f"renum-bench-{secrets.token_hex(4)}:"
            else:
                self.redis = RedisServer(redis_fsync)
                self.redis_url = self.redis.url
            base_env["RENUM_RT_REDIS_URL"] = self.redis_url
        try:
            if engine == "tornado":  # the bare-Tornado reference (bench/baseline_tornado.py)
                argv = [common.python(), str(common.BENCH / "baseline_tornado.py"), "--api-key", self.api_key]
            else:
                argv = [common.python(), str(common.ROOT / "server.py")]
            self.server = Proc([*common.taskset(SERVER_CORE), *argv, "--port", str(self.port)],
                               outdir / f"server-{tag}.log", env={**base_env, **(env or {})})
            common.wait_http(f"http://127.0.0.1:{self.port}/healthz", proc=self.server.proc)
            self.gen = LoadGen(self.port, outdir / f"loadgen-{tag}.log")
            sys.path.insert(0, str(common.ROOT))
            from renum_rt.auth import issue_token

            run = secrets.token_hex(3)
            self.users = [f"bench-{run}-{i}" for i in range(users)]
            if engine == "tornado":
                paths = [f"/ws?user={u}" for u in self.users]
            else:
                paths = [f"/ws?token={issue_token(self.secret, u, ttl_s=3600)}" for u in self.users]
            pf = outdir / f"paths-{tag}.json"
            pf.write_text(json.dumps(paths))
            got = self.gen.call({"cmd": "connect", "paths_file": str(pf), "proto": "renum.v1"}, "connected")
            if got["ok"] != users:
                raise RuntimeError(f"only {got['ok']} of {users} WebSocket users connected: {got['errors']}")
            time.sleep(0.5)
        except BaseException:
            self.close()
            raise

    def phase(self, *, tag: str, duration_s: float, conns: int, schedule: str, period_ms: float = 100,
              batch: bool = False, drain_s: float = 5.0, measure: bool = True) -> dict[str, Any]:
        """Publish for ``duration_s``; returns the load generator's report plus the
        server's CPU over the phase."""
        assert self.gen is not None and self.server is not None
        if measure:
            self.gen.call({"cmd": "arm", "marker": MARKER + tag, "mode": "seq", "expect": 10**12, "capacity": 2_000_000,
                           "timeout_ms": int((duration_s + drain_s + 30) * 1000)}, "armed")
        cpu0 = common.cpu_ns(self.server.pid)
        redis_cpu0 = common.cpu_ns(self.redis.proc.pid) if self.redis else 0
        t0 = time.monotonic_ns()
        rep = self.gen.call({"cmd": "publish", "api_key": self.api_key, "users": self.users, "conns": conns,
                             "duration_ms": int(duration_s * 1000), "schedule": schedule, "period_ms": period_ms,
                             "batch": batch, "drain_ms": int(drain_s * 1000), "tag": tag},
                            "published", timeout=duration_s + drain_s + 60)
        wall = time.monotonic_ns() - t0
        cpu = common.cpu_ns(self.server.pid) - cpu0
        ok = rep["statuses"].get("200", 0)
        rep["server_cpu_busy"] = round(cpu / wall, 3)
        rep["server_cpu_us_per_request"] = round(cpu / 1000 / ok, 1) if ok else None
        if self.redis:
            rep["redis_cpu_busy"] = round((common.cpu_ns(self.redis.proc.pid) - redis_cpu0) / wall, 3)
        return rep

    def batch_phase(self, *, duration_s: float, conns: int, size: int) -> dict[str, Any]:
        """``conns`` keep-alive connections (threads of this process, on the load core)
        post ``POST /api/v1/publish/batch`` bodies of ``size`` ``execution.status``
        events, one per user in turn, in a closed loop for ``duration_s``: events/s and
        the server's CPU per event (the Node load generator only sends single publishes,
        so deliveries are not matched here)."""
        assert self.server is not None
        body = json.dumps({"events": [
            {"users": [self.users[i % len(self.users)]], "event": "execution.status",
             "data": {"execution_id": f"batch{i}", "team_id": "bench", "status": "running", "progress": i % 101}}
            for i in range(size)]}).encode()
        headers = {"Authorization": f"Bearer {self.api_key}", "Content-Type": "application/json"}
        statuses: dict[str, int] = {}
        lock = threading.Lock()
        stop = time.monotonic() + duration_s

        def publisher() -> None:
            conn = http.client.HTTPConnection("127.0.0.1", self.port, timeout=30)
            try:
                while time.monotonic() < stop:
                    conn.request("POST", "/api/v1/publish/batch", body, headers)
                    response = conn.getresponse()
                    response.read()
                    with lock:
                        statuses[str(response.status)] = statuses.get(str(response.status), 0) + 1
            finally:
                conn.close()

        cpu0 = common.cpu_ns(self.server.pid)
        t0 = time.monotonic_ns()
        threads = [threading.Thread(target=publisher) for _ in range(conns)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
        wall = time.monotonic_ns() - t0
        events = statuses.get("200", 0) * size
        cpu = common.cpu_ns(self.server.pid) - cpu0
        return {"batch_size": size, "statuses": statuses, "events_per_s": round(events / (wall / 1e9)),
                "server_cpu_us_per_event": round(cpu / 1000 / events, 1) if events else None}

    def close(self) -> None:
        if self.gen is not None:
            self.gen.close()
            self.gen = None
        if self.server is not None:
            self.server.stop()
            self.server = None
        if self.redis is not None:
            self.redis.stop()
            self.redis = None

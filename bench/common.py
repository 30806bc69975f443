"""Shared plumbing of the benchmark scripts: processes, the Node load generator,
/proc readings, statistics and result files. Everything talks to 127.0.0.1 only.

Core pinning: the server under test runs on core 0 (``taskset -c 0``), the load
generator, the bench script itself and (when used) redis-server on core 1.
"""

from __future__ import annotations

import json
import os
import platform
import secrets
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RESULTS = BENCH / "results"
LOADGEN = BENCH / "loadgen.mjs"
SERVER_CORE = "0"
LOAD_CORE = "1"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def pin_self(core: str = LOAD_CORE) -> None:
    """Keep this script off the server's core."""
    try:
        os.sched_setaffinity(0, {int(core)})
    except (AttributeError, OSError):
        pass


def taskset(core: str) -> list[str]:
    return ["taskset", "-c", core] if shutil.which("taskset") else []


def wait_http(url: str, timeout: float = 20.0, proc: subprocess.Popen[Any] | None = None) -> None:
    """Poll ``url`` until it answers 200."""
    deadline = time.monotonic() + timeout
    last: Exception | None = None
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"process exited with {proc.returncode} before {url} answered")
        try:
            with urllib.request.urlopen(url, timeout=1) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as exc:
            last = exc
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready after {timeout} s ({last})")


def post_status(conn: Any, path: str, body: str, headers: dict[str, str]) -> str:
    """POST ``body`` on a kept-alive ``http.client`` connection; the answer's status."""
    conn.request("POST", path, body, headers)
    response = conn.getresponse()
    response.read()
    return str(response.status)


def run_threads(target: Any, count: int) -> None:
    """``target(k)`` on ``count`` threads at once, until all return."""
    threads = [threading.Thread(target=target, args=(k,)) for k in range(count)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()


def get_text(url: str, headers: dict[str, str] | None = None, timeout: float = 5.0) -> str:
    req = urllib.request.Request(url, headers=headers or {})
    with urllib.request.urlopen(req, timeout=timeout) as resp:
        text: str = resp.read().decode()
        return text


def post(url: str, body: dict[str, Any] | None = None, headers: dict[str, str] | None = None) -> dict[str, Any]:
    data = json.dumps(body or {}).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    with urllib.request.urlopen(req, timeout=10) as resp:
        answer: dict[str, Any] = json.loads(resp.read() or b"{}")
        return answer


class Proc:
    """A child process with its output in a log file; stopped with SIGTERM then SIGKILL.
    ``taskset`` execs its command, so ``pid`` is the server's own pid (for /proc readings)."""

    def __init__(self, argv: list[str], log: Path, env: dict[str, str] | None = None, cwd: Path = ROOT) -> None:
        self.log_path = log
        self._log = open(log, "ab")
        self.proc = subprocess.Popen(argv, cwd=cwd, env={**os.environ, **(env or {})},
                                     stdout=self._log, stderr=subprocess.STDOUT, start_new_session=True)
        self.pid = self.proc.pid

    def stop(self, timeout: float = 10.0) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        self._log.close()


class LoadGen:
    """The Node load generator (bench/loadgen.mjs, or another script that speaks JSON lines
    and says hello with its pid, e.g. bench/storm_client.mjs) pinned to the load core."""

    def __init__(self, port: int, log: Path, script: Path = LOADGEN) -> None:
        node = shutil.which("node")
        if node is None:
            raise RuntimeError("node (Node.js 18+) is needed for the load generator")
        self._err = open(log, "ab")
        extra = os.environ.get("BENCH_NODE_ARGS", "").split()  # e.g. --cpu-prof, to profile the load generator
        self.proc = subprocess.Popen([*taskset(LOAD_CORE), node, *extra, str(script), "--port", str(port)],
                                     stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=self._err,
                                     cwd=ROOT, start_new_session=True)
        hello = self.read()
        assert hello["ev"] == "hello", hello
        self.pid = int(hello["pid"])

    def send(self, cmd: dict[str, Any]) -> None:
        assert self.proc.stdin is not None
        self.proc.stdin.write((json.dumps(cmd) + "\n").encode())
        self.proc.stdin.flush()

    def read(self, timeout: float = 120.0) -> dict[str, Any]:
        assert self.proc.stdout is not None
        import select

        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        if not ready:
            raise TimeoutError("load generator did not answer")
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"load generator exited ({self.proc.poll()})")
        msg: dict[str, Any] = json.loads(line)
        return msg

    def expect(self, ev: str, timeout: float = 120.0) -> dict[str, Any]:
        while True:
            msg = self.read(timeout)
            if msg.get("ev") == ev:
                return msg

    def call(self, cmd: dict[str, Any], ev: str, timeout: float = 120.0) -> dict[str, Any]:
        self.send(cmd)
        return self.expect(ev, timeout)

    def close(self) -> None:
        if self.proc.poll() is None:
            try:
                self.send({"cmd": "exit"})
                self.proc.wait(5)
            except (OSError, subprocess.TimeoutExpired):
                self.proc.kill()
                self.proc.wait(5)
        self._err.close()


class RedisServer:
    """A private redis-server on a free port, in a temporary directory, pinned to the load core."""

    def __init__(self, fsync: str = "always", port: int | None = None, extra: tuple[str, ...] = ()) -> None:
        """``extra``: more redis-server options (a cluster node's, say)."""
        exe = shutil.which("redis-server")
        if exe is None:
            raise RuntimeError("redis-server is not installed")
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="renum-bench-redis-"))
        args = [*taskset(LOAD_CORE), exe, "--port", str(self.port), "--bind", "127.0.0.1", "--dir", str(self.dir),
                "--save", "", "--daemonize", "no", "--logfile", str(self.dir / "redis.log")]
        if fsync == "none":
            args += ["--appendonly", "no"]
        else:
            args += ["--appendonly", "yes", "--appendfsync", fsync]
        args += list(extra)
        self.proc = subprocess.Popen(args, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                     start_new_session=True)
        self.url = f"redis://127.0.0.1:{self.port}/0"
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.5) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(64).startswith(b"+PONG"):
                        break
            except OSError:
                pass
            if time.monotonic() > deadline or self.proc.poll() is not None:
                raise RuntimeError(f"redis-server did not start (see {self.dir / 'redis.log'})")
            time.sleep(0.02)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(10)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(5)
        shutil.rmtree(self.dir, ignore_errors=True)


class LagScraper:
    """Scrapes renum-rt's /metrics every ``every`` s in a thread; keeps the largest event-loop lag."""

    def __init__(self, port: int, api_key: str, every: float = 0.25, limit_s: float = 300.0) -> None:
        self.url = f"http://127.0.0.1:{port}/metrics"
        self.headers = {"Authorization": f"Bearer {api_key}"}
        self.every, self.limit_s = every, limit_s
        self.samples: list[float] = []
        self.errors = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        deadline = time.monotonic() + self.limit_s  # bounded in time whatever happens
        while not self._stop.is_set() and time.monotonic() < deadline:
            try:
                # a long timeout: while the loop is stalled by a broadcast, the answer waits for it
                for line in get_text(self.url, self.headers, timeout=30).splitlines():
                    if line.startswith("renum_rt_event_loop_lag_seconds "):
                        self.samples.append(float(line.split()[1]))
            except OSError:
                self.errors += 1
            self._stop.wait(self.every)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(5)
        return {"loop_lag_max_ms": rnd(max(self.samples) * 1000, 1) if self.samples else None,
                "loop_lag_samples": len(self.samples), "loop_lag_scrape_errors": self.errors}


def loop_stalls(log: Path, t0: float, t1: float) -> dict[str, Any]:
    """The stalls bench/launch_renum.py --lag-log-ms logged between t0 and t1 (monotonic s):
    how many, the longest, and the CPU the server used during it (near 0: the server was
    not running, e.g. another process had its core; near the stall: its own work)."""
    found = []
    for line in log.read_text(errors="replace").splitlines():
        if line.startswith("loop late "):  # loop late <ms> ms cpu=<ms> at=<s>
            parts = line.split()
            if t0 <= float(parts[-1].split("=")[1]) <= t1:
                found.append((float(parts[2]), float(parts[4].split("=")[1])))
    worst = max(found, default=(0.0, 0.0))
    return {"loop_stalls": len(found), "loop_stall_max_ms": worst[0], "loop_stall_max_cpu_ms": worst[1],
            "loop_stalls_over_100ms": [s for s in found if s[0] > 100]}


# ---------------------------------------------------------------------- peers' environment

#: the peers' own environment (git-ignored): a venv and an npm folder, never the package's dependencies
PEERS_DIR = RESULTS / "peers"
PEERS_PIP = ["websockets", "python-socketio", "aiohttp", "matplotlib"]
PEERS_NPM = ["ws", "socket.io"]


def peers_python() -> Path:
    return PEERS_DIR / "venv" / "bin" / "python"


def peers_env(log: Any = sys.stderr) -> Path:
    """Create (once) bench/results/peers/: a venv with the Python peers (and matplotlib for the
    charts) and an npm folder with the Node peers. Reused when already installed."""
    PEERS_DIR.mkdir(parents=True, exist_ok=True)
    py = peers_python()
    if not py.exists():
        print(f"# creating {PEERS_DIR / 'venv'}", file=log, flush=True)
        subprocess.run([sys.executable, "-m", "venv", str(PEERS_DIR / "venv")], check=True, timeout=300)
    probe = "import websockets, socketio, aiohttp, matplotlib"
    if subprocess.run([str(py), "-c", probe], capture_output=True, timeout=120).returncode != 0:
        print(f"# pip install {' '.join(PEERS_PIP)} into {PEERS_DIR / 'venv'}", file=log, flush=True)
        subprocess.run([str(py), "-m", "pip", "install", "-q", *PEERS_PIP], check=True, timeout=900)
    if not all((PEERS_DIR / "node_modules" / name / "package.json").exists() for name in PEERS_NPM):
        npm = shutil.which("npm")
        if npm is None:
            raise RuntimeError("npm is needed for the Node peers")
        pkg = PEERS_DIR / "package.json"
        if not pkg.exists():
            pkg.write_text('{"name": "renum-bench-peers", "private": true}\n')
        print(f"# npm install {' '.join(PEERS_NPM)} in {PEERS_DIR}", file=log, flush=True)
        subprocess.run([npm, "install", "--no-audit", "--no-fund", *PEERS_NPM], cwd=PEERS_DIR, check=True,
                       timeout=900)
    return PEERS_DIR


def raise_fd_limit() -> int:
    """Soft RLIMIT_NOFILE up to the hard limit (inherited by the servers and the load generator,
    which hold one descriptor per connection). Returns the new soft limit."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY:
        hard = 1 << 20
    if soft != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return int(soft)


# ---------------------------------------------------------------------- /proc


def cpu_ns(pid: int) -> int:
    """CPU time of every thread of ``pid`` so far, in ns (/proc/<pid>/task/*/schedstat)."""
    total = 0
    try:
        tasks = os.listdir(f"/proc/{pid}/task")
    except FileNotFoundError:
        return 0
    for tid in tasks:
        try:
            with open(f"/proc/{pid}/task/{tid}/schedstat") as fh:
                total += int(fh.read().split()[0])
        except (FileNotFoundError, ProcessLookupError, ValueError):
            pass
    return total


def rss_kb(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        for line in fh:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    return 0


# ---------------------------------------------------------------------- numbers


def median(values: list[float | None]) -> float | None:
    vals = [v for v in values if v is not None]
    return statistics.median(vals) if vals else None


def rnd(x: float | None, nd: int = 2) -> float | None:
    return None if x is None else round(x, nd)


def machine() -> dict[str, Any]:
    info: dict[str, Any] = {"nproc": os.cpu_count(), "python": platform.python_version(),
                            "platform": platform.platform()}
    try:
        import tornado

        info["tornado"] = tornado.version
    except ImportError:
        pass
    try:
        info["node"] = subprocess.run(["node", "--version"], capture_output=True, text=True, timeout=5).stdout.strip()
    except OSError:
        pass
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
        info["loadavg_at_start"] = open("/proc/loadavg").read().split()[:3]
    except OSError:
        pass
    return info


def results_dir(name: str) -> Path:
    """A fresh directory for one run: bench/results/<name>-<timestamp>/ (git-ignored)."""
    stamp = time.strftime("%Y%m%d-%H%M%S")
    path = RESULTS / f"{name}-{stamp}"
    path.mkdir(parents=True, exist_ok=True)
    return path


def write_summary(path: Path, summary: dict[str, Any]) -> None:
    (path / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    print(json.dumps(summary, indent=2))


def bench_secrets() -> tuple[str, str]:
    """A throw-away JWT secret and API key for one run."""
    return secrets.token_urlsafe(32), "bench-" + secrets.token_urlsafe(16)


def python() -> str:
    return sys.executable

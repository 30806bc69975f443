"""A throw-away ``redis-server`` for tests: its own port, its own directory, real AOF.

Tests never touch the machine's shared Redis on 6379 and never fake Redis. The server
runs with ``appendonly yes`` and ``appendfsync always`` so a test can ``kill()`` it
(SIGKILL) and ``start()`` it again on the same port and directory and find its data.
Readiness is awaited by polling ``PING``, never by a fixed sleep.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"


def free_port() -> int:
    """A TCP port nobody listens on right now."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class RedisServer:
    """One ``redis-server`` process; ``start()`` again reuses the same port and data."""

    def __init__(self, port: int | None = None, extra: Sequence[str] = (), sentinel: Sequence[str] = ()) -> None:
        """``extra``: more ``redis-server`` options; ``sentinel``: configuration lines of a
        Sentinel (the process then runs as one, from a configuration file it may rewrite)."""
        self.port = port or free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="renum-rt-redis-"))
        self._extra = list(extra)
        self._sentinel = list(sentinel)
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self, timeout: float = 10.0) -> None:
        """Start the server and return once it answers ``PING``."""
        assert self._process is None, "already running"
        config: list[str] = []
        if self._sentinel:
            conf = self.dir / "sentinel.conf"
            if not conf.exists():  # a restarted Sentinel keeps what it rewrote
                conf.write_text("\n".join(self._sentinel) + "\n")
            config = [str(conf), "--sentinel"]
        self._process = subprocess.Popen(
            [
                REDIS_SERVER,
                *config,
                "--port", str(self.port),
                "--bind", "127.0.0.1",
                "--dir", str(self.dir),
                "--appendonly", "yes",
                "--appendfsync", "always",
                "--save", "",
                "--daemonize", "no",
                "--logfile", str(self.dir / "redis.log"),
                *([] if self._sentinel else ["--enable-debug-command", "local"]),  # DEBUG SLEEP: a stall
                *self._extra,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        client = redis.Redis(
            port=self.port, socket_connect_timeout=0.2, socket_timeout=0.5, retry=Retry(NoBackoff(), 0)
        )
        deadline = time.monotonic() + timeout
        try:
            while True:
                assert self._process is not None
                if self._process.poll() is not None:
                    raise RuntimeError(f"redis-server exited: see {self.dir / 'redis.log'}")
                try:
                    # PING fails while the AOF loads; the pid proves it is not another server
                    if client.ping() and client.info("server")["process_id"] == self._process.pid:
                        return
                except (redis.ConnectionError, redis.TimeoutError):
                    pass  # not listening yet, or still loading the AOF
                if time.monotonic() > deadline:
                    raise TimeoutError(f"redis-server on port {self.port} not ready after {timeout} s")
                time.sleep(0.01)
        finally:
            client.close()

    def stop(self) -> None:
        """SIGTERM: a clean shutdown."""
        self._end(signal.SIGTERM)

    def kill(self) -> None:
        """SIGKILL: a crash; only what the AOF already holds survives."""
        self._end(signal.SIGKILL)

    def _end(self, sig: signal.Signals) -> None:
        if self._process is None:
            return
        self._process.send_signal(sig)
        self._process.wait(timeout=10)
        self._process = None

    def cleanup(self) -> None:
        """Kill the server if it runs and delete its directory."""
        self.kill()
        shutil.rmtree(self.dir, ignore_errors=True)

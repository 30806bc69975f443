"""Slow consumer: one client stops reading while 500 others get a steady broadcast.

    python bench/slow_consumer.py                     # 500 clients, 20 broadcasts/s, 2 rounds
    python bench/slow_consumer.py --resume-after 6    # resume after Tornado gave up on the close

renum-rt (bench/launch_renum.py, memory engine, default limits: ``max_write_buffer_bytes``
4 MiB) runs on core 0; the Node load generator on core 1 holds --clients normal clients.
Every phase lasts --duration s and sends the same traffic, paced by the server itself
(``POST /bench/burst?rate=``, each event stamped with its due time):
  - a broadcast of --rate small events/s on ``system`` to every client (the load whose
    latency is measured at the normal clients: due time -> receipt);
  - a stream of --slow-rate events/s of --slow-bytes bytes to one more user, the
    "special" client: a raw socket of this script with SO_RCVBUF = --rcvbuf, so that its
    own buffer is tiny and what it does not read piles up on the server.
In a *baseline* phase the special client reads everything; in a *slow* phase it reads
its handshake and then nothing, so the server's kernel send buffer and then Tornado's
buffer fill until the server closes it (1008). The phases alternate (B S S B ...), each
with a fresh special client, and the normal clients' p99 of each slow phase is compared
with the baseline phases of the same run (issue 11: at most +10%).

In every phase GET /bench/pending (every 20 ms, so that both kinds of phase cost the
server the same) reads the special connection's unsent bytes in Tornado (what the cap
limits) and in the kernel (SIOCOUTQ). Once the
server has closed it, the client waits --resume-after s, then reads everything: whole
frames, then the close frame (1008, "slow consumer") if it was still there. Tornado
drops a socket whose close is not answered within 5 s, with what it still held, so a
client that resumes later gets a cut frame and no close frame: --resume-after 6 shows it.
Also reported: every event-loop stall of 20 ms or more (the launcher's --lag-log-ms).
Results: JSON on stdout and in bench/results/slow_consumer-<time>/summary.json, then one
human line. Traffic to 127.0.0.1 only; every process is stopped at the end.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import socket
import struct
import sys
import threading
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402
from common import LOAD_CORE, SERVER_CORE, LoadGen, Proc, median, rnd  # noqa: E402

CAP = 4 * 1024 * 1024  #: max_write_buffer_bytes by default (docs/operations.md, limits)
CLOSE_FRAME_MAX = 2 + 125  #: the close frame queued on top of the capped bytes


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--clients", type=int, default=500, help="normal clients (default 500)")
    p.add_argument("--rate", type=float, default=20.0, help="broadcasts per second (default 20)")
    p.add_argument("--duration", type=float, default=10.0, help="seconds per phase (default 10)")
    p.add_argument("--rounds", type=int, default=2, help="rounds of one baseline and one slow phase (default 2)")
    p.add_argument("--slow-rate", type=float, default=25.0, help="events/s to the special client (default 25)")
    p.add_argument("--slow-bytes", type=int, default=64000, help="padding of those events (default 64000)")
    p.add_argument("--rcvbuf", type=int, default=4096, help="the special client's SO_RCVBUF (default 4096)")
    p.add_argument("--resume-after", type=float, default=1.0,
                   help="seconds after the server closed it before the special client reads again (default 1)")
    p.add_argument("--log-level", default="info", help="renum-rt log level (default info, as in production)")
    return p.parse_args()


class RawClient:
    """A WebSocket client on a plain socket whose reading this script controls."""

    def __init__(self, port: int, path: str, rcvbuf: int) -> None:
        self.sock = socket.socket()
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)  # before connect: the window
        self.sock.connect(("127.0.0.1", port))
        key = base64.b64encode(os.urandom(16)).decode()
        self.sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
                           f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n"
                           "Sec-WebSocket-Protocol: renum.v1\r\n\r\n").encode())
        head = b""
        while b"\r\n\r\n" not in head:
            chunk = self.sock.recv(4096)
            if not chunk:
                raise RuntimeError("closed during the handshake")
            head += chunk
        status, _, self.rest = head.partition(b"\r\n\r\n")
        if not status.startswith(b"HTTP/1.1 101"):
            raise RuntimeError(status.decode(errors="replace"))
        self.received = len(self.rest)
        self._stop = threading.Event()
        self._drainer: threading.Thread | None = None

    def drain(self) -> None:
        """Read and drop everything, in a thread, until ``close``."""
        def run() -> None:
            self.sock.settimeout(0.2)
            while not self._stop.is_set():
                try:
                    chunk = self.sock.recv(1 << 16)
                except TimeoutError:
                    continue
                if not chunk:
                    return
                self.received += len(chunk)
        self._drainer = threading.Thread(target=run, daemon=True)
        self._drainer.start()

    def read_to_end(self, timeout: float = 30.0) -> dict[str, Any]:
        """Read everything the server still sends, walking the frames as they come, and
        answer its close frame as a client does: how many events, whether the stream
        ends in a complete close frame, its code and reason."""
        frames = Frames()
        frames.feed(self.rest)
        self.sock.settimeout(2.0)
        deadline = time.monotonic() + timeout
        answered = False
        try:
            while time.monotonic() < deadline:
                chunk = self.sock.recv(1 << 20)
                if not chunk:
                    break
                frames.feed(chunk)
                if frames.close_code is not None and not answered:
                    answered = True
                    self.sock.sendall(struct.pack("!BB", 0x88, 0x82) + b"\0\0\0\0"
                                      + struct.pack("!H", frames.close_code))
        except (TimeoutError, ConnectionResetError):
            pass
        return frames.report()

    def close(self) -> None:
        self._stop.set()
        if self._drainer is not None:
            self._drainer.join(2)
        self.sock.close()


class Frames:
    """The server's (unmasked) frames, walked as bytes arrive: text frames, the close
    frame, and bytes left over at the end (a frame cut when the server dropped the socket)."""

    def __init__(self) -> None:
        self.buf = bytearray()
        self.bytes_read = self.text_frames = 0
        self.close_code: int | None = None
        self.close_reason: str | None = None

    def feed(self, data: bytes) -> None:
        self.bytes_read += len(data)
        self.buf += data
        off, buf = 0, self.buf
        while len(buf) - off >= 2:
            n, hdr = buf[off + 1] & 0x7F, 2
            if n >= 126:
                hdr = 4 if n == 126 else 10
                if len(buf) - off < hdr:
                    break
                n = struct.unpack_from("!H" if hdr == 4 else "!Q", buf, off + 2)[0]
            if len(buf) - off < hdr + n:
                break
            opcode = buf[off] & 0x0F
            if opcode == 1:
                self.text_frames += 1
            elif opcode == 8 and self.close_code is None:
                payload = bytes(buf[off + hdr:off + hdr + n])
                self.close_code = struct.unpack("!H", payload[:2])[0]
                self.close_reason = payload[2:].decode(errors="replace")
            off += hdr + n
        del buf[:off]

    def report(self) -> dict[str, Any]:
        return {"bytes_read": self.bytes_read, "text_frames": self.text_frames, "close_code": self.close_code,
                "close_reason": self.close_reason, "cut_bytes_at_end": len(self.buf)}


class PendingWatch:
    """Polls GET /bench/pending for one user every ``every`` s in a thread: the largest
    unsent byte counts seen, and when the server stopped counting the connection."""

    def __init__(self, port: int, user: str, every: float = 0.02) -> None:
        self.url = f"http://127.0.0.1:{port}/bench/pending?user={user}"
        self.every = every
        self.max_tornado = self.max_kernel = self.max_total = 0
        self.at_close: dict[str, Any] | None = None
        self.closed_at: float | None = None
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            conns = json.loads(common.get_text(self.url, timeout=10))["connections"]
            for c in conns:
                if not c["open"]:
                    continue
                self.samples += 1
                self.max_tornado = max(self.max_tornado, c["tornado"])
                self.max_kernel = max(self.max_kernel, c["kernel"])
                self.max_total = max(self.max_total, c["tornado"] + c["kernel"])
                if self.closed_at is None and (c["closing"] or not c["admitted"]):
                    self.closed_at, self.at_close = time.monotonic(), c
            if conns and self.closed_at is None and not any(c["open"] for c in conns):
                self.closed_at = time.monotonic()
            self._stop.wait(self.every)

    def stop(self) -> dict[str, Any]:
        self._stop.set()
        self._thread.join(15)
        return {"max_tornado_bytes": self.max_tornado, "max_kernel_bytes": self.max_kernel,
                "max_total_bytes": self.max_total, "at_close": self.at_close, "samples": self.samples,
                "tornado_under_cap": self.max_tornado <= CAP + CLOSE_FRAME_MAX}


def phase(kind: str, n: int, args: argparse.Namespace, port: int, secret: str, gen: LoadGen, server: Proc,
          log: Path) -> dict[str, Any]:
    from renum_rt.auth import issue_token

    user = f"special-{n}"
    client = RawClient(port, f"/ws?token={issue_token(secret, user, ttl_s=3600)}", args.rcvbuf)
    watch = PendingWatch(port, user)  # in both kinds of phase: its requests cost the server the same
    resumed: dict[str, Any] = {}
    resumer = None
    if kind == "baseline":
        client.drain()
    else:  # reads again --resume-after s after the server closed it, while the broadcast goes on
        def resume() -> None:
            deadline = time.monotonic() + args.duration + 20
            while watch.closed_at is None and time.monotonic() < deadline:
                time.sleep(0.02)
            if watch.closed_at is not None:
                time.sleep(max(0.0, watch.closed_at + args.resume_after - time.monotonic()))
                resumed.update(client.read_to_end())
        resumer = threading.Thread(target=resume, daemon=True)
        resumer.start()
    events = int(args.rate * args.duration)
    gen.call({"cmd": "arm", "marker": "bt=", "mode": "stamp", "expect": events * args.clients,
              "timeout_ms": int((args.duration + 20) * 1000)}, "armed")
    cpu0, t0 = common.cpu_ns(server.pid), time.monotonic()
    base = f"http://127.0.0.1:{port}/bench/burst"
    common.post(f"{base}?n={int(args.slow_rate * args.duration)}&rate={args.slow_rate}&bytes={args.slow_bytes}"
                f"&channel=user:{user}")
    common.post(f"{base}?n={events}&rate={args.rate}")
    done = gen.expect("done", timeout=args.duration + 30)
    t1 = time.monotonic()
    out: dict[str, Any] = {"kind": kind, "deliveries": done["count"], "complete": done["reason"] == "complete",
                           **done["latency"], "server_cpu_busy": rnd((common.cpu_ns(server.pid) - cpu0) / 1e9
                                                                     / (t1 - t0), 3),
                           "loadgen_busy": rnd(done["loadgen_busy"], 3)}
    if resumer is not None:
        resumer.join(args.duration + 60)
        closed_at = watch.closed_at
        out["special"] = {**watch.stop(), "closed_after_s": rnd(closed_at - t0, 2) if closed_at else None,
                          "resumed_after_close_s": args.resume_after,
                          **(resumed or {"close_code": None, "close_reason": None})}
    else:
        out["special"] = {**watch.stop(), "bytes_read": client.received}
    client.close()
    out.update(common.loop_stalls(log, t0, t1))
    return out


def main() -> int:
    args = parse_args()
    common.pin_self(LOAD_CORE)
    common.raise_fd_limit()
    sys.path.insert(0, str(common.ROOT))
    outdir = common.results_dir("slow_consumer")
    started = time.monotonic()
    secret, api_key = common.bench_secrets()
    port = common.free_port()
    log = outdir / "server.log"
    server = Proc([*common.taskset(SERVER_CORE), common.python(), str(common.BENCH / "launch_renum.py"),
                   "--port", str(port), "--log-level", args.log_level, "--lag-log-ms", "20"], log,
                  env={"RENUM_RT_JWT_SECRET": secret, "RENUM_RT_API_KEY": api_key, "RENUM_RT_REDIS_URL": ""})
    gen: LoadGen | None = None
    phases = []
    try:
        common.wait_http(f"http://127.0.0.1:{port}/healthz", proc=server.proc)
        gen = LoadGen(port, outdir / "loadgen.log")
        from renum_rt.auth import issue_token

        paths = outdir / "paths.json"
        paths.write_text(json.dumps([f"/ws?token={issue_token(secret, f'n{i}', ttl_s=3600)}"
                                     for i in range(args.clients)]))
        got = gen.call({"cmd": "connect", "paths_file": str(paths), "proto": "renum.v1"}, "connected", timeout=300)
        if got["ok"] != args.clients:
            raise RuntimeError(f"only {got['ok']} of {args.clients} clients connected: {got['errors']}")
        order = [k for r in range(args.rounds) for k in (("baseline", "slow") if r % 2 == 0 else ("slow", "baseline"))]
        for n, kind in enumerate(order):
            phases.append(phase(kind, n, args, port, secret, gen, server, log))
            print(f"# {kind}: p99 {phases[-1]['p99_ms']} ms", file=sys.stderr, flush=True)
    finally:
        if gen is not None:
            gen.close()
        server.stop()
    base_p99 = median([p["p99_ms"] for p in phases if p["kind"] == "baseline"])
    slow_p99 = median([p["p99_ms"] for p in phases if p["kind"] == "slow"])
    specials = [p["special"] for p in phases if p["kind"] == "slow"]
    ratio = rnd(slow_p99 / base_p99, 3) if base_p99 and slow_p99 else None
    checks = {
        "tornado_buffer_under_cap": all(s["tornado_under_cap"] for s in specials),
        "closed_1008_and_close_frame_read": all(s["close_code"] == 1008 for s in specials),
        "others_p99_within_10pct": ratio is not None and ratio <= 1.10,
        "every_delivery": all(p["complete"] for p in phases),
    }
    summary = {
        "benchmark": "slow_consumer",
        "machine": common.machine(),
        "params": {**vars(args), "cap_bytes": CAP, "server_core": SERVER_CORE, "load_core": LOAD_CORE},
        "baseline_p99_ms_median": base_p99,
        "slow_p99_ms_median": slow_p99,
        "p99_ratio_slow_to_baseline": ratio,
        "checks": checks,
        "phases": phases,
        "seconds": round(time.monotonic() - started, 1),
        "results_dir": str(outdir),
    }
    common.write_summary(outdir, summary)
    print(f"slow_consumer: others' p99 {base_p99} ms baseline, {slow_p99} ms with the slow client (x{ratio}); "
          f"slow client: Tornado buffer max {[s['max_tornado_bytes'] for s in specials]} B (cap {CAP}), kernel "
          f"max {[s['max_kernel_bytes'] for s in specials]} B, closed after {[s['closed_after_s'] for s in specials]}"
          f" s, read {[s['close_code'] for s in specials]} {[s['close_reason'] for s in specials]}; "
          + ", ".join(f"{k} {'met' if v else 'MISSED'}" for k, v in checks.items()))
    return 0 if all(checks.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

"""Every benchmark in one command: tables and PNG charts in one results folder.

    python bench/all.py                       # about 10 minutes on 2 cores
    python bench/all.py --skip publish,spec   # only the fan-out runs
    python bench/all.py --charts DIR          # redraw the charts of an earlier run (needs matplotlib)

Steps (each one calls an existing script with its flags, as a separate process):
  fanout-1k    bench/fanout.py --servers all --connections 1000 --runs RUNS (default 2)
  fanout-10k   bench/fanout.py --servers all --connections 10000 --runs 1: also the idle memory
               at 10,000 connections (each renum-rt connection is a different authenticated
               user; KB per connection = (RSS with 10,000 idle connections - RSS with one) /
               10,000) and renum-rt's worst event-loop lag during the burst (/metrics)
  spec         bench/spec_latency.py (memory engine)
  publish      bench/publish.py --runs 1
  slow-consumer  bench/slow_consumer.py: one client stops reading during a broadcast to 500 others
  two-nodes    bench/two_nodes.py: two nodes on one private Redis, p99 on node B against node A
  storm        bench/reconnect_storm.py: 5,000 clients come back after SIGTERM and kill -9 (Redis)
  scale-out    bench/scale_out.py: 3 nodes on one Redis vs on a 3-shard cluster, publishes/s, pub/sub in
The servers: bare Tornado, pre-framed Tornado, renum-rt, websockets broadcast(),
python-socketio + aiohttp, Node ws, Node socket.io 4 (the peers run from the bench's own
venv and npm folder, bench/results/peers/, created on first use, never in the package's
dependencies). The fd limit is raised to the hard limit for the 10,000 sockets.

Output, in bench/results/all-<time>/ (git-ignored): each step's summary.json and log,
results.md (the tables, with which side was CPU-bound in each run) and the charts
bench-throughput.png (deliveries/s and p99 per server), bench-p99-connections.png (p99
against connection count) and bench-cpu.png (server CPU per delivery), drawn with the
bench venv's matplotlib. Traffic goes to 127.0.0.1 only; every step has a time limit and
the scripts stop every process they start.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))

import common  # noqa: E402

LABELS = {
    "tornado": "bare Tornado (write_message)",
    "tornado-preframed": "Tornado, pre-framed",
    "renum": "renum-rt",
    "websockets": "websockets broadcast()",
    "socketio-py": "python-socketio + aiohttp",
    "ws-node": "Node ws",
    "socketio-node": "Node socket.io",
}
STEPS = ["fanout-1k", "fanout-10k", "spec", "publish", "slow-consumer", "two-nodes", "storm"]


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter, epilog=__doc__)
    p.add_argument("--runs", type=int, default=2, help="interleaved runs of the 1,000-connection fan-out (default 2)")
    p.add_argument("--runs-10k", type=int, default=1, help="runs of the 10,000-connection fan-out (default 1)")
    p.add_argument("--servers", default="all", help="fanout.py --servers (default all)")
    p.add_argument("--skip", default="", help="comma-separated steps to skip: " + ", ".join(STEPS))
    p.add_argument("--charts", metavar="DIR", help="only draw the charts of the results folder DIR")
    return p.parse_args()


def run_step(name: str, argv: list[str], outdir: Path, timeout: float) -> dict[str, Any]:
    """Run one bench script; keep its log, its human lines and its summary.json."""
    script = Path(argv[0]).stem
    before = set(common.RESULTS.glob(f"{script}-*"))
    print(f"# {time.strftime('%H:%M:%S')} {name}: {' '.join(['python', *argv])}", file=sys.stderr, flush=True)
    t0 = time.monotonic()
    with open(outdir / f"{name}.log", "wb") as err:
        try:
            proc = subprocess.run([sys.executable, *argv], cwd=common.ROOT, stdout=subprocess.PIPE, stderr=err,
                                  timeout=timeout)
            rc, out = proc.returncode, proc.stdout.decode(errors="replace")
        except subprocess.TimeoutExpired as exc:
            rc, out = -1, (exc.stdout or b"").decode(errors="replace")
    # the scripts print the JSON summary (indented), then one human line per result
    lines = out.splitlines()
    end = max((i for i, line in enumerate(lines) if line == "}"), default=-1)
    human = lines[end + 1:]
    summary: dict[str, Any] | None = None
    new = sorted(set(common.RESULTS.glob(f"{script}-*")) - before)
    if new and (new[-1] / "summary.json").exists():
        summary = json.loads((new[-1] / "summary.json").read_text())
        shutil.copy(new[-1] / "summary.json", outdir / f"{name}.json")
    print(f"# {name}: exit {rc} in {time.monotonic() - t0:.0f} s", file=sys.stderr, flush=True)
    for line in human:
        print(f"#   {line}", file=sys.stderr, flush=True)
    return {"name": name, "argv": argv, "rc": rc, "seconds": round(time.monotonic() - t0, 1), "human": human,
            "results_dir": str(new[-1]) if new else None, "summary": summary}


def fmt(x: Any, nd: int = 1) -> str:
    if x is None:
        return "–"
    if isinstance(x, float) and abs(x) >= 1000:
        return f"{x:,.0f}"
    if isinstance(x, int):
        return f"{x:,}"
    return f"{x:.{nd}f}"


def fanout_table(summary: dict[str, Any]) -> list[str]:
    med = summary["medians"]
    base = summary["baseline"]
    rows = ["| server | deliveries/s | × bare Tornado | p50 / p99 ms | server CPU µs per delivery "
            "| KB per connection | CPU-bound side (per run) | max loop lag ms |",
            "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for kind, m in med.items():
        ratios = m["x_baseline_per_run"]
        rng = f" ({min(ratios):.2f}–{max(ratios):.2f})" if len(ratios) > 1 else ""
        x = m["x_baseline_per_run_median"] if kind != base else 1.0
        busy = [f"{r['bound']} ({r['server_cpu_busy']:.2f} / {r['loadgen_cpu_busy']:.2f})"
                for r in summary["runs"] if r["server"] == kind]
        rows.append(f"| {LABELS.get(kind, kind)} | {fmt(m['deliveries_per_s'])} | {fmt(x, 2)}{rng} "
                    f"| {fmt(m['p50_ms'])} / {fmt(m['p99_ms'])} | {fmt(m['server_cpu_us_per_delivery'])} "
                    f"| {fmt(m['kb_per_connection'])} | {'; '.join(busy)} | {fmt(m.get('loop_lag_max_ms'))} |"
                    + ("" if m["all_complete"] else " INCOMPLETE"))
    return rows


def write_report(outdir: Path, steps: list[dict[str, Any]], started: str) -> Path:
    md = [f"# bench/all.py, {started}", "", "```", json.dumps(common.machine()), "```", ""]
    for step in steps:
        md += [f"## {step['name']} (exit {step['rc']}, {step['seconds']} s)", "",
               f"`python {' '.join(step['argv'])}`", ""]
        summary = step["summary"]
        if step["name"].startswith("fanout") and summary:
            p = summary["params"]
            md += [f"{p['connections']:,} connections, burst of {p['broadcasts']}, {p['runs']} run(s); medians. "
                   "CPU-bound side: the side that used ≥ 85% of its core during the burst "
                   "(server busy / load generator busy).", "", *fanout_table(summary), ""]
        md += ["```", *step["human"], "```", ""]
    path = outdir / "results.md"
    path.write_text("\n".join(md))
    return path


def chart_figures(summary: dict[str, Any], min_busy: float = 0.85) -> dict[str, Any]:
    """Per server: the medians over the runs in which every server had at least ``min_busy``
    of its core (no other process on core 0: "clean" runs), or over every run if none was."""
    runs = summary["runs"]
    clean = [n for n in sorted({r["run"] for r in runs})
             if all(r["server_cpu_busy"] >= min_busy for r in runs if r["run"] == n)]
    if not clean:
        return dict(summary["medians"])
    out: dict[str, Any] = {}
    for kind in summary["medians"]:
        rs = [r for r in runs if r["server"] == kind and r["run"] in clean]
        out[kind] = {"deliveries_per_s": common.median([r["per_s"] for r in rs]),
                     "p99_ms": common.median([r["latency_ms"]["p99_ms"] for r in rs]),
                     "server_cpu_us_per_delivery": common.median([r["server_cpu_us_per_delivery"] for r in rs])}
    return out


def charts(outdir: Path) -> list[Path]:
    """PNG charts from the fan-out summaries of ``outdir`` (run with the bench venv's python):
    the runs in which every server had its core when there are some (``chart_figures``)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    data: dict[int, dict[str, Any]] = {}
    for name in ("fanout-1k", "fanout-10k"):
        f = outdir / f"{name}.json"
        if f.exists():
            s = json.loads(f.read_text())
            data[s["params"]["connections"]] = chart_figures(s)
    if not data:
        return []
    counts = sorted(data)
    kinds = [k for k in LABELS if any(k in data[c] for c in counts)]
    names = [LABELS[k] for k in kinds]
    colors = ["#4c72b0", "#dd8452", "#55a868", "#c44e52", "#8172b3", "#937860", "#da8bc3"]
    width = 0.8 / len(counts)
    out = []

    def bars(ax: Any, key: str, title: str, scale: float = 1.0, log: bool = False, loc: str = "best") -> None:
        for j, c in enumerate(counts):
            vals = [(data[c].get(k) or {}).get(key) for k in kinds]
            xs = [i + (j - (len(counts) - 1) / 2) * width for i in range(len(kinds))]
            ax.bar(xs, [(v or 0) * scale for v in vals], width, label=f"{c:,} connections",
                   color=colors[j * 2 % len(colors)])
        if log:
            ax.set_yscale("log")
        ax.set_xticks(range(len(kinds)), names, rotation=25, ha="right", fontsize=8)
        ax.set_title(title, fontsize=10)
        ax.grid(axis="y", alpha=0.3)
        ax.legend(fontsize=8, loc=loc)

    fig, (a1, a2) = plt.subplots(1, 2, figsize=(11, 4.2))
    bars(a1, "deliveries_per_s", "deliveries/s (thousands), burst of 100", 1e-3, loc="upper left")
    bars(a2, "p99_ms", "p99 latency (ms, log scale)", log=True)
    fig.suptitle("Broadcast fan-out, every server in the same run (2 cores, shared machine)", fontsize=11)
    fig.tight_layout()
    out.append(outdir / "bench-throughput.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4.2))
    for i, k in enumerate(kinds):
        pts = [(c, data[c][k]["p99_ms"]) for c in counts if k in data[c] and data[c][k]["p99_ms"] is not None]
        if pts:
            ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=LABELS[k],
                    color=colors[i % len(colors)], linewidth=2.5 if k == "renum" else 1.2)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xticks(counts, [f"{c:,}" for c in counts])
    ax.set_xlabel("connections")
    ax.set_ylabel("p99 latency (ms, log)")
    ax.set_title("p99 against connection count (burst of 100)", fontsize=10)
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    fig.tight_layout()
    out.append(outdir / "bench-p99-connections.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(7, 4.2))
    bars(ax, "server_cpu_us_per_delivery", "server CPU per delivery (µs, lower is better)")
    fig.tight_layout()
    out.append(outdir / "bench-cpu.png")
    fig.savefig(out[-1], dpi=110)
    plt.close(fig)
    return out


def main() -> int:
    args = parse_args()
    if args.charts:
        for path in charts(Path(args.charts)):
            print(path)
        return 0
    skip = {s.strip() for s in args.skip.split(",") if s.strip()}
    common.peers_env()
    common.raise_fd_limit()
    outdir = common.results_dir("all")
    started = time.strftime("%Y-%m-%d %H:%M")
    bench = "bench/"
    plan: list[tuple[str, list[str], float]] = [
        ("fanout-1k", [bench + "fanout.py", "--servers", args.servers, "--connections", "1000",
                       "--runs", str(args.runs), "--retries", "1"], 900),
        ("fanout-10k", [bench + "fanout.py", "--servers", args.servers, "--connections", "10000",
                        "--runs", str(args.runs_10k), "--timeout", "240", "--retries", "0", "--concurrency", "100",
                        "--settle", "2"], 1800),
        ("spec", [bench + "spec_latency.py"], 400),
        ("publish", [bench + "publish.py", "--runs", "1"], 400),
        ("slow-consumer", [bench + "slow_consumer.py"], 400),
        ("two-nodes", [bench + "two_nodes.py"], 400),
        ("storm", [bench + "reconnect_storm.py"], 900),
        ("scale-out", [bench + "scale_out.py"], 300),
    ]
    steps = []
    for name, argv, timeout in plan:
        if name in skip:
            continue
        steps.append(run_step(name, argv, outdir, timeout))
        write_report(outdir, steps, started)
    report = write_report(outdir, steps, started)
    drawn = subprocess.run([str(common.peers_python()), __file__, "--charts", str(outdir)], cwd=common.ROOT,
                           capture_output=True, text=True, timeout=300)
    if drawn.returncode != 0:
        print(f"# charts failed: {drawn.stderr[-2000:]}", file=sys.stderr)
    print(report.read_text())
    print(f"results: {outdir}\ncharts: {' '.join(drawn.stdout.split())}")
    return 0 if all(s["rc"] == 0 for s in steps) and drawn.returncode == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

"""Dispatch lag of rows that must open a connection, against rows that find one idle.

Against an engine that answers in seconds most rows find every pooled connection busy and
open one: the quick start's burst replay opens 1,242 connections for 1,840 requests. This
replays a steady trace whose every answer comes ``--delay`` seconds late (the test server's
``delay:S`` model, on loopback), so after the pool opened before the start each row connects;
then the same trace with ``--connections`` large enough that no row does. Per run: dispatch
lag p50, p90, p99 and worst, the rows over 0.5 ms late, and the connections opened; then the
medians of each variant. ``--trees`` compares source trees (built extensions; ``PYTHONPATH``
picks the tree), interleaved.

    python tools/bench_connects.py --trees /tmp/base,. --repeats 3
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from support import write_trace_for  # noqa: E402
from support.faulty_server import FaultyServer  # noqa: E402

from cpbench.results import read_results  # noqa: E402

LATE_US = 500.0                    # a row this late counts among the late ones


def one_run(tree: Path, trace: Path, url: str, out: Path, workers: int,
            connections: int | None) -> dict:
    cmd = [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url, "-o", str(out),
           "--workers", str(workers), "--quiet", "--no-report", "--overwrite"]
    if connections:
        cmd += ["--connections", str(connections)]
    subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(tree)), check=True, cwd="/tmp")
    res = read_results(out / "results.arrow")
    lag_us = (res.column("sent_ns").to_numpy() - res.column("intended_ns").to_numpy()) / 1e3
    client = json.loads((out / "summary.json").read_text())["run"]["client"]
    p50, p90, p99 = np.percentile(lag_us, [50, 90, 99])
    return {"lag_p50_us": float(p50), "lag_p90_us": float(p90), "lag_p99_us": float(p99),
            "lag_max_us": float(lag_us.max()), "late_rows": int((lag_us > LATE_US).sum()),
            "connections": int(client["connections"]), "requests": int(len(lag_us))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trees", default=".", help="comma-separated source trees (default: .)")
    ap.add_argument("--rate", type=float, default=200.0, help="requests a second (default 200)")
    ap.add_argument("--seconds", type=float, default=5.0)
    ap.add_argument("--delay", type=float, default=3.0, help="seconds each answer waits")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("-o", "--output", type=Path, help="write every run as JSON here")
    args = ap.parse_args(argv)
    trees = [Path(t).resolve() for t in args.trees.split(",")]
    n = max(1, int(args.rate * args.seconds))
    # Enough connections for every answer in flight, per worker, and some to spare.
    pool = int(args.rate * (args.delay + 1) / args.workers) + 32
    runs = []
    with tempfile.TemporaryDirectory(prefix="bench-connects-") as tmp, FaultyServer() as srv:
        trace = Path(tmp) / "trace.arrow"
        write_trace_for(trace, [f"delay:{args.delay:g}"], n, 1000.0 / args.rate, embed_every=0)
        for rep in range(args.repeats):
            for tree in trees:
                for variant, connections in (("connect", None), ("pooled", pool)):
                    out = Path(tmp) / f"{rep}-{trees.index(tree)}-{variant}"
                    r = one_run(tree, trace, srv.url, out, args.workers, connections)
                    r.update(tree=str(tree), variant=variant, repeat=rep)
                    runs.append(r)
                    print(f"{tree.name or tree} {variant:7s} #{rep}: lag p50 {r['lag_p50_us']:.1f}"
                          f" p90 {r['lag_p90_us']:.1f} p99 {r['lag_p99_us']:.1f} max "
                          f"{r['lag_max_us']:.0f} µs, {r['late_rows']} rows over "
                          f"{LATE_US:g} µs, {r['connections']} connections", flush=True)
    print(f"medians over {args.repeats} repeats ({n} requests at {args.rate:g}/s, answers "
          f"{args.delay:g} s late, {args.workers} worker(s)):")
    for tree in trees:
        for variant in ("connect", "pooled"):
            mine = [r for r in runs if r["tree"] == str(tree) and r["variant"] == variant]
            med = {k: float(np.median([r[k] for r in mine]))
                   for k in ("lag_p50_us", "lag_p90_us", "lag_p99_us", "lag_max_us",
                             "late_rows", "connections")}
            print(f"  {tree.name or tree} {variant:7s}: " +
                  " ".join(f"{k} {v:.4g}" for k, v in med.items()))
    if args.output:
        args.output.write_text(json.dumps(runs, indent=1))
        print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

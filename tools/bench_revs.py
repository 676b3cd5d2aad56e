"""Dispatch fidelity of two cpbench checkouts side by side: the same trace, the same nginx,
interleaved repeats, so a change is measured against its base on one host in one run. The
two trees take turns going first (base-head, head-base, ...).

For each rate and repeat it runs ``cpbench replay`` from ``--base`` and from ``--head`` (any
two source trees with built extensions; ``PYTHONPATH`` picks the tree) with tcpdump on lo, and
reports per tree the medians of: the wire inter-arrival CV minus the trace's own CV (the
distortion the client adds; sampling noise of the CV itself cancels), dispatch lag p50, p99
and p99.9, and client CPU per request (and the parent's share of it). Needs nginx, and root
for tcpdump unless ``--no-wire``.

    git worktree add /tmp/base 4150f7e && cp cpbench/_core/*.so /tmp/base/cpbench/_core/
    python tools/bench_revs.py --base /tmp/base --head . --rates 2000,4000 --repeats 3 --workers 1
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_replay import (BATCH_PATH, SEED, WireCapture, make_realistic_trace,  # noqa: E402
                          make_trace, start_nginx, write_batch_answer)

from cpbench.results import read_results  # noqa: E402


def one_run(tree: Path, trace: Path, url: str, out: Path, workers: int,
            wire: bool = True) -> dict:
    cap = WireCapture(urlsplit(url).port, out.with_suffix(".pcap")) if wire else None
    try:
        # --max-behind 0: a point past the client's capacity still runs to its end, so its
        # lag is measured instead of ending the comparison.
        done = subprocess.run(
            [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url, "-o", str(out),
             "--workers", str(workers), "--quiet", "--no-report", "--max-behind", "0"],
            env=dict(os.environ, PYTHONPATH=str(tree)), capture_output=True, text=True,
            cwd=tempfile.gettempdir())
    finally:
        wire_ns = cap.stop() if cap is not None else None
    if done.returncode:
        raise SystemExit(f"replay from {tree} failed: {done.stderr.strip()[-400:]}")
    res = read_results(out / "results.arrow")
    intended = np.sort(res.column("intended_ns").to_numpy())
    lag_us = (res.column("sent_ns").to_numpy() - res.column("intended_ns").to_numpy()) / 1e3
    client = json.loads((out / "summary.json").read_text())["run"]["client"]
    point = {"lag_p50_us": float(np.percentile(lag_us, 50)),
             "lag_p99_us": float(np.percentile(lag_us, 99)),
             "lag_p999_us": float(np.percentile(lag_us, 99.9)),
             "cpu_us_per_request": (client["worker_cpu_s"] + client["parent_cpu_s"])
             / len(lag_us) * 1e6,
             "parent_cpu_us_per_request": client["parent_cpu_s"] / len(lag_us) * 1e6,
             "requests": int(len(lag_us))}
    if wire_ns is not None:
        trace_gaps, wire_gaps = np.diff(intended), np.diff(wire_ns)
        point["wire_cv_excess"] = float(wire_gaps.std() / wire_gaps.mean()
                                        - trace_gaps.std() / trace_gaps.mean())
        point["wire_packets"] = int(len(wire_ns))
    return point


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--base", type=Path, required=True)
    ap.add_argument("--head", type=Path, default=HERE.parent)
    ap.add_argument("--rates", default="2000,4000")
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--kind", default="chat", choices=("chat", "completion", "embedding"))
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--bodies", default="small", choices=("small", "realistic"),
                    help="16-token probes, or record synth's shapes as in bench_replay.py "
                         "(1,000-token prompts, 16 x 128-token embedding batches)")
    ap.add_argument("--no-wire", action="store_true",
                    help="no tcpdump (no root needed): at tens of thousands of requests a "
                         "second the capture's own CPU is part of what is measured")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench_revs.json"))
    args = ap.parse_args(argv)
    trees = {"base": args.base.resolve(), "head": args.head.resolve()}
    runs: dict[str, list[dict]] = {}
    with tempfile.TemporaryDirectory(prefix="cpbench-revs-") as tmp:
        tmp = Path(tmp)
        pid, url = start_nginx(tmp / "nginx")
        write_batch_answer(tmp / "nginx")
        try:
            for rate in (float(r) for r in args.rates.split(",")):
                trace = tmp / f"t{rate:g}.arrow"
                make_trace(trace, args.kind, rate, args.seconds, SEED)
                target = url
                if args.bodies == "realistic":
                    trace = make_realistic_trace(trace, tmp / f"t{rate:g}-r.arrow", args.kind)
                    target = url + BATCH_PATH if args.kind == "embedding" else url
                for rep in range(args.repeats):
                    # Alternate which tree goes first (base, head, head, base, ...): a run
                    # just after another one can fare differently (sockets in TIME_WAIT,
                    # caches, the host's other work), and a fixed order would charge that to
                    # one side.
                    order = list(trees.items())
                    for name, tree in (order[::-1] if rep % 2 else order):
                        r = one_run(tree, trace, target, tmp / f"{name}-{rate:g}-{rep}",
                                    args.workers, wire=not args.no_wire)
                        runs.setdefault(f"{name} {rate:g}", []).append(r)
                        print(f"{name} {rate:g} #{rep}: " + " ".join(
                            f"{k} {v:.4g}" for k, v in r.items()), flush=True)
        finally:
            os.kill(pid, signal.SIGTERM)
    print(f"medians over {args.repeats} repeats ({args.kind}, {args.bodies} bodies, "
          f"{args.workers} worker(s)):")
    medians = {}
    for key, rs in runs.items():
        medians[key] = {k: float(np.median([r[k] for r in rs])) for k in rs[0]}
        print(f"{key:>12}: " + " ".join(f"{k} {v:.4g}" for k, v in medians[key].items()))
    args.output.write_text(json.dumps({"trees": {k: str(v) for k, v in trees.items()},
                                       "runs": runs, "medians": medians}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

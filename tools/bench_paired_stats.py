"""Benchmark: the analysis cost of ``cpbench compare`` — paired bootstrap over large runs.

Builds synthetic runs (4 policies, 3 kinds x 3 priorities, one trace) of N requests each, and
times ``stats.paired_comparison`` (every group, attainment + 4 latency percentiles, 1000
resamples), with the m-out-of-n row cap (default) and, for the smaller sizes, without it.
Prints a table and writes JSON.

    python tools/bench_paired_stats.py [--rows 10000,100000,1000000] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

from cpbench.experiments import stats
from cpbench.experiments.stats import RunArrays, paired_comparison

POLICIES = ("fifo", "priority", "slo_aware", "hybrid_slo")


def make_runs(n: int, seed: int) -> dict[str, list[RunArrays]]:
    rng = np.random.default_rng(seed)
    kind = rng.choice(np.array(["chat", "completion", "embedding"], dtype=object), n,
                      p=[0.6, 0.1, 0.3])
    prio = rng.choice(np.array(["HIGH", "NORMAL", "LOW"], dtype=object), n, p=[0.2, 0.6, 0.2])
    base = rng.lognormal(np.log(200), 0.6, n)
    runs = {}
    for i, name in enumerate(POLICIES):
        lat = base * (1.0 - 0.05 * i) + rng.normal(0, 20, n)
        runs[name] = [RunArrays(Path(name), np.arange(n, dtype=np.int64), kind, prio,
                                lat < 300, {"ttft_from_intended": lat * 0.3,
                                            "e2e_from_intended": lat})]
    return runs


def time_once(runs: dict, resamples: int, max_rows: int) -> float:
    start = time.perf_counter()
    paired_comparison(runs, baseline="fifo", n_resamples=resamples, seed=0, max_rows=max_rows)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rows", default="10000,100000,1000000")
    ap.add_argument("--resamples", type=int, default=1000)
    ap.add_argument("--uncapped-max", type=int, default=10_000,
                    help="also time without the row cap up to this many rows")
    ap.add_argument("--json", default="bench_paired_stats.json")
    args = ap.parse_args()
    results = []
    for n in (int(x) for x in args.rows.split(",")):
        runs = make_runs(n, seed=1)
        row = {"rows": n, "policies": len(POLICIES), "resamples": args.resamples,
               "capped_s": time_once(runs, args.resamples, stats.MAX_BOOTSTRAP_ROWS),
               "uncapped_s": None}
        if n <= args.uncapped_max:
            row["uncapped_s"] = time_once(runs, args.resamples, max(n, 100))
        results.append(row)
        un = "-" if row["uncapped_s"] is None else f"{row['uncapped_s']:.1f}"
        print(f"{n:>9,} rows x {len(POLICIES)} policies: capped {row['capped_s']:6.1f} s   "
              f"uncapped {un:>6} s", flush=True)
    out = {"host": platform.node(), "cap_rows": stats.MAX_BOOTSTRAP_ROWS, "results": results}
    Path(args.json).write_text(json.dumps(out, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()

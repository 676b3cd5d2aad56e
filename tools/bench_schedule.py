"""Benchmark: arrival-schedule generation speed, Cython core vs the best pure-NumPy equivalent.

Side by side in one run, median of repeats. Prints a table and writes JSON.

    python tools/bench_schedule.py [--count 10000000] [--repeats 7] [--json out.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import time

import numpy as np

from cpbench._core import schedule


def numpy_poisson(rate_rps: float, count: int, seed: int) -> np.ndarray:
    """The fastest pure-NumPy Poisson schedule found: in-place ziggurat draws, cumsum, scale."""
    gaps = np.random.Generator(np.random.PCG64(seed)).standard_exponential(count)
    np.cumsum(gaps, out=gaps)
    gaps *= 1e9 / rate_rps
    gaps += 0.5
    return gaps.astype(np.int64)


def numpy_gamma(rate_rps: float, shape: float, count: int, seed: int) -> np.ndarray:
    gaps = np.random.Generator(np.random.PCG64(seed)).standard_gamma(shape, count)
    np.cumsum(gaps, out=gaps)
    gaps *= 1e9 / (rate_rps * shape)
    gaps += 0.5
    return gaps.astype(np.int64)


def median_seconds(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--count", type=int, default=10_000_000)
    parser.add_argument("--repeats", type=int, default=7)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()
    n = args.count
    cases = {
        "poisson (cython)": lambda: schedule.poisson(1000.0, count=n, seed=1),
        "poisson (numpy)": lambda: numpy_poisson(1000.0, n, 1),
        "gamma k=0.5 (cython)": lambda: schedule.gamma(1000.0, 0.5, count=n, seed=1),
        "gamma k=0.5 (numpy)": lambda: numpy_gamma(1000.0, 0.5, n, 1),
        "uniform (cython)": lambda: schedule.uniform(1000.0, count=n),
        "burst (cython)": lambda: schedule.burst(0.0, 1000.0, 1.0, 10.0, count=n, seed=1),
        "ramp (cython)": lambda: schedule.ramp(100.0, 1000.0, count=n, seed=1),
        "poisson by duration (cython)": lambda: schedule.poisson(1000.0, duration_s=n / 1000.0,
                                                                 seed=1),
    }
    rows = {}
    print(f"{'case':32} {'median s':>10} {'M arrivals/s':>14}")
    for name, fn in cases.items():
        fn()  # warm caches and page in the output buffer once
        seconds = median_seconds(fn, args.repeats)
        rows[name] = {"median_s": seconds, "arrivals_per_s": n / seconds}
        print(f"{name:32} {seconds:10.4f} {n / seconds / 1e6:14.1f}")
    ratio = rows["poisson (numpy)"]["median_s"] / rows["poisson (cython)"]["median_s"]
    print(f"poisson: cython is {ratio:.2f}x the speed of pure NumPy (same run, median of "
          f"{args.repeats})")
    result = {"count": n, "repeats": args.repeats, "machine": platform.platform(),
              "processor": platform.processor(), "cases": rows, "poisson_speedup_vs_numpy": ratio}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

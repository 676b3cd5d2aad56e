"""Benchmark cpbench._core.hist against hdrhistogram, ddsketch and fastdigest.

Figures of the statistics-core issue, side by side on lognormal latencies (10**7 by default):
record rate one value at a time from a Python loop, bulk rate (``record_array``), the cdef
``record_ns`` path, worst relative error at p50..p99.99 on lognormal and on a bimodal mix
(1 ms + 2 s) -- also after merging 8 parts -- memory per histogram, encoded size, time to merge
8 histograms, exact SLO counts, and the memory of one hour of 1-second timeslices.

The other libraries are benchmark-only (``pip install hdrhistogram ddsketch fastdigest``);
a missing one is reported as such. Slow per-value recorders run on a prefix of the data (the
table says how many values), to keep the whole run near a minute on a small machine.

    python tools/bench_hist.py                 # table on stdout, JSON to bench_hist.json
    python tools/bench_hist.py -n 1000000 --out /tmp/h.json
"""
from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np

from cpbench._core.hist import Histogram, _bench_cdef_record
from cpbench._core.slo import SloCounters, Timeslices

PS = (50, 90, 99, 99.9, 99.99)
HOUR_NS = 3_600_000_000_000


def exact_percentiles(values: np.ndarray) -> np.ndarray:
    ordered = np.sort(values)
    ranks = [max(1, math.ceil(p / 100 * len(ordered) * (1 - 1e-12))) for p in PS]
    return ordered[np.array(ranks) - 1].astype(np.float64)


def worst_error(got, want) -> float:
    return float(np.max(np.abs(np.asarray(got, np.float64) - want) / want))


# Times are this process's CPU seconds (time.process_time): on a shared machine, wall time
# also counts the slices other processes ran in, which says nothing about these libraries.
clock = time.process_time


def rate(fn, n: int, repeat: int = 1) -> float:
    """Values per CPU second of ``fn`` (which records ``n`` values), best of ``repeat``."""
    best = math.inf
    for _ in range(repeat):
        start = clock()
        fn()
        best = min(best, clock() - start)
    return n / best


def median_time(fn, repeat: int = 50) -> float:
    times = []
    for _ in range(repeat):
        start = clock()
        fn()
        times.append(clock() - start)
    return float(np.median(times))


# --- one adapter per library: (record loop, bulk, percentiles, memory, encoded size, merge) --

def cpbench_lib():
    def new():
        return Histogram()

    def loop(h, values):
        rec = h.record
        for v in values:
            rec(v)

    def merge8(parts):
        out = Histogram()
        for p in parts:
            out.merge(p)
        return out

    return {"name": "cpbench", "new": new, "loop": loop,
            "bulk": lambda h, a: h.record_array(a),
            "pcts": lambda h: h.percentiles(PS), "memory": lambda h: h.nbytes,
            "encode": lambda h: len(h.encode()), "merge8": merge8}


def hdr_lib():
    from hdrh.histogram import HdrHistogram

    def new():
        return HdrHistogram(1, HOUR_NS, 3)   # unit 1 ns: the same precision as cpbench

    def loop(h, values):
        rec = h.record_value
        for v in values:
            rec(v)

    def merge8(parts):
        out = new()
        for p in parts:
            out.add(p)
        return out

    return {"name": "hdrhistogram", "new": new, "loop": loop, "bulk": None,
            "pcts": lambda h: [h.get_value_at_percentile(p) for p in PS],
            "memory": lambda h: h.counts_len * h.word_size,
            "encode": lambda h: len(h.encode()), "merge8": merge8}


def dd_lib():
    from ddsketch import DDSketch

    def new():
        return DDSketch(relative_accuracy=0.001)

    def loop(h, values):
        add = h.add
        for v in values:
            add(v)

    def merge8(parts):
        out = new()
        for p in parts:
            out.merge(p)
        return out

    def memory(h):
        stores = (h._store, h._negative_store)
        return sum(8 * len(s.bins) for s in stores)

    return {"name": "ddsketch", "new": new, "loop": loop, "bulk": None,
            "pcts": lambda h: [h.get_quantile_value(p / 100) for p in PS],
            "memory": memory, "encode": None, "merge8": merge8}


def fd_lib():
    from fastdigest import TDigest

    def loop(h, values):
        up = h.update
        for v in values:
            up(v)

    def merge8(parts):
        out = TDigest()
        for p in parts:
            out.merge_inplace(p)
        return out

    return {"name": "fastdigest", "new": TDigest, "loop": loop,
            "bulk": lambda h, a: h.batch_update(a.astype(np.float64)),
            "pcts": lambda h: [h.quantile(p / 100) for p in PS],
            "memory": lambda h: 16 * h.n_centroids,
            "encode": lambda h: len(h.to_bytes()), "merge8": merge8}


def bench_library(make, data: dict, loop_n: int) -> dict:
    try:
        lib = make()
    except ImportError as exc:
        return {"name": make.__name__, "missing": str(exc)}
    out = {"name": lib["name"]}
    prefix = data["lognormal"][:loop_n].tolist()
    out["loop_n"] = len(prefix)
    out["loop_rate"] = rate(lambda: lib["loop"](lib["new"](), prefix), len(prefix))
    filled = {}
    for dist in ("lognormal", "bimodal"):
        values = data[dist]
        h = lib["new"]()
        if lib["bulk"] is not None:
            if dist == "lognormal":
                out["bulk_rate"] = rate(lambda: lib["bulk"](h, values), len(values))
            else:
                lib["bulk"](h, values)
            out[f"{dist}_n"] = len(values)
            want = data[f"{dist}_exact"]
        else:
            lib["loop"](h, values[:loop_n].tolist())
            out[f"{dist}_n"] = loop_n
            want = data[f"{dist}_exact_prefix"]
        out[f"{dist}_worst_rel_err"] = worst_error(lib["pcts"](h), want)
        filled[dist] = h
    h = filled["lognormal"]
    out["memory_bytes"] = lib["memory"](h)
    out["encoded_bytes"] = lib["encode"](h) if lib["encode"] else None
    parts = np.array_split(data["lognormal"][:out["lognormal_n"]], 8)
    part_hists = []
    for p in parts:
        ph = lib["new"]()
        (lib["bulk"] or (lambda hh, a: lib["loop"](hh, a.tolist())))(ph, p)
        part_hists.append(ph)
    merged = lib["merge8"](part_hists)
    out["merged_worst_rel_err"] = worst_error(lib["pcts"](merged), data[
        "lognormal_exact" if out["lognormal_n"] == len(data["lognormal"]) else
        "lognormal_exact_prefix"])
    out["merge8_s"] = median_time(lambda: lib["merge8"](part_hists), repeat=20)
    if lib["name"] == "cpbench":
        out["cdef_rate"] = rate(lambda: _bench_cdef_record(Histogram(), data["lognormal"]),
                                len(data["lognormal"]))
        out["merged_identical"] = bool(merged == filled["lognormal"])
        out["relative_error_bound"] = h.relative_error
    return out


def bench_slo_and_slices(data: dict) -> dict:
    lat = data["lognormal"]
    deadline_ns = 100_000_000
    n = len(lat)
    met = lat <= deadline_ns
    c = SloCounters()
    zeros = np.zeros(n, np.int64)
    ok = np.ones(n, bool)
    start = clock()
    c.add_arrays(zeros, zeros, ok, ~ok, met, met, met)
    slo_rate = n / (clock() - start)
    exact = c.counts()["slo_met"] == int(np.count_nonzero(lat <= deadline_ns))
    # One hour at 1 s slices, 1000 requests/s: 3.6 M requests.
    rng = np.random.default_rng(2)
    m = 3_600_000
    intended = np.sort(rng.integers(0, HOUR_NS, m))
    e2e = lat[:m]
    ts = Timeslices()
    start = clock()
    ts.add_arrays(intended, intended + rng.integers(0, 500_000, m), intended + e2e // 5,
                  intended + e2e, np.full(m, 100), np.ones(m, bool), np.zeros(m, bool),
                  e2e <= deadline_ns)
    slice_rate = m / (clock() - start)
    return {"slo_counts_exact": exact, "slo_ingest_rate": slo_rate,
            "timeslices_hour_bytes": ts.nbytes, "timeslices_ingest_rate": slice_rate}


def make_data(n: int, loop_n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    lognormal = rng.lognormal(math.log(50e6), 1.0, n).astype(np.int64)
    slow = rng.random(n) < 0.1
    bimodal = np.where(slow, rng.normal(2e9, 2e8, n), rng.normal(1e6, 1e5, n))
    bimodal = np.maximum(bimodal, 1_000).astype(np.int64)
    data = {"lognormal": lognormal, "bimodal": bimodal}
    for dist in ("lognormal", "bimodal"):
        data[f"{dist}_exact"] = exact_percentiles(data[dist])
        data[f"{dist}_exact_prefix"] = exact_percentiles(data[dist][:loop_n])
    return data


def fmt(v, spec: str) -> str:
    width = spec.lstrip(">").split(".")[0]
    return format("n/a", f">{width}") if v is None else format(v, spec)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("-n", type=int, default=10_000_000, help="values per distribution")
    ap.add_argument("--loop-n", type=int, default=1_000_000,
                    help="values for per-value Python loops (and slow libraries' accuracy)")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default="bench_hist.json")
    args = ap.parse_args()
    data = make_data(args.n, args.loop_n, args.seed)
    rows = [bench_library(make, data, args.loop_n)
            for make in (cpbench_lib, hdr_lib, dd_lib, fd_lib)]
    # cpbench's own rates on more values, best of 3, for steadier figures.
    big = data["lognormal"][:min(args.n, 3_000_000)].tolist()
    logn = data["lognormal"]
    rows[0]["loop_n"] = len(big)
    rows[0]["loop_rate"] = rate(lambda: cpbench_lib()["loop"](Histogram(), big), len(big), 3)
    rows[0]["bulk_rate"] = rate(lambda: Histogram().record_array(logn), len(logn), 3)
    rows[0]["cdef_rate"] = rate(lambda: _bench_cdef_record(Histogram(), logn), len(logn), 3)
    extra = bench_slo_and_slices(data)
    print(f"{'library':<13}{'loop M/s':>9}{'bulk M/s':>10}{'cdef M/s':>10}{'logn err':>10}"
          f"{'bimod err':>10}{'merged err':>11}{'mem KiB':>9}{'enc KiB':>9}{'merge8 ms':>10}")
    for r in rows:
        if "missing" in r:
            print(f"{r['name']:<13} not installed: {r['missing']}")
            continue
        print(f"{r['name']:<13}{r['loop_rate'] / 1e6:>9.2f}"
              f"{fmt(r.get('bulk_rate') and r['bulk_rate'] / 1e6, '>10.1f')}"
              f"{fmt(r.get('cdef_rate') and r['cdef_rate'] / 1e6, '>10.1f')}"
              f"{r['lognormal_worst_rel_err']:>10.2e}{r['bimodal_worst_rel_err']:>10.2e}"
              f"{r['merged_worst_rel_err']:>11.2e}{r['memory_bytes'] / 1024:>9.1f}"
              f"{fmt(r['encoded_bytes'] and r['encoded_bytes'] / 1024, '>9.1f')}"
              f"{r['merge8_s'] * 1e3:>10.3f}")
    print(f"values: {args.n} per distribution (accuracy of per-value-only libraries on the "
          f"first {args.loop_n}); cpbench loop on {rows[0]['loop_n']}, its rates best of 3; "
          "rates and times per CPU second of this process")
    print(f"cpbench: bound {rows[0]['relative_error_bound']:.2e}, merged == whole: "
          f"{rows[0]['merged_identical']}; SLO counts exact: {extra['slo_counts_exact']} "
          f"({extra['slo_ingest_rate'] / 1e6:.0f} M rows/s); 1 h of 1 s timeslices at "
          f"1000 req/s: {extra['timeslices_hour_bytes'] / 2**20:.1f} MiB, ingest "
          f"{extra['timeslices_ingest_rate'] / 1e6:.1f} M rows/s")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump({"args": vars(args), "libraries": rows, "slo": extra}, f, indent=2)


if __name__ == "__main__":
    main()

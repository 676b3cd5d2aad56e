"""What a replay prints: the live progress line, the summary table, failure warnings.

Display only: milliseconds and rounding happen here, never in ``summary.json``.
"""
from __future__ import annotations

import resource
import sys
import time
from pathlib import Path

import numpy as np


def warn_failures(summary: dict, tot: dict, out: Path) -> None:
    """Failures never pass silently, --quiet included: one line each on stderr."""
    req = summary.get("requests", {})
    if req.get("errors"):
        print(f"cpbench: {req['errors']} of {req.get('sent', 0)} requests failed; see "
              f"{out / 'summary.json'}", file=sys.stderr)
    if req.get("interrupted"):
        print(f"cpbench: the run was stopped with {req['interrupted']} requests in flight "
              "(class `interrupted`, not counted as server errors)", file=sys.stderr)
    if tot.get("fd_limited"):
        print(f"cpbench: {tot['fd_limited']} requests waited for a connection because a worker "
              f"held all the {tot['connection_limit']} its open-file limit allows (the wait is "
              f"in their dispatch lag); raise the limit with `ulimit -n`", file=sys.stderr)
    if tot.get("emfile"):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(f"cpbench: {tot['emfile']} requests could not open a connection: too many open "
              f"files (limit {limit}); raise it with `ulimit -n` or lower --max-concurrency",
              file=sys.stderr)


def progress_line(tot: dict, start_ns: int, intended_ns: np.ndarray) -> None:
    elapsed_ns = max(0, time.monotonic_ns() - start_ns)
    total_s = intended_ns[-1] / 1e9 if len(intended_ns) else 0.0
    due = int(np.searchsorted(intended_ns, elapsed_ns, side="right"))
    el = elapsed_ns / 1e9
    rate = tot["sent"] / el if el > 0 else 0.0
    sched = due / el if el > 0 else 0.0
    sys.stderr.write(f"\r[{el:7.1f}/{total_s:.1f} s] sent {tot['sent']}/{due} "
                     f"({rate:,.0f}/{sched:,.0f} rps)  in flight {tot['in_flight']}  "
                     f"errors {tot['errors']}  lag p99 {tot['lag_p99_ns'] / 1e6:.2f} ms"
                     + (f"  BEHIND {tot['behind_ns'] / 1e9:.1f} s" if tot.get("behind_ns", 0)
                        >= 100_000_000 else "") + "   ")
    sys.stderr.flush()


def _ms(d: dict, key: str) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v:,.2f}"


def format_summary(summary: dict, out: Path) -> str:
    """The console summary table of one run (milliseconds for display only)."""
    run, req, rates = summary.get("run", {}), summary.get("requests", {}), summary.get("rates", {})
    errs = ", ".join(f"{k} {v}" for k, v in sorted(req.get("by_error_class", {}).items()) if v)
    lines = [
        f"cpbench replay  {run.get('trace')} -> {run.get('target')}"
        + (f" (policy {run['policy']})" if run.get("policy") else "") + "  "
        f"({run.get('workers')} workers, {run.get('duration_s', 0):.1f} s"
        + (", INTERRUPTED)" if run.get("interrupted") else ")"),
        f"requests   scheduled {req.get('scheduled', 0):,}  sent {req.get('sent', 0):,}  "
        f"completed {req.get('completed', 0):,}  errors {req.get('errors', 0):,}"
        + (f" ({errs})" if errs else "") + f"  warmup {req.get('warmup', 0):,}",
        f"rates      scheduled {rates.get('scheduled_rps', 0):,.1f} rps  achieved "
        f"{rates.get('achieved_rps', 0):,.1f} rps  completed {rates.get('completed_rps', 0):,.1f}"
        f" rps  output {rates.get('output_tps', 0):,.0f} tok/s",
    ]
    lag = summary.get("dispatch_lag_ms", {})
    lines.append("dispatch lag ms  " + "  ".join(
        f"{k} {_ms(lag, k)}" for k in ("p50", "p99", "p99.9", "max")))
    for node in run.get("cluster", {}).get("nodes", []):     # a --ray replay: per node
        lag, clock = node.get("dispatch_lag_ms", {}), node.get("clock") or {}
        lines.append(f"  node {node['address']} ({node['actors']} actors, clock "
                     f"{clock.get('offset_ns', 0) / 1e6:+,.3f} ± "
                     f"{clock.get('uncertainty_ns', 0) / 1e6:.3f} ms)  lag  " + "  ".join(
                         f"{k} {_ms(lag, k)}" for k in ("p50", "p99", "max")))
    cols = ("count", "p50", "p90", "p99", "p99.9", "max")
    lines.append(f"{'latency ms':<20}" + "".join(f"{c:>11}" for c in cols))
    for name, d in summary.get("latency_ms", {}).items():
        if not isinstance(d, dict) or not d:
            continue
        cells = [f"{d.get('count', 0):>11,}"] + [f"{_ms(d, c):>11}" for c in cols[1:]]
        lines.append(f"{name:<20}" + "".join(cells))
    slo = summary.get("slo", {})
    if slo:
        share = slo.get("attainment")
        shown = "-" if share is None else f"{100.0 * share:.1f}%"
        lines.append(f"SLO        attainment {shown}  goodput {slo.get('goodput_rps') or 0:,.1f} rps")
    if "prefix_cache" in summary:
        from cpbench.monitor.prefix import format_prefix_cache
        lines.append(format_prefix_cache(summary))
    lines.append(f"results    {out}")
    return "\n".join(lines)

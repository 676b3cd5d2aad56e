"""Real routers on cpbench's fleet: each router x policy on a prefix trace and on a burst.

For every (router, policy) a fresh `cpbench sim --fleet 4` and the router start in a network
namespace of their own (tools/routerlab.py); then, each with prompts new to the fleet:

1. a low-load trace straight to one engine, and 2. the same load through the router: the
   router's added latency is the TTFT p50 difference (from intended);
3. the prefix trace (traces/prefix.arrow when present, else a 6-group shared-system-prompt
   trace from routerlab.write_prefix_trace) and 4. traces/burst.arrow's LLM requests (the
   fleet serves no embeddings), first --burst-s seconds.

Printed per step: TTFT p50/p99 and e2e p99 (ms, from intended), SLO attainment, errors, the
fleet's prefix hit ratio and requests per engine (max/min), both from the engines' counters.
Writes the rows as JSON (--json). Run: `python tools/bench_routers.py` (about 6 minutes).
"""
from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tools"))
import routerlab  # noqa: E402

from cpbench.trace import read_trace, trace_metadata, write_trace  # noqa: E402

POLICIES = {"vllm": ["round_robin", "cache_aware", "power_of_two", "consistent_hash"],
            "sglang": ["round_robin", "cache_aware", "power_of_two"]}


def llm_only(src: Path, dst: Path) -> Path:
    """``src`` without its embedding requests (a fleet engine serves one LLM)."""
    table = read_trace(src)
    keep = table.filter(pc.not_equal(table.column("kind").cast(pa.string()), "embedding"))
    meta = trace_metadata(table)
    write_trace(keep, dst, metadata={"generator": f"{meta.get('generator')} (LLM rows only)",
                                     "params": meta.get("params") or {},
                                     "seed": meta.get("seed"), "source": str(src)})
    return dst


def _replay(trace: Path, url: str, out: str, extra: list[str] = ()) -> list[str]:
    return ["replay", str(trace), "--url", url, "-o", "{out}/" + out, "--workers", "1",
            "--quiet", "--no-report", *extra]


def figures(step: dict, out: Path) -> dict:
    summary = json.loads((out / "summary.json").read_text())
    ttft = summary["latency_ms"].get("ttft_from_intended") or {}
    e2e = summary["latency_ms"].get("e2e_from_intended") or {}
    att = (summary.get("slo") or {}).get("attainment")
    engines = step["engines"] or {}
    return {"ttft_p50_ms": ttft.get("p50"), "ttft_p99_ms": ttft.get("p99"),
            "e2e_p99_ms": e2e.get("p99"), "slo_pct": None if att is None else 100 * att,
            "requests": summary["requests"]["sent"], "errors": summary["requests"]["errors"],
            "hit_ratio": engines.get("fleet_prefix_hit_ratio"),
            "engine_max": engines.get("requests_max"), "engine_min": engines.get("requests_min")}


def run_one(kind: str, policy: str, traces: dict[str, Path], work: Path,
            burst_s: float) -> list[dict]:
    out = work / f"{kind}-{policy}"
    steps = [_replay(traces["low-direct"], "{engine:0}", "direct"),
             _replay(traces["low-router"], "{router:r}", "low"),
             _replay(traces["prefix"], "{router:r}", "prefix"),
             _replay(traces["burst"], "{router:r}", "burst", ["--duration", f"{burst_s:g}"])]
    lab = routerlab.run_lab({"fleet": 4, "routers": {"r": [kind, policy]}, "steps": steps}, out,
                            timeout_s=600)
    if "error" in lab or any("router_failed" in r for r in lab["routers"].values()):
        return [{"router": kind, "policy": policy, "failed": lab.get("error") or lab["routers"]}]
    results = {}
    for step, name in zip(lab["steps"], ("direct", "low", "prefix", "burst")):
        if step["rc"] != 0:
            results[name] = {"failed": step["stderr"][-300:]}
        else:
            results[name] = figures(step, out / name)
    added = None
    if "failed" not in results["direct"] and "failed" not in results["low"]:
        added = results["low"]["ttft_p50_ms"] - results["direct"]["ttft_p50_ms"]
    return [{"router": kind, "policy": policy, "trace": name, "added_ttft_p50_ms": added,
             **results[name]} for name in ("prefix", "burst")]


def _f(v, digits=1) -> str:
    return "-" if v is None else f"{v:,.{digits}f}"


def table(rows: list[dict]) -> str:
    head = ["router", "policy", "trace", "reqs", "err", "TTFT p50", "TTFT p99", "e2e p99",
            "SLO %", "hit ratio", "eng max/min", "added TTFT p50"]
    lines = []
    for r in rows:
        if "failed" in r:
            lines.append([r["router"], r["policy"], r.get("trace", "-"), "failed", "", "", "", "",
                          "", "", "", str(r["failed"])[:60]])
            continue
        lines.append([r["router"], r["policy"], r["trace"], str(r["requests"]), str(r["errors"]),
                      _f(r["ttft_p50_ms"]), _f(r["ttft_p99_ms"]), _f(r["e2e_p99_ms"]),
                      _f(r["slo_pct"]), _f(r["hit_ratio"], 3),
                      f"{r['engine_max']}/{r['engine_min']}", _f(r["added_ttft_p50_ms"], 2)])
    widths = [max(len(h), *(len(x[i]) for x in lines)) for i, h in enumerate(head)]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 3 else c.rjust(w)  # noqa: E731
                                  for i, (c, w) in enumerate(zip(cells, widths)))
    return "\n".join([fmt(head), fmt(["-" * w for w in widths]), *map(fmt, lines)])


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--routers", default="vllm,sglang")
    p.add_argument("--policies", default=None, help="comma-separated (default: per router)")
    p.add_argument("--burst-s", type=float, default=15.0, help="seconds of burst.arrow")
    p.add_argument("--json", type=Path, default=None, help="write the rows here")
    args = p.parse_args(argv)
    problem = routerlab.netns_problem()
    if problem:
        print(f"bench_routers: {problem}", file=sys.stderr)
        return 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench-routers-") as tmp:
        work = Path(tmp)
        prefix = ROOT / "traces" / "prefix.arrow"
        traces = {
            "low-direct": routerlab.write_prefix_trace(work / "low-d.arrow", groups=40,
                                                       per_group=1, gap_ms=100, salt="d"),
            "low-router": routerlab.write_prefix_trace(work / "low-r.arrow", groups=40,
                                                       per_group=1, gap_ms=100, salt="r"),
            "prefix": prefix if prefix.is_file() else routerlab.write_prefix_trace(
                work / "prefix.arrow", groups=6, per_group=50, prefix_words=256, gap_ms=20,
                output_tokens=32, salt="p"),
            "burst": llm_only(ROOT / "traces" / "burst.arrow", work / "burst-llm.arrow"),
        }
        for kind in args.routers.split(","):
            if (missing := routerlab.router_missing(kind)) is not None:
                rows.append({"router": kind, "policy": "-", "failed": missing})
                continue
            for policy in (args.policies.split(",") if args.policies else POLICIES[kind]):
                rows += run_one(kind, policy, traces, work, args.burst_s)
                print(f"bench_routers: {kind} {policy} done", file=sys.stderr, flush=True)
    print(f"prefix trace: {'traces/prefix.arrow' if prefix.is_file() else 'routerlab 6 groups x 50, 256-word prefixes'}; "
          f"burst: traces/burst.arrow LLM rows, first {args.burst_s:g} s; fleet of 4 per "
          f"router x policy; latencies in ms from intended; added TTFT p50 = router minus "
          f"one engine direct at 10 req/s")
    print(table(rows))
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

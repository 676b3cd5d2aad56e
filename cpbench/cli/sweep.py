"""`cpbench sweep`: parse arguments and call ``cpbench.experiments.sweep.sweep``."""
from __future__ import annotations

import argparse
from pathlib import Path

from cpbench.cli.compare import add_synth_args, add_target_args, prepare_output, target_kwargs
from cpbench.config import add_config_option
from cpbench.experiments import DEFAULT_PROBE_S, KNEE_CRITERIA

EPILOG = """examples:
  cpbench sweep --rates 10,50,100,200 --policy hybrid_slo     # synthesized hybrid workload
  cpbench sweep traces/medium.arrow --rates 10,50,100,200 --policy slo_aware -o results/sweep
  cpbench sweep traces/medium.arrow --rates 20,40 --knee --target-pct 99
  cpbench sweep traces/light.arrow --rates 5,10 --knee --url http://127.0.0.1:8000 --no-switch
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "sweep", help="replay one trace at several rates; optionally find the saturation knee",
        description="Replay TRACE at each rate of --rates (the trace's own rows, time offsets "
                    "scaled), under one policy; with --knee, bracket and bisect the highest "
                    "rate whose SLO attainment stays >= --target-pct. Writes DIR/rate-<rps>/, "
                    "DIR/experiment.json and DIR/report.html.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, metavar="TRACE", nargs="?", default=None,
                   help="cpbench trace (.arrow); without it a Poisson workload is synthesized "
                        "at the first rate (see the options below) and kept in DIR")
    p.add_argument("--rates", default="", metavar="R1,R2,...",
                   help="rates to measure, requests/s (e.g. 10,50,100,200)")
    p.add_argument("--policy", default=None,
                   help="policy set once through the admin API (default: leave as is)")
    p.add_argument("--knee", action="store_true",
                   help="search the saturation knee after the fixed rates")
    p.add_argument("--knee-by", choices=tuple(KNEE_CRITERIA), default="slo",
                   help="what a rate must hold: slo = SLO attainment >= --target-pct, "
                        "throughput = the control plane completes --target-pct of the load "
                        "(its capacity) (default slo)")
    p.add_argument("--target-pct", type=float, default=95.0, metavar="P",
                   help="percent the knee must hold (default 95)")
    p.add_argument("--probe-s", type=float, default=DEFAULT_PROBE_S, metavar="S",
                   help=f"seconds of load per rate (the trace's first S seconds at that rate); "
                        f"a probe too short to reach a steady state never passes "
                        f"(default {DEFAULT_PROBE_S:g})")
    p.add_argument("--rel-tol", type=float, default=0.05, metavar="F",
                   help="stop bisecting when the bracket is narrower than F x rate (0.05)")
    p.add_argument("--max-probes", type=int, default=8, metavar="N",
                   help="runs the knee search may add (default 8)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="output directory (default: cpbench-results/sweep-<UTC time>/)")
    g = p.add_argument_group("synthesized workload (without TRACE)")
    add_synth_args(g, requests_help="requests per run (default 600)")
    g.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    add_target_args(p, speed=False)
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.experiments.runs import parse_floats
    from cpbench.experiments.sweep import sweep

    rates = parse_floats(args.rates, what="--rates") if args.rates or not args.knee else []
    sweep(args.trace, rates_rps=rates, out_dir=prepare_output(args, "sweep", args.trace),
          policy=args.policy, knee=args.knee, target_pct=args.target_pct, rel_tol=args.rel_tol,
          max_probes=args.max_probes, knee_by=args.knee_by, probe_s=args.probe_s,
          synth={"requests": args.requests, "pattern": args.pattern, "mode": args.mode,
                 "llm_ratio": args.llm_ratio, "seed": args.seed}, **target_kwargs(args))
    return 0

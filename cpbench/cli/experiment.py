"""`cpbench experiment`: parse arguments and call ``cpbench.experiments.named.experiment``."""
from __future__ import annotations

import argparse
from pathlib import Path

from cpbench.cli.compare import (add_stats_args, add_synth_args, add_target_args,
                                 prepare_output, target_kwargs)
from cpbench.config import add_config_option
from cpbench.experiments import DEFAULT_PROBE_S, KNEE_CRITERIA

EPILOG = """examples:
  cpbench experiment --name slo -o results/slo                 # 4 policies, synthesized load
  cpbench experiment --name slo --trace traces/burst.arrow --policies fifo,slo_aware --speed 2
  cpbench experiment --name throughput --policies fifo,hybrid_slo --rate 20 --requests 400
  cpbench experiment --name latency --rate 30 --requests 600 --repeat 3
  cpbench experiment --name mixed_ratio --ratios 0,0.5,1 --policies fifo,hybrid_slo
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "experiment", help="predefined experiments: throughput knee, latency, slo, mixed_ratio",
        description="throughput: per policy, the highest rate whose SLO attainment stays >= "
                    "--target-pct (bracketing and bisection); latency: every policy at one "
                    "load, compared on e2e p99; slo: every policy compared on SLO attainment, "
                    "per priority; mixed_ratio: every policy at each LLM share of a hybrid "
                    "workload. Without --trace the workload is synthesized (kept in DIR). "
                    "Writes the runs, DIR/experiment.json and DIR/report.html.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--name", required=True,
                   choices=("throughput", "latency", "slo", "mixed_ratio"))
    p.add_argument("--trace", type=Path, default=None, metavar="TRACE",
                   help="replay this trace instead of a synthesized one (not mixed_ratio)")
    p.add_argument("--policies", default=None, metavar="A,B,...",
                   help="policies (default: fifo,priority,slo_aware,hybrid_slo; throughput: "
                        "the control plane's current one)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="output directory (default: cpbench-results/<name>-<UTC time>/)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="runs per policy (latency, slo, mixed_ratio; default 1)")
    g = p.add_argument_group("synthesized workload")
    g.add_argument("--rate", type=float, default=20.0, metavar="RPS",
                   help="mean arrival rate (default 20)")
    add_synth_args(g, requests_help="requests (default 600)")
    g.add_argument("--ratios", default="0,0.25,0.5,0.75,1", metavar="F,...",
                   help="mixed_ratio: LLM shares to sweep (default 0,0.25,0.5,0.75,1)")
    g = p.add_argument_group("throughput")
    g.add_argument("--rates", default="", metavar="R1,R2,...",
                   help="rates measured before the knee search (default: --rate, or the "
                        "trace's rate with --trace)")
    g.add_argument("--knee-by", choices=tuple(KNEE_CRITERIA), default="throughput",
                   help="what a rate must hold: throughput = the control plane completes "
                        "--target-pct of the load it is offered (its capacity), slo = SLO "
                        "attainment >= --target-pct (default throughput)")
    g.add_argument("--target-pct", type=float, default=95.0, metavar="P",
                   help="percent the knee must hold (default 95)")
    g.add_argument("--probe-s", type=float, default=DEFAULT_PROBE_S, metavar="S",
                   help=f"seconds of load per rate; a probe too short to reach a steady "
                        f"state never passes (default {DEFAULT_PROBE_S:g}; the synthesized "
                        f"workload grows to fill it)")
    g.add_argument("--rel-tol", type=float, default=0.05, metavar="F",
                   help="knee bracket width relative to the rate (default 0.05)")
    g.add_argument("--max-probes", type=int, default=8, metavar="N",
                   help="runs the knee search may add per policy (default 8)")
    add_target_args(p)
    add_stats_args(p)
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.errors import ConfigError
    from cpbench.experiments.runs import parse_floats, parse_list
    from cpbench.experiments.named import experiment

    ratios = parse_floats(args.ratios, what="--ratios", allow_zero=True)
    if any(r > 1.0 for r in ratios):
        raise ConfigError(f"--ratios are LLM shares in [0, 1]; got {args.ratios!r}")
    if args.name == "throughput" and getattr(args, "speed", None) is not None:
        raise ConfigError("--speed does not apply to the throughput experiment: it sets the "
                          "rate itself; use --rates")
    options = target_kwargs(args)
    experiment(args.name, out_dir=prepare_output(args, args.name, args.trace), trace=args.trace,
               policies=parse_list(args.policies, what="--policies") if args.policies else None,
               rates_rps=parse_floats(args.rates, what="--rates") if args.rates else (),
               rate_rps=args.rate, requests=args.requests, pattern=args.pattern,
               mode=args.mode, llm_ratio=args.llm_ratio, ratios=ratios,
               target_pct=args.target_pct, seed=args.seed, repeat=args.repeat,
               confidence=args.confidence, n_resamples=args.resamples, rel_tol=args.rel_tol,
               max_probes=args.max_probes, knee_by=args.knee_by, probe_s=args.probe_s,
               **options)
    return 0

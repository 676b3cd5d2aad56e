"""`cpbench run`: parse arguments and call ``cpbench.experiments.named.run``."""
from __future__ import annotations

import argparse
from pathlib import Path

from cpbench.outdir import default_dir, prepare
from cpbench.replaying.options import PER_RUN_OPTIONS, add_arguments, given
from cpbench.config import add_config_option
from cpbench.vocab import POLICY_PATH

EPILOG = """examples:
  cpbench run --mode llm --policy fifo --requests 200 --rate 10
  cpbench run --mode hybrid --llm-ratio 0.7 --policy hybrid_slo --requests 1000 --rate 40 -o r/h
  cpbench run --mode llm --policy slo_aware --requests 500 --rate 20 --pattern gamma --shape 0.3
  cpbench run --mode llm --requests 100 --rate 5 --url http://127.0.0.1:8000 --no-switch
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "run", help="synthesize a trace and replay it in one step",
        description="Synthesize a trace (kept as DIR/trace.arrow), set the scheduling policy "
                    "through the admin API, and replay it into DIR/run/ against URL or the "
                    "embedded control plane.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--mode", choices=("llm", "hybrid"), default="llm",
                   help="llm only, or LLM and embeddings (default llm)")
    p.add_argument("--policy", default=None,
                   help="scheduling policy set before the run (default: leave as is)")
    p.add_argument("--requests", type=int, required=True, metavar="N", help="requests to send")
    p.add_argument("--rate", type=float, required=True, metavar="RPS",
                   help="mean arrival rate, requests/s")
    p.add_argument("--pattern", choices=("uniform", "poisson", "gamma", "burst", "ramp"),
                   default="poisson", help="arrival pattern (default poisson)")
    p.add_argument("--llm-ratio", type=float, default=0.5, metavar="F",
                   help="LLM share with --mode hybrid (default 0.5)")
    p.add_argument("--shape", type=float, default=None, help="gamma shape (burstiness)")
    p.add_argument("--burst-rps", type=float, default=None, help="rate inside a burst (burst)")
    p.add_argument("--end-rps", type=float, default=None, help="final rate (ramp)")
    p.add_argument("--seed", type=int, default=0, help="trace seed (default 0)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="output directory (default: cpbench-results/run-<UTC time>/)")
    p.add_argument("--url", default=None,
                   help="control plane base URL (default: start `cpbench sim` on loopback)")
    p.add_argument("--sim-config", default=None, metavar="FILE.json",
                   help="configuration of the embedded control plane")
    p.add_argument("--policy-path", default=POLICY_PATH, metavar="PATH",
                   help="admin endpoint for the policy switch (default /admin/policy)")
    p.add_argument("--no-switch", action="store_true", help="do not switch the policy")
    p.add_argument("--overwrite", action="store_true",
                   help="replace the contents of an existing, non-empty output directory "
                        "(without it such a directory is refused)")
    p.add_argument("--no-report", action="store_true", help="skip report.html / report.md")
    g = p.add_argument_group("replay (defaults as `cpbench replay`)")
    add_arguments(g, only=[n for n in PER_RUN_OPTIONS if n != "speed"], unset=True)
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.experiments.named import run as run_once

    synth = {k: getattr(args, k) for k in ("shape", "burst_rps", "end_rps")
             if getattr(args, k) is not None}
    replay = {**given(args), "report": not args.no_report}
    out = prepare(args.output or default_dir("run"), overwrite=args.overwrite)
    run_once(out_dir=out, policy=args.policy,
             requests=args.requests, rate_rps=args.rate, mode=args.mode, pattern=args.pattern,
             llm_ratio=args.llm_ratio, seed=args.seed, url=args.url, switch=not args.no_switch,
             policy_path=args.policy_path, sim_config=args.sim_config, replay_options=replay,
             synth_options=synth)
    return 0

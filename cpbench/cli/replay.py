"""`cpbench replay`: parse arguments and call ``cpbench.runner.run_replay``."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

EPILOG = """examples:
  cpbench replay traces/burst.arrow                          # against the embedded sim
  cpbench replay traces/burst.arrow --policy hybrid_slo -o results/burst-hybrid
  cpbench replay traces/medium.arrow --url http://127.0.0.1:8000 --hints vllm --workers 2
  cpbench replay traces/heavy.arrow --url http://cp:8080 --max-concurrency 64 --warmup 10s
  cpbench replay traces/light.arrow --speed 4 --duration 30 --timeout 20 --quiet
  sudo cpbench replay traces/heavy.arrow --url http://cp:8080 --realtime   # busy client host
  cpbench replay traces/heavy.arrow --url http://cp:8080 --ray    # every node of a Ray cluster
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "replay", help="replay a trace against a control plane (open loop) and record results",
        description="Send every request of TRACE when the trace says (open loop), against URL "
                    "or, with no --url, the embedded control plane started on loopback; write "
                    "results.arrow, summary.json and the report to the output directory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, metavar="TRACE", help="cpbench trace (.arrow)")
    p.add_argument("--url", default=None,
                   help="control plane base URL (default: start `cpbench sim` on loopback)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="results directory (default: cpbench-results/<trace>-<UTC time>/)")
    p.add_argument("--max-concurrency", type=int, default=0, metavar="N",
                   help="cap in-flight requests (closed loop; the wait shows as dispatch lag); "
                        "0 = open loop (default)")
    p.add_argument("--speed", type=float, default=1.0, metavar="X",
                   help="compress the trace's time by X (2 = twice as fast)")
    p.add_argument("--rate-scale", type=float, default=1.0, metavar="X",
                   help="multiply the arrival rate by X (applies with --speed)")
    p.add_argument("--duration", type=float, default=None, metavar="S", dest="duration_s",
                   help="send only requests scheduled in the first S seconds")
    p.add_argument("--warmup", default=None, metavar="10s|N",
                   help="exclude the first seconds (10s) or requests (500) from statistics")
    p.add_argument("--timeout", type=float, default=60.0, metavar="S", dest="timeout_s",
                   help="per-request limit in seconds (default 60)")
    p.add_argument("--workers", type=int, default=None, metavar="N",
                   help="client processes (default: all cores)")
    p.add_argument("--ray", nargs="?", const="auto", default=None, metavar="ADDRESS",
                   help="replay from dispatcher actors on every node of a Ray cluster: ADDRESS "
                        "as for `ray.init` (default auto: RAY_ADDRESS, a cluster started here "
                        "with `ray start`, else a local one); needs pip install "
                        "\"cpbench[ray]\"; see docs/distributed.md")
    p.add_argument("--workers-per-node", type=int, default=None, metavar="N",
                   help="with --ray: dispatcher actors per node (default: its CPUs minus one)")
    p.add_argument("--hints", choices=("sagellm", "vllm", "none"), default="sagellm",
                   help="priority/deadline hints: sageLLM headers (default), vLLM body field "
                        "`priority`, or none")
    p.add_argument("--policy", default=None,
                   help="scheduling policy of the embedded sim (ignored with --url)")
    p.add_argument("--max-error-ratio", type=float, default=None, metavar="R",
                   help="stop and exit 1 when more than this fraction of requests fail")
    p.add_argument("--realtime", type=int, nargs="?", const=1, default=0, metavar="PRIO",
                   help="run the client workers under SCHED_FIFO at PRIO (default 1) so their "
                        "sends do not queue behind other processes on a busy host; needs root "
                        "or CAP_SYS_NICE, else a warning and normal priority")
    p.add_argument("--quiet", action="store_true", help="no progress line, no summary table")
    p.add_argument("--no-report", action="store_true", help="skip report.html / report.md")
    p.add_argument("--loop", choices=("uvloop", "asyncio"), default="uvloop",
                   help=argparse.SUPPRESS)
    from cpbench.config import add_config_option
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.errors import ConfigError
    from cpbench.runner import run_replay

    if args.policy and args.url:
        raise ConfigError("--policy only sets the embedded sim's policy; with --url switch "
                          "the policy on the control plane itself")
    out = run_replay(args.trace, url=args.url, out_dir=args.output,
               max_concurrency=args.max_concurrency, speed=args.speed,
               rate_scale=args.rate_scale, duration_s=args.duration_s, warmup=args.warmup,
               timeout_s=args.timeout_s, workers=args.workers, hints=args.hints,
               policy=args.policy, max_error_ratio=args.max_error_ratio, quiet=args.quiet,
               report=not args.no_report, loop=args.loop, realtime=args.realtime,
               ray=args.ray, workers_per_node=args.workers_per_node)
    summary = json.loads((out / "summary.json").read_text())
    # Everything is written either way; the status tells a script the run was cut short.
    return 130 if summary["run"].get("interrupted") else 0

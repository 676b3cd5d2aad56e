"""`cpbench replay`: parse arguments and call ``cpbench.replaying.run.run_replay``.

The flags come from :class:`cpbench.replaying.options.ReplayOptions`, the one definition of a
replay's options.
"""
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
  cpbench replay traces/medium.arrow --url http://router:8000 --metrics-url http://engine-0:8001/metrics
  sudo cpbench replay traces/heavy.arrow --url http://cp:8080 --realtime   # busy client host
  cpbench replay traces/heavy.arrow --url http://cp:8080 --ray    # every node of a Ray cluster
"""


def register(subparsers) -> None:
    from cpbench.config import add_config_option
    from cpbench.replaying.options import add_arguments

    p = subparsers.add_parser(
        "replay", help="replay a trace against a control plane (open loop) and record results",
        description="Send every request of TRACE when the trace says (open loop), against URL "
                    "or, with no --url, the embedded control plane started on loopback; write "
                    "results.arrow, summary.json and the report to the output directory.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, metavar="TRACE", help="cpbench trace (.arrow)")
    add_arguments(p)
    add_config_option(p)
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.errors import ConfigError
    from cpbench.replaying.options import ReplayOptions
    from cpbench.replaying.run import run_replay

    if args.policy and args.url:
        raise ConfigError("--policy only sets the embedded sim's policy; with --url switch "
                          "the policy on the control plane itself")
    out = run_replay(args.trace, ReplayOptions.from_namespace(args))
    summary = json.loads((out / "summary.json").read_text())
    # Everything is written either way; the status tells a script the run was cut short.
    return 130 if summary["run"].get("interrupted") else 0

"""`cpbench compare`: parse arguments and call ``cpbench.experiments.compare.compare``.

Also holds the option groups every multi-run command shares (target, policy switch, replay,
statistics), so ``sweep`` and ``experiment`` spell them the same way.
"""
from __future__ import annotations

import argparse
from pathlib import Path

from cpbench.config import add_config_option
from cpbench.outdir import default_dir, keep_names, prepare
from cpbench.replaying.options import PER_RUN_OPTIONS, add_arguments, given
from cpbench.vocab import POLICY_PATH

EPILOG = """examples:
  cpbench compare --policies fifo,priority,slo_aware,hybrid_slo traces/burst.arrow -o results/cmp
  cpbench compare --mode llm --policies fifo,priority,slo_aware --requests 500   # synthesized
  cpbench compare --policies fifo,slo_aware traces/burst.arrow --speed 2 --duration 10 --repeat 3
  cpbench compare --policies fifo,edf traces/medium.arrow --url http://127.0.0.1:8000 \\
      --policy-path /v1/admin/policy --drain-s 5
  cpbench compare --policies a,b traces/light.arrow --url http://cp:8080 --no-switch
  cpbench compare traces/prefix.arrow --targets rr=http://127.0.0.1:8001,cache=http://127.0.0.1:8002
  cpbench compare traces/prefix.arrow --repeat 3 \
      --launch rr='vllm-router --port {port} --policy round_robin --worker-urls http://127.0.0.1:9001 http://127.0.0.1:9002' \
      --launch cache='vllm-router --port {port} --prometheus-port {metrics_port} --policy cache_aware --worker-urls http://127.0.0.1:9001 http://127.0.0.1:9002'
"""


def add_synth_args(g, *, requests_help: str) -> None:
    """The synthesized-workload options `sweep` and `experiment` share (argument group ``g``)."""
    g.add_argument("--requests", type=int, default=600, metavar="N", help=requests_help)
    g.add_argument("--pattern", choices=("uniform", "poisson", "gamma"), default="poisson",
                   help="arrival pattern (default poisson)")
    g.add_argument("--mode", choices=("llm", "hybrid"), default="hybrid",
                   help="llm only, or LLM and embeddings (default hybrid)")
    g.add_argument("--llm-ratio", type=float, default=0.5, metavar="F",
                   help="LLM share of a hybrid workload (default 0.5)")


def add_target_args(p: argparse.ArgumentParser, *, speed: bool = True) -> None:
    """--url, the policy switch, draining, and the replay options passed to every run."""
    g = p.add_argument_group("control plane")
    g.add_argument("--url", default=None,
                   help="control plane base URL (default: start `cpbench sim` on loopback, "
                        "one server for every run)")
    g.add_argument("--sim-config", default=None, metavar="FILE.json",
                   help="configuration of the embedded control plane (`cpbench sim --config`)")
    g.add_argument("--policy-path", default=POLICY_PATH, metavar="PATH",
                   help="admin endpoint that GETs/POSTs {\"policy\": NAME} (default "
                        "/admin/policy)")
    g.add_argument("--no-switch", action="store_true",
                   help="do not switch policies (a control plane without the admin API); "
                        "runs are only labelled")
    g.add_argument("--drain-s", type=float, default=1.0, metavar="S",
                   help="pause after each run, then wait until the sim's queues are empty "
                        "(default 1)")
    g.add_argument("--overwrite", action="store_true",
                   help="replace the contents of an existing, non-empty output directory "
                        "(without it such a directory is refused)")
    g = p.add_argument_group("replay (every run; defaults as `cpbench replay`)")
    add_arguments(g, only=[n for n in PER_RUN_OPTIONS if speed or n != "speed"], unset=True)
    g.add_argument("--quiet", action="store_true",
                   help="no progress lines, no answer table (the JSON summary has it)")


def add_stats_args(p: argparse.ArgumentParser) -> None:
    """Bootstrap settings of the paired comparison."""
    g = p.add_argument_group("statistics")
    g.add_argument("--confidence", type=float, default=0.95, metavar="C",
                   help="confidence level of the intervals, in (0, 1) (default 0.95)")
    g.add_argument("--resamples", type=int, default=1000, metavar="N",
                   help="bootstrap resamples (default 1000)")
    g.add_argument("--seed", type=int, default=0, help="seed of the bootstrap (default 0)")


def target_kwargs(args: argparse.Namespace) -> dict:
    """Keyword arguments shared by ``compare``, ``sweep`` and ``experiment``: the target,
    and the replay options the user set (unset ones keep replay's defaults)."""
    return {"url": args.url, "switch": not args.no_switch, "policy_path": args.policy_path,
            "drain_s": args.drain_s, "sim_config": args.sim_config,
            "replay_options": given(args), "quiet": args.quiet}


def prepare_output(args: argparse.Namespace, name: str, trace: Path | None = None) -> Path:
    """``-o`` (default ``cpbench-results/<name>-<UTC time>``) checked and created before the
    first run: a used directory is refused unless ``--overwrite`` (which empties it, keeping
    a trace that lies in it)."""
    out = args.output or default_dir(name)
    return prepare(out, overwrite=args.overwrite, keep=keep_names(trace, out))


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "compare", help="replay one trace once per scheduling policy; paired comparison report",
        description="Replay TRACE once per policy (and --repeat) on ONE control plane, switching "
                    "the policy through its admin API and reading it back; compare the policies "
                    "request by request (paired bootstrap intervals per kind and priority) and "
                    "write DIR/<policy>/, DIR/comparison.json and DIR/report.html.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", type=Path, metavar="TRACE", nargs="?", default=None,
                   help="cpbench trace (.arrow); without it a workload is synthesized from "
                        "the options below (as `cpbench run`) into DIR/trace.arrow")
    p.add_argument("--policies", default=None, metavar="A,B,...",
                   help="policies to compare, comma-separated; the first is the baseline")
    add_deployment_args(p)
    p.add_argument("--baseline", default=None, metavar="P",
                   help="policy the others are compared with (default: the first)")
    p.add_argument("--repeat", type=int, default=1, metavar="K",
                   help="runs per policy, interleaved; shows each metric's spread (default 1)")
    p.add_argument("-o", "--output", type=Path, default=None, metavar="DIR",
                   help="output directory (default: cpbench-results/compare-<UTC time>/)")
    g = p.add_argument_group("synthesized workload (without TRACE; --seed seeds it too)")
    g.add_argument("--rate", type=float, default=20.0, metavar="RPS",
                   help="mean arrival rate (default 20)")
    add_synth_args(g, requests_help="requests (default 600)")
    add_target_args(p)
    add_stats_args(p)
    add_config_option(p)
    p.set_defaults(func=run)


def add_deployment_args(p: argparse.ArgumentParser) -> None:
    """--targets and --launch: compare deployments (routers) instead of policies."""
    g = p.add_argument_group("deployments (instead of --policies)")
    g.add_argument("--targets", default=None, metavar="NAME=URL,...",
                   help="compare deployments: the trace against each base URL, comma-separated; "
                        "the first is the baseline")
    g.add_argument("--launch", action="append", default=None, metavar="NAME='CMD {port}'",
                   help="start CMD (with {port}, optionally {metrics_port} for its Prometheus "
                        "page), wait for /health or /v1/models, compare it as NAME, stop it "
                        "(repeatable)")
    g.add_argument("--start-timeout-s", type=float, default=60.0, metavar="S",
                   help="how long a --launch may take to answer (default 60)")


def run(args: argparse.Namespace) -> int:
    from cpbench.experiments.compare import compare
    from cpbench.experiments.runs import parse_list
    from cpbench.experiments.targets import parse_targets

    deploying = bool(args.targets or args.launch)
    if not deploying and args.policies is None:
        from cpbench.errors import ConfigError
        raise ConfigError("compare needs --policies A,B, or --targets NAME=URL,... and/or "
                          "--launch NAME='CMD {port}'")
    policies = [] if args.policies is None else parse_list(args.policies, what="--policies")
    synth = None
    if args.trace is None:
        synth = {"rate_rps": args.rate, "requests": args.requests, "pattern": args.pattern,
                 "mode": args.mode, "llm_ratio": args.llm_ratio, "seed": args.seed}
    compare(args.trace, policies=policies, targets=parse_targets(args.targets),
            launch=args.launch, start_timeout_s=args.start_timeout_s,
            out_dir=prepare_output(args, "compare", args.trace), repeat=args.repeat,
            baseline=args.baseline, confidence=args.confidence, n_resamples=args.resamples,
            seed=args.seed, synth=synth, **target_kwargs(args))
    return 0

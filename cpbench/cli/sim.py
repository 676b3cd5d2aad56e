"""``cpbench sim``: run the embedded control plane until interrupted."""
from __future__ import annotations

import argparse

EPILOG = """examples:
  cpbench sim                                   # http://127.0.0.1:8000, fifo, default engines
  cpbench sim --port 0 --ready-file /tmp/sim.json --policy hybrid_slo
  cpbench sim --config sim.json --report-timing --seed 7
  cpbench sim --llm-instances 2 --max-running-seqs 64 --decode-step-ms 12
  cpbench sim --fault-error-percent 2 --fault-error-statuses 429,503 --fault-stall-percent 1
  cpbench sim --fleet 4 --port 0 --ready-file /tmp/fleet.json   # 4 engine servers for a router
  cpbench sim --fleet 2 --no-prefix-cache --kv-cache-tokens 50000
  cpbench sim --no-colocate --ttft-deadline-ms chat=2000,completion=2000

switch the policy while it runs:
  curl -s -XPOST localhost:8000/admin/policy -d '{"policy": "priority"}'
"""


def _ns(value: float | None, scale: float) -> int | None:
    return None if value is None else int(round(value * scale))


def _port(text: str) -> int:
    """A TCP port, 0 (any free one) to 65535; the kernel would otherwise wrap 99999 silently."""
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a port number 0-65535; got {text!r}")
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"a port is 0-65535 (0: any free port); got {port}")
    return port


def _statuses(text: str) -> tuple[int, ...]:
    try:
        return tuple(int(s) for s in text.split(",") if s.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected HTTP codes like 429,500,503; got {text!r}")


def _deadlines(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        kind, _, value = part.partition("=")
        try:
            out[kind.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected KIND=MS pairs like chat=5000,embedding=500; got {text!r}")
    return out


def _sim(args: argparse.Namespace) -> int:
    from cpbench.sim.config import SimConfig, resolve_config
    from cpbench.sim.server import run

    deadlines = ttft_deadlines = None
    if args.deadline_ms:
        deadlines = {**SimConfig().deadline_ms, **args.deadline_ms}
    if args.ttft_deadline_ms:
        ttft_deadlines = {**SimConfig().ttft_deadline_ms, **args.ttft_deadline_ms}
    config = resolve_config(
        args.config,
        top={"policy": args.policy, "seed": args.seed, "report_timing": args.report_timing or None,
             "accept_any_model": args.accept_any_model or None, "deadline_ms": deadlines,
             "ttft_deadline_ms": ttft_deadlines, "colocate": args.colocate,
             "default_max_tokens": args.default_max_tokens},
        llm={"model": args.llm_model, "instances": args.llm_instances,
             "max_running_seqs": args.max_running_seqs, "kv_cache_tokens": args.kv_cache_tokens,
             "decode_base_ns": _ns(args.decode_step_ms, 1e6),
             "decode_ns_per_seq": _ns(args.decode_us_per_seq, 1e3),
             "prefill_ns_per_token": _ns(args.prefill_us_per_token, 1e3),
             "prefix_cache": False if args.no_prefix_cache else None,
             "prefix_block_tokens": args.prefix_block_tokens},
        embedding={"model": args.embed_model, "instances": args.embed_instances,
                   "max_batch_inputs": args.embed_max_batch,
                   "batch_base_ns": _ns(args.embed_batch_ms, 1e6),
                   "ns_per_token": _ns(args.embed_us_per_token, 1e3)},
        faults={"error_percent": args.fault_error_percent,
                "error_statuses": args.fault_error_statuses,
                "stall_percent": args.fault_stall_percent, "stall_ms": args.fault_stall_ms,
                "disconnect_percent": args.fault_disconnect_percent,
                "disconnect_after_tokens": args.fault_disconnect_after_tokens,
                "malformed_percent": args.fault_malformed_percent,
                "slow_percent": args.fault_slow_percent, "slow_factor": args.fault_slow_factor})
    if args.fleet is not None:
        from cpbench.sim.fleet import run_fleet
        return run_fleet(config, args.fleet, args.host, args.port, args.ready_file)
    return run(config, args.host, args.port, args.ready_file)


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``sim``."""
    from cpbench.sim.config import POLICY_NAMES

    p = subparsers.add_parser(
        "sim", help="run the embedded control plane (OpenAI-compatible, modelled engines)",
        description="An OpenAI-compatible control plane in front of modelled LLM and embedding "
                    "engines, with switchable scheduling policies, fault injection and "
                    "Prometheus metrics. Unset flags keep the config file's (or default) values.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    p.add_argument("--port", type=_port, default=8000, help="port; 0 picks a free one")
    p.add_argument("--policy", choices=POLICY_NAMES, help="scheduling policy (default fifo)")
    p.add_argument("--config", metavar="FILE.json", help="sim configuration (engines, faults...)")
    p.add_argument("--ready-file", metavar="F", help='write {"url": ..., "pid": ...} here once '
                   'listening (atomically); with --fleet {"urls": [...], "pid": ...}')
    p.add_argument("--fleet", type=int, metavar="N", help="run N independent engine servers "
                   "(one LLM engine each, fifo) on ports --port..--port+N-1 (0: free ports) "
                   "and print their URLs")
    p.add_argument("--report-timing", action="store_true", help="add cpbench_server_timing "
                   "(server monotonic stamps) to the final SSE chunk and JSON bodies")
    p.add_argument("--seed", type=int, help="seed of the fault generators (default 0)")
    p.add_argument("--accept-any-model", action="store_true",
                   help="serve unknown model names with the first engine of the right kind")
    p.add_argument("--default-max-tokens", type=int, help="max_tokens when a request has none")
    p.add_argument("--deadline-ms", type=_deadlines, metavar="KIND=MS,...",
                   help="default deadlines per kind (chat=5000,completion=5000,embedding=500)")
    p.add_argument("--ttft-deadline-ms", type=_deadlines, metavar="KIND=MS,...",
                   help="first-token deadlines per kind, which the deadline-aware policies "
                        "also aim at (chat=1000,completion=1000,embedding=500)")
    p.add_argument("--colocate", action=argparse.BooleanOptionalAction, default=None,
                   help="run embedding batches on the LLM engine's GPU, inside its steps "
                        "(default on; --no-colocate gives each embedding engine its own GPU)")
    g = p.add_argument_group("LLM engine (the first one; use --config for several models)")
    g.add_argument("--llm-model", help="model name (default cpbench-llm-7b)")
    g.add_argument("--llm-instances", type=int, help="engine instances (default 1)")
    g.add_argument("--max-running-seqs", type=int, help="running sequences per engine (256)")
    g.add_argument("--kv-cache-tokens", type=int, help="KV cache capacity in tokens (110000)")
    g.add_argument("--decode-step-ms", type=float, help="decode step base time (7 ms)")
    g.add_argument("--decode-us-per-seq", type=float, help="step time added per sequence (30 us)")
    g.add_argument("--prefill-us-per-token", type=float, help="prefill cost per token (28 us)")
    g.add_argument("--no-prefix-cache", action="store_true", help="turn automatic prefix "
                   "caching off (on by default, as in vLLM: cached prompt blocks skip prefill)")
    g.add_argument("--prefix-block-tokens", type=int, help="prefix-cache block size in tokens "
                   "(16, vLLM's default)")
    g = p.add_argument_group("embedding engine (the first one)")
    g.add_argument("--embed-model", help="model name (default cpbench-embed-bge)")
    g.add_argument("--embed-instances", type=int, help="engine instances (default 1)")
    g.add_argument("--embed-max-batch", type=int, help="inputs per batch (32)")
    g.add_argument("--embed-batch-ms", type=float, help="time per batch (3 ms)")
    g.add_argument("--embed-us-per-token", type=float, help="time per token in a batch (2 us)")
    g = p.add_argument_group("faults (off by default; percents in [0, 100]; seeded by --seed)")
    g.add_argument("--fault-error-percent", type=float, help="answer with an error status")
    g.add_argument("--fault-error-statuses", type=_statuses, metavar="CODES",
                   help="statuses to pick from (429,500,503)")
    g.add_argument("--fault-stall-percent", type=float, help="stall before the first byte")
    g.add_argument("--fault-stall-ms", type=float, help="stall length (1000 ms)")
    g.add_argument("--fault-disconnect-percent", type=float, help="close streams mid-way")
    g.add_argument("--fault-disconnect-after-tokens", type=int, help="tokens before closing (2)")
    g.add_argument("--fault-malformed-percent", type=float, help="one broken-JSON SSE chunk")
    g.add_argument("--fault-slow-percent", type=float, help="slow token pacing")
    g.add_argument("--fault-slow-factor", type=int, help="one token every N steps (4)")
    p.set_defaults(func=_sim)

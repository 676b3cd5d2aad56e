"""``cpbench record synth|import|capture``: parse options, call one entry point each."""
from __future__ import annotations

import argparse
import sys

from cpbench.errors import ConfigError

SYNTH_EPILOG = """examples:
  cpbench record synth --pattern poisson --rate 8 --duration-s 60 --seed 1 -o my.arrow
  cpbench record synth --mode hybrid --llm-ratio 0.7 --pattern burst --rate 0 \\
      --burst-rps 100 --burst-s 0.75 --period-s 15 --duration-s 60 --seed 7 -o burst.arrow
  cpbench record synth --pattern gamma --shape 0.25 --rate 5 --requests 1000 \\
      --input-tokens empirical:traces/medium.arrow:input_tokens --seed 3 -o gamma.arrow
  cpbench record synth --rate 10 --duration-s 60 --prefix-groups 8 --prefix-tokens 1024 \\
      --prefix-zipf 1.1 --seed 5 -o shared_system_prompts.arrow
  cpbench record synth --rate 6 --duration-s 60 --turns 4 --seed 6 -o chat_sessions.arrow
"""
IMPORT_EPILOG = """examples:
  cpbench record import azure AzureLLMInferenceTrace_conv.csv --start-s 0 --end-s 600 -o conv.arrow
  cpbench record import mooncake conversation_trace.jsonl --speed 2 -o mooncake.arrow
  cpbench record import servegen chunk-0-trace.csv --end-s 3600 --seed 1 -o servegen.arrow
  cpbench record import burstgpt BurstGPT_1.csv --end-s 600 -o burstgpt.arrow
"""
CAPTURE_EPILOG = """examples:
  cpbench record capture --listen 127.0.0.1:8001 --upstream http://127.0.0.1:8000 -o live.arrow
  cpbench record capture --listen 127.0.0.1:0 --upstream http://127.0.0.1:8000 \\
      --ready-file /tmp/capture.json -o live.arrow     # then send traffic to the URL in it
"""
EPILOG = "\n".join([SYNTH_EPILOG, IMPORT_EPILOG.replace("examples:\n", ""),
                    CAPTURE_EPILOG.replace("examples:\n", "")])


def _trace_output(text: str) -> str:
    """``-o`` of a trace: an ``.arrow`` file (other names would hide the format) whose
    directory is created, as the other commands create theirs."""
    from pathlib import Path
    path = Path(text)
    if path.suffix.lower() != ".arrow":
        raise ConfigError(f"-o {text!r}: a trace is an Arrow IPC file; name it *.arrow")
    if path.is_dir():
        raise ConfigError(f"-o {text!r} is a directory; name the trace file, like "
                          f"{str(path / 'trace.arrow')!r}")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"-o {text!r}: cannot create {str(path.parent)!r}: "
                          f"{exc.strerror}") from exc
    return text


def _mix(text: str) -> dict[str, float]:
    out: dict[str, float] = {}
    for part in text.split(","):
        key, sep, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise argparse.ArgumentTypeError(
                f"expected HIGH=0.2,NORMAL=0.6,LOW=0.2; got {text!r}") from None
        if not sep:
            raise argparse.ArgumentTypeError(f"expected NAME=WEIGHT pairs; got {text!r}")
    return out


def _add_synth(sub: argparse._SubParsersAction) -> None:
    from cpbench.record.lengths import DEFAULT_LENGTHS
    from cpbench.record.synth import MODES, PATTERNS
    p = sub.add_parser("synth", help="synthesize a trace from a spec", epilog=SYNTH_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--pattern", default="poisson", choices=PATTERNS,
                   help="arrival pattern (default poisson)")
    p.add_argument("--rate", dest="rate_rps", type=float, required=True,
                   help="requests/s (burst: the rate between bursts; ramp: the start rate)")
    extent = p.add_mutually_exclusive_group(required=True)
    extent.add_argument("--requests", type=int, help="number of requests")
    extent.add_argument("--duration-s", "--duration", dest="duration_s", type=float,
                        help="trace length in seconds")
    p.add_argument("--mode", default="llm", choices=MODES,
                   help="llm, or hybrid: LLM + embeddings (default llm)")
    p.add_argument("--llm-ratio", type=float, default=0.5,
                   help="hybrid: share of LLM requests (default 0.5)")
    p.add_argument("--chat-share", type=float, default=1.0,
                   help="share of LLM requests that are chat, the rest completion (default 1)")
    p.add_argument("--priority-mix", type=_mix, default=None,
                   help="weights, default HIGH=0.2,NORMAL=0.6,LOW=0.2")
    p.add_argument("--input-tokens", default=DEFAULT_LENGTHS["input_tokens"],
                   help="prompt tokens: fixed:N | uniform:A,B | lognormal:MEDIAN,SIGMA[,MAX] | "
                        "empirical:PATH[:input_tokens|output_tokens] (default %(default)s)")
    p.add_argument("--output-tokens", default=DEFAULT_LENGTHS["output_tokens"],
                   help="max_tokens, same forms (default %(default)s, as the shipped traces)")
    p.add_argument("--embed-tokens", default=DEFAULT_LENGTHS["embed_tokens"],
                   help="tokens per embedding text (default %(default)s)")
    p.add_argument("--embed-batch", default=DEFAULT_LENGTHS["embed_batch"],
                   help="texts per embedding request (default %(default)s)")
    p.add_argument("--slo-e2e-ms", type=float, default=5000.0,
                   help="LLM end-to-end deadline (default 5000)")
    p.add_argument("--slo-ttft-ms", type=float, default=None,
                   help="LLM time-to-first-token deadline (default none)")
    p.add_argument("--embed-slo-ms", type=float, default=500.0,
                   help="embedding deadline (default 500)")
    p.add_argument("--llm-model", default="cpbench-llm-7b", help="(default %(default)s)")
    p.add_argument("--embed-model", default="cpbench-embed-bge", help="(default %(default)s)")
    p.add_argument("--shape", type=float, default=1.0,
                   help="gamma shape, CV = 1/sqrt(shape) (default 1)")
    p.add_argument("--burst-rps", type=float, help="burst: rate inside a burst")
    p.add_argument("--burst-s", type=float, default=1.0, help="burst: burst length (default 1)")
    p.add_argument("--period-s", type=float, default=10.0, help="burst: period (default 10)")
    p.add_argument("--end-rps", type=float, help="ramp: final rate")
    g = p.add_argument_group("prefix sharing (fills prefix_blocks; see docs/formats.md)")
    g.add_argument("--prefix-groups", type=int, default=0, metavar="G",
                   help="shared system prompts: each LLM prompt opens with one of G prefixes")
    g.add_argument("--prefix-tokens", type=int, default=0, metavar="N",
                   help="length of a shared prefix (whole blocks); --input-tokens follow it")
    g.add_argument("--prefix-zipf", type=float, default=1.0, metavar="S",
                   help="group popularity ~ 1/rank^S (0: uniform; default 1)")
    g.add_argument("--turns", type=int, default=1, metavar="K",
                   help="multi-turn sessions of K turns (fills session): each prompt is the "
                        "previous one + its answer + new text")
    g.add_argument("--block-tokens", type=int, default=16, help="tokens per block (16)")
    p.add_argument("--seed", type=int, default=0,
                   help="random seed, stored in the trace (default 0)")
    p.add_argument("-o", "--output", required=True,
                   help="trace file to write (.arrow; its directory is created)")
    p.set_defaults(func=_synth)


def _synth(args: argparse.Namespace) -> int:
    from cpbench.record.synth import synth_to_file
    _trace_output(args.output)
    table = synth_to_file(
        args.output, pattern=args.pattern, rate_rps=args.rate_rps, requests=args.requests,
        duration_s=args.duration_s, mode=args.mode, llm_ratio=args.llm_ratio,
        chat_share=args.chat_share, priority_mix=args.priority_mix,
        input_tokens=args.input_tokens, output_tokens=args.output_tokens,
        embed_tokens=args.embed_tokens, embed_batch=args.embed_batch,
        slo_e2e_ms={"llm": args.slo_e2e_ms, "embedding": args.embed_slo_ms},
        slo_ttft_ms={"llm": args.slo_ttft_ms, "embedding": None},
        models={"llm": args.llm_model, "embedding": args.embed_model}, seed=args.seed,
        shape=args.shape, burst_rps=args.burst_rps, burst_s=args.burst_s,
        period_s=args.period_s, end_rps=args.end_rps, prefix_groups=args.prefix_groups,
        prefix_tokens=args.prefix_tokens, prefix_zipf=args.prefix_zipf, turns=args.turns,
        block_tokens=args.block_tokens)
    print(f"wrote {args.output}: {table.num_rows} requests")
    return 0


def _add_import(sub: argparse._SubParsersAction) -> None:
    from cpbench.record.lengths import DEFAULT_LENGTHS
    from cpbench.record.importers import FORMATS
    p = sub.add_parser("import", help="convert a public trace (azure, mooncake, burstgpt, "
                       "servegen)", epilog=IMPORT_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("format", choices=FORMATS, help="the source's format")
    p.add_argument("file", help="source file")
    p.add_argument("-o", "--output", required=True,
                   help="trace file to write (.arrow; its directory is created)")
    p.add_argument("--kind", default="chat", choices=("chat", "completion"),
                   help="(default chat)")
    p.add_argument("--model", default=None,
                   help="model name (default cpbench-llm-7b; burstgpt keeps its own)")
    p.add_argument("--priority", default="NORMAL",
                   help="HIGH, NORMAL, LOW or a mix HIGH=0.2,NORMAL=0.6,LOW=0.2")
    p.add_argument("--slo-e2e-ms", type=float, default=None, help="default 5000")
    p.add_argument("--slo-ttft-ms", type=float, default=None)
    p.add_argument("--start-s", "--start", dest="start_s", type=float, default=None,
                   help="window start, seconds from the source's first arrival")
    p.add_argument("--end-s", "--end", dest="end_s", type=float, default=None,
                   help="window end in seconds (exclusive)")
    p.add_argument("--speed", type=float, default=1.0, help="time compression factor")
    p.add_argument("--seed", type=int, default=0, help="for priority mixes, servegen, jitter")
    p.add_argument("--jitter-s", type=float, default=0.0,
                   help="mooncake: spread arrivals over this many seconds (3-s grid)")
    p.add_argument("--dataset", default=None, help="servegen: the -dataset.json length PMFs")
    p.add_argument("--input-tokens", default=DEFAULT_LENGTHS["input_tokens"],
                   help="servegen without --dataset: input length spec (default %(default)s)")
    p.add_argument("--output-tokens", default=DEFAULT_LENGTHS["output_tokens"],
                   help="servegen without --dataset: output length spec (default %(default)s)")
    p.set_defaults(func=_import)


def _import(args: argparse.Namespace) -> int:
    from cpbench.record.importers import import_to_file, parse_mix
    _trace_output(args.output)
    table = import_to_file(
        args.format, args.file, args.output, kind=args.kind, model=args.model,
        priority=parse_mix(args.priority), slo_e2e_ms=args.slo_e2e_ms,
        slo_ttft_ms=args.slo_ttft_ms, start_s=args.start_s, end_s=args.end_s,
        speed=args.speed, seed=args.seed, jitter_s=args.jitter_s, dataset=args.dataset,
        input_tokens=args.input_tokens, output_tokens=args.output_tokens)
    print(f"wrote {args.output}: {table.num_rows} requests")
    return 0


def _add_capture(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("capture", help="recording proxy: forward traffic, write a trace",
                       epilog=CAPTURE_EPILOG,
                       formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--listen", required=True, help="HOST:PORT to listen on (port 0: any)")
    p.add_argument("--upstream", required=True, help="control plane base URL")
    p.add_argument("-o", "--output", required=True,
                   help="trace file written on exit (.arrow; its directory is created)")
    p.add_argument("--ready-file", default=None,
                   help="write {\"url\": ..., \"pid\": ...} here once listening")
    p.add_argument("--drain-s", type=float, default=5.0,
                   help="on SIGINT/SIGTERM, wait this long for requests in flight")
    p.add_argument("--timeout-s", type=float, default=600.0, help="upstream request timeout")
    p.set_defaults(func=_capture)


def _capture(args: argparse.Namespace) -> int:
    from cpbench.record.capture import run_capture
    _trace_output(args.output)
    host, sep, port = args.listen.rpartition(":")
    if not sep or not port.isdigit():
        raise ConfigError(f"--listen must be HOST:PORT; got {args.listen!r}")
    count = run_capture(host or "127.0.0.1", int(port), args.upstream, args.output,
                        ready_file=args.ready_file, drain_s=args.drain_s,
                        timeout_s=args.timeout_s)
    print(f"wrote {args.output}: {count} requests", file=sys.stderr)
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``record`` and its three sub-subcommands."""
    p = subparsers.add_parser("record", help="make a trace: synth, import, capture",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = p.add_subparsers(dest="record_command", metavar="{synth,import,capture}")
    _add_synth(sub)
    _add_import(sub)
    _add_capture(sub)
    p.set_defaults(func=lambda args: p.print_help() or 2)

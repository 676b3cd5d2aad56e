"""Replay dispatcher benchmark against nginx answering with fixed bodies.

The figures behind docs/design.md ("Our own HTTP/1.1 client") and the README's "Performance".

For chat (a 16-chunk SSE body) and embeddings (a 384-float body), at a ladder of Poisson rates,
with 1 and 2 worker processes: achieved vs target rate, dispatch lag p50/p99 (sent - intended),
the inter-send coefficient of variation (1.0 for Poisson) as the client stamped it and, with
``--wire``, as tcpdump saw the requests on lo; client CPU per request
(worker + parent CPU during the run / requests) and the worst worker's peak RSS; the wire's
Kolmogorov-Smirnov distance to the exponential beside the trace's own (the ideal for that
many arrivals), and the share of gaps under 10 µs in the trace, the client's send stamps and
the wire (a worker cannot send twice within one send's syscall, so its short gaps go
missing); and whether the point held its rate (``held``: at most 1 % short, lag p99 at most
1 ms, the gaps' CV within 0.1 + 3/sqrt(n) of 1, on the wire with ``--wire``). Each point runs
a few seconds. Prints a table and writes JSON.

    python tools/bench_replay.py                       # full ladder, ~2 minutes
    python tools/bench_replay.py --kinds chat --rates 2000,4000 --workers 2 --seconds 3
    chrt -f 5 python tools/bench_replay.py --rates 2000,4000 --wire   # on a busy host
    python tools/bench_replay.py --kinds chat --rates 2000 --workers 2 --hogs 2 --realtime 0,1
    python tools/bench_replay.py --prefix --rates 4000 --workers 2     # prefix-block prompts
    python tools/bench_replay.py --bodies both --rates 4000 --workers 1  # small vs realistic
    python tools/bench_replay.py --rates 24000,28000,32000 --workers 2 --connections 32

``--prefix`` compares, point by point, chat requests with ~1,000-token prompts rendered from
prefix blocks ahead of the send (``chat+blocks``: 62 blocks of 16 tokens from 8 shared
prefixes, then a request-unique tail) with chat requests of the same body size built at the
send as today (``chat``), so the cost of rendering shows in lag and CPU per request.

``--bodies realistic`` (or ``both``, interleaved point by point with the 16-token probes)
sends what ``record synth`` produces by default instead of 16-token bodies: 1,000-token chat
and completion prompts, and embedding batches of 16 texts of 128 tokens, which nginx answers
with 16 vectors (``/batch16/v1/embeddings``, a file this script writes beside nginx's config).

On a host shared with other work the lag tail is the scheduler's, not the dispatcher's: the
``preempt`` column counts the workers' involuntary context switches. ``--hogs N`` makes the
host busy on purpose (N busy-looping processes at normal priority for the length of each
point) and ``--realtime 0,1`` measures each point without and with ``cpbench replay
--realtime`` (SCHED_FIFO workers; the dispatcher waits in epoll, and spins only with
``--spin-us``).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import numpy as np

from cpbench.calibrate import poisson_trace
from cpbench.errors import ClientSaturated
from cpbench.replaying.run import run_replay
from cpbench.results import read_results

HERE = Path(__file__).resolve().parent
SEED = 20_260_601


def make_trace(path: Path, kind: str, rate_rps: float, seconds: float, seed: int) -> int:
    """The same seeded one-kind Poisson trace `cpbench calibrate` probes with."""
    return poisson_trace(path, kind, rate_rps, seconds, seed)


# --bodies realistic: the request shapes of `record synth`'s defaults, not 16-token probes.
REALISTIC = {"chat": {"input_tokens": 1000}, "completion": {"input_tokens": 1000},
             "embedding": {"input_tokens": 128, "batch_size": 16}}
SHORT_GAP_NS = 10_000            # the "short gap" share each point reports
BATCH_PATH = "/batch16"           # nginx answers embeddings under it with 16 vectors
# A rate is held when a run keeps all three (the ladder's criterion): the sent rate at most
# 1 % short of the target's, dispatch lag p99 at most 1 ms, and the gaps between requests on
# the wire (the send stamps without --wire) Poisson-like: CV within 0.1 + 3/sqrt(n) of 1.
HELD_SHORTFALL = 0.01
HELD_LAG_P99_MS = 1.0


def held(shortfall: float, lag_p99_ms: float, gap_cv: float, n: int) -> bool:
    """Whether a run held its rate (see HELD_SHORTFALL)."""
    return bool(shortfall <= HELD_SHORTFALL and lag_p99_ms <= HELD_LAG_P99_MS
                and abs(gap_cv - 1) <= 0.1 + 3 / math.sqrt(n))


def make_realistic_trace(small: Path, path: Path, kind: str) -> Path:
    """``small``'s arrivals with realistic bodies (``REALISTIC``): same times, same count."""
    import pyarrow as pa

    from cpbench.trace import read_trace, write_trace
    table = read_trace(small)
    for name, value in REALISTIC[kind].items():
        i = table.schema.get_field_index(name)
        table = table.set_column(i, name, pa.array(np.full(table.num_rows, value),
                                                   table.schema.field(name).type))
    write_trace(table, path, metadata={"generator": "tools/bench_replay.py",
                                       "params": {"kind": kind, "bodies": "realistic"},
                                       "seed": SEED, "source": "synthetic"})
    return path


def write_batch_answer(nginx_prefix: Path, n: int = 16, dims: int = 384) -> None:
    """The body nginx serves for a 16-text embedding batch (see tools/bench/nginx.conf)."""
    vector = "[" + ",".join(f"{-0.5 + 0.037 * (i % 28):.6f}" for i in range(dims)) + "]"
    data = ",".join(f'{{"object":"embedding","index":{i},"embedding":{vector}}}'
                    for i in range(n))
    body = (f'{{"object":"list","data":[{data}],"model":"bench",'
            f'"usage":{{"prompt_tokens":{n * 128},"total_tokens":{n * 128}}}}}')
    target = nginx_prefix / "static" / BATCH_PATH.strip("/") / "v1" / "embeddings"
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_text(body)


PREFIX_TOKENS = 1000
PREFIX_BLOCK_TOKENS = 16


def make_prefix_traces(folder: Path, rate_rps: float, seconds: float,
                       seed: int) -> tuple[Path, Path, int, int]:
    """Two chat traces with the same arrivals: ~1,000-token prompts from prefix blocks, and
    prompts of the same byte size built at the send. Returns both paths and body sizes."""
    import pyarrow as pa

    from cpbench.prompts import BlockRenderer, build_prompt
    from cpbench.trace import read_trace, write_trace

    base = folder / f"chat-{rate_rps:g}.arrow"
    make_trace(base, "chat", rate_rps, seconds, seed)
    table = read_trace(base)
    n = table.num_rows
    per = PREFIX_TOKENS // PREFIX_BLOCK_TOKENS                 # 62 whole blocks
    blocks = [list(range((i % 8) * per, (i % 8 + 1) * per)) for i in range(n)]
    with_blocks = table.set_column(table.schema.get_field_index("input_tokens"), "input_tokens",
                                   pa.array(np.full(n, PREFIX_TOKENS, np.int32)))
    with_blocks = with_blocks.set_column(with_blocks.schema.get_field_index("prefix_blocks"),
                                         "prefix_blocks", pa.array(blocks, pa.list_(pa.int64())))
    meta = {"generator": "tools/bench_replay.py", "params": {"rate_rps": rate_rps},
            "seed": seed, "source": "synthetic"}
    blk = folder / f"chat-blocks-{rate_rps:g}.arrow"
    write_trace(with_blocks, blk, metadata={**meta, "block_tokens": PREFIX_BLOCK_TOKENS})
    size = len(BlockRenderer(PREFIX_BLOCK_TOKENS).text(blocks[0], PREFIX_TOKENS, 12345))
    words = PREFIX_TOKENS
    while len(build_prompt(words, 12345)) > size:        # the same prompt bytes, built today
        words -= 1
    plain = table.set_column(table.schema.get_field_index("input_tokens"), "input_tokens",
                             pa.array(np.full(n, words, np.int32)))
    write_trace(plain, base, metadata=meta)
    return base, blk, size, len(build_prompt(words, 12345))


def plan_build_s(trace: Path) -> float:
    """Seconds to build one worker's plan of the whole trace (rendering included)."""
    from cpbench.trace import read_trace
    from cpbench.replaying.planning import build_plan, select_rows

    table = read_trace(trace)
    t0 = time.perf_counter()
    build_plan(table, select_rows(table), 0, 1)
    return time.perf_counter() - t0


def start_nginx(prefix: Path) -> tuple[int, str]:
    out = subprocess.run([str(HERE / "bench" / "start_nginx.sh"), "0", str(prefix)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), out[1]


class WireCapture:
    """tcpdump on lo of the request packets (payload starting with POST) sent to ``port``."""

    def __init__(self, port: int, path: Path) -> None:
        self.path = path
        # Payload offset = TCP data offset; 0x504f5354 is "POST".
        bpf = f"tcp dst port {port} and tcp[((tcp[12:1] & 0xf0) >> 2):4] = 0x504f5354"
        self.proc = subprocess.Popen(
            ["tcpdump", "-i", "lo", "-U", "-n", "-s", "96", "-B", "32768",
             "--time-stamp-precision", "nano", "-w", str(path), bpf],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for line in self.proc.stderr:           # "listening on lo ..." once it captures
            if b"listening" in line:
                break

    def stop(self) -> np.ndarray:
        """Stop tcpdump; the capture times of the request packets, in ns, sorted."""
        # tcpdump reads the kernel's buffer behind the traffic: a SIGINT right after the run
        # lost the last ~3 % of the packets (counted as received by the filter, never written).
        time.sleep(1.0)
        self.proc.send_signal(signal.SIGINT)
        self.proc.wait(10)
        data = self.path.read_bytes()
        times, pos = [], 24                      # pcap global header, then records
        while pos + 16 <= len(data):
            sec, nsec, incl, _ = struct.unpack_from("<IIII", data, pos)
            times.append(sec * 1_000_000_000 + nsec)
            pos += 16 + incl
        return np.sort(np.asarray(times, dtype=np.int64))


class Hogs:
    """``n`` busy-looping processes at normal priority, each ended by its PID (and by a
    time limit of its own)."""

    def __init__(self, n: int, limit_s: float) -> None:
        code = f"import time\nend = time.monotonic() + {limit_s}\nwhile time.monotonic() < end: pass"
        self.procs = [subprocess.Popen([sys.executable, "-c", code]) for _ in range(n)]

    def stop(self) -> None:
        for p in self.procs:
            p.kill()
            p.wait()


def exp_ks(gaps: np.ndarray) -> float:
    """Kolmogorov-Smirnov distance of inter-arrival gaps (scaled to mean 1) from Exp(1)."""
    from scipy.stats import kstest
    return float(kstest(gaps / gaps.mean(), "expon").statistic)


def measure(trace: Path, out: Path, url: str, workers: int, loop: str,
            wire: bool = False, hogs: int = 0, realtime: int = 0, spin_us: int = 0,
            connections: int | None = None) -> dict:
    cap = WireCapture(urlsplit(url).port, out.with_suffix(".pcap")) if wire else None
    hog = Hogs(hogs, limit_s=120.0) if hogs else None
    stopped = None
    try:
        run_replay(trace, url=url, output=out, workers=workers, quiet=True, report=False,
                   timeout_s=10.0, loop=loop, realtime=realtime, spin_us=spin_us,
                   connections=connections)
    except ClientSaturated as exc:
        stopped = str(exc)              # the point failed: what was sent is still measured
    finally:
        if hog is not None:
            hog.stop()
        wire_ns = cap.stop() if cap is not None else None
    res = read_results(out / "results.arrow")
    summary = json.loads((out / "summary.json").read_text())
    client = summary["run"]["client"]
    intended = res.column("intended_ns").to_numpy()
    sent = np.sort(res.column("sent_ns").to_numpy())
    lag_ms = (res.column("sent_ns").to_numpy() - intended) / 1e6
    n = len(sent)
    span_target_s = (intended.max() - intended.min()) / 1e9
    span_sent_s = (sent[-1] - sent[0]) / 1e9
    gaps = np.diff(sent)
    wire_cv = None if wire_ns is None or len(wire_ns) < 3 else \
        float(np.diff(wire_ns).std() / np.diff(wire_ns).mean())
    send_cv = float(gaps.std() / gaps.mean())
    lag_p99_ms = float(np.percentile(lag_ms, 99))
    return {
        "requests": n,
        "errors": n - res.column("error_class").null_count,
        "errors_by_class": summary["requests"]["by_error_class"],
        "target_rps": (n - 1) / span_target_s,
        "achieved_rps": (n - 1) / span_sent_s,
        "lag_p50_ms": float(np.percentile(lag_ms, 50)),
        "lag_p99_ms": lag_p99_ms,
        "lag_max_ms": float(lag_ms.max()),
        "send_gap_cv": send_cv,
        "held": stopped is None and held(1 - span_target_s / span_sent_s, lag_p99_ms,
                                         send_cv if wire_cv is None else wire_cv, n),
        "cpu_us_per_request": (client["worker_cpu_s"] + client["parent_cpu_s"]) / n * 1e6,
        "worker_cpu_us_per_request": client["worker_cpu_s"] / n * 1e6,
        "parent_cpu_us_per_request": client["parent_cpu_s"] / n * 1e6,
        "peak_rss_mb": client["worker_max_rss_kb"] / 1024,
        "parent_peak_rss_mb": client["parent_max_rss_kb"] / 1024,
        "connections": client["connections"],
        "behind_max_s": client.get("behind_max_s"),
        # The schedule's span on this host's CLOCK_MONOTONIC (to window a perf trace).
        "window_ns": [summary["run"]["start_monotonic_ns"] + int(intended.min()),
                      summary["run"]["start_monotonic_ns"] + int(intended.max())],
        "saturated": stopped,
        "preempted": client.get("worker_preempted", 0),
        "hogs": hogs, "realtime": all(client.get("worker_realtime") or [False]),
        "spin_us": spin_us,
        # The trace's own KS distance is the ideal for this n (sampling noise alone).
        "trace_ks": exp_ks(np.diff(np.sort(intended)).astype(np.float64)),
        "sent_ks": exp_ks(gaps.astype(np.float64)),      # the client's own send stamps
        "wire_ks": None if wire_ns is None or len(wire_ns) < 3 else
        exp_ks(np.diff(wire_ns).astype(np.float64)),
        "wire_packets": None if wire_ns is None else int(len(wire_ns)),
        "wire_gap_cv": wire_cv,
        # Gaps under 10 µs: a worker's sends cannot be closer than one send's syscall, so the
        # wire lacks the shortest gaps of the schedule (the trace's share is the target).
        "trace_short_gaps": float(np.mean(np.diff(np.sort(intended)) < SHORT_GAP_NS)),
        "sent_short_gaps": float(np.mean(gaps < SHORT_GAP_NS)),
        "wire_short_gaps": None if wire_ns is None or len(wire_ns) < 3 else
        float(np.mean(np.diff(wire_ns) < SHORT_GAP_NS)),
    }


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="chat,embedding")
    ap.add_argument("--rates", default=None, help="comma-separated; default per kind")
    ap.add_argument("--workers", default="1,2")
    ap.add_argument("--seconds", type=float, default=3.0)
    ap.add_argument("--loop", default="uvloop", choices=("uvloop", "asyncio"))
    ap.add_argument("--url", default=None, help="use a running server instead of nginx")
    ap.add_argument("--wire", action="store_true",
                    help="also capture the requests on lo with tcpdump (root) and report the "
                         "inter-arrival CV seen on the wire")
    ap.add_argument("--hogs", type=int, default=0,
                    help="busy-looping processes to run beside each point (a busy host)")
    ap.add_argument("--realtime", default="0",
                    help="comma-separated SCHED_FIFO priorities to measure each point with "
                         "(0 = normal scheduling), e.g. 0,1")
    ap.add_argument("--spin-us", default="0",
                    help="comma-separated `replay --spin-us` values to measure each point with "
                         "(0 = sleep until each send's instant), e.g. 0,20,50")
    ap.add_argument("--prefix", action="store_true",
                    help="chat with ~1,000-token prompts from prefix blocks vs the same body "
                         "size built at the send (see the module docstring)")
    ap.add_argument("--connections", type=int, default=None,
                    help="keep-alive connections each worker opens before the start "
                         "(replay --connections; default: replay's, from the schedule)")
    ap.add_argument("--bodies", default="small", choices=("small", "realistic", "both"),
                    help="16-token probes (default), record synth's shapes (1,000-token "
                         "prompts, 16 x 128-token embedding batches), or both interleaved")
    ap.add_argument("--keep", type=Path, default=None, metavar="DIR",
                    help="copy each point's results directory into DIR (to study its rows)")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench_replay.json"))
    args = ap.parse_args(argv)
    ladders = {"chat": [1000, 2000, 4000, 6000], "embedding": [1000, 2000, 5000, 7000],
               "completion": [1000, 2000, 4000]}
    rows = []
    with tempfile.TemporaryDirectory(prefix="cpbench-bench-") as tmp:
        tmp = Path(tmp)
        pid, url = (None, args.url) if args.url else start_nginx(tmp / "nginx")
        if pid is not None and args.bodies != "small":
            # nginx's workers run as an unprivileged user: they must reach the answer file
            # through this directory, which TemporaryDirectory made private (0700).
            os.chmod(tmp, 0o755)
            write_batch_answer(tmp / "nginx")
        try:
            for kind in (["chat"] if args.prefix else args.kinds.split(",")):
                rates = [float(r) for r in args.rates.split(",")] if args.rates else ladders[kind]
                for rate in rates:
                    trace = tmp / f"{kind}-{rate:g}.arrow"
                    variants = [(kind, trace, url)]
                    if args.prefix:
                        plain, blk, size_blk, size_plain = make_prefix_traces(
                            tmp, rate, args.seconds, SEED)
                        print(f"# prompt bytes: {size_blk} from blocks, {size_plain} built at "
                              f"the send; plan build (before the run, 1 worker's share of "
                              f"all rows): {plan_build_s(blk):.3f} s with blocks, "
                              f"{plan_build_s(plain):.3f} s without", flush=True)
                        variants = [("chat", plain, url), ("chat+blocks", blk, url)]
                    else:
                        make_trace(trace, kind, rate, args.seconds, SEED)
                        if args.bodies != "small":
                            real = make_realistic_trace(trace, tmp / f"{kind}-{rate:g}-r.arrow",
                                                        kind)
                            real_url = url + BATCH_PATH if kind == "embedding" else url
                            variants = ([(kind, trace, url)] if args.bodies == "both" else []) \
                                + [(f"{kind}/real", real, real_url)]
                    for w in (int(x) for x in args.workers.split(",")):
                        for rt, spin in ((int(x), int(y)) for x in args.realtime.split(",")
                                         for y in args.spin_us.split(",")):
                            # Interleaved: both variants of a point run back to back.
                            for label, path, target in variants:
                                out = tmp / (f"out-{label.replace('/', '-')}-{rate:g}-{w}-"
                                             f"{rt}-{spin}")
                                r = measure(path, out, target, w, args.loop, args.wire,
                                            args.hogs, rt, spin, args.connections)
                                r.update({"kind": label, "rate_rps": rate, "workers": w})
                                if args.keep is not None:
                                    shutil.copytree(out, args.keep / out.name,
                                                    dirs_exist_ok=True)
                                    r["kept"] = str(args.keep / out.name)
                                rows.append(r)
                                print(_row(r), flush=True)
        finally:
            if pid is not None:
                os.kill(pid, signal.SIGTERM)
    meta = {"host_cores": os.cpu_count(), "loop": args.loop, "seconds": args.seconds,
            "bodies": args.bodies,
            "python": sys.version.split()[0], "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ",
                                                                          time.gmtime())}
    args.output.write_text(json.dumps({"meta": meta, "points": rows}, indent=2))
    print(f"wrote {args.output}")
    return 0


HEADER = (f"{'kind':<12}{'workers':>8}{'target':>9}{'achieved':>10}{'short%':>8}"
          f"{'lag p50':>9}{'lag p99':>9}{'lag max':>9}{'gap CV':>8}{'cpu us/req':>11}"
          f"{'rss MB':>8}{'errors':>7}{'preempt':>8}{'wire CV':>8}{'wire KS':>8}{'ideal':>7}"
          f"{'hogs':>5}{'rt':>3}{'spin':>5}{'held':>5}{'<10us% trace/sent/wire':>24}")


def _row(r: dict) -> str:
    short = 100.0 * (1 - r["achieved_rps"] / r["target_rps"])
    return (f"{r['kind']:<12}{r['workers']:>8}{r['target_rps']:>9.0f}{r['achieved_rps']:>10.0f}"
            f"{short:>8.2f}{r['lag_p50_ms']:>9.3f}{r['lag_p99_ms']:>9.3f}{r['lag_max_ms']:>9.2f}"
            f"{r['send_gap_cv']:>8.3f}{r['cpu_us_per_request']:>11.1f}{r['peak_rss_mb']:>8.0f}"
            f"{r['errors']:>7}{r['preempted']:>8}"
            + (f"{r['wire_gap_cv']:>8.3f}" if r.get("wire_gap_cv") is not None else f"{'-':>8}")
            + (f"{r['wire_ks']:>8.4f}" if r.get("wire_ks") is not None else f"{'-':>8}")
            + f"{r['trace_ks']:>7.4f}"
            + f"{r['hogs']:>5}{'y' if r['realtime'] else 'n':>3}{r['spin_us']:>5}"
            + f"{'y' if r['held'] else 'n':>5}"
            + f"{100 * r['trace_short_gaps']:>10.2f}/{100 * r['sent_short_gaps']:.2f}/"
            + (f"{100 * r['wire_short_gaps']:.2f}" if r.get("wire_short_gaps") is not None
               else "-")
            + (f"  conns {r['connections']}, behind max {r['behind_max_s']:.2f} s"
               if r.get("behind_max_s") is not None else "")
            + ("  STOPPED: client saturated" if r.get("saturated") else ""))


if __name__ == "__main__":
    print(HEADER)
    sys.exit(main())

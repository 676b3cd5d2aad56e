"""Fidelity of the embedded control plane (``cpbench sim``) under load, on this machine.

Two bounded measurements against ``cpbench sim`` started as its own process (so server and
client each get a core), with a lean raw-socket client on uvloop:

1. pacing: ``--streams`` concurrent streams of ``--tokens`` tokens on one engine whose decode step
   is ``base + per_seq × batch``. In the window where every stream is decoding (batch constant),
   the sim's own step counters (scraped from /metrics: modelled step time vs the time between
   steps' token writes) and each stream's mean inter-token gap at the client are compared with
   the modelled step time. Target: within 5 %. The client figure also carries the client's
   own limits (a Python client reading 25k chunks/s on a shared core).
2. TTFT stamps: open-loop chat requests at ``--rate`` req/s for ``--duration-s`` with
   ``--report-timing``; per request, client TTFT (from the socket write to the first token
   chunk) minus server TTFT (``first_token_ns - received_ns`` of ``cpbench_server_timing``).
   Target: p99 under 1 ms.

Prints a table and writes JSON (``--json``). Usage::

    python tools/bench_sim_fidelity.py                    # 500 streams, 500 req/s for 4 s
    python tools/bench_sim_fidelity.py --streams 100 --rate 200 --duration-s 2 --json out.json
"""
from __future__ import annotations

import argparse
import asyncio
import gc
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
MODEL = "cpbench-llm-7b"
STEP_BASE_NS = 15_000_000
STEP_PER_SEQ_NS = 10_000
_now = time.monotonic_ns
_RT_PRIORITY = 0   # --realtime: SCHED_FIFO priority of sim and client (0 = normal scheduling)


def _request_bytes(port: int, max_tokens: int, tag: int) -> bytes:
    body = json.dumps({"model": MODEL, "max_tokens": max_tokens, "stream": True,
                       "stream_options": {"include_usage": True},
                       "messages": [{"role": "user", "content": f"r{tag} " + "word " * 15}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n{body}").encode()


class _Conn(asyncio.Protocol):
    """One keep-alive connection carrying one streamed request at a time."""

    def __init__(self, keep_body: bool) -> None:
        self.keep_body = keep_body
        self.transport: asyncio.Transport | None = None
        self.idle = asyncio.get_running_loop().create_future()
        self.done: asyncio.Future[None] | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        self.idle.set_result(None)

    def send(self, data: bytes) -> None:
        self.token_ns: list[int] = []
        self.body = bytearray()
        self.tail = b""
        self.seen_done = False
        self.done = asyncio.get_running_loop().create_future()
        self.sent_ns = _now()
        self.transport.write(data)  # type: ignore[union-attr]

    def data_received(self, data: bytes) -> None:
        now = _now()
        n = data.count(b'"content":"')
        if n:
            self.token_ns.extend([now] * n)
        if self.keep_body:
            self.body += data
        if b"[DONE]" in data:
            self.seen_done = True
        self.tail = (self.tail + data)[-16:]
        if self.seen_done and self.tail.endswith(b"0\r\n\r\n") and not self.done.done():
            self.done.set_result(None)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.done is not None and not self.done.done():
            self.done.set_exception(ConnectionError("sim closed the connection"))


async def _connect(port: int, keep_body: bool) -> _Conn:
    loop = asyncio.get_running_loop()
    _, conn = await loop.create_connection(lambda: _Conn(keep_body), "127.0.0.1", port)
    await conn.idle
    return conn


async def _scrape(port: int) -> dict[str, float]:
    """The sim's engine counters from /metrics (one LLM engine)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"GET /metrics HTTP/1.0\r\n\r\n")
    text = (await reader.read()).decode()
    writer.close()
    out = {"t_ns": float(_now())}
    for line in text.splitlines():
        for name in ("cpbench_sim_running_sequences", "cpbench_sim_engine_steps_total",
                     "cpbench_sim_engine_modelled_step_seconds_total",
                     "cpbench_sim_engine_actual_step_seconds_total"):
            if line.startswith(name + "{") and f'model="{MODEL}"' in line:
                out[name] = float(line.rsplit(" ", 1)[1])
    return out


async def pacing(port: int, streams: int, tokens: int) -> dict:
    """Part 1: all streams at once; per-stream mean gap in the all-decoding window, at the
    client (token arrivals) and at the sim (its step counters, scraped while it runs)."""
    conns = await asyncio.gather(*[_connect(port, False) for _ in range(streams)])
    for i, conn in enumerate(conns):
        conn.send(_request_bytes(port, tokens, i))
    scrapes: list[dict[str, float]] = []
    all_done = asyncio.gather(*[c.done for c in conns])
    deadline = time.monotonic() + 120
    while not all_done.done() and time.monotonic() < deadline:
        scrapes.append(await _scrape(port))
        await asyncio.sleep(0.2)
    await asyncio.wait_for(all_done, max(1.0, deadline - time.monotonic()))
    full = [x for x in scrapes if x.get("cpbench_sim_running_sequences") == streams]
    sim_side: dict[str, float] = {}
    if len(full) >= 2:
        a, z = full[0], full[-1]
        steps = z["cpbench_sim_engine_steps_total"] - a["cpbench_sim_engine_steps_total"]
        modelled = (z["cpbench_sim_engine_modelled_step_seconds_total"]
                    - a["cpbench_sim_engine_modelled_step_seconds_total"])
        actual = (z["cpbench_sim_engine_actual_step_seconds_total"]
                  - a["cpbench_sim_engine_actual_step_seconds_total"])
        sim_side = {"sim_steps": steps, "sim_window_s": (z["t_ns"] - a["t_ns"]) / 1e9,
                    "sim_mean_step_ms": 1000 * actual / steps if steps else float("nan"),
                    "sim_modelled_step_ms": 1000 * modelled / steps if steps else float("nan"),
                    "sim_error_percent": 100 * (actual - modelled) / modelled if modelled else
                    float("nan")}
    first = max(c.token_ns[0] for c in conns)     # every stream decoding from here...
    last = min(c.token_ns[-1] for c in conns)     # ...until the first one finishes
    gaps_ms, means_ms = [], []
    for c in conns:
        t = np.array([x for x in c.token_ns if first < x < last], dtype=np.int64)
        if len(t) >= 3:
            gaps_ms.append(np.diff(t) / 1e6)
            means_ms.append((t[-1] - t[0]) / (len(t) - 1) / 1e6)
    for c in conns:
        c.transport.close()  # type: ignore[union-attr]
    model_ms = (STEP_BASE_NS + STEP_PER_SEQ_NS * streams) / 1e6
    if not gaps_ms:
        raise SystemExit(f"no window where all {streams} streams were decoding (the last first "
                         f"token came {(first - last) / 1e6:.0f} ms after the first stream "
                         "ended); pass more --tokens")
    all_gaps = np.concatenate(gaps_ms)
    means = np.array(means_ms)
    return {**sim_side, "streams": streams, "tokens": tokens, "model_step_ms": model_ms,
            "window_s": (last - first) / 1e9, "streams_measured": len(means),
            "mean_itl_ms": float(means.mean()),
            "mean_itl_error_percent": float(100 * (means.mean() - model_ms) / model_ms),
            "worst_stream_error_percent": float(100 * np.abs(means - model_ms).max() / model_ms),
            "itl_p50_ms": float(np.percentile(all_gaps, 50)),
            "itl_p99_ms": float(np.percentile(all_gaps, 99)),
            "client_within_5_percent": bool(np.abs(means - model_ms).max() / model_ms <= 0.05),
            "sim_within_5_percent": bool(abs(sim_side.get("sim_error_percent", 1e9)) <= 5)}


async def ttft_stamps(port: int, rate_rps: float, duration_s: float, max_tokens: int) -> dict:
    """Part 2: open loop at ``rate_rps``; client TTFT minus server TTFT per request."""
    pool = list(await asyncio.gather(*[_connect(port, True) for _ in range(64)]))
    n = int(rate_rps * duration_s)
    start_ns = _now() + 50_000_000
    diffs_ns: list[int] = []
    lag_ns: list[int] = []
    request_leg_ns: list[int] = []
    response_leg_ns: list[int] = []
    pending: set[asyncio.Task[None]] = set()

    async def one(conn: _Conn, i: int) -> None:
        conn.send(_request_bytes(port, max_tokens, i))
        await conn.done
        body = bytes(conn.body)
        at = body.rindex(b'"cpbench_server_timing":') + len(b'"cpbench_server_timing":')
        timing = json.loads(body[at: body.index(b"}", at) + 1])
        server_ns = timing["first_token_ns"] - timing["received_ns"]
        diffs_ns.append(conn.token_ns[0] - conn.sent_ns - server_ns)
        # One machine, one CLOCK_MONOTONIC: the difference splits into its two legs.
        request_leg_ns.append(timing["received_ns"] - conn.sent_ns)
        response_leg_ns.append(conn.token_ns[0] - timing["first_token_ns"])
        pool.append(conn)

    for i in range(n):
        intended = start_ns + int(i * 1e9 / rate_rps)
        delay = intended - _now()
        if delay > 0:
            await asyncio.sleep(delay / 1e9)
        lag_ns.append(_now() - intended)
        conn = pool.pop() if pool else await _connect(port, True)
        task = asyncio.ensure_future(one(conn, i))
        pending.add(task)
        task.add_done_callback(pending.discard)
    await asyncio.wait_for(asyncio.gather(*pending), 60)
    for conn in pool:
        conn.transport.close()  # type: ignore[union-attr]
    d = np.array(diffs_ns) / 1e6
    return {"rate_rps": rate_rps, "duration_s": duration_s, "requests": len(d),
            "diff_ms": {"mean": float(d.mean()), "p50": float(np.percentile(d, 50)),
                        "p99": float(np.percentile(d, 99)), "p99.9": float(np.percentile(d, 99.9)),
                        "max": float(d.max())},
            "request_leg_ms": {"p50": float(np.percentile(np.array(request_leg_ns) / 1e6, 50)),
                               "p99": float(np.percentile(np.array(request_leg_ns) / 1e6, 99))},
            "response_leg_ms": {"p50": float(np.percentile(np.array(response_leg_ns) / 1e6, 50)),
                                "p99": float(np.percentile(np.array(response_leg_ns) / 1e6, 99))},
            "client_lag_p99_ms": float(np.percentile(np.array(lag_ns) / 1e6, 99)),
            "p99_under_1_ms": bool(np.percentile(d, 99) < 1.0)}


def _start_sim(config: dict, tmp: Path, cpu: int | None) -> tuple[subprocess.Popen, int]:
    (tmp / "sim.json").write_text(json.dumps(config))
    ready = tmp / "ready.json"
    ready.unlink(missing_ok=True)
    cmd = [sys.executable, "-m", "cpbench", "sim", "--port", "0",
           "--config", str(tmp / "sim.json"), "--ready-file", str(ready)]
    if cpu is not None:
        cmd = ["taskset", "-c", str(cpu), *cmd]
    if _RT_PRIORITY:
        cmd = ["chrt", "-f", str(_RT_PRIORITY), *cmd]
    proc = subprocess.Popen(cmd, cwd=ROOT, stdout=subprocess.DEVNULL)
    deadline = time.monotonic() + 30
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise SystemExit("cpbench sim did not start")
        time.sleep(0.05)
    return proc, int(json.loads(ready.read_text())["url"].rsplit(":", 1)[1])


def _cpu_s(pid: int) -> float:
    """CPU seconds (user + system) a process has used so far, from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _stop_sim(proc: subprocess.Popen) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


async def _measure(config: dict, tmp: Path, sim_cpu: int | None, part) -> dict:
    proc, port = _start_sim(config, tmp, sim_cpu)
    try:
        cpu0, t0 = _cpu_s(proc.pid), time.monotonic()
        result = await part(port)
        result["server_cpu_percent"] = 100 * (_cpu_s(proc.pid) - cpu0) / (time.monotonic() - t0)
        return result
    finally:
        _stop_sim(proc)


async def _main(args: argparse.Namespace) -> dict:
    out = {"host": os.uname().nodename, "cpus": os.cpu_count(), "python": sys.version.split()[0],
           "load_avg_1m_at_start": os.getloadavg()[0]}
    # Sim and client on separate cores, so a token written by one does not preempt the other.
    sim_cpu = None
    if args.pin and (os.cpu_count() or 1) >= 2:
        sim_cpu = 0
        os.sched_setaffinity(0, {1})
    out["pinned"] = sim_cpu is not None
    out["realtime_priority"] = _RT_PRIORITY
    if _RT_PRIORITY:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(_RT_PRIORITY))
    with tempfile.TemporaryDirectory() as tmp:
        if args.part in ("both", "pacing"):
            llm = {"max_running_seqs": max(512, args.streams),
                   "kv_cache_tokens": args.streams * (args.tokens + 64),
                   "decode_base_ns": STEP_BASE_NS, "decode_ns_per_seq": STEP_PER_SEQ_NS,
                   "decode_ns_per_context_token": 0}
            out["pacing"] = await _measure({"llm": [llm]}, Path(tmp), sim_cpu,
                                           lambda port: pacing(port, args.streams, args.tokens))
        if args.part in ("both", "ttft"):
            out["ttft"] = await _measure(
                {"report_timing": True}, Path(tmp), sim_cpu,
                lambda port: ttft_stamps(port, args.rate, args.duration_s, args.ttft_tokens))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=500)
    parser.add_argument("--tokens", type=int, default=300)
    parser.add_argument("--rate", type=float, default=500.0, help="req/s for the TTFT part")
    parser.add_argument("--duration-s", type=float, default=4.0)
    parser.add_argument("--ttft-tokens", type=int, default=4)
    parser.add_argument("--json", default="bench_sim_fidelity.json")
    parser.add_argument("--part", choices=("both", "pacing", "ttft"), default="both")
    parser.add_argument("--no-pin", dest="pin", action="store_false",
                        help="do not pin the sim to CPU 0 and this client to CPU 1")
    parser.add_argument("--realtime", action="store_true",
                        help="run sim and client under SCHED_FIFO (root; Linux): removes "
                             "other tenants' scheduling noise from a shared machine, so the "
                             "figures show the sim's own contribution. The kernel's RT "
                             "throttling still leaves 5%% of each core to everything else")
    args = parser.parse_args()
    import uvloop

    global _RT_PRIORITY
    _RT_PRIORITY = 1 if args.realtime else 0

    gc.disable()   # a collection pass in the client would show up as a fidelity error
    result = uvloop.run(_main(args))
    print(f"load average at start {result['load_avg_1m_at_start']:.2f} on {result['cpus']} CPUs; "
          f"pinned: {result['pinned']}; SCHED_FIFO priority: {result['realtime_priority']}")
    print(f"{'measure':44} {'value':>12}  target")
    if "pacing" in result:
        _print_pacing(result["pacing"])
    if "ttft" in result:
        _print_ttft(result["ttft"])
    Path(args.json).write_text(json.dumps(result, indent=2))
    print(f"wrote {args.json}")
    return 0


def _print_pacing(p: dict) -> None:
    print(f"{'streams (concurrent)':44} {p['streams']:>12}")
    print(f"{'model step at full batch (ms)':44} {p['model_step_ms']:>12.3f}")
    if "sim_steps" in p:
        print(f"{'sim: steps in the full-batch window':44} {p['sim_steps']:>12.0f}")
        print(f"{'sim: mean step, as written (ms)':44} {p['sim_mean_step_ms']:>12.3f}")
        print(f"{'sim: mean step, modelled (ms)':44} {p['sim_modelled_step_ms']:>12.3f}")
        print(f"{'sim: pacing error (%)':44} {p['sim_error_percent']:>12.2f}  |.| <= 5 "
              f"{'PASS' if p['sim_within_5_percent'] else 'FAIL'}")
    print(f"{'client: mean inter-token gap (ms)':44} {p['mean_itl_ms']:>12.3f}")
    print(f"{'client: mean error (%)':44} {p['mean_itl_error_percent']:>12.2f}")
    print(f"{'client: worst stream error (%)':44} {p['worst_stream_error_percent']:>12.2f}  <= 5 "
          f"{'PASS' if p['client_within_5_percent'] else 'FAIL'}")
    print(f"{'gap p50 / p99 (ms)':44} {p['itl_p50_ms']:>5.2f} / {p['itl_p99_ms']:.2f}")
    print(f"{'sim CPU during pacing (% of one core)':44} {p['server_cpu_percent']:>12.1f}")


def _print_ttft(t: dict) -> None:
    print(f"{'TTFT part: requests at rate (req/s)':44} {t['requests']:>6} @ {t['rate_rps']:.0f}")
    d = t["diff_ms"]
    print(f"{'client TTFT - server TTFT p50 (ms)':44} {d['p50']:>12.3f}")
    print(f"{'client TTFT - server TTFT p99 (ms)':44} {d['p99']:>12.3f}  < 1 "
          f"{'PASS' if t['p99_under_1_ms'] else 'FAIL'}")
    print(f"{'client TTFT - server TTFT p99.9 / max (ms)':44} {d['p99.9']:>5.3f} / {d['max']:.3f}")
    print(f"{'  client send -> sim received p50 / p99 (ms)':44} {t['request_leg_ms']['p50']:>5.3f} / "
          f"{t['request_leg_ms']['p99']:.3f}")
    print(f"{'  sim first token -> client p50 / p99 (ms)':44} {t['response_leg_ms']['p50']:>5.3f} / "
          f"{t['response_leg_ms']['p99']:.3f}")
    print(f"{'client send lag p99 (ms)':44} {t['client_lag_p99_ms']:>12.3f}")
    print(f"{'sim CPU during TTFT part (% of one core)':44} {t['server_cpu_percent']:>12.1f}")


if __name__ == "__main__":
    sys.exit(main())

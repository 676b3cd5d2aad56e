"""How fast this client host can replay: ``cpbench calibrate`` and the check every replay makes.

:func:`calibrate` finds, for chat and embeddings, the highest Poisson rate that ``cpbench
replay`` holds on this host with bounded lag (dispatch-lag p99 <= 1 ms and <= 1 % shortfall of
the achieved send rate against the target rate, no errors) against a zero-cost target: a fixed
responder in its own process (:func:`serve_fixed`, the same bodies as ``tools/bench/nginx.conf``)
or a given URL. It brackets by doubling, then bisects, with short runs of
:func:`cpbench.replaying.run.run_replay` on synthesized seeded traces, and stores the figures as JSON
(atomically) through :mod:`cpbench.calibration`.

Storing the figures and checking runs against them is :mod:`cpbench.calibration`'s job. NumPy,
Arrow and the replay machinery load inside the functions that use them.
"""
from __future__ import annotations

import os
import platform
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

from cpbench.calibration import LAG_P99_LIMIT_MS, SHORTFALL_LIMIT_PCT
from cpbench.errors import ClientSaturated, ConfigError
from cpbench.spawn import python_module_cmd

KINDS = ("chat", "embedding")
FORMAT_VERSION = 1
SEED = 20_261_128
EMBEDDING_DIM = 384
CHAT_CHUNKS = 16


# -- the machine and the arrival process -------------------------------------------------

def machine_description() -> dict:
    """CPU model, cores, kernel, Python and the load average now."""
    model = platform.processor() or "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    try:
        load = [round(x, 2) for x in os.getloadavg()]
    except OSError:
        load = None
    return {"cpu_model": model, "cores": os.cpu_count(), "kernel": platform.release(),
            "python": platform.python_version(), "host": platform.node(), "loadavg": load}


def poisson_trace(path: Path, kind: str, rate_rps: float, duration_s: float | None, seed: int,
                  count: int | None = None) -> int:
    """Write a seeded Poisson trace of one kind (16 tokens in, 16 out); returns its length.

    ``count`` (a fixed number of requests) replaces ``duration_s`` when given.
    """
    import numpy as np
    import pyarrow as pa

    from cpbench._core import schedule
    from cpbench.trace import write_trace
    arrivals = np.asarray(schedule.poisson(rate_rps, count=count, seed=seed) if count else
                          schedule.poisson(rate_rps, duration_s=duration_s, seed=seed))
    n = len(arrivals)
    llm = kind != "embedding"
    table = pa.table({
        "arrival_ns": pa.array(arrivals, pa.int64()),
        "kind": pa.array([kind] * n).dictionary_encode(),
        "model": pa.array(["bench"] * n).dictionary_encode(),
        "input_tokens": pa.array(np.full(n, 16, np.int32)),
        "output_tokens": pa.array(np.full(n, 16, np.int32)) if llm else pa.nulls(n, pa.int32()),
        "batch_size": pa.array(np.ones(n, np.int16)),
        "priority": pa.array(["NORMAL"] * n).dictionary_encode(),
    })
    write_trace(table, path, metadata={"generator": "cpbench.calibrate",
                                       "params": {"kind": kind, "rate_rps": rate_rps,
                                                  "duration_s": duration_s, "count": count},
                                       "seed": seed, "source": "synthetic"})
    return n


def point_stats(results) -> dict:
    """Target and achieved send rate, shortfall, lag percentiles and errors of one results table.

    Rates are over the spans of the intended and of the actual send times, so a client that
    falls behind and catches up late shows its shortfall (the summary's rates share one window).
    """
    import numpy as np
    intended = results.column("intended_ns").to_numpy()
    sent_all = results.column("sent_ns").to_numpy()
    sent_mask = sent_all >= 0
    sent = np.sort(sent_all[sent_mask])
    n = int(len(intended))
    span_target_s = (intended.max() - intended.min()) / 1e9 if n > 1 else 0.0
    span_sent_s = (sent[-1] - sent[0]) / 1e9 if len(sent) > 1 else 0.0
    target = (n - 1) / span_target_s if span_target_s > 0 else 0.0
    achieved = (len(sent) - 1) / span_sent_s if span_sent_s > 0 else 0.0
    # A client that sends everything late but evenly still holds the rate; one that drops
    # requests (sent < n) falls short by the missing share too.
    achieved *= len(sent) / n if n else 0.0
    lag_ms = (sent_all[sent_mask] - intended[sent_mask]) / 1e6
    return {"requests": n, "sent": int(len(sent)),
            "errors": n - results.column("error_class").null_count,
            "target_rps": target, "achieved_rps": achieved,
            "shortfall_pct": max(0.0, 100.0 * (1 - achieved / target)) if target else 100.0,
            "lag_p50_ms": float(np.percentile(lag_ms, 50)) if len(lag_ms) else None,
            "lag_p99_ms": float(np.percentile(lag_ms, 99)) if len(lag_ms) else None,
            "lag_max_ms": float(lag_ms.max()) if len(lag_ms) else None}


def held(stats: dict) -> bool:
    """The calibration criterion: no errors, <= 1 % shortfall, dispatch-lag p99 <= 1 ms."""
    return (stats["errors"] == 0 and stats["shortfall_pct"] <= SHORTFALL_LIMIT_PCT
            and stats["lag_p99_ms"] is not None and stats["lag_p99_ms"] <= LAG_P99_LIMIT_MS)


# -- the search ----------------------------------------------------------------------------

def find_max_rate(probe, *, start_rps: float, max_rps: float, max_points: int,
                  rel_tol: float = 0.05, min_rps: float = 1.0) -> float:
    """The highest rate ``probe(rate) -> bool`` holds: double until it fails, then bisect.

    At most ``max_points`` probes; stops when the bracket is within ``rel_tol`` or the rate
    reaches ``max_rps``. Returns 0.0 when no probed rate held.
    """
    lo, hi, rate = 0.0, None, min(start_rps, max_rps)
    for _ in range(max_points):
        if probe(rate):
            lo = rate
            if hi is None:
                if rate >= max_rps:
                    break
                rate = min(rate * 2, max_rps)
                continue
        else:
            hi = rate
        if lo == 0.0:
            rate = hi / 2
            if rate < min_rps:
                break
            continue
        if hi / lo <= 1 + rel_tol:
            break
        rate = (lo + hi) / 2
    return lo


def calibrate(*, url: str | None = None, duration_s: float = 3.0, kinds=KINDS,
              workers: int | None = None, start_rps: float = 1000.0,
              max_rps: float = 200_000.0, max_points: int = 8, seed: int = SEED,
              log=None) -> dict:
    """Find the highest rate this host holds for each kind; returns the calibration dict.

    Parameters
    ----------
    url
        A zero-cost target's base URL; None starts :func:`serve_fixed` in its own process.
    duration_s
        Length of each probe run (seconds of trace).
    kinds
        Among ``chat``, ``embedding``.
    workers
        Replay worker processes (default: all cores, as ``cpbench replay``).
    start_rps, max_rps, max_points
        The search: first rate, ceiling and number of probe runs per kind.
    log
        Called with one line per probe (None: silent).
    """
    from cpbench.replaying.run import run_replay
    from cpbench.results import read_results
    bad = [k for k in kinds if k not in KINDS]
    if bad or not kinds:
        raise ConfigError(f"--kinds must be among {', '.join(KINDS)}; got {list(kinds)}")
    if not (duration_s > 0 and start_rps > 0 and max_rps >= start_rps and max_points >= 1):
        raise ConfigError("--duration-s and --start-rps must be positive, --max-rps >= "
                          "--start-rps and --max-points >= 1")
    workers = int(workers or os.cpu_count() or 1)
    machine = machine_description()
    result = {"version": FORMAT_VERSION,
              "created_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "target": url or "embedded fixed responder", "workers": workers,
              "duration_s": duration_s, "seed": seed,
              "criteria": {"lag_p99_ms": LAG_P99_LIMIT_MS,
                           "shortfall_pct": SHORTFALL_LIMIT_PCT, "errors": 0},
              "machine": machine, "kinds": {}}
    with tempfile.TemporaryDirectory(prefix="cpbench-calibrate-") as tmp:
        tmp = Path(tmp)
        responder = FixedResponder() if url is None else None
        try:
            target = responder.url if responder else url
            for kind in kinds:
                points: list[dict] = []

                def probe(rate: float, kind=kind, points=points) -> bool:
                    i = len(points)
                    trace = tmp / f"{kind}-{i}.arrow"
                    poisson_trace(trace, kind, rate, duration_s, seed + i)
                    out = tmp / f"{kind}-{i}"
                    try:
                        run_replay(trace, url=target, output=out, workers=workers, quiet=True,
                                   report=False, monitor=False, timeout_s=5.0, grace_s=1.0)
                        saturated = False
                    except ClientSaturated:
                        saturated = True    # stopped far behind: what it sent still counts
                    stats = point_stats(read_results(out / "results.arrow"))
                    stats.update(rate_rps=rate, held=held(stats) and not saturated,
                                 client_saturated=saturated)
                    points.append(stats)
                    if log:
                        log(f"{kind:<10} {rate:>10,.0f} req/s  achieved "
                            f"{stats['achieved_rps']:>10,.0f}  short "
                            f"{stats['shortfall_pct']:5.2f} %  lag p99 "
                            f"{stats['lag_p99_ms'] or 0:7.3f} ms  errors {stats['errors']}  "
                            f"{'held' if stats['held'] else 'not held'}"
                            f"{' (client saturated: stopped)' if saturated else ''}")
                    return stats["held"]

                best = find_max_rate(probe, start_rps=start_rps, max_rps=max_rps,
                                     max_points=max_points)
                result["kinds"][kind] = {"max_rate_rps": best, "points": points}
        finally:
            if responder is not None:
                responder.stop()
    result["machine"]["loadavg_end"] = machine_description()["loadavg"]
    return result


# -- the zero-cost target -------------------------------------------------------------------

def fixed_bodies() -> dict[bytes, bytes]:
    """Path -> full HTTP response: chat SSE (16 chunks, usage, [DONE]) and 384-float embeddings."""
    chunk = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
             b'"model":"bench","choices":[{"index":0,"delta":{"content":"tok "},'
             b'"finish_reason":null}]}\n\n')
    usage = (b'data: {"id":"chatcmpl-bench","object":"chat.completion.chunk","created":0,'
             b'"model":"bench","choices":[],"usage":{"prompt_tokens":16,'
             b'"completion_tokens":16,"total_tokens":32}}\n\n')
    sse = chunk * CHAT_CHUNKS + usage + b"data: [DONE]\n\n"
    vector = ",".join(f"{-0.5 + 0.037 * (i % 28):.6f}" for i in range(EMBEDDING_DIM))
    emb = (b'{"object":"list","data":[{"object":"embedding","index":0,"embedding":['
           + vector.encode() + b']}],"model":"bench","usage":{"prompt_tokens":16,'
           b'"total_tokens":16}}')

    def response(ctype: bytes, body: bytes) -> bytes:
        return (b"HTTP/1.1 200 OK\r\nContent-Type: " + ctype + b"\r\nContent-Length: "
                + str(len(body)).encode() + b"\r\n\r\n" + body)
    return {b"/v1/chat/completions": response(b"text/event-stream", sse),
            b"/v1/completions": response(b"text/event-stream", sse),
            b"/v1/embeddings": response(b"application/json", emb),
            b"/health": response(b"application/json", b'{"status":"ok"}')}


def serve_fixed(port: int = 0) -> None:
    """Serve :func:`fixed_bodies` on 127.0.0.1 (HTTP/1.1 keep-alive) until killed.

    Prints the port on stdout once listening. A bare ``asyncio.Protocol``: no framework, so the
    target costs microseconds and the client is what the calibration measures.
    """
    import asyncio
    bodies = fixed_bodies()
    not_found = b"HTTP/1.1 404 Not Found\r\nContent-Length: 0\r\n\r\n"

    class Fixed(asyncio.Protocol):
        def connection_made(self, transport) -> None:
            self.transport = transport
            self.buf = b""

        def data_received(self, data: bytes) -> None:
            buf = self.buf + data
            out = []
            while True:
                end = buf.find(b"\r\n\r\n")
                if end < 0:
                    break
                head = buf[:end].lower()
                i = head.find(b"\r\ncontent-length:")
                length = int(head[i + 17: head.find(b"\r\n", i + 2) if head.find(
                    b"\r\n", i + 2) >= 0 else len(head)]) if i >= 0 else 0
                if len(buf) < end + 4 + length:
                    break
                path = head[head.find(b" ") + 1: head.find(b" ", head.find(b" ") + 1)]
                out.append(bodies.get(path, not_found))
                buf = buf[end + 4 + length:]
            self.buf = buf
            if out:
                self.transport.write(b"".join(out))

    async def main() -> None:
        server = await asyncio.get_running_loop().create_server(
            Fixed, "127.0.0.1", port, backlog=4096)
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Event().wait()

    try:
        import uvloop
        uvloop.run(main())
    except ImportError:
        asyncio.run(main())


class FixedResponder:
    """:func:`serve_fixed` in its own process on a free loopback port, stopped by PID."""

    def __init__(self, ready_s: float = 20.0, cmd: list[str] | None = None) -> None:
        import subprocess
        self.proc = subprocess.Popen(cmd or python_module_cmd("cpbench.calibrate", "serve"),
                                     stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        line = _read_line(self.proc.stdout.fileno(), time.monotonic() + ready_s).strip()
        if not line.isdigit():                          # the port, once it listens
            self.proc.kill()        # first: a responder that hangs never closes its stderr
            self.proc.wait()
            err = self.proc.stderr.read().decode("utf-8", "replace").strip().splitlines()[-1:]
            self.stop()
            from cpbench.errors import TargetError
            raise TargetError(f"the fixed responder did not start: {' '.join(err) or 'no port'}")
        self.url = f"http://127.0.0.1:{int(line)}"

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after 5 s."""
        import subprocess
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        for f in (self.proc.stdout, self.proc.stderr):
            f.close()


def _read_line(fd: int, deadline: float) -> bytes:
    """The first line written to pipe ``fd``, or what came before EOF or ``deadline``."""
    import select
    got = b""
    while b"\n" not in got:
        left = deadline - time.monotonic()
        if left <= 0 or not select.select([fd], [], [], left)[0]:
            break
        part = os.read(fd, 4096)
        if not part:
            break
        got += part
    return got.split(b"\n", 1)[0]


if __name__ == "__main__":
    if sys.argv[1:2] == ["serve"]:
        serve_fixed(int(sys.argv[2]) if len(sys.argv) > 2 else 0)

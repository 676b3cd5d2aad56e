"""Local workers vs `cpbench replay --ray` against nginx, and the driver's ingest ceiling.

For each rate (a seeded Poisson chat trace, nginx answering 16-chunk SSE bodies): the same
trace replayed with ``--workers N`` (local processes) and with ``--ray`` (N dispatcher actors
on this host's local Ray instance): achieved rate, dispatch lag p99, client CPU per request
and the peak resident memory of all client processes. "Client processes" are this process
(the driver) and every process under it: the local workers, or Ray's gcs_server, raylet,
its worker processes and the actors. CPU comes from /proc over the sending window (from the
run's start instant for the run's duration; set-up and tear-down are not counted, as in
tools/bench_replay.py); RSS is the sum over those processes, sampled every 50 ms over the
whole invocation. nginx (a daemon, not under this process) is excluded.

Then the ingest ceiling: result rows per second the driver turns into record batches and
writes to results.arrow (a) from packed row buffers in memory (the local parent's path) and
(b) pulled from a Ray actor that serves prebuilt 1,000-row batches through the same long
poll as a dispatcher actor (the --ray path).

Ray binds to the host's address unless only loopback exists, so this script re-executes
itself inside a fresh network namespace (``unshare -n``, root) and refuses to measure
unless every node address Ray reports is 127.0.0.1.

    python tools/bench_ray.py                          # 2,000 and 4,000 req/s, 3 s each
    python tools/bench_ray.py --rates 2000 --seconds 2 --json /tmp/bench_ray.json
    python tools/bench_ray.py --realtime 1             # SCHED_FIFO senders on a busy host
"""
from __future__ import annotations

import argparse
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SEED = 20_260_619
TICK_S = os.sysconf("SC_CLK_TCK")
PAGE_KB = os.sysconf("SC_PAGE_SIZE") // 1024
BATCH_ROWS = 1_000


# -- measuring the client processes --------------------------------------------------------

def _stat(pid: int) -> tuple[int, float, int] | None:
    """(ppid, cpu seconds of its own threads, rss KiB) from /proc, None when gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
        fields = raw[raw.rindex(")") + 2:].split()
        cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
    except (OSError, ValueError):
        return None
    if b"nginx" in cmd:
        return None
    cpu = (int(fields[11]) + int(fields[12])) / TICK_S     # utime + stime
    return int(fields[1]), cpu, int(fields[21]) * PAGE_KB


def tree() -> dict[int, tuple[float, int]]:
    """pid -> (cpu s, rss KiB) for this process and every live process under it."""
    stats = {}
    for d in os.listdir("/proc"):
        if d.isdigit():
            s = _stat(int(d))
            if s is not None:
                stats[int(d)] = s
    mine, frontier = {os.getpid()}, [os.getpid()]
    children: dict[int, list[int]] = {}
    for pid, (ppid, _, _) in stats.items():
        children.setdefault(ppid, []).append(pid)
    while frontier:
        for child in children.get(frontier.pop(), []):
            if child not in mine:
                mine.add(child)
                frontier.append(child)
    return {pid: stats[pid][1:] for pid in mine if pid in stats}


class Sampler:
    """The client process tree's CPU seconds, sampled every 50 ms, and its peak summed RSS.

    The CPU figure is the sum over every process seen of its own utime + stime, a process
    that has gone counting with its last sample: Ray reaps its workers with SIGCHLD ignored,
    so their time never reaches a parent's cutime. It is read over the sending window,
    when every client process is alive.
    """

    def __init__(self) -> None:
        self.series: list[tuple[int, float]] = []
        self.cpu_last: dict[int, float] = {}
        self.peak_rss_kb = 0
        self._stop = threading.Event()
        self._sample()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        now = tree()
        self.cpu_last.update({pid: c for pid, (c, _) in now.items()})
        self.series.append((time.monotonic_ns(), sum(self.cpu_last.values())))
        self.peak_rss_kb = max(self.peak_rss_kb, sum(r for _, r in now.values()))

    def _run(self) -> None:
        while not self._stop.wait(0.05):
            self._sample()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()
        self._sample()

    def cpu_s(self, t0_ns: int, t1_ns: int) -> float:
        """CPU seconds between two instants (linear between samples)."""
        import numpy as np
        t = np.array([x for x, _ in self.series], dtype=np.float64)
        c = np.array([y for _, y in self.series])
        return float(np.interp(t1_ns, t, c) - np.interp(t0_ns, t, c))


_starts: list[int] = []


def _note_start(cls) -> None:
    # The run's start instant (the runner picks it and hands it to the pool's start()), so
    # CPU can be counted over the sending window alone, as tools/bench_replay.py counts it.
    original = cls.start

    def start(self, start_ns: int) -> None:
        _starts.append(start_ns)
        original(self, start_ns)
    cls.start = start


# -- the runs --------------------------------------------------------------------------------

def start_nginx(prefix: Path) -> tuple[int, str]:
    out = subprocess.run([str(HERE / "bench" / "start_nginx.sh"), "0", str(prefix)],
                         check=True, capture_output=True, text=True).stdout.split()
    return int(out[0]), out[1]


def measure_median(repeat: int, trace: Path, out: Path, url: str, **options) -> dict:
    """``repeat`` runs of one point; each figure is the median over them (a shared host's
    neighbours disturb single runs)."""
    import numpy as np
    runs = [measure(trace, out.with_name(f"{out.name}-{i}"), url, **options)
            for i in range(repeat)]
    return {k: float(np.median([r[k] for r in runs])) for k in runs[0]}


def measure(trace: Path, out: Path, url: str, **options) -> dict:
    from cpbench.replaying.run import run_replay
    sampler = Sampler()
    run_replay(trace, url=url, output=out, quiet=True, report=False, monitor=False,
               **options)
    sampler.stop()
    s = json.loads((out / "summary.json").read_text())
    sent = s["requests"]["sent"]
    start_ns = _starts[-1]
    window_cpu_s = sampler.cpu_s(start_ns, start_ns + int(s["run"]["duration_s"] * 1e9))
    return {"rate_rps": s["rates"]["scheduled_rps"], "achieved_rps": s["rates"]["achieved_rps"],
            "lag_p99_ms": s["dispatch_lag_ms"]["p99"], "errors": s["requests"]["errors"],
            "sent": sent, "cpu_us_per_req": 1e6 * window_cpu_s / max(1, sent),
            # The dispatcher processes alone (workers or actors, as each reports its own CPU
            # while sending): what one client core spends per request.
            "sender_us_per_req": 1e6 * s["run"]["client"]["worker_cpu_s"] / max(1, sent),
            "peak_rss_mb": sampler.peak_rss_kb / 1024,
            "actors": len(s["run"].get("cluster", {}).get("nodes", [{}])[0].get("workers", []))
            if "cluster" in s["run"] else 0}


def ingest_local(n_rows: int, out: Path) -> float:
    """Rows/s: packed row buffers -> record batches -> results.arrow (the parent's path)."""
    from cpbench.results import ResultsWriter, rows_to_batch
    packed = _packed(BATCH_ROWS)
    writer = ResultsWriter(out / "ingest.arrow", {})
    t0 = time.perf_counter()
    for w in range(n_rows // BATCH_ROWS):
        writer.write(rows_to_batch(packed, ["bench"], w % 4))
    writer.close()
    return n_rows / (time.perf_counter() - t0)


def _packed(n: int):
    from cpbench.replaying.rows import RowBuffer
    buf = RowBuffer()
    for j in range(n):
        buf.append((j, 0, 1, 0, j * 250_000, j * 250_000 + 50_000, j * 250_000 + 400_000,
                    j * 250_000 + 500_000, j * 250_000 + 2_000_000, 64, 16, 1, 200, -1,
                    80_000, 120_000, 0, 1000.0, 5000.0))
    return buf.take_rows()


class RowSource:
    """A stand-in dispatcher actor: its poll answers with prebuilt row batches at once."""

    def __init__(self) -> None:
        self.msg = ("rows", _packed(BATCH_ROWS))

    def poll(self, wait_s: float) -> list:
        return [self.msg] * 4


def ingest_ray(n_rows: int, out: Path, n_actors: int) -> float:
    """Rows/s the driver pulls from ``n_actors`` actors' polls and writes, as RayPool does."""
    import ray
    from cpbench.results import ResultsWriter, rows_to_batch
    actors = [ray.remote(num_cpus=0)(RowSource).remote() for _ in range(n_actors)]
    ray.get([a.poll.remote(0) for a in actors])
    writer = ResultsWriter(out / "ingest-ray.arrow", {})
    polls = {a.poll.remote(0): w for w, a in enumerate(actors)}
    done = 0
    t0 = time.perf_counter()
    while done < n_rows:
        ready, _ = ray.wait(list(polls), num_returns=1, timeout=5)
        for ref in ready:
            w = polls.pop(ref)
            for _, packed in ray.get(ref):
                writer.write(rows_to_batch(packed, ["bench"], w))
                done += BATCH_ROWS
            polls[actors[w].poll.remote(0)] = w
    rate = done / (time.perf_counter() - t0)
    writer.close()
    for a in actors:
        ray.kill(a)
    return rate


def _row(name: str, r: dict) -> str:
    return (f"{name:<8}{r['rate_rps']:>9,.0f}{r['achieved_rps']:>10,.0f}{r['lag_p99_ms']:>9.3f}"
            f"{r['cpu_us_per_req']:>12.1f}{r['sender_us_per_req']:>10.1f}"
            f"{r['peak_rss_mb']:>9.0f}{r['errors']:>7.0f}")


def bench(args: argparse.Namespace) -> dict:
    import ray
    from cpbench.calibrate import poisson_trace
    from cpbench.replaying.cluster import RayPool
    from cpbench.replaying.pool import WorkerPool
    _note_start(WorkerPool)
    _note_start(RayPool)
    tmp = Path(tempfile.mkdtemp(prefix="cpbench-bench-ray-"))
    pid, url = start_nginx(tmp / "nginx")
    report: dict = {"seconds": args.seconds, "workers": args.workers, "repeat": args.repeat,
                    "realtime": args.realtime, "points": []}
    try:
        traces = {}
        for rate in args.rates:
            traces[rate] = tmp / f"chat-{rate}.arrow"
            poisson_trace(traces[rate], "chat", rate, args.seconds, SEED)
        print(f"{'client':<8}{'rate':>9}{'achieved':>10}{'lag p99':>9}{'CPU µs/req':>12}"
              f"{'sender':>10}{'peak MB':>9}{'errors':>7}")
        print(f"{'':<8}{'req/s':>9}{'req/s':>10}{'ms':>9}{'all procs':>12}{'µs/req':>10}"
              f"{'all':>9}")
        results: dict = {}
        for rate in args.rates:              # local first: no Ray processes exist yet
            results[("local", rate)] = measure_median(args.repeat, traces[rate],
                                                      tmp / f"local-{rate}", url,
                                               workers=args.workers, realtime=args.realtime)
            print(_row("local", results[("local", rate)]), flush=True)
        ray.init(num_cpus=args.workers + 1, include_dashboard=False, logging_level="WARNING")
        addresses = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
        if set(addresses) != {"127.0.0.1"}:
            raise SystemExit(f"Ray reports node addresses {addresses}; refusing to measure "
                             "off loopback")
        # Unreported warm-up: Ray starts its idle worker processes after init; their start-up
        # would otherwise land in the first point's sending window.
        measure(traces[args.rates[0]], tmp / "ray-warmup", url, ray="auto",
                workers_per_node=args.workers, duration_s=0.5)
        for rate in args.rates:
            results[("ray", rate)] = measure_median(args.repeat, traces[rate],
                                                    tmp / f"ray-{rate}", url, ray="auto",
                                             workers_per_node=args.workers,
                                             realtime=args.realtime)
            print(_row("ray", results[("ray", rate)]), flush=True)
        for (client, rate), r in results.items():
            report["points"].append({"client": client, **r})
        for rate in args.rates:
            a, b = results[("local", rate)], results[("ray", rate)]
            ratio = b["cpu_us_per_req"] / a["cpu_us_per_req"]
            print(f"{rate:,} req/s: ray/local CPU per request while sending {ratio:.2f}x, "
                  f"lag p99 {b['lag_p99_ms']:.3f} vs {a['lag_p99_ms']:.3f} ms")
        n = args.ingest_rows
        report["ingest_local_rows_per_s"] = ingest_local(n, tmp)
        report["ingest_ray_rows_per_s"] = ingest_ray(n, tmp, args.workers)
        print(f"driver ingest ceiling: {report['ingest_local_rows_per_s']:,.0f} rows/s from "
              f"memory, {report['ingest_ray_rows_per_s']:,.0f} rows/s pulled from "
              f"{args.workers} Ray actor(s) ({n:,} rows, {BATCH_ROWS:,}-row batches)")
        ray.shutdown()
    finally:
        os.kill(pid, signal.SIGTERM)
        time.sleep(0.2)                     # nginx removes its pid file on the way out
        shutil.rmtree(tmp, ignore_errors=True)
    return report


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--rates", default="2000,4000", help="req/s, comma-separated")
    p.add_argument("--seconds", type=float, default=3.0, help="trace length per point")
    p.add_argument("--workers", type=int, default=1,
                   help="local worker processes = Ray actors on this host (default 1)")
    p.add_argument("--repeat", type=int, default=3, help="runs per point (median shown)")
    p.add_argument("--realtime", type=int, default=0, metavar="PRIO",
                   help="replay with --realtime PRIO (SCHED_FIFO senders) on a busy host")
    p.add_argument("--ingest-rows", type=int, default=400_000)
    p.add_argument("--json", type=Path, default=None, help="also write the figures here")
    p.add_argument("--in-netns", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    args.rates = [int(r) for r in args.rates.split(",")]
    if not args.in_netns:
        # Re-run inside a loopback-only network namespace (see the module docstring).
        inner = [sys.executable, str(Path(__file__).resolve()), "--in-netns", *(argv or
                 sys.argv[1:])]
        cmd = "ip link set lo up && exec " + " ".join(f"'{a}'" for a in inner)
        return subprocess.run(["unshare", "-n", "sh", "-c", cmd],
                              env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"}).returncode
    report = bench(args)
    if args.json:
        args.json.write_text(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The host's floor beside cpbench: CPU per request, dispatch lag and send-gap KS distance of a
minimal C sender, measured interleaved with ``cpbench replay``.

Part of what a replayed request costs is not the dispatcher's to remove: the sleep until the
send is due, the wake-up, the ``write`` (on loopback it also runs the server's side of TCP)
and the ``read``. ``tools/bench/floor.c`` does only those things, the way cpbench's worker
does them: one thread, one epoll, a timerfd armed at the next send's absolute time (1 ns timer
slack and the 0.1 ms scheduler slice a worker asks for), keep-alive connections opened before
the start, the rows due at a wake-up written whole (a row that falls due meanwhile waits for
the next turn, as in ``Sender.send_due``), each answer read to its end. It has no results, no
summary and no parent process. Point by point it runs beside cpbench: the same nginx, the
same arrivals (the trace's ``arrival_ns``), the same request bytes (row 0 rendered by
cpbench's own renderer with replay's default options), and with ``--workers N`` N processes
that each take every N-th arrival from one shared start, as cpbench splits a plan.

    python tools/bench_floor.py                              # chat and embeddings, 4,000 req/s
    python tools/bench_floor.py --bodies both --repeats 3    # also 1,000-token chat, 16 x 128
    python tools/bench_floor.py --rates 8000 --workers 2     # the fidelity ladder's top
    python tools/bench_floor.py --kinds chat --rates 40000 --workers 2 --sched   # root, perf

Per run it prints for the floor and for cpbench: CPU µs per request (cpbench's is its workers'
plus its parent's, as ``tools/bench_replay.py`` reports it), lag p50/p99 in µs (sent −
intended), the KS distance of the send stamps' gaps to the exponential beside the schedule's
own (the ideal for that n), the gaps' coefficient of variation and whether the run held its
rate (``bench_replay.held``: at most 1 % short, lag p99 at most 1 ms, CV within 0.1 + 3/sqrt(n)
of 1), and cpbench's CPU over the floor's; then medians over repeats.
With ``--sched`` (root and ``perf``) each client also runs under a trace of the scheduler's
events (``tools/sched_waits.py``), and a second table gives, per client, its stretches on a
CPU (p50/p99/p99.9 µs), its run-queue waits over 0.5 and 1 ms (count and ms in all), and
what ran on the waiting CPU during the waits over 0.5 ms: the client's other processes, the
server, cpbench's parent, other tasks. That tells whose the lag tail at high rates is, with
far fewer runs than comparing lag p99.
What the floor cannot reach on a host, no dispatcher built this way reaches there. Needs
``cc`` and nginx (``tools/bench/start_nginx.sh``).
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_replay import (BATCH_PATH, SEED, exp_ks, held, make_realistic_trace,  # noqa: E402
                          make_trace, measure, start_nginx, write_batch_answer)
from sched_waits import SchedTrace, parse, processes_named, summarize  # noqa: E402

CLIENT_NAMES = {"floor": "floor", "cpbench": "cpbench-w"}    # command-name prefixes


def build_floor(folder: Path) -> Path:
    """Compile tools/bench/floor.c into ``folder``."""
    exe = folder / "floor"
    subprocess.run(["cc", "-O2", "-Wall", "-pthread", "-o", str(exe),
                    str(HERE / "bench" / "floor.c")], check=True)
    return exe


def request_bytes(trace: Path, url: str) -> bytes:
    """Row 0 of ``trace`` exactly as ``cpbench replay --url URL`` sends it with its default
    options: rendered by the dispatcher a worker builds from its plan and its share of those
    options (tests/test_bench_floor.py checks these bytes against what a replay sent)."""
    from cpbench._core.hist import Histogram
    from cpbench.replaying.dispatch import Dispatcher, DispatchOptions
    from cpbench.replaying.options import ReplayOptions
    from cpbench.replaying.planning import build_plan, select_rows
    from cpbench.replaying.wire import Target
    from cpbench.trace import read_trace

    table = read_trace(trace)
    plan = build_plan(table, select_rows(table), 0, 1)
    options = DispatchOptions(**ReplayOptions().dispatch_config(0, None))
    dispatcher = Dispatcher(Target.from_url(url), plan, options, 0, lambda kind, payload: None,
                            Histogram())
    return dispatcher.renderer.render(0)


def run_floor(exe: Path, port: int, trace: Path, request: Path, connections: int,
              out: Path, workers: int = 1, threads: int = 1) -> dict:
    """Send ``request`` to 127.0.0.1:``port`` at ``trace``'s arrival times with the C sender
    (the same arrivals cpbench replays), over ``connections`` keep-alive connections per
    process. With ``workers`` > 1, that many processes run at once, each with every
    ``workers``-th arrival (cpbench's split of a plan between its workers); ``threads`` 2
    gives each process a thread that only sends and one that only reads, 3 one thread with no
    timerfd (the wait's own timeout times the sends)."""
    from cpbench.trace import read_trace
    arrivals = np.sort(read_trace(trace).column("arrival_ns").to_numpy()).astype(np.int64)
    start_ns = time.monotonic_ns() + 300_000_000      # one schedule: every process's pool is open
    procs = []
    for w in range(workers):
        schedule = out.with_suffix(f".{w}.schedule")
        arrivals[w::workers].tofile(schedule)
        procs.append(subprocess.Popen([str(exe), "127.0.0.1", str(port), str(schedule),
                                       str(request), str(connections), f"{out}.{w}",
                                       str(start_ns), str(threads)],
                                      stdout=subprocess.PIPE, text=True))
    results = []
    try:
        for w, proc in enumerate(procs):
            # Each gives up 5 s after its last send is due; this bound is for a hung one.
            stdout, _ = proc.communicate(timeout=(arrivals[-1] - arrivals[0]) / 1e9 + 60)
            if proc.returncode:
                raise RuntimeError(f"floor process {w} exited {proc.returncode}")
            results.append(json.loads(stdout))
    finally:
        for proc in procs:                  # only the processes started here, by their pid
            if proc.poll() is None:
                proc.kill()
                proc.wait()
    intended, sent = [], []
    for w in range(workers):
        times = np.fromfile(f"{out}.{w}", dtype=np.int64)
        intended.append(times[:len(times) // 2])
        sent.append(times[len(times) // 2:])
    intended, sent = np.concatenate(intended), np.concatenate(sent)
    lag_us = (sent - intended) / 1e3
    n = sum(r["requests"] for r in results)
    gaps = np.diff(np.sort(sent)).astype(np.float64)
    sent_cv = float(gaps.std() / gaps.mean())
    shortfall = 1 - (arrivals[-1] - arrivals[0]) / (sent.max() - sent.min())
    return {"requests": n, "errors": sum(r["errors"] for r in results),
            "answers": sum(r["answers"] for r in results),
            "connections": sum(r["connections"] for r in results),
            "cpu_us_per_request": sum(r["cpu_s"] for r in results) / n * 1e6,
            "lag_p50_us": float(np.percentile(lag_us, 50)),
            "lag_p99_us": float(np.percentile(lag_us, 99)),
            "trace_ks": exp_ks(np.diff(arrivals).astype(np.float64)),
            "sent_ks": exp_ks(gaps), "sent_cv": sent_cv,
            "held": held(shortfall, float(np.percentile(lag_us, 99)) / 1e3, sent_cv, n),
            "window_ns": [int(start_ns + arrivals[0]), int(start_ns + arrivals[-1])]}


def run_cpbench(trace: Path, out: Path, url: str, workers: int) -> dict:
    r = measure(trace, out, url, workers=workers, loop="uvloop")
    return {"requests": r["requests"], "errors": r["errors"], "connections": r["connections"],
            "cpu_us_per_request": r["cpu_us_per_request"],
            "lag_p50_us": r["lag_p50_ms"] * 1e3, "lag_p99_us": r["lag_p99_ms"] * 1e3,
            "trace_ks": r["trace_ks"], "sent_ks": r["sent_ks"], "sent_cv": r["send_gap_cv"],
            "held": r["held"], "window_ns": r["window_ns"]}


def traced(who: str, folder: Path, run, on: bool) -> dict:
    """``run()``'s result; with ``on``, under a trace of the scheduler's events, with their
    summary for ``who``'s processes added as ``sched``."""
    if not on:
        return run()
    with SchedTrace(folder) as trace:
        result = run()
    events, comms = parse(trace.lines)
    clients = processes_named(events, comms, CLIENT_NAMES[who.split("/")[0]])
    a, b = (t / 1e9 for t in result["window_ns"])      # the schedule's span only
    result["sched"] = summarize(events, comms, clients, parent=os.getpid(), window=(a, b))
    # The server's own stretches and waits beside this client (its share of the CPUs).
    result["sched"]["server"] = summarize(events, comms, processes_named(events, comms, "nginx"),
                                          parent=os.getpid(), window=(a, b))
    return result


SCHED_HEADER = (f"{'kind':<16}{'rate':>7}{'who':>9}{'stretch p50':>12}{'p99':>7}{'p99.9':>7}"
                f"{'>0.5ms':>7}{'waits>0.5ms':>12}{'ms':>7}{'>1ms':>6}{'ms':>7}"
                f"   behind (ms): client server parent other")


def sched_line(kind: str, rate: float, who: str, s: dict) -> str:
    b = s["behind_ms"]
    return (f"{kind:<16}{rate:>7g}{who:>9}{s['stretch_us']['p50']:>12.0f}"
            f"{s['stretch_us']['p99']:>7.0f}{s['stretch_us']['p99.9']:>7.0f}"
            f"{s['stretches_over_0.5ms']:>7}{s['waits_over_0.5ms']:>12}"
            f"{s['wait_ms_over_0.5ms']:>7.1f}{s['waits_over_1ms']:>6}{s['wait_ms_over_1ms']:>7.1f}"
            f"   {b['client']:>13.1f}{b['server']:>7.1f}{b['parent']:>7.1f}{b['other']:>6.1f}")


HEADER = (f"{'kind':<16}{'rate':>7}{'who':>9}{'requests':>10}{'errors':>7}{'conns':>7}"
          f"{'cpu us/req':>11}{'lag p50 us':>11}{'lag p99 us':>11}{'sent KS':>9}{'ideal':>8}"
          f"{'gap CV':>8}{'held':>5}{'cpu ratio':>10}")


def line(kind: str, rate: float, who: str, r: dict, ratio: float | None) -> str:
    return (f"{kind:<16}{rate:>7g}{who:>9}{r['requests']:>10}{r['errors']:>7}"
            f"{r['connections']:>7}{r['cpu_us_per_request']:>11.1f}{r['lag_p50_us']:>11.1f}"
            f"{r['lag_p99_us']:>11.1f}{r['sent_ks']:>9.4f}{r['trace_ks']:>8.4f}"
            f"{r['sent_cv']:>8.3f}{'y' if r['held'] else 'n':>5}"
            + (f"{ratio:>10.2f}" if ratio is not None else ""))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--kinds", default="chat,embedding")
    ap.add_argument("--rates", default="4000")
    ap.add_argument("--seconds", type=float, default=4.0)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--workers", type=int, default=1,
                    help="cpbench workers, and C sender processes beside them (each with "
                         "every N-th arrival)")
    ap.add_argument("--bodies", default="small", choices=("small", "realistic", "both"))
    ap.add_argument("--floor-threads", default="1",
                    help="comma-separated: run the floor with one thread per process (1, as a "
                         "cpbench worker), with a sending and a reading thread (2), and/or "
                         "with one thread that times its sends by epoll_pwait2's nanosecond "
                         "timeout instead of a timerfd (3)")
    ap.add_argument("--sched", action="store_true",
                    help="trace the scheduler's events around each client (root, perf) and "
                         "print where its run-queue waits went (tools/sched_waits.py)")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench_floor.json"))
    args = ap.parse_args(argv)
    bodies = ["small", "realistic"] if args.bodies == "both" else [args.bodies]
    points = []
    with tempfile.TemporaryDirectory(prefix="cpbench-floor-") as tmp:
        tmp = Path(tmp)
        exe = build_floor(tmp)
        os.chmod(tmp, 0o755)                 # nginx's workers read the batch answer through it
        pid, url = start_nginx(tmp / "nginx")
        write_batch_answer(tmp / "nginx")
        port = int(url.rsplit(":", 1)[1].split("/")[0])
        try:
            print(HEADER, flush=True)
            for kind in args.kinds.split(","):
                for body in bodies:
                    label = kind if body == "small" else f"{kind}/real"
                    for rate in (float(r) for r in args.rates.split(",")):
                        trace = tmp / f"{kind}-{rate:g}.arrow"
                        make_trace(trace, kind, rate, args.seconds, SEED)
                        target = url
                        if body == "realistic":
                            trace = make_realistic_trace(trace, tmp / f"{kind}-{rate:g}-r.arrow",
                                                         kind)
                            target = url + BATCH_PATH if kind == "embedding" else url
                        request = tmp / f"{label.replace('/', '-')}.http"
                        request.write_bytes(request_bytes(trace, target))
                        for k in range(args.repeats):
                            out = tmp / f"out-{label.replace('/', '-')}-{rate:g}-{k}"
                            mine = traced("cpbench", tmp, lambda: run_cpbench(
                                trace, out, target, args.workers), args.sched)
                            # The floor opens as many connections as cpbench opened before
                            # its start (its pool rule), so both pay the same setup.
                            per = -(-mine["connections"] // args.workers)
                            floors = {}
                            for threads in (int(t) for t in args.floor_threads.split(",")):
                                who = "floor" if threads == 1 else f"floor/{threads}t"
                                floors[who] = traced(who, tmp, lambda: run_floor(
                                    exe, port, trace, request, max(1, min(per, 4096)),
                                    tmp / f"floor-{k}.bin", args.workers, threads),
                                    args.sched)
                                print(line(label, rate, who, floors[who], None), flush=True)
                            base = next(iter(floors.values()))
                            ratio = mine["cpu_us_per_request"] / base["cpu_us_per_request"]
                            print(line(label, rate, "cpbench", mine, ratio), flush=True)
                            if args.sched:
                                print(SCHED_HEADER)
                                for who, r in [*floors.items(), ("cpbench", mine)]:
                                    print(sched_line(label, rate, who, r["sched"]), flush=True)
                                    print(sched_line("", rate, "nginx", r["sched"]["server"]))
                            points.append({"kind": label, "rate_rps": rate, "repeat": k,
                                           "floor": base, "floors": floors, "cpbench": mine,
                                           "cpu_ratio": ratio})
        finally:
            os.kill(pid, signal.SIGTERM)
    summary: dict[str, list[dict]] = {}
    for p in points:
        summary.setdefault(f"{p['kind']}@{p['rate_rps']:g}", []).append(p)
    print("\nmedians over repeats: CPU µs per request · lag p50 µs · send-gap KS / ideal · "
          "send-gap CV · runs held")
    for key, ps in summary.items():
        runs = {**{who: [p["floors"][who] for p in ps] for who in ps[0]["floors"]},
                "cpbench": [p["cpbench"] for p in ps]}
        cells = []
        for who, rs in runs.items():
            cpu, p50, ks, cv = (float(np.median(v)) for v in zip(*[
                (r["cpu_us_per_request"], r["lag_p50_us"], r["sent_ks"] / r["trace_ks"],
                 r["sent_cv"]) for r in rs]))
            runs_held = sum(r["held"] for r in rs)
            cells.append(f"{who} {cpu:.1f} · {p50:.1f} · {ks:.1f}x · {cv:.3f} · "
                         f"{runs_held}/{len(rs)}")
        ratio = float(np.median([p["cpu_ratio"] for p in ps]))
        print(f"{key:<20} " + "   ".join(cells) + f"   cpbench/floor CPU {ratio:.2f}")
        if args.sched:
            for who, rs in runs.items():
                waits = [r["sched"]["waits_over_1ms"] for r in rs]
                ms = [r["sched"]["wait_ms_over_1ms"] for r in rs]
                parent = [r["sched"]["behind_ms"]["parent"] for r in rs]
                print(f"{'':<20} {who}: run-queue waits over 1 ms {np.median(waits):g} "
                      f"({np.median(ms):.1f} ms), behind the parent over 0.5 ms "
                      f"{np.median(parent):.1f} ms (medians)")
    meta = {"host_cores": os.cpu_count(), "seconds": args.seconds, "repeats": args.repeats,
            "python": sys.version.split()[0],
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    args.output.write_text(json.dumps({"meta": meta, "points": points}, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Soak test: a long replay at a steady rate against the embedded sim, memory and fds watched.

Synthesizes a Poisson hybrid trace (``--rate`` req/s for ``--minutes``), starts ``cpbench sim``
on loopback, runs ``cpbench replay`` against it, and every ``--sample-s`` seconds reads from
/proc the resident set (VmRSS), the peak resident set (VmHWM) and the open file descriptors of
the replay parent, each worker process and the sim. At the end it prints the samples, checks:

- memory flat: mean client anonymous memory (RssAnon: heap and buffers, where a leak shows;
  parent + workers) over the last window within ``--flat-percent`` of the mean over the first
  window after warm-up (window: 10 minutes, or a third of the post-warm-up time for shorter
  runs; warm-up: 10% of the run, at least 30 s). The whole resident set is printed beside it:
  it also counts the pages of each worker's memory-mapped plan, which grow as the schedule
  advances through them (file-backed, reclaimable, about 50 bytes a request);
- no fd growth: client fds do not climb (by more than 2) across the last window; the
  keep-alive pool may step up once under a slow patch and stay there, which is no leak;
- results complete: one row per trace row in results.arrow, each row once;

and writes everything as JSON (``--json``, default ``OUT/soak.json``). Bounded: the replay is
killed (by PID) if it runs ``--slack-s`` past the trace's length. Not a CI test: run it by hand.

    python tools/soak.py                      # the full 30 minutes at 500 req/s
    python tools/soak.py --minutes 4          # a shorter run with the same checks
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


def _proc_status(pid: int) -> dict[str, int] | None:
    """VmRSS, VmHWM, RssAnon and RssFile in KiB and the open fd count of ``pid`` (None once
    it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
        fds = len(os.listdir(f"/proc/{pid}/fd"))
    except OSError:
        return None
    out = {"fds": fds}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM", "RssAnon", "RssFile"):
            out[key] = int(value.split()[0])
    return out


def _children(pid: int) -> list[int]:
    try:
        return [int(p) for p in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _worker_pids(parent: int) -> list[int]:
    pids = []
    for pid in _children(parent):
        try:
            if b"cpbench.replaying.child" in Path(f"/proc/{pid}/cmdline").read_bytes():
                pids.append(pid)
        except OSError:
            pass
    return sorted(pids)


def _sample(t_s: float, replay: int, sim: int) -> dict:
    parent = _proc_status(replay) or {}
    workers = [s for s in (_proc_status(p) for p in _worker_pids(replay)) if s]
    simst = _proc_status(sim) or {}
    return {
        "t_s": round(t_s, 1),
        "parent_rss_kb": parent.get("VmRSS", 0), "parent_hwm_kb": parent.get("VmHWM", 0),
        "workers": len(workers),
        "workers_rss_kb": sum(w.get("VmRSS", 0) for w in workers),
        "workers_hwm_kb": sum(w.get("VmHWM", 0) for w in workers),
        "client_anon_kb": parent.get("RssAnon", 0) + sum(w.get("RssAnon", 0) for w in workers),
        "client_file_kb": parent.get("RssFile", 0) + sum(w.get("RssFile", 0) for w in workers),
        "client_fds": parent.get("fds", 0) + sum(w["fds"] for w in workers),
        "sim_rss_kb": simst.get("VmRSS", 0), "sim_fds": simst.get("fds", 0),
    }


def _start_sim(workdir: Path) -> tuple[subprocess.Popen, str]:
    ready = workdir / "sim-ready.json"
    log = open(workdir / "sim.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--port", "0",
                             "--ready-file", str(ready)], stdout=subprocess.DEVNULL, stderr=log)
    deadline = time.monotonic() + 60
    while not ready.exists():
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit(f"sim did not start: {(workdir / 'sim.log').read_text()[-500:]}")
        time.sleep(0.1)
    return proc, json.loads(ready.read_text())["url"]


def _stop(proc: subprocess.Popen, sig: int = signal.SIGTERM) -> None:
    if proc.poll() is None:
        proc.send_signal(sig)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)


def _windows(samples: list[dict], run_s: float) -> tuple[list[dict], list[dict], float]:
    warmup_s = max(30.0, 0.1 * run_s)
    steady = [s for s in samples if warmup_s <= s["t_s"] <= run_s and s["workers"]]
    if len(steady) < 2:
        return [], [], warmup_s
    span = steady[-1]["t_s"] - steady[0]["t_s"]
    window = min(600.0, span / 3)
    first = [s for s in steady if s["t_s"] <= steady[0]["t_s"] + window]
    last = [s for s in steady if s["t_s"] >= steady[-1]["t_s"] - window]
    return first, last, warmup_s


def _verdict(samples: list[dict], run_s: float, flat_percent: float) -> dict:
    first, last, warmup_s = _windows(samples, run_s)
    if not first or not last:
        return {"memory_flat": None, "fd_growth": None, "note": "run too short to judge"}
    def mean(window: list[dict], key) -> float:
        return sum(map(key, window)) / len(window)

    client = lambda s: s["parent_rss_kb"] + s["workers_rss_kb"]  # noqa: E731
    anon = lambda s: s["client_anon_kb"]  # noqa: E731
    m_first, m_last = mean(first, client), mean(last, client)
    a_first, a_last = mean(first, anon), mean(last, anon)
    change = 100.0 * (a_last - a_first) / a_first
    # The keep-alive pool grows in steps when a slow patch leaves more requests in flight and
    # keeps those connections open: a plateau, not a leak. A leak keeps climbing, so the
    # test is growth *within* the last window.
    fds_last = [s["client_fds"] for s in last]
    return {"warmup_s": warmup_s, "window_first_s": [first[0]["t_s"], first[-1]["t_s"]],
            "window_last_s": [last[0]["t_s"], last[-1]["t_s"]],
            "client_rss_first_mb": m_first / 1024, "client_rss_last_mb": m_last / 1024,
            "client_rss_change_percent": 100.0 * (m_last - m_first) / m_first,
            "client_anon_first_mb": a_first / 1024, "client_anon_last_mb": a_last / 1024,
            "client_anon_change_percent": change, "memory_flat": abs(change) <= flat_percent,
            "client_fds_first_window_max": max(s["client_fds"] for s in first),
            "client_fds_last_window": [fds_last[0], fds_last[-1]],
            "client_fds_max": max(s["client_fds"] for s in samples),
            "fd_growth": fds_last[-1] - fds_last[0] > 2}


def _results(out: Path, n_trace: int) -> dict:
    import pyarrow as pa
    import pyarrow.compute as pc

    with pa.memory_map(str(out / "results.arrow")) as src:
        table = pa.ipc.open_file(src).read_all()
    rows = table.column("row")
    unique = len(pc.unique(rows))
    classes = {str(d["values"]): int(d["counts"]) for d in
               pc.value_counts(table.column("error_class").drop_null().cast(pa.string()))
               .to_pylist()}
    return {"trace_rows": n_trace, "result_rows": table.num_rows, "unique_rows": unique,
            "complete": table.num_rows == unique == n_trace, "errors_by_class": classes}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=30.0, help="trace length (default 30)")
    ap.add_argument("--rate", type=float, default=500.0, help="requests/s (default 500)")
    ap.add_argument("--workers", type=int, default=1, help="replay worker processes")
    ap.add_argument("--sample-s", type=float, default=10.0, help="sampling period (10 s)")
    ap.add_argument("--flat-percent", type=float, default=5.0)
    ap.add_argument("--slack-s", type=float, default=120.0,
                    help="kill the replay this long after the trace should have ended")
    ap.add_argument("--out", type=Path, default=None, help="work directory (default: a temp dir)")
    ap.add_argument("--json", type=Path, default=None, help="result JSON (default OUT/soak.json)")
    ap.add_argument("--seed", type=int, default=1)
    a = ap.parse_args(argv)
    work = a.out or Path(tempfile.mkdtemp(prefix="cpbench-soak-"))
    work.mkdir(parents=True, exist_ok=True)
    trace, out = work / "soak.arrow", work / "results"
    run_s = a.minutes * 60.0
    synth = subprocess.run(
        [sys.executable, "-m", "cpbench", "record", "synth", "--pattern", "poisson",
         "--rate", str(a.rate), "--duration-s", str(run_s), "--mode", "hybrid",
         "--llm-ratio", "0.5", "--input-tokens", "fixed:32", "--output-tokens", "fixed:8",
         "--embed-batch", "fixed:2", "--embed-tokens", "fixed:16", "--seed", str(a.seed),
         "-o", str(trace)], capture_output=True, text=True)
    if synth.returncode != 0:
        raise SystemExit(f"record synth failed: {synth.stderr.strip()}")
    import pyarrow as pa
    with pa.memory_map(str(trace)) as src:
        n_trace = pa.ipc.open_file(src).read_all().num_rows
    print(f"soak: {n_trace:,} requests over {a.minutes:g} min at {a.rate:g} req/s, "
          f"{a.workers} worker(s); work dir {work}", flush=True)
    sim, url = _start_sim(work)
    samples: list[dict] = []
    replay = None
    try:
        replay = subprocess.Popen(
            [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url, "-o", str(out),
             "--workers", str(a.workers), "--quiet", "--no-report", "--timeout", "30"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        t0 = time.monotonic()
        deadline = t0 + run_s + a.slack_s + 60
        next_t = t0
        print(f"{'t_s':>7} {'parent MB':>10} {'workers MB':>11} {'peak MB':>8} "
              f"{'fds':>5} {'sim MB':>7} {'sim fds':>8}", flush=True)
        while replay.poll() is None:
            if time.monotonic() > deadline:
                print("soak: replay overran its bound; stopping it", flush=True)
                _stop(replay, signal.SIGINT)
                break
            if time.monotonic() >= next_t:
                s = _sample(time.monotonic() - t0, replay.pid, sim.pid)
                samples.append(s)
                print(f"{s['t_s']:>7.0f} {s['parent_rss_kb'] / 1024:>10.1f} "
                      f"{s['workers_rss_kb'] / 1024:>11.1f} "
                      f"{(s['parent_hwm_kb'] + s['workers_hwm_kb']) / 1024:>8.1f} "
                      f"{s['client_fds']:>5} {s['sim_rss_kb'] / 1024:>7.1f} "
                      f"{s['sim_fds']:>8}", flush=True)
                next_t += a.sample_s
            time.sleep(0.2)
        stdout, stderr = replay.communicate(timeout=60)
    finally:
        if replay is not None and replay.poll() is None:
            _stop(replay)
        _stop(sim)
    report = {"minutes": a.minutes, "rate_rps": a.rate, "workers": a.workers,
              "replay_exit": replay.returncode, "samples": samples,
              "verdict": _verdict(samples, run_s, a.flat_percent)}
    if (out / "results.arrow").exists():
        report["results"] = _results(out, n_trace)
        summary = json.loads((out / "summary.json").read_text()) \
            if (out / "summary.json").exists() else {}
        report["summary"] = {k: summary.get(k) for k in ("requests", "rates",
                                                         "dispatch_lag_ms")}
    if replay.returncode != 0:
        report["replay_stderr"] = stderr[-2000:]
    path = a.json or work / "soak.json"
    path.write_text(json.dumps(report, indent=2))
    v, r = report["verdict"], report.get("results", {})
    print()
    if v.get("memory_flat") is not None:
        print(f"client anon first window {v['client_anon_first_mb']:.1f} MB "
              f"(t={v['window_first_s'][0]:.0f}-{v['window_first_s'][1]:.0f} s)  last window "
              f"{v['client_anon_last_mb']:.1f} MB (t={v['window_last_s'][0]:.0f}-"
              f"{v['window_last_s'][1]:.0f} s)  change {v['client_anon_change_percent']:+.2f}%  "
              f"-> {'flat' if v['memory_flat'] else 'NOT FLAT'} (limit {a.flat_percent:g}%)")
        print(f"client RSS  first window {v['client_rss_first_mb']:.1f} MB, last window "
              f"{v['client_rss_last_mb']:.1f} MB, change {v['client_rss_change_percent']:+.2f}% "
              "(with the mapped plan's pages)")
        a0, a1 = v["client_fds_last_window"]
        print(f"client fds  first window max {v['client_fds_first_window_max']}, run max "
              f"{v['client_fds_max']}, last window {a0} -> {a1}  -> "
              f"{'GROWTH' if v['fd_growth'] else 'no growth'} (pool steps are not growth)")
    else:
        print(f"verdict     {v.get('note')}")
    if r:
        print(f"results     {r['result_rows']:,} rows for {r['trace_rows']:,} trace rows, "
              f"{r['unique_rows']:,} unique -> {'complete' if r['complete'] else 'INCOMPLETE'}"
              f"; errors {r['errors_by_class'] or 'none'}")
    s = report.get("summary") or {}
    if s.get("rates"):
        print(f"rates       achieved {s['rates']['achieved_rps']:.1f} req/s, dispatch lag p99 "
              f"{(s.get('dispatch_lag_ms') or {}).get('p99')} ms")
    if replay.returncode != 0:
        tail = (stderr.strip().splitlines() or ["no message"])[-1]
        print(f"replay      exited with status {replay.returncode}: {tail}")
    print(f"json        {path}")
    ok = (replay.returncode == 0 and r.get("complete") and v.get("memory_flat") is not False
          and not v.get("fd_growth"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

"""Peak memory of a large replay: `cpbench replay` of 10^6 requests against nginx, RSS watched.

Builds a seeded Poisson trace (``--requests`` at ``--rate`` req/s), starts nginx with the fixed
bodies of ``tools/bench/``, runs the real CLI (``cpbench replay``, report included unless
``--no-report``) and samples ``/proc`` every ``--sample-s`` seconds: the resident set (VmRSS)
of the replay parent and of each worker process, and their sum. Two phases are told apart:
*dispatch* (workers alive) and *finish* (summary and report in the parent). Prints the peaks
and writes JSON. The targets (issue 20): the parent at most 200 MB in either phase, report
included, and all client processes together at most 350 MB. (Planning, before the workers
start, is not sampled; ``ru_maxrss parent`` includes it.)

    python tools/bench_memory.py                          # 10^6 chat requests at 6,000 req/s
    python tools/bench_memory.py --requests 200000 --kind embedding
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

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))

from bench_replay import SEED, make_trace, start_nginx  # noqa: E402

TARGET_PARENT_MB = 200
TARGET_TOTAL_MB = 350


def rss_kb(pid: int) -> int | None:
    """VmRSS of ``pid`` in KiB (None once it is gone)."""
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    except OSError:
        return None
    return 0


def children(pid: int) -> list[int]:
    try:
        text = Path(f"/proc/{pid}/task/{pid}/children").read_text()
    except OSError:
        return []
    return [int(x) for x in text.split()]


def watch(cmd: list[str], sample_s: float, limit_s: float) -> dict:
    """Run ``cmd`` and sample the RSS of it and its children until it exits."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    peaks = {"dispatch": {"parent": 0, "workers": 0, "total": 0},
             "finish": {"parent": 0, "workers": 0, "total": 0}}
    workers_seen: set[int] = set()
    deadline = time.monotonic() + limit_s
    samples = 0
    while proc.poll() is None:
        if time.monotonic() > deadline:
            os.kill(proc.pid, signal.SIGINT)
            proc.wait(60)
            raise SystemExit(f"replay ran past {limit_s:g} s; stopped")
        parent = rss_kb(proc.pid) or 0
        kids = [k for k in children(proc.pid)]
        kid_rss = [rss_kb(k) or 0 for k in kids]
        workers_seen.update(kids)
        phase = "dispatch" if kids else ("finish" if workers_seen else None)
        if phase is not None:
            p = peaks[phase]
            p["parent"] = max(p["parent"], parent)
            p["workers"] = max(p["workers"], sum(kid_rss))
            p["total"] = max(p["total"], parent + sum(kid_rss))
            samples += 1
        time.sleep(sample_s)
    err = proc.stderr.read()
    if proc.returncode != 0:
        raise SystemExit(f"replay failed ({proc.returncode}): {err.strip()[-500:]}")
    return {"peaks_kb": peaks, "samples": samples, "workers": len(workers_seen)}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--requests", type=int, default=1_000_000)
    ap.add_argument("--rate", type=float, default=6000.0)
    ap.add_argument("--kind", default="chat", choices=("chat", "completion", "embedding"))
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--sample-s", type=float, default=0.1)
    ap.add_argument("--no-report", action="store_true")
    ap.add_argument("-o", "--output", type=Path, default=Path("bench_memory.json"))
    args = ap.parse_args(argv)
    seconds = args.requests / args.rate
    with tempfile.TemporaryDirectory(prefix="cpbench-mem-") as tmp:
        tmp = Path(tmp)
        trace = tmp / "trace.arrow"
        n = make_trace(trace, args.kind, args.rate, seconds, SEED)
        pid, url = start_nginx(tmp / "nginx")
        try:
            out = tmp / "out"
            cmd = [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url,
                   "-o", str(out), "--workers", str(args.workers), "--quiet",
                   "--timeout", "30"] + (["--no-report"] if args.no_report else [])
            t0 = time.monotonic()
            res = watch(cmd, args.sample_s, limit_s=seconds * 3 + 300)
            wall_s = time.monotonic() - t0
            summary = json.loads((out / "summary.json").read_text())
        finally:
            os.kill(pid, signal.SIGTERM)
    client = summary["run"]["client"]
    req = summary["requests"]
    mb = {ph: {k: v / 1024 for k, v in p.items()} for ph, p in res["peaks_kb"].items()}
    result = {"requests": n, "rate_rps": args.rate, "kind": args.kind, "workers": args.workers,
              "report": not args.no_report, "wall_s": wall_s, "peaks_mb": mb,
              "ru_maxrss_mb": {"parent": client["parent_max_rss_kb"] / 1024,
                               "worker_max": client["worker_max_rss_kb"] / 1024},
              "completed": req.get("completed"), "errors": req.get("errors"),
              "samples": res["samples"],
              "target_mb": {"parent": TARGET_PARENT_MB, "total": TARGET_TOTAL_MB}}
    print(f"{n:,} {args.kind} requests at {args.rate:,.0f} req/s, {args.workers} workers, "
          f"{wall_s:.0f} s; completed {req.get('completed')}, errors {req.get('errors')}")
    print(f"{'phase':<10}{'parent MB':>11}{'workers MB':>12}{'total MB':>10}")
    for ph, p in mb.items():
        print(f"{ph:<10}{p['parent']:>11.1f}{p['workers']:>12.1f}{p['total']:>10.1f}")
    parent = max(p["parent"] for p in mb.values())
    peak = max(p["total"] for p in mb.values())
    print(f"peak parent RSS {parent:.1f} MB (target <= {TARGET_PARENT_MB} MB: "
          f"{'met' if parent <= TARGET_PARENT_MB else 'NOT met'}); peak client RSS "
          f"{peak:.1f} MB (target <= {TARGET_TOTAL_MB} MB: "
          f"{'met' if peak <= TARGET_TOTAL_MB else 'NOT met'})")
    print(f"ru_maxrss parent {result['ru_maxrss_mb']['parent']:.1f} MB (planning included), "
          f"worst worker {result['ru_maxrss_mb']['worker_max']:.1f} MB")
    args.output.write_text(json.dumps(result, indent=2))
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Benchmark: `cpbench report` on a 10^6-request result directory (target ≤ 15 s, ≤ 8 MB).

Builds a realistic result directory with tests/support/result_dirs.py (results.arrow with every
documented column, summary.json with timeslices and histograms; monitor.arrow), then times the
real CLI in a fresh process — imports included, as a user sees it — and prints a table and
writes JSON.

    python tools/bench_report.py --requests 1000000 --json bench_report.json
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests"))

from support.result_dirs import make_result_dir  # noqa: E402

TARGET_S, TARGET_MB = 15.0, 8.0


def bench(n_requests: int, rate_rps: float, work: Path, repeats: int, fallback: bool) -> dict:
    t0 = time.perf_counter()
    run_dir = make_result_dir(work / "run", n_requests=n_requests, rate_rps=rate_rps, seed=7,
                              gpu=True)
    build_s = time.perf_counter() - t0
    summary = json.loads((run_dir / "summary.json").read_text())
    if fallback:  # the report must then derive series and distributions from results.arrow
        del summary["histograms"], summary["timeslices"]
        (run_dir / "summary.json").write_text(json.dumps(summary))
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-m", "cpbench", "report", str(run_dir), "-o",
                        str(work / "report.html"), "--markdown", str(work / "report.md")],
                       check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
        times.append(time.perf_counter() - t0)
    html_mb = (work / "report.html").stat().st_size / 1e6
    return {"requests": n_requests, "rate_rps": rate_rps,
            "duration_s": summary["run"]["duration_s"],
            "fallback": fallback,
            "timeslices": len(summary["timeslices"]["t_s"]) if not fallback else 0,
            "histograms": sorted(summary.get("histograms", {})),
            "results_arrow_mb": (run_dir / "results.arrow").stat().st_size / 1e6,
            "fixture_build_s": build_s, "report_s": min(times), "report_s_all": times,
            "html_mb": html_mb, "markdown_kb": (work / "report.md").stat().st_size / 1e3,
            "target_s": TARGET_S, "target_mb": TARGET_MB,
            "ok": min(times) <= TARGET_S and html_mb <= TARGET_MB}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=1_000_000)
    parser.add_argument("--rate", type=float, default=1000.0, help="offered rate (req/s)")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--json", type=Path, default=Path("bench_report.json"))
    parser.add_argument("--fallback", action="store_true",
                        help="drop histograms and timeslices from summary.json, so the report "
                             "derives them from results.arrow (a summary from an older stage)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(prefix="cpbench-bench-report-") as tmp:
        result = bench(args.requests, args.rate, Path(tmp), args.repeats, args.fallback)
    rows = [("requests", f"{result['requests']:,}"),
            ("run duration", f"{result['duration_s']:.0f} s"),
            ("timeslices in summary", str(result["timeslices"])),
            ("histograms in summary", ", ".join(result["histograms"]) or "none"),
            ("results.arrow", f"{result['results_arrow_mb']:.1f} MB"),
            ("cpbench report (best)", f"{result['report_s']:.2f} s  (target ≤ {TARGET_S:g} s)"),
            ("report.html", f"{result['html_mb']:.2f} MB  (target ≤ {TARGET_MB:g} MB)"),
            ("report.md", f"{result['markdown_kb']:.1f} KB"),
            ("within targets", "yes" if result["ok"] else "NO")]
    width = max(len(k) for k, _ in rows)
    for key, value in rows:
        print(f"{key:<{width}}  {value}")
    args.json.write_text(json.dumps(result, indent=2))
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    raise SystemExit(main())

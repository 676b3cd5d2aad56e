"""The performance suite: cpbench against its peers and the limit, side by side, on loopback.

Starts nginx (``tools/bench/start_nginx.sh``: fixed chat SSE and embeddings bodies) and, for
chat and embeddings, measures in one run:

- ``wrk`` closed loop as fast as it goes: the ceiling of this host (the physical limit);
- ``cpbench replay`` with 1 worker and with all cores, on seeded Poisson traces of a fixed
  count at a ladder of target rates;
- guidellm (``--profile kind=poisson``) and aiperf (``--arrival-pattern poisson``), each from
  PyPI in its own venv under ``tools/bench/.venvs/``, at the same rates and endpoints.

Each tool climbs the ladder until the first rate it fails to hold (more would only cost time).
Per point: target vs achieved rate on the wire, shortfall, client CPU time per request and
peak RSS of the tool's whole process tree (``measure.py``), the latency the tool reports, and
the arrival process tcpdump saw on lo (inter-arrival CV, KS distance to the exponential next
to an ideal Poisson sample's; for cpbench's fixed trace, each packet's lag behind its intended
time). The core micro-benchmarks (``tools/bench_schedule.py``, ``tools/bench_hist.py``) run
from here too. Writes ``tools/bench/results.json`` and regenerates ``tools/bench/RESULTS.md``.

    python tools/bench/run_suite.py --quick          # <= ~3 minutes
    python tools/bench/run_suite.py                  # full ladder, <= ~15 minutes
    python tools/bench/run_suite.py --chrt 5         # every client at SCHED_FIFO 5 (busy host)

Needs root for tcpdump (and chrt), ``apt-get install -y wrk nginx-light tcpdump``.
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
import peers  # noqa: E402
from report_md import render  # noqa: E402
from wire import ReadyCapture, gap_stats, start_nginx, wire_lag_ms  # noqa: E402

from cpbench.calibrate import machine_description, point_stats, poisson_trace  # noqa: E402
from cpbench.results import read_results  # noqa: E402

SEED = 20_261_128
SHORTFALL_PCT = 1.0
FULL = {"rates": [100, 200, 400, 1000, 2000, 4000, 6000, 8000, 12000], "seconds": 3.0,
        "wrk_s": 3.0}
QUICK = {"rates": [200, 1000, 3000], "seconds": 1.5, "wrk_s": 2.0}


def _run_measured(cmd: list[str], out: Path, timeout_s: float, chrt: int | None,
                  env: dict | None = None, stdout=subprocess.DEVNULL) -> tuple[dict, str]:
    """Run ``cmd`` under measure.py in its own session; kill the group past ``timeout_s``."""
    prefix = ["chrt", "-f", str(chrt)] if chrt else []
    usage = out / "usage.json"
    proc = subprocess.Popen([sys.executable, str(HERE / "measure.py"), str(usage), "--",
                             *prefix, *cmd], stdout=stdout, stderr=subprocess.PIPE,
                            env=env, start_new_session=True, text=True)
    try:
        text, err = proc.communicate(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)     # the tool and everything it started
        proc.communicate()
        return {"status": "timeout", "timeout_s": timeout_s}, ""
    result = json.loads(usage.read_text()) if usage.exists() else {"status": proc.returncode}
    if result.get("status"):
        result["stderr_tail"] = (err or "").strip().splitlines()[-3:]
    return result, text or ""


def _trim_probes(wire_ns: np.ndarray) -> np.ndarray:
    # Peers send a readiness or validation request before the run; a packet seconds ahead of
    # the stream would fake a long gap.
    while len(wire_ns) > 10:
        gaps = np.diff(wire_ns[:12])
        if gaps[0] > 20 * np.median(gaps[1:]) and gaps[0] > 100_000_000:
            wire_ns = wire_ns[1:]
        else:
            break
    return wire_ns


def _finish(point: dict, wire_ns: np.ndarray, target_rps: float, n: int, exact: bool) -> dict:
    w = gap_stats(wire_ns)
    point.update({"target_rps": target_rps, "requests": n, "wire": w,
                  "achieved_rps": w["achieved_rps"], "loadavg": list(os.getloadavg())})
    got = (w["achieved_rps"] or 0.0) * min(1.0, w["packets"] / n) if n else 0.0
    point["shortfall_pct"] = max(0.0, 100.0 * (1 - got / target_rps)) if target_rps else None
    # A peer's intended times are unknown: its rate is judged against the nominal one, and a
    # Poisson sample of n requests spans n/rate only to +-1/sqrt(n); allow two of those.
    point["shortfall_tolerance_pct"] = SHORTFALL_PCT + (0.0 if exact else 200.0 / np.sqrt(n))
    return judge(point)


def judge(point: dict) -> dict:
    """``held``: clean exit, no errors, rate within tolerance, and still a Poisson process.

    A tool that keeps the count but bunches its sends (wire CV far from 1) is not holding a
    Poisson rate; a sample of n gaps has a CV within about 1/sqrt(n) of 1, so allow
    0.1 + 3/sqrt(n).
    """
    cv, n = (point.get("wire") or {}).get("cv"), point.get("requests") or 0
    point["cv_tolerance"] = 0.1 + 3.0 / np.sqrt(max(n, 1))
    point["held"] = bool(point.get("status") == 0 and not point.get("errors")
                         and point.get("shortfall_pct") is not None
                         and point["shortfall_pct"] <= point["shortfall_tolerance_pct"]
                         and cv is not None and abs(cv - 1.0) <= point["cv_tolerance"])
    return point


def cpbench_point(url: str, kind: str, rate: float, count: int, workers: int, tmp: Path,
                  chrt: int | None) -> dict:
    d = tmp / f"cpbench-{kind}-{rate:g}-{workers}"
    d.mkdir()
    trace = d / "trace.arrow"
    n = poisson_trace(trace, kind, rate, None, SEED, count=count)
    cap = ReadyCapture(int(url.rsplit(":", 1)[1]), d / "wire.pcap")
    try:
        usage, _ = _run_measured([sys.executable, "-m", "cpbench", "replay", str(trace),
                                  "--url", url, "-o", str(d / "out"), "--workers", str(workers),
                                  "--quiet", "--no-report", "--timeout", "10"],
                                 d, 60 + 3 * count / rate, chrt)
    finally:
        wire_ns = cap.stop()
    point = {"tool": "cpbench", "config": f"{workers} worker" + ("s" if workers > 1 else ""),
             "kind": kind, "rate_rps": rate, **usage}
    if usage.get("status") != 0:
        return _finish(point, wire_ns, rate, n, True)
    res = read_results(d / "out" / "results.arrow")
    summary = json.loads((d / "out" / "summary.json").read_text())
    client = point_stats(res)
    # The seeded trace's own gaps: the wire CV and KS are judged against these, not against 1.
    point["trace"] = gap_stats(res.column("intended_ns").to_numpy())
    lat = summary["latency_ms"]["e2e_from_sent"]
    run_client = summary["run"]["client"]
    point.update({"errors": client["errors"], "client_lag_p50_ms": client["lag_p50_ms"],
                  "client_lag_p99_ms": client["lag_p99_ms"],
                  "wire_lag_ms": wire_lag_ms(wire_ns, res.column("sent_ns").to_numpy(),
                                             res.column("intended_ns").to_numpy()),
                  "reported_latency_p50_ms": lat.get("p50"),
                  "reported_latency_p99_ms": lat.get("p99"),
                  "run_cpu_us_per_request": 1e6 * (run_client["worker_cpu_s"]
                                                   + run_client["parent_cpu_s"]) / n,
                  "cpu_us_per_request": 1e6 * usage["cpu_s"] / n})
    return _finish(point, wire_ns, client["target_rps"], n, True)


def peer_point(tool: str, url: str, kind: str, rate: float, count: int, tokenizer: Path,
               tmp: Path, chrt: int | None) -> dict:
    d = tmp / f"{tool}-{kind}-{rate:g}"
    d.mkdir()
    build = peers.guidellm_command if tool == "guidellm" else peers.aiperf_command
    cap = ReadyCapture(int(url.rsplit(":", 1)[1]), d / "wire.pcap")
    try:
        usage, _ = _run_measured(build(url, kind, rate, count, tokenizer, d, SEED), d,
                                 90 + 4 * count / rate, chrt)
    finally:
        wire_ns = _trim_probes(cap.stop())
    point = {"tool": tool, "config": peers.ensure_venv(tool)[0], "kind": kind,
             "rate_rps": rate, **usage}
    if usage.get("status") == 0:
        try:
            point.update((peers.guidellm_parse if tool == "guidellm" else peers.aiperf_parse)(d))
        except (OSError, KeyError, ValueError, IndexError, TypeError) as exc:
            point["parse_error"] = f"{type(exc).__name__}: {exc}"
        point["cpu_us_per_request"] = 1e6 * usage["cpu_s"] / count
    return _finish(point, wire_ns, rate, count, False)


def wrk_point(url: str, kind: str, seconds: float, tmp: Path, chrt: int | None) -> dict:
    d = tmp / f"wrk-{kind}"
    d.mkdir()
    cmd, env = peers.wrk_command(url, kind, seconds, threads=os.cpu_count() or 1,
                                 connections=32)
    usage, text = _run_measured(cmd, d, seconds + 30, chrt, env=env, stdout=subprocess.PIPE)
    point = {"tool": "wrk", "config": "closed loop, 32 connections", "kind": kind,
             "rate_rps": None, **usage, **peers.wrk_parse(text), "loadavg": list(os.getloadavg())}
    if point.get("achieved_rps"):
        point["cpu_us_per_request"] = 1e6 * usage["cpu_s"] / (point["achieved_rps"] * seconds)
    return point


def micro(quick: bool, tmp: Path) -> dict:
    """tools/bench_schedule.py and tools/bench_hist.py, smaller under --quick."""
    tools = HERE.parent
    runs = {"schedule": ([str(tools / "bench_schedule.py"), "--count",
                          "1000000" if quick else "10000000", "--repeats", "3" if quick else "7",
                          "--json", str(tmp / "schedule.json")], tmp / "schedule.json"),
            "hist": ([str(tools / "bench_hist.py"), "-n", "4000000" if quick else "10000000",
                      "--loop-n", "100000" if quick else "1000000", "--out",
                      str(tmp / "hist.json")], tmp / "hist.json")}
    out = {}
    for name, (cmd, path) in runs.items():
        r = subprocess.run([sys.executable, *cmd], capture_output=True, text=True, timeout=600)
        print(r.stdout, flush=True)
        out[name] = (json.loads(path.read_text()) if r.returncode == 0 and path.exists()
                     else {"error": (r.stderr or "").strip().splitlines()[-3:]})
        out[name + "_table"] = r.stdout
    return out


ROW = ("{tool:<9}{config:<16}{kind:<10}{target:>9}{achieved:>10}{short:>7}{held:>5}"
       "{lag:>9}{cv:>7}{ks:>7}{ksi:>7}{cpu:>10}{rss:>7}{lat:>9}{load:>6}")


def show(p: dict) -> str:
    def f(v, fmt):
        return format(v, fmt) if isinstance(v, (int, float)) else "-"
    w = p.get("wire") or {}
    return ROW.format(tool=p["tool"], config=str(p.get("config"))[:15], kind=p["kind"],
                      target=f(p.get("target_rps"), ".0f"), achieved=f(p.get("achieved_rps"),
                                                                        ".0f"),
                      short=f(p.get("shortfall_pct"), ".2f"),
                      held={True: "yes", False: "NO"}.get(p.get("held"), "-"),
                      lag=f((p.get("wire_lag_ms") or {}).get("p99"), ".3f"),
                      cv=f(w.get("cv"), ".3f"), ks=f(w.get("ks"), ".3f"),
                      ksi=f(w.get("ks_ideal"), ".3f"), cpu=f(p.get("cpu_us_per_request"), ".0f"),
                      rss=f(p.get("peak_rss_mb"), ".0f"),
                      lat=f(p.get("reported_latency_p50_ms"), ".3f"),
                      load=f((p.get("loadavg") or [None])[0], ".1f"))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="shorter ladder and points (<= ~3 min)")
    ap.add_argument("--rates", default=None, help="comma-separated target rates (req/s)")
    ap.add_argument("--seconds", type=float, default=None,
                    help="requests per point = rate x seconds (a fixed count)")
    ap.add_argument("--kinds", default="chat,embedding")
    ap.add_argument("--peers", default="guidellm,aiperf", help="'' to skip the peers")
    ap.add_argument("--no-micro", action="store_true", help="skip the core micro-benchmarks")
    ap.add_argument("--chrt", type=int, default=None, metavar="PRIO",
                    help="run every client (not nginx) at SCHED_FIFO PRIO")
    ap.add_argument("-o", "--output", type=Path, default=HERE / "results.json")
    ap.add_argument("--markdown", type=Path, default=HERE / "RESULTS.md")
    ap.add_argument("--render", type=Path, default=None, metavar="RESULTS_JSON",
                    help="only re-judge the points of a results.json (in place) and "
                         "regenerate --markdown from it")
    args = ap.parse_args(argv)
    if args.render:
        data = json.loads(args.render.read_text())
        for p in data["points"]:
            if p["tool"] not in ("wrk",) and not p.get("unsupported"):
                judge(p)
        args.render.write_text(json.dumps(data, indent=2, default=str))
        args.markdown.write_text(render(data["meta"], data["points"]))
        print(f"re-judged {args.render}, wrote {args.markdown}")
        return 0
    mode = QUICK if args.quick else FULL
    rates = [float(r) for r in args.rates.split(",")] if args.rates else mode["rates"]
    seconds = args.seconds or mode["seconds"]
    tools = [t for t in args.peers.split(",") if t]
    started = time.monotonic()
    meta = {"machine": machine_description(), "mode": "quick" if args.quick else "full",
            "rates": rates, "seconds_per_point": seconds, "chrt": args.chrt, "seed": SEED,
            "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "peers": {}}
    points: list[dict] = []
    with tempfile.TemporaryDirectory(prefix="cpbench-suite-") as tmp:
        tmp = Path(tmp)
        tokenizers = {}
        for tool in tools:
            version, why = peers.ensure_venv(tool)
            meta["peers"][tool] = {"version": version, "unavailable": why}
            if version:
                tokenizers[tool] = peers.make_tokenizer(tool, tmp / f"tokenizer-{tool}")
        pid, url = start_nginx(tmp / "nginx")
        meta["target"] = f"nginx {url} (tools/bench/nginx.conf, 1 worker process)"
        print(ROW.format(tool="tool", config="config", kind="kind", target="target",
                         achieved="achieved", short="short%", held="held", lag="wlag99",
                         cv="CV", ks="KS", ksi="KSidl", cpu="cpu us/rq", rss="RSS MB",
                         lat="lat p50", load="load"), flush=True)
        try:
            for kind in args.kinds.split(","):
                points.append(wrk_point(url, kind, mode["wrk_s"], tmp, args.chrt))
                print(show(points[-1]), flush=True)
                configs = [("cpbench", 1), ("cpbench", os.cpu_count() or 1)]
                for t in tools:
                    if (t, kind) in peers.UNSUPPORTED:
                        points.append({"tool": t, "config": meta["peers"][t]["version"],
                                       "kind": kind, "rate_rps": None, "held": None,
                                       "unsupported": peers.UNSUPPORTED[(t, kind)]})
                        print(f"{t:<9}{kind}: not driven: {peers.UNSUPPORTED[(t, kind)]}")
                    elif t in tokenizers:
                        configs.append((t, None))
                for tool, workers in configs:
                    for rate in rates:
                        count = max(50, int(round(rate * seconds)))
                        p = (cpbench_point(url, kind, rate, count, workers, tmp, args.chrt)
                             if tool == "cpbench" else
                             peer_point(tool, url, kind, rate, count, tokenizers[tool], tmp,
                                        args.chrt))
                        points.append(p)
                        print(show(p), flush=True)
                        if not p["held"]:
                            break
        finally:
            os.kill(pid, signal.SIGTERM)
        meta["micro"] = {} if args.no_micro else micro(args.quick, tmp)
    meta["wall_s"] = round(time.monotonic() - started, 1)
    meta["loadavg_end"] = list(os.getloadavg())
    args.output.write_text(json.dumps({"meta": meta, "points": points}, indent=2, default=str))
    args.markdown.write_text(render(meta, points))
    print(f"wrote {args.output} and {args.markdown} ({meta['wall_s']:.0f} s)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

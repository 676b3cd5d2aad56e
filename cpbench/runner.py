"""One replay end to end: target, workers, outputs, console summary, live progress.

:func:`run_replay` is the entry point (the ``cpbench replay`` CLI is a thin layer over it). With
no URL it starts the embedded control plane (``cpbench sim``) as a subprocess on a free loopback
port and stops it at the end. It hands on a results directory: ``results.arrow`` (written as the
run goes), ``summary.json`` (from :mod:`cpbench.summary`) and, unless told not to, the report.
"""
from __future__ import annotations

import json
import math
import os
import platform
import resource
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cpbench import __version__
from cpbench.calibrate import load_calibration
from cpbench.dispatch import Target, strip_credentials
from cpbench.endpoints import HINTS
from cpbench.errors import ConfigError, OutputError, TargetError
from cpbench.results import ResultsWriter, read_results
from cpbench.plan import save_plan
from cpbench.workers import WorkerPool, build_plan, select_rows, trace_models
from cpbench.spawn import python_module_cmd

SIM_READY_S = 30.0
SIM_STOP_GRACE_S = 5.0
PROGRESS_S = 1.0


def parse_warmup(value: str | float | int | None) -> tuple[float, int]:
    """``--warmup``: ``"10s"`` or a float is seconds, ``"500"`` (an integer) is requests."""
    if value is None or value == "":
        return 0.0, 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), 0) if isinstance(value, float) else (0.0, int(value))
    text = str(value).strip()
    try:
        if text.endswith("s"):
            return float(text[:-1]), 0
        if text.isdigit():
            return 0.0, int(text)
        return float(text), 0
    except ValueError:
        raise ConfigError(f"--warmup must be seconds like 10s or a request count like 500; "
                          f"got {value!r}") from None


def _check_options(o: dict) -> None:
    for name in ("speed", "rate_scale", "timeout_s"):
        if not (o[name] > 0 and math.isfinite(o[name])):
            raise ConfigError(f"--{name.replace('_s', '').replace('_', '-')} must be a positive "
                              f"number; got {o[name]}")
    if o["duration_s"] is not None and not o["duration_s"] > 0:
        raise ConfigError(f"--duration must be positive seconds; got {o['duration_s']}")
    if o["hints"] not in HINTS:
        raise ConfigError(f"--hints must be one of {', '.join(HINTS)}; got {o['hints']!r}")
    if o["max_concurrency"] < 0 or o["workers"] < 1:
        raise ConfigError("--max-concurrency must be >= 0 and --workers >= 1")
    if o["max_error_ratio"] is not None and not 0 <= o["max_error_ratio"] <= 1:
        raise ConfigError(f"--max-error-ratio must be in [0, 1]; got {o['max_error_ratio']}")
    if not 0 <= int(o["realtime"]) <= 99:
        raise ConfigError(f"--realtime priority must be 1-99; got {o['realtime']}")
    if o["loop"] not in ("uvloop", "asyncio"):
        raise ConfigError(f"--loop must be uvloop or asyncio; got {o['loop']!r}")
    if o["workers_per_node"] is not None and not o["ray"]:
        raise ConfigError("--workers-per-node places actors on Ray nodes; add --ray [ADDRESS]")


# -- the target ------------------------------------------------------------------------

class EmbeddedSim:
    """``cpbench sim`` in its own process on a free loopback port, stopped by PID."""

    def __init__(self, policy: str | None, workdir: Path) -> None:
        self.ready_file = workdir / "sim-ready.json"
        self.log = open(workdir / "sim.log", "w+b")
        # Any model name is served by the engine of its kind: imported traces (BurstGPT, your
        # own captures) carry their own model names, which the embedded plane cannot know.
        cmd = python_module_cmd("cpbench", "sim", "--host", "127.0.0.1", "--port", "0",
                                "--ready-file", str(self.ready_file), "--accept-any-model")
        if policy:
            cmd += ["--policy", policy]
        self.proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=self.log)
        self.url = self._wait_ready()

    def _wait_ready(self) -> str:
        deadline = time.monotonic() + SIM_READY_S
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                self.log.seek(0)
                tail = self.log.read().decode("utf-8", "replace").strip().splitlines()[-1:]
                self.stop()
                raise TargetError(f"the embedded control plane exited with status "
                                  f"{self.proc.returncode}: {' '.join(tail) or 'no message'}")
            if self.ready_file.exists():
                url = json.loads(self.ready_file.read_text())["url"]
                try:
                    with urllib.request.urlopen(url + "/health", timeout=2) as resp:
                        if resp.status == 200:
                            return url
                except OSError:
                    pass
            time.sleep(0.05)
        self.stop()
        raise TargetError(f"the embedded control plane was not ready in {SIM_READY_S:g} s")

    def stop(self) -> None:
        """SIGTERM, then SIGKILL after a grace period."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(SIM_STOP_GRACE_S)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(2)
        self.log.close()


def check_reachable(url: str) -> None:
    """One TCP connect to the target; a refusal becomes one clear TargetError line."""
    t = Target.from_url(url)
    try:
        socket.create_connection((t.host, t.port), timeout=5).close()
    except OSError as exc:
        raise TargetError(f"cannot reach {strip_credentials(url)}: {exc.strerror or exc}; "
                          "start the server or fix --url") from None


# -- the run -----------------------------------------------------------------------------

def default_out_dir(trace_path: Path) -> Path:
    """``cpbench-results/<trace>-<UTC timestamp>``."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%SZ")
    return Path("cpbench-results") / f"{Path(trace_path).stem}-{stamp}"


def run_replay(trace_path: str | os.PathLike[str], *, url: str | None = None,
               out_dir: str | os.PathLike[str] | None = None, **options) -> Path:
    """Replay a trace against ``url`` (or the embedded sim) and write the results directory.

    Parameters
    ----------
    trace_path
        A cpbench trace (see docs/formats.md).
    url
        The control plane's base URL; None starts ``cpbench sim`` on loopback.
    out_dir
        Results directory; default ``cpbench-results/<trace>-<UTC timestamp>``.
    **options
        ``workers`` (default: all cores), ``max_concurrency`` (0 = open loop), ``speed``,
        ``rate_scale``, ``duration_s``, ``warmup`` (``"10s"`` or ``"500"``), ``timeout_s``,
        ``hints`` (sagellm|vllm|none), ``policy`` (embedded sim only), ``quiet``,
        ``max_error_ratio``, ``loop`` (uvloop|asyncio), ``connections`` (per worker),
        ``grace_s``, ``realtime`` (SCHED_FIFO priority of the workers, 0 = normal scheduling),
        ``ray`` (a Ray cluster address or ``"auto"``: replay from dispatcher actors on
        every node, see docs/distributed.md), ``workers_per_node`` (with ``ray``; default the
        node's CPUs minus one), ``report`` (write the report), ``monitor`` (GPU, client CPU and
        Prometheus sampling into ``monitor.arrow``), ``metrics_urls`` (extra ``/metrics`` to
        scrape; the embedded sim's is scraped by default).

    Returns
    -------
    Path
        The results directory.

    Raises
    ------
    TargetError
        The target is unreachable at the start (exit status 1).
    ErrorRatioExceeded
        More requests failed than ``max_error_ratio`` allows (exit status 3); everything is
        still written.
    OutputError
        The results cannot be written (full disk); the batches written so far are kept.
    """
    from cpbench.trace import read_trace, sha256_file

    o = {"workers": os.cpu_count() or 1, "max_concurrency": 0, "speed": 1.0,
         "rate_scale": 1.0, "duration_s": None, "warmup": None, "timeout_s": 60.0,
         "hints": "sagellm", "policy": None, "quiet": False, "max_error_ratio": None,
         "loop": "uvloop", "connections": 32, "grace_s": 5.0, "report": True, "realtime": 0,
         "monitor": True, "metrics_urls": None, "ray": None, "workers_per_node": None}
    unknown = set(options) - set(o)
    if unknown:
        raise ConfigError(f"unknown replay option(s): {', '.join(sorted(unknown))}")
    o.update({k: v for k, v in options.items() if v is not None})
    _check_options(o)
    if o["ray"] and options.get("workers") is not None:
        raise ConfigError("--workers counts local processes; with --ray use --workers-per-node")
    warmup_s, warmup_requests = parse_warmup(o["warmup"])
    trace_path = Path(trace_path)
    table = read_trace(trace_path)
    selection = {"speed": o["speed"], "rate_scale": o["rate_scale"],
                 "duration_s": o["duration_s"], "warmup_s": warmup_s,
                 "warmup_requests": warmup_requests}
    sel = select_rows(table, **selection)
    models = trace_models(table)
    out = Path(out_dir) if out_dir is not None else default_out_dir(trace_path)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}; choose another -o") \
            from None
    cluster = None
    if o["ray"]:
        from cpbench.replay.cluster import RayCluster
        cluster = RayCluster(str(o["ray"]), o["workers_per_node"])
        o["workers"] = cluster.n_actors         # one dispatcher actor per client core
    with tempfile.TemporaryDirectory(prefix="cpbench-replay-") as tmp:
        plans = _save_plans(table, sel, _worker_count(o, len(sel.rows)), Path(tmp))
        intended_ns = sel.intended_ns
        # The workers map their plans: the parent keeps only the intended times.
        del table, sel
        release_unused_memory()
        sim = EmbeddedSim(o["policy"], Path(tmp)) if url is None else None
        try:
            target_url = sim.url if sim else url
            check_reachable(target_url)
            from cpbench.manifest import record_run  # manifest.json: how to rerun this run
            record_run(out, options={**o, "url": url}, trace_path=trace_path,
                       target_url=target_url)
            return _run(trace_path, sha256_file(trace_path), target_url, sim is not None,
                        out, o, intended_ns, models, plans, cluster)
        finally:
            if sim is not None:
                sim.stop()
            if cluster is not None:
                cluster.disconnect()


def _worker_count(o: dict, n_requests: int) -> int:
    n_workers = max(1, min(int(o["workers"]), max(1, n_requests)))
    cap = int(o["max_concurrency"])
    return min(n_workers, cap) if cap else n_workers    # each worker holds one of the cap


def _save_plans(table, sel, n_workers: int, tmp: Path) -> list[Path]:
    plans = []
    for w in range(n_workers):
        save_plan(build_plan(table, sel, w, n_workers), tmp / f"plan-{w}")
        plans.append(tmp / f"plan-{w}")
    return plans


def release_unused_memory() -> None:
    """Hand freed memory back to the system: Arrow's allocator and glibc's heap keep it
    otherwise (about 75 MB after planning a 10^6-request trace)."""
    import ctypes

    import pyarrow as pa
    pa.default_memory_pool().release_unused()
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass                                        # not glibc: nothing more to do


def _run(trace_path: Path, trace_sha: str, url: str, embedded: bool, out: Path, o: dict,
         intended_ns: np.ndarray, models: list[str], plans: list[Path],
         cluster=None) -> Path:
    cap = int(o["max_concurrency"])
    n_workers = len(plans)
    run = {"trace": str(trace_path), "trace_sha256": trace_sha,
           "target": strip_credentials(url), "embedded_target": embedded,
           "policy": o["policy"] or ("fifo" if embedded else None),
           "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "workers": n_workers, "cpbench_version": __version__, "host": platform.node(),
           "clock": "CLOCK_MONOTONIC",
           # This host's stored `cpbench calibrate` figures (or None): the report warns
           # when the run came near them.
           "calibration": load_calibration(),
           "options": {k: v for k, v in o.items() if k not in ("quiet", "report")}}
    run["options"]["warmup"] = None if o["warmup"] is None else str(o["warmup"])
    run["options"]["metrics_urls"] = [strip_credentials(u) for u in o["metrics_urls"] or []]
    dispatch_base = {"hints": o["hints"], "timeout_s": float(o["timeout_s"]),
                     "connections": int(o["connections"]), "grace_s": float(o["grace_s"]),
                     "bearer": os.environ.get("OPENAI_API_KEY") or None}
    # Each worker gets its share of the cap; the key never reaches results or summary.
    cfgs = []
    for w in range(n_workers):
        share = cap // n_workers + (1 if w < cap % n_workers else 0) if cap else 0
        cfgs.append({"plan": str(plans[w]), "url": url, "loop": o["loop"],
                     "realtime": int(o["realtime"]),
                     "dispatch": dict(dispatch_base, max_concurrency=share)})
    writer = ResultsWriter(out / "results.arrow", run)
    pool = cluster.pool(cfgs, models) if cluster else WorkerPool(cfgs, n_workers, models)
    failed_write: list[OutputError] = []

    def write(batch) -> None:
        # After a failed write (full disk) the workers are stopped and drained; later
        # batches are dropped and the run ends with that one error.
        if failed_write:
            return
        try:
            writer.write(batch)
        except OutputError as exc:
            failed_write.append(exc)
            pool.stop()
    stop = {"why": None}

    def on_signal(signum, frame) -> None:
        if stop["why"] is None:
            stop["why"] = signal.Signals(signum).name
            pool.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    show = not o["quiet"] and sys.stderr.isatty()
    monitors = None
    try:
        pool.wait_ready()
        if cluster is not None:
            run["cluster"] = pool.cluster_facts()
            _record_cluster(out, run["cluster"])
        start_ns = time.monotonic_ns() + 250_000_000
        monitors = _start_monitors(o, url if embedded else None, start_ns)
        pool.start(start_ns)
        cpu0 = time.process_time()
        next_show = 0.0
        while pool.live:
            pool.pump(0.1, write)
            tot = pool.totals()
            if o["max_error_ratio"] is not None and stop["why"] is None and tot["done"] >= 100 \
                    and tot["errors"] > o["max_error_ratio"] * tot["done"]:
                stop["why"] = "max-error-ratio"
                pool.stop()
            if show and time.monotonic() >= next_show:
                _progress_line(tot, start_ns, intended_ns)
                next_show = time.monotonic() + PROGRESS_S
        duration_s = (time.monotonic_ns() - start_ns) / 1e9
        parent_cpu_s = time.process_time() - cpu0
    finally:
        for s, h in old.items():
            signal.signal(s, h)
        if monitors is not None:
            monitors.stop()
        if show:
            sys.stderr.write("\n")
        pool.stop()
        pool.close()
        if failed_write:
            writer.abandon()
        else:
            writer.close()
    if failed_write:
        raise failed_write[0]
    finals = [f for f in pool.finals if f is not None]
    lost = [w for w, f in enumerate(pool.finals) if f is None]
    if lost and stop["why"] is None:
        # Its record batches so far are in results.arrow; the run is marked, not dropped.
        where = getattr(pool, "lost", {})      # a Ray actor: which node it ran on
        print(f"cpbench: warning: worker(s) {lost} exited before finishing; their unsent "
              "requests are missing from the results" + "".join(f"; {v}" for v in
                                                                where.values()),
              file=sys.stderr)
        stop["why"] = "worker-exited"
        if where:
            run["lost_workers"] = list(where.values())
    run.update({"duration_s": round(duration_s, 3), "interrupted": stop["why"] is not None,
                "stop_reason": stop["why"], "scheduled": int(len(intended_ns)),
                "client": {"worker_cpu_s": sum(f["cpu_s"] for f in finals),
                           "parent_cpu_s": parent_cpu_s,
                           "worker_max_rss_kb": max((f["max_rss_kb"] for f in finals), default=0),
                           "parent_max_rss_kb": resource.getrusage(
                               resource.RUSAGE_SELF).ru_maxrss,
                           "connections": sum(f["counters"]["connections"] for f in finals),
                           "worker_preempted": sum(f["counters"].get("preempted", 0)
                                                   for f in finals),
                           "worker_realtime": [f.get("realtime", False) for f in finals],
                           "retried": sum(f["counters"].get("retried", 0) for f in finals)}})
    _write_outputs(out, run, pool, o, monitors)
    tot = pool.totals()
    if stop["why"] == "max-error-ratio":
        raise ErrorRatioExceeded(f"{tot['errors']} of {tot['done']} requests failed, more "
                                 f"than --max-error-ratio {o['max_error_ratio']}; results "
                                 f"are in {out}")
    _warn_failures(tot, out)
    return out


class ErrorRatioExceeded(TargetError):
    """More requests failed than ``--max-error-ratio`` allows (everything is still written)."""

    exit_status = 3


def _warn_failures(tot: dict, out: Path) -> None:
    # Failures never pass silently, --quiet included: one line on stderr.
    if tot["errors"]:
        print(f"cpbench: {tot['errors']} of {tot['done']} requests failed; see "
              f"{out / 'summary.json'}", file=sys.stderr)
    if tot.get("emfile"):
        limit = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        print(f"cpbench: {tot['emfile']} requests could not open a connection: too many open "
              f"files (limit {limit}); raise it with `ulimit -n` or lower --max-concurrency",
              file=sys.stderr)


def _progress_line(tot: dict, start_ns: int, intended_ns: np.ndarray) -> None:
    elapsed_ns = max(0, time.monotonic_ns() - start_ns)
    total_s = intended_ns[-1] / 1e9 if len(intended_ns) else 0.0
    due = int(np.searchsorted(intended_ns, elapsed_ns, side="right"))
    el = elapsed_ns / 1e9
    rate = tot["sent"] / el if el > 0 else 0.0
    sched = due / el if el > 0 else 0.0
    sys.stderr.write(f"\r[{el:7.1f}/{total_s:.1f} s] sent {tot['sent']}/{due} "
                     f"({rate:,.0f}/{sched:,.0f} rps)  in flight {tot['in_flight']}  "
                     f"errors {tot['errors']}  lag p99 {tot['lag_p99_ns'] / 1e6:.2f} ms   ")
    sys.stderr.flush()


def _start_monitors(o: dict, sim_url: str | None, start_ns: int):
    if not o["monitor"]:
        return None
    from cpbench.monitor import MonitorSet
    urls = list(o["metrics_urls"] or []) + ([sim_url + "/metrics"] if sim_url else [])
    monitors = MonitorSet(metrics_urls=urls, clock_origin_ns=start_ns)
    monitors.start()
    return monitors


def _record_cluster(out: Path, cluster: dict) -> None:
    # manifest.json was written before the actors existed; it gains the cluster block.
    from cpbench.manifest import read_manifest, write_manifest
    write_manifest(out, {**read_manifest(out), "cluster": cluster})


def _write_outputs(out: Path, run: dict, pool: WorkerPool, o: dict, monitors) -> None:
    from cpbench.summary import dispatch_lag_of_workers, summarize, write_summary
    release_unused_memory()     # what the batches of the run left in the allocators
    results = read_results(out / "results.arrow")
    summary = summarize(results, itl_hist=pool.merged_itl(), run=run)
    for node in summary["run"].get("cluster", {}).get("nodes", []):
        node["dispatch_lag_ms"] = dispatch_lag_of_workers(results, node["workers"])
    del results                 # unmaps results.arrow before the report maps it again
    release_unused_memory()
    if monitors is not None:
        monitors.write(out / "monitor.arrow")
        summary["monitor"] = monitors.status()
    write_summary(summary, out / "summary.json")
    if not o["quiet"]:
        print(format_summary(summary, out))
    if o["report"]:
        from cpbench.reporting import write_report  # Bokeh loads only when a report is made
        write_report([out], out / "report.html", markdown_path=out / "report.md")


def _ms(d: dict, key: str) -> str:
    v = d.get(key)
    return "-" if v is None else f"{v:,.2f}"


def format_summary(summary: dict, out: Path) -> str:
    """The console summary table of one run (milliseconds for display only)."""
    run, req, rates = summary.get("run", {}), summary.get("requests", {}), summary.get("rates", {})
    errs = ", ".join(f"{k} {v}" for k, v in sorted(req.get("by_error_class", {}).items()) if v)
    lines = [
        f"cpbench replay  {run.get('trace')} -> {run.get('target')}  "
        f"({run.get('workers')} workers, {run.get('duration_s', 0):.1f} s"
        + (", INTERRUPTED)" if run.get("interrupted") else ")"),
        f"requests   scheduled {req.get('scheduled', 0):,}  sent {req.get('sent', 0):,}  "
        f"completed {req.get('completed', 0):,}  errors {req.get('errors', 0):,}"
        + (f" ({errs})" if errs else "") + f"  warmup {req.get('warmup', 0):,}",
        f"rates      scheduled {rates.get('scheduled_rps', 0):,.1f} rps  achieved "
        f"{rates.get('achieved_rps', 0):,.1f} rps  completed {rates.get('completed_rps', 0):,.1f}"
        f" rps  output {rates.get('output_tps', 0):,.0f} tok/s",
    ]
    lag = summary.get("dispatch_lag_ms", {})
    lines.append("dispatch lag ms  " + "  ".join(
        f"{k} {_ms(lag, k)}" for k in ("p50", "p99", "p99.9", "max")))
    for node in run.get("cluster", {}).get("nodes", []):
        lag, clock = node.get("dispatch_lag_ms", {}), node.get("clock") or {}
        lines.append(f"  node {node['address']} ({node['actors']} actors, clock "
                     f"{clock.get('offset_ns', 0) / 1e6:+,.3f} ± "
                     f"{clock.get('uncertainty_ns', 0) / 1e6:.3f} ms)  lag  " + "  ".join(
                         f"{k} {_ms(lag, k)}" for k in ("p50", "p99", "max")))
    cols = ("count", "p50", "p90", "p99", "p99.9", "max")
    lines.append(f"{'latency ms':<20}" + "".join(f"{c:>11}" for c in cols))
    for name, d in summary.get("latency_ms", {}).items():
        if not isinstance(d, dict) or not d:
            continue
        cells = [f"{d.get('count', 0):>11,}"] + [f"{_ms(d, c):>11}" for c in cols[1:]]
        lines.append(f"{name:<20}" + "".join(cells))
    slo = summary.get("slo", {})
    if slo:
        share = slo.get("attainment")
        shown = "-" if share is None else f"{100.0 * share:.1f}%"
        lines.append(f"SLO        attainment {shown}  goodput {slo.get('goodput_rps') or 0:,.1f} rps")
    lines.append(f"results    {out}")
    return "\n".join(lines)

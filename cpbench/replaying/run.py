"""One replay end to end: options, plan, target, workers, outputs, console.

:func:`run_replay` is the entry point (the ``cpbench replay`` CLI and ``cpbench.replay()`` are
thin layers over it). With no URL it starts the embedded control plane
(:class:`cpbench.replaying.target.EmbeddedSim`) on a free loopback port and stops it at the
end. It hands on a results directory: ``results.arrow`` (written as the run goes),
``summary.json`` (from :mod:`cpbench.summary`), ``manifest.json``, ``monitor.arrow`` and,
unless told not to, the report.
"""
from __future__ import annotations

import contextlib
import os
import platform
import resource
import signal
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import numpy as np

from cpbench import __version__
from cpbench.calibration import load_calibration
from cpbench.errors import ClientSaturated, TargetError
from cpbench.outdir import claim, default_dir, keep_names
from cpbench.redact import redact_url
from cpbench.replaying.console import format_summary, progress_line, warn_failures
from cpbench.replaying.options import ReplayOptions, warmup_split
from cpbench.replaying.plan import save_plan
from cpbench.replaying.planning import build_plan, select_rows, trace_models
from cpbench.replaying.pool import WorkerPool
from cpbench.replaying.sink import ResultSink
from cpbench.replaying.target import EmbeddedSim, active_policy, check_reachable
from cpbench.results import ResultsWriter
from cpbench.summary import RunningSummary

PROGRESS_S = 1.0


def run_replay(trace_path: str | os.PathLike[str], options: ReplayOptions | None = None,
               **kwargs) -> Path:
    """Replay a trace against ``options.url`` (or the embedded sim); write the results directory.

    Parameters
    ----------
    trace_path
        A cpbench trace (see docs/formats.md).
    options
        How to replay (:class:`ReplayOptions`); or give its fields as keyword arguments
        (``url=...``, ``output=...``, ``speed=2.0``).

    Returns
    -------
    Path
        The results directory.

    Raises
    ------
    ConfigError
        A bad option (exit status 2).
    OutputError
        The output directory is a file, holds results (without ``overwrite``), is being
        written by another run, or cannot be written (full disk: the batches written so far
        are kept).
    TargetError
        The target is unreachable at the start (exit status 1).
    ErrorRatioExceeded
        More requests failed than ``max_error_ratio`` allows (exit status 3); everything is
        still written.
    ClientSaturated
        The client stayed more than ``max_behind_s`` behind the schedule and stopped the run
        (exit status 4); everything up to the stop is written.
    """
    from cpbench.trace import read_trace, sha256_file, trace_metadata

    if options is None:
        options = ReplayOptions.from_kwargs(kwargs, source="run_replay()")
    elif kwargs:
        options = ReplayOptions.from_kwargs({**vars(options), **kwargs}, source="run_replay()")
    o = options
    warmup_s, warmup_requests = warmup_split(o.warmup)
    trace_path = Path(trace_path)
    table = read_trace(trace_path)
    sel = select_rows(table, speed=o.speed, rate_scale=o.rate_scale, duration_s=o.duration_s,
                      warmup_s=warmup_s, warmup_requests=warmup_requests)
    models = trace_models(table)
    provenance = trace_metadata(table)
    release_unused_memory()         # reading and validating a 10^6-row trace freed ~20 MB
    out_path = o.output if o.output is not None else default_dir(trace_path.stem)
    keep = keep_names(trace_path, out_path)
    with claim(out_path, overwrite=o.overwrite, keep=keep) as out, \
            tempfile.TemporaryDirectory(prefix="cpbench-replay-") as tmp, \
            _ray_cluster(o) as cluster:
        n_workers = cluster.n_actors if cluster else _worker_count(o, len(sel.rows))
        plans = _save_plans(table, sel, models, n_workers, Path(tmp))
        # The workers map their plans: the parent keeps only the intended times, copied: a
        # view would keep the memory-mapped trace, and the 38 MB of it that planning touched,
        # resident for the whole run and its summary.
        intended_ns = np.array(sel.intended_ns)
        del table, sel
        release_unused_memory()
        sim = EmbeddedSim(Path(tmp), policy=o.policy) if o.url is None else None
        try:
            target_url = sim.url if sim else o.url
            check_reachable(target_url)
            from cpbench.manifest import record_run  # manifest.json: how to rerun this run
            digest = sha256_file(trace_path)      # once: the manifest and summary.run share it
            record_run(out, options=o.recorded(), trace_path=trace_path, target_url=target_url,
                       trace_sha256=digest)
            run = {"trace": str(trace_path), "trace_sha256": digest,
                   "trace_generator": provenance.get("generator"),
                   "trace_seed": provenance.get("seed")}
            return _run(run, target_url, sim, out, o, intended_ns, models, plans, cluster)
        finally:
            if sim is not None:
                sim.stop()


@contextlib.contextmanager
def _ray_cluster(o: ReplayOptions):
    """With ``--ray``: the connected cluster, one dispatcher actor per client core
    (:mod:`cpbench.replaying.cluster`); without it, None."""
    if not o.ray:
        yield None
        return
    from cpbench.replaying.cluster import RayCluster
    cluster = RayCluster(str(o.ray), o.workers_per_node)
    try:
        yield cluster
    finally:
        cluster.disconnect()


def _worker_count(o: ReplayOptions, n_requests: int) -> int:
    n_workers = max(1, min(o.workers or os.cpu_count() or 1, max(1, n_requests)))
    cap = o.max_concurrency
    return min(n_workers, cap) if cap else n_workers    # each worker holds one of the cap


def _save_plans(table, sel, models: list[str], n_workers: int, tmp: Path) -> list[Path]:
    plans = []
    for w in range(n_workers):
        save_plan(build_plan(table, sel, w, n_workers, models), tmp / f"plan-{w}")
        plans.append(tmp / f"plan-{w}")
        release_unused_memory()     # one plan's temporaries, before the next one's
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


def _run(run: dict, url: str, sim: EmbeddedSim | None, out: Path, o: ReplayOptions,
         intended_ns: np.ndarray, models: list[str], plans: list[Path], cluster=None) -> Path:
    """Start the workers (local processes, or Ray actors with ``cluster``), write rows as they
    come, stop on a signal or the error ratio, then write the summary and report. ``run``:
    what the trace is (name, hash, provenance)."""
    n_workers = len(plans)
    # The policy label: as given, the embedded sim's default, or what the target reports.
    policy = o.policy or ("fifo" if sim is not None else active_policy(url))
    run.update({"target": redact_url(url), "embedded_target": sim is not None,
           "policy": policy,
           "started_utc": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "workers": n_workers, "cpbench_version": __version__, "host": platform.node(),
           "clock": "CLOCK_MONOTONIC",
           # This host's stored `cpbench calibrate` figures (or None): the report warns
           # when the run came near them.
           "calibration": load_calibration(),
           "options": o.recorded()})
    # Each worker gets its share of the cap; the key never reaches results or summary.
    bearer = os.environ.get("OPENAI_API_KEY") or None
    cap = o.max_concurrency
    cfgs = []
    for w in range(n_workers):
        share = cap // n_workers + (1 if w < cap % n_workers else 0) if cap else 0
        cfgs.append({"plan": str(plans[w]), "url": url, "loop": o.loop, "realtime": o.realtime,
                     "dispatch": o.dispatch_config(share, bearer)})
    writer = ResultsWriter(out / "results.arrow", run)
    # Each batch is summarized as it arrives: no step of the run holds every row.
    running = RunningSummary()
    pool = cluster.pool(cfgs) if cluster else WorkerPool(cfgs, n_workers)
    # Rows are written and folded in a nice-19 thread, so a worker that wakes takes the CPU
    # from it (cpbench.replaying.sink); this thread reads the pipes and watches the run.
    sink = ResultSink(writer, running, models)
    stop = {"why": None}

    def on_signal(signum, frame) -> None:
        if stop["why"] is None:
            stop["why"] = signal.Signals(signum).name
            pool.stop()

    old = {s: signal.signal(s, on_signal) for s in (signal.SIGINT, signal.SIGTERM)}
    show = not o.quiet and sys.stderr.isatty()
    monitors = None
    try:
        pool.wait_ready()
        if cluster is not None:
            run["cluster"] = pool.cluster_facts()
            _record_cluster(out, run["cluster"])
        start_ns = time.monotonic_ns() + 250_000_000
        # The run clock's origin on this host's CLOCK_MONOTONIC: lines the rows up with what
        # other tools stamped on it (perf, a server's own log).
        run["start_monotonic_ns"] = start_ns
        monitors = _start_monitors(o, url if sim is not None else None, start_ns)
        pool.start(start_ns)
        cpu0 = time.process_time()
        next_show, stopped_to_drain = 0.0, False
        while pool.live:
            pool.pump(0.1, sink.put)
            if sink.broken and not stopped_to_drain:
                # A failed write (full disk): the workers are stopped and drained; later
                # batches are dropped and the run ends with that one error.
                stopped_to_drain = True
                pool.stop()
            tot = pool.totals()
            if o.max_error_ratio is not None and stop["why"] is None and tot["done"] >= 100 \
                    and tot["errors"] > o.max_error_ratio * tot["done"]:
                stop["why"] = "max-error-ratio"
                pool.stop()
            if pool.saturated and stop["why"] is None:
                stop["why"] = ClientSaturated.stop_reason     # one worker stopped: all stop
                pool.stop()
            if show and time.monotonic() >= next_show:
                progress_line(tot, start_ns, intended_ns)
                next_show = time.monotonic() + PROGRESS_S
        duration_s = (time.monotonic_ns() - start_ns) / 1e9
    finally:
        # The signal handlers stay until results.arrow is complete: a second Ctrl-C while the
        # workers wind down (at most pool.close's grace) or the last rows are folded only
        # repeats the stop, and cannot leave the file without its footer.
        try:
            if monitors is not None:
                monitors.stop()
            if show:
                sys.stderr.write("\n")
            pool.stop()
            pool.close()
        finally:
            try:
                sink.close()        # the rows still queued, then results.arrow's end
            finally:
                for s, h in old.items():
                    signal.signal(s, h)
    # The fold's catching up after the last answer is the parent's CPU too.
    parent_cpu_s = time.process_time() - cpu0
    if sink.failed is not None:
        raise sink.failed
    finals = [f for f in pool.finals if f is not None]
    lost = [w for w, f in enumerate(pool.finals) if f is None]
    if lost and stop["why"] is None:
        # Its record batches so far are in results.arrow; the run is marked, not dropped.
        where = getattr(pool, "lost", {})      # a Ray actor: which node it ran on
        print(f"cpbench: warning: worker(s) {lost} exited before finishing; their unsent "
              "requests are missing from the results"
              + "".join(f"; {v}" for v in where.values()), file=sys.stderr)
        stop["why"] = "worker-exited"
        if where:
            run["lost_workers"] = list(where.values())
    run.update({"duration_s": round(duration_s, 3), "interrupted": stop["why"] is not None,
                "stop_reason": stop["why"], "scheduled": int(len(intended_ns)),
                "schedule": {"requests": int(len(intended_ns)),
                             "span_s": float(intended_ns[-1] - intended_ns[0]) / 1e9
                             if len(intended_ns) else 0.0},
                "client": {"worker_cpu_s": sum(f["cpu_s"] for f in finals),
                           "parent_cpu_s": parent_cpu_s,
                           "fold_nice": sink.nice,
                           "worker_max_rss_kb": max((f["max_rss_kb"] for f in finals), default=0),
                           "parent_max_rss_kb": resource.getrusage(
                               resource.RUSAGE_SELF).ru_maxrss,
                           "connections": sum(f["counters"]["connections"] for f in finals),
                           "worker_preempted": sum(f["counters"].get("preempted", 0)
                                                   for f in finals),
                           "worker_realtime": [f.get("realtime", False) for f in finals],
                           "worker_slice_ns": [f.get("slice_ns", 0) for f in finals],
                           "retried": sum(f["counters"].get("retried", 0) for f in finals),
                           "idle_closed": sum(f["counters"].get("idle_closed", 0)
                                              for f in finals),
                           "behind_max_s": max((f["counters"].get("behind_max_ns", 0)
                                                for f in finals), default=0) / 1e9}})
    if pool.saturated:
        run["saturated"] = {str(w): info for w, info in sorted(pool.saturated.items())}
    summary = _write_outputs(out, run, running, pool, o, monitors)
    tot = pool.totals()
    # During the run the ratio is judged from 100 answers on (a few early faults must not stop
    # it); at the end it is judged on every answer, so a short failing run exits 3 too.
    over = (o.max_error_ratio is not None and stop["why"] is None and tot["done"] > 0
            and tot["errors"] > o.max_error_ratio * tot["done"])
    if stop["why"] == "max-error-ratio" or over:
        raise ErrorRatioExceeded(f"{tot['errors']} of {tot['done']} requests failed, more "
                                 f"than --max-error-ratio {o.max_error_ratio}; results "
                                 f"are in {out}")
    if stop["why"] == ClientSaturated.stop_reason:
        raise ClientSaturated(saturation_message(pool.saturated, o.max_behind_s, out))
    warn_failures(summary, tot, out)
    return out


class ErrorRatioExceeded(TargetError):
    """More requests failed than ``--max-error-ratio`` allows (everything is still written)."""

    exit_status = 3


def saturation_message(saturated: dict[int, dict], max_behind_s: float, out: Path) -> str:
    """One line: when the client fell behind, how far, and where its requests stood."""
    w, info = min(saturated.items(), key=lambda kv: kv[1]["at_ns"])
    limit = info.get("connection_limit", 0)
    fds = (f"; {limit:,} connections is all its open-file limit allows: raise it with "
           f"`ulimit -n`" if limit and info["open_connections"] + info["opening"] >= limit
           else "")
    return (f"the client fell more than {max_behind_s:g} s behind the schedule and stopped the "
            f"run at {info['at_ns'] / 1e9:.1f} s: it cannot send this trace at this rate "
            f"(worker {w} was {info['behind_ns'] / 1e9:.2f} s behind, had sent {info['sent']:,} "
            f"of the {info['due']:,} requests due, {info['waiting']:,} waiting for a "
            f"connection, {info['opening']:,} connects in progress, "
            f"{info['open_connections']:,} connections open{fds}). Use more --workers or Ray "
            f"nodes, or a lower rate (--max-behind 0 runs on regardless); results up to the "
            f"stop are in {out}")


def _record_cluster(out: Path, cluster: dict) -> None:
    # manifest.json was written before the actors existed; it gains the cluster block.
    from cpbench.manifest import read_manifest, write_manifest
    write_manifest(out, {**read_manifest(out), "cluster": cluster})


def _start_monitors(o: ReplayOptions, sim_url: str | None, start_ns: int):
    if not o.monitor:
        return None
    from cpbench.monitor import MonitorSet
    urls = list(o.metrics_urls) + ([sim_url + "/metrics"] if sim_url else [])
    monitors = MonitorSet(metrics_urls=urls, clock_origin_ns=start_ns)
    monitors.start()
    return monitors


def _write_outputs(out: Path, run: dict, running: RunningSummary, pool: WorkerPool,
                   o: ReplayOptions, monitors) -> dict:
    from cpbench.summary import add_monitor, write_summary
    summary = running.finish(run=run, itl_hist=pool.merged_itl())
    for node in summary["run"].get("cluster", {}).get("nodes", []):
        node["dispatch_lag_ms"] = running.dispatch_lag_of_workers(node["workers"])
    release_unused_memory()     # what the batches of the run left in the allocators
    if monitors is not None:
        monitors.write(out / "monitor.arrow")
        add_monitor(summary, monitors.table(), monitors.status())
    write_summary(summary, out / "summary.json")
    if not o.quiet:
        print(format_summary(summary, out))
    if o.report:
        from cpbench.reporting import write_report  # Bokeh loads only when a report is made
        write_report([out], out / "report.html", markdown_path=out / "report.md")
    return summary



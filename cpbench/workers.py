"""Fan-out of one replay to worker processes that share one start time, and the merge.

The parent turns the run options into a row selection (:func:`select_rows`) that every worker
recomputes identically from the trace file, so nothing large crosses a process boundary on the
way in; worker ``w`` of ``n`` takes every ``n``-th selected row. Workers open their
connections, report ready, and all start from one absolute ``time.monotonic_ns()`` instant the
parent chooses (CLOCK_MONOTONIC is system-wide on Linux). On the way back each worker sends
record batches (Arrow IPC bytes), progress counters, and at the end its encoded ITL histogram;
the parent writes the batches as they come and merges the histograms, which is exact.
"""
from __future__ import annotations

import asyncio
import fcntl
import gc
import json
import os
import resource
import signal
import subprocess
import sys
import time
import warnings
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench._core.hist import Histogram
from cpbench.dispatch import Dispatcher, DispatchOptions, Plan, Target
from cpbench.errors import CpbenchError, TargetError
from cpbench.results import DEFAULT_SLO_MS, KIND_VALUES, PRIORITY_VALUES, rows_to_batch
from cpbench.spawn import python_module_cmd

_F_SETPIPE_SZ = 1031            # Linux: let a record batch fit in the pipe without blocking
_PR_SET_TIMERSLACK = 29         # Linux prctl option


@dataclass(frozen=True)
class Selection:
    """Which trace rows a run sends, when, and which are warm-up."""

    rows: np.ndarray            # int64 trace row indices, in send order
    intended_ns: np.ndarray     # int64 offsets from the run start
    warmup: np.ndarray          # bool


def select_rows(table: pa.Table, *, speed: float = 1.0, rate_scale: float = 1.0,
                duration_s: float | None = None, warmup_s: float = 0.0,
                warmup_requests: int = 0) -> Selection:
    """Apply ``--speed``/``--rate-scale`` (both divide the trace's time offsets),
    ``--duration`` (rows intended at or after it are not sent) and ``--warmup``."""
    arrival = table.column("arrival_ns").to_numpy().astype(np.int64, copy=False)
    factor = float(speed) * float(rate_scale)
    intended = arrival if factor == 1.0 else np.rint(arrival / factor).astype(np.int64)
    rows = np.arange(len(intended), dtype=np.int64)
    if duration_s is not None:
        keep = intended < int(duration_s * 1e9)
        rows, intended = rows[keep], intended[keep]
    warmup = (intended < int(warmup_s * 1e9)) | (np.arange(len(rows)) < warmup_requests)
    return Selection(rows, intended, warmup)


def _codes(column: pa.ChunkedArray, values: list[str]) -> np.ndarray:
    strings = pc.cast(column.combine_chunks(), pa.string()) if pa.types.is_dictionary(
        column.type) else column.combine_chunks()
    return pc.index_in(strings, value_set=pa.array(values, pa.string())).to_numpy(
        zero_copy_only=False).astype(np.int32)


def trace_models(table: pa.Table) -> list[str]:
    """Every model of the trace, sorted: the dictionary of the results' ``model`` column."""
    col = table.column("model")
    col = pc.cast(col, pa.string()) if pa.types.is_dictionary(col.type) else col
    return sorted(v for v in pc.unique(col).to_pylist() if v is not None)


def build_plan(table: pa.Table, sel: Selection, worker: int, n_workers: int) -> Plan:
    """Worker ``worker``'s share of ``sel`` (every ``n_workers``-th row) as a :class:`Plan`."""
    pos = np.arange(worker, len(sel.rows), n_workers)
    rows = sel.rows[pos]
    sub = table.take(pa.array(rows))
    models = trace_models(table)
    kind = _codes(sub.column("kind"), list(KIND_VALUES))

    def nums(name: str, fill, dtype) -> np.ndarray:
        return pc.fill_null(sub.column(name), fill).to_numpy().astype(dtype)

    slos = []
    for i, name in enumerate(("slo_ttft_ms", "slo_e2e_ms")):
        defaults = np.array([DEFAULT_SLO_MS[k][i] for k in KIND_VALUES])[kind]
        given = pc.fill_null(sub.column(name), np.nan).to_numpy().astype(np.float64)
        slos.append(np.where(np.isnan(given), defaults, given))
    prompts = sub.column("prompt").combine_chunks() if "prompt" in sub.column_names else None
    if prompts is not None and prompts.null_count == len(prompts):
        prompts = None
    return Plan(
        rows=rows, intended_ns=sel.intended_ns[pos], kind=kind,
        priority=_codes(sub.column("priority"), list(PRIORITY_VALUES)),
        model=_codes(sub.column("model"), models),
        input_tokens=nums("input_tokens", 0, np.int32),
        output_tokens=nums("output_tokens", -1, np.int32),
        batch_size=nums("batch_size", 1, np.int32),
        slo_ttft_ms=slos[0], slo_e2e_ms=slos[1],
        warmup=sel.warmup[pos].astype(np.int32), prompts=prompts, models=models,
    )


# -- the worker process ----------------------------------------------------------------

def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def tighten_timer_slack() -> bool:
    """Ask Linux for 1 ns timer slack in this process instead of the default 50 µs.

    The dispatcher's sub-millisecond waits are ``select`` timeouts, and the kernel may defer a
    normal process's timer wake-up by its slack: at the default that is most of the median
    dispatch lag. Returns whether the setting took (not on other systems).
    """
    try:
        import ctypes
        return ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def set_realtime(priority: int) -> str | None:
    """Move this process to SCHED_FIFO at ``priority``; None, or why it could not.

    The dispatcher blocks in ``select`` between sends and never spins, so a real-time
    worker only takes the CPU when a send is due or a response arrives: on a busy host its
    sends stop waiting behind other processes' time slices. A worker that is itself
    saturated would keep its core (the kernel's real-time throttling leaves others 5 %).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def worker_main(cfg: dict, worker: int, n_workers: int, ctl: Connection, out: Connection) -> None:
    """Body of worker process ``worker``: plan, connect, wait for the start, run, report."""
    # The parent coordinates stopping (it forwards SIGINT/SIGTERM as a "stop" message).
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    loop = _new_loop(cfg["loop"])
    asyncio.set_event_loop(loop)
    tighten_timer_slack()

    def emit(kind: str, payload: object) -> None:
        out.send((kind, payload))

    try:
        from cpbench.trace import read_trace
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")     # the parent read it first and warned once
            table = read_trace(cfg["trace"])
        sel = select_rows(table, **cfg["selection"])
        plan = build_plan(table, sel, worker, n_workers)
        del table, sel
        hist = Histogram()
        disp = Dispatcher(Target.from_url(cfg["url"]), plan, DispatchOptions(**cfg["dispatch"]),
                          worker, emit, hist)
        loop.run_until_complete(disp.open_pool())
    except CpbenchError as exc:
        emit("error", str(exc))
        return
    # The prompt text is built on first use (tens of ms): not on the first send.
    from cpbench.prompts import build_prompt
    build_prompt(2, 0)
    # Everything built so far lives for the whole run: keep the collector off it.
    gc.collect()
    gc.freeze()
    emit("ready", len(plan))
    try:
        msg = ctl.recv()
    except (EOFError, OSError):
        return                                      # the parent went away before the start
    if msg[0] != "start":
        emit("done", {"counters": disp.progress(), "cpu_s": 0.0, "max_rss_kb": 0,
                      "itl_hist": hist.encode()})
        return

    def on_control() -> None:
        try:
            ctl.recv()
        except (EOFError, OSError):
            loop.remove_reader(ctl.fileno())
            disp.unwatch(ctl.fileno())
        disp.stopping = True

    loop.add_reader(ctl.fileno(), on_control)
    disp.watch(ctl.fileno())
    realtime = False
    if cfg.get("realtime"):
        problem = set_realtime(int(cfg["realtime"]))
        realtime = problem is None
        if problem is not None:
            emit("warning", f"worker {worker}: --realtime not granted ({problem}); running at "
                            "normal priority")
    cpu0 = time.process_time()
    ctx0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    counters = loop.run_until_complete(disp.run(msg[1]))
    cpu_s = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # Involuntary switches tell a lag spike caused by a busy host from one caused by us.
    counters["preempted"] = usage.ru_nivcsw - ctx0
    emit("done", {"counters": counters, "cpu_s": cpu_s, "max_rss_kb": usage.ru_maxrss,
                  "itl_hist": hist.encode(), "realtime": realtime})
    loop.close()


class WorkerPool:
    """The parent's side: start workers, release them together, pump their messages."""

    def __init__(self, cfgs: list[dict], n_workers: int, models: list[str]) -> None:
        # Plain subprocesses running this module, not multiprocessing's spawn: spawn re-runs
        # the caller's __main__, which breaks any script that calls run_replay unguarded.
        self.n = n_workers
        self.models = models            # the results' model dictionary (trace_models)
        self.procs, self.ctl, self.out = [], [], []
        for w in range(n_workers):
            ctl_r, ctl_w = os.pipe()
            out_r, out_w = os.pipe()
            try:
                fcntl.fcntl(out_w, _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            cmd = python_module_cmd("cpbench.workers", str(w), str(n_workers), str(ctl_r),
                                    str(out_w))
            # Own session: a terminal's Ctrl-C reaches the parent only, which stops the workers
            # by message after a clean hand-over. The key travels on stdin, never on argv.
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(ctl_r, out_w),
                                    start_new_session=True)
            proc.stdin.write(json.dumps(cfgs[w]).encode())
            proc.stdin.close()
            os.close(ctl_r)
            os.close(out_w)
            self.procs.append(proc)
            self.ctl.append(Connection(ctl_w, readable=False))
            self.out.append(Connection(out_r, writable=False))
        self.live = set(range(n_workers))
        self.progress: list[dict] = [{} for _ in range(n_workers)]
        self.finals: list[dict | None] = [None] * n_workers
        self.planned = 0

    def wait_ready(self, timeout_s: float = 120.0) -> None:
        """Block until every worker is connected; a worker's error raises TargetError."""
        pending = set(range(self.n))
        deadline = time.monotonic() + timeout_s
        while pending:
            ready = wait([self.out[w] for w in pending], timeout=max(0.0, deadline - time.monotonic()))
            if not ready:
                raise TargetError(f"workers did not get ready in {timeout_s:g} s")
            for conn in ready:
                w = self.out.index(conn)
                try:
                    kind, payload = conn.recv()
                except EOFError:
                    raise TargetError(f"worker {w} exited during start-up "
                                      f"(exit code {self.procs[w].wait()})") from None
                if kind == "error":
                    raise TargetError(payload)
                self.planned += int(payload)
                pending.discard(w)

    def start(self, start_ns: int) -> None:
        """Release every worker from the same absolute monotonic instant."""
        for c in self.ctl:
            try:
                c.send(("start", start_ns))
            except (BrokenPipeError, OSError):
                pass                                # stopped before the start

    def stop(self) -> None:
        """Ask every worker to stop scheduling (in-flight requests get the grace period)."""
        for c in self.ctl:
            try:
                c.send(("stop",))
            except (BrokenPipeError, OSError):
                pass

    def pump(self, timeout_s: float, on_batch) -> None:
        """Handle whatever the workers sent within ``timeout_s``; batches go to ``on_batch``."""
        for conn in wait([self.out[w] for w in self.live], timeout=timeout_s):
            w = self.out.index(conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                self.live.discard(w)
                continue
            if kind == "rows":
                on_batch(rows_to_batch(payload, self.models, w))
            elif kind == "progress":
                self.progress[w] = payload
            elif kind == "warning":
                print(f"cpbench: warning: {payload}", file=sys.stderr)
            elif kind == "done":
                self.finals[w] = payload
                self.progress[w] = payload["counters"]
                self.live.discard(w)

    def totals(self) -> dict:
        """Progress counters summed over workers (lag: the worst worker's)."""
        keys = ("sent", "done", "errors", "in_flight", "waiting", "connections", "emfile")
        tot = {k: sum(p.get(k, 0) for p in self.progress) for k in keys}
        tot["lag_p99_ns"] = max((p.get("lag_p99_ns", 0) for p in self.progress), default=0)
        return tot

    def merged_itl(self) -> Histogram:
        """The exact merge of every finished worker's ITL histogram."""
        hist = Histogram()
        for final in self.finals:
            if final is not None:
                hist.merge(Histogram.decode(final["itl_hist"]))
        return hist

    def close(self, grace_s: float = 5.0) -> None:
        """Join the workers; one that hangs past ``grace_s`` is killed."""
        for p in self.procs:
            try:
                p.wait(grace_s)
            except subprocess.TimeoutExpired:
                os.kill(p.pid, signal.SIGKILL)
                p.wait(2.0)
        for c in self.ctl + self.out:
            c.close()


if __name__ == "__main__":
    # python -m cpbench.workers W N CTL_FD OUT_FD, config JSON on stdin (see WorkerPool).
    _w, _n, _ctl, _out = (int(a) for a in sys.argv[1:5])
    worker_main(json.loads(sys.stdin.read()), _w, _n, Connection(_ctl, writable=False),
                Connection(_out, readable=False))

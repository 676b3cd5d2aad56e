"""The parent's side of a replay's fan-out: plan each worker's share, start them, merge.

The parent turns the run options into a row selection (:func:`select_rows`); worker ``w`` of
``n`` takes every ``n``-th selected row, built into a :class:`cpbench.plan.Plan` and saved for
the worker to memory-map, so no worker reads the trace again. Workers
(:mod:`cpbench.worker`) open their connections, report ready, and all start from one absolute
``time.monotonic_ns()`` instant the parent chooses (CLOCK_MONOTONIC is system-wide on Linux).
On the way back each worker sends packed result rows, progress counters, and at the end its
encoded ITL histogram; the parent turns the rows into record batches as they come and merges
the histograms, which is exact.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench._core.hist import Histogram
from cpbench.errors import TargetError
from cpbench.plan import Plan, PromptColumn
from cpbench.results import rows_to_batch
from cpbench.rows import DEFAULT_SLO_MS, KIND_VALUES, PRIORITY_VALUES
from cpbench.spawn import python_module_cmd

_F_SETPIPE_SZ = 1031            # Linux: let a record batch fit in the pipe without blocking


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
    prompts = messages = None
    if "prompt" in sub.column_names and sub.column("prompt").null_count < sub.num_rows:
        prompts = PromptColumn.from_texts(sub.column("prompt").to_pylist())
    rendered = render_block_prompts(table, rows)
    if rendered is not None:
        # Literal prompts and blocks never share a row (trace validation): merge the two.
        texts, chats = rendered
        given = [prompts[j] for j in range(len(rows))] if prompts is not None \
            else [None] * len(rows)
        prompts = PromptColumn.from_texts([g if t is None else t for g, t in zip(given, texts)])
        messages = PromptColumn.from_texts(chats) if any(c is not None for c in chats) else None
    return Plan(
        rows=rows, intended_ns=sel.intended_ns[pos], kind=kind,
        priority=_codes(sub.column("priority"), list(PRIORITY_VALUES)),
        model=_codes(sub.column("model"), models),
        input_tokens=nums("input_tokens", 0, np.int32),
        output_tokens=nums("output_tokens", -1, np.int32),
        batch_size=nums("batch_size", 1, np.int32),
        slo_ttft_ms=slos[0], slo_e2e_ms=slos[1],
        warmup=sel.warmup[pos].astype(np.int32), prompts=prompts, models=models,
        messages=messages,
    )


def render_block_prompts(table: pa.Table, rows: np.ndarray) -> tuple[list, list] | None:
    """Prompts of ``rows`` rendered from ``prefix_blocks`` ahead of the run (None when the
    trace has no blocks): :func:`cpbench.prompts.render_rows` over the whole trace's columns."""
    from cpbench.blocks import BlockLists, block_tokens_of
    from cpbench.prompts import render_rows

    if "prefix_blocks" not in table.column_names or \
            table.column("prefix_blocks").null_count == table.num_rows:
        return None
    kinds = pc.cast(table.column("kind"), pa.string()).to_pylist()
    return render_rows(rows.tolist(), BlockLists(table.column("prefix_blocks")),
                       table.column("input_tokens").to_pylist(),
                       table.column("output_tokens").to_pylist(),
                       table.column("session").to_pylist(), [k == "chat" for k in kinds],
                       block_tokens_of(table.schema.metadata) or 1)


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
            cmd = python_module_cmd("cpbench.worker", str(w), str(n_workers), str(ctl_r),
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

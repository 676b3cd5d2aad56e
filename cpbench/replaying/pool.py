"""The parent's side of a replay's fan-out: start the worker processes, release them, merge.

Workers (:mod:`cpbench.replaying.child`) map the plan the parent saved, open their
connections, report ready, and all start from one absolute ``time.monotonic_ns()`` instant the
parent chooses (CLOCK_MONOTONIC is system-wide on Linux). On the way back each worker sends
packed result rows, progress counters, and at the end its encoded ITL histogram; the parent
hands the rows on as they come (to :class:`cpbench.replaying.sink.ResultSink`) and merges the
histograms, which is exact.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from multiprocessing.connection import Connection, wait

from cpbench._core.hist import Histogram
from cpbench.errors import TargetError
from cpbench.spawn import python_module_cmd

# Popen's process_group is Python 3.11's; before it, setpgid(0, 0) in the child.
_OWN_GROUP = {"process_group": 0} if sys.version_info >= (3, 11) else {"preexec_fn": os.setpgrp}

_F_SETPIPE_SZ = 1031            # Linux: let a record batch fit in the pipe without blocking


class PoolReports:
    """What a pool makes of its workers' (processes' or Ray actors') messages: result rows,
    each worker's latest ``progress`` counters, its ``finals`` (None until it reported), and
    ``saturated``: the workers that fell too far behind the schedule and stopped, with what
    they saw then."""

    progress: list[dict]
    finals: list[dict | None]
    live: set[int]
    saturated: dict[int, dict]

    def handle(self, w: int, kind: str, payload, on_rows) -> None:
        """One message of worker ``w``: packed result rows (to ``on_rows(w, rows)``),
        progress counters, a warning for the console, or its final report."""
        if kind == "rows":
            on_rows(w, payload)
        elif kind == "progress":
            self.progress[w] = payload
        elif kind == "warning":
            print(f"cpbench: warning: {payload}", file=sys.stderr)
        elif kind == "saturated":
            self.saturated[w] = payload
        elif kind == "done":
            self.finals[w] = payload
            self.progress[w] = payload["counters"]
            self.live.discard(w)

    def totals(self) -> dict:
        """Progress counters summed over workers (lag: the worst worker's)."""
        keys = ("sent", "done", "errors", "in_flight", "waiting", "connections", "emfile",
                "fd_limited")
        tot = {k: sum(p.get(k, 0) for p in self.progress) for k in keys}
        tot["lag_p99_ns"] = max((p.get("lag_p99_ns", 0) for p in self.progress), default=0)
        tot["behind_ns"] = max((p.get("behind_ns", 0) for p in self.progress), default=0)
        tot["connection_limit"] = max((p.get("connection_limit", 0) for p in self.progress),
                                      default=0)
        return tot

    def merged_itl(self) -> Histogram:
        """The exact merge of every finished worker's ITL histogram."""
        hist = Histogram()
        for final in self.finals:
            if final is not None:
                hist.merge(Histogram.decode(final["itl_hist"]))
        return hist


class WorkerPool(PoolReports):
    """The parent's side: start workers, release them together, pump their messages."""

    def __init__(self, cfgs: list[dict], n_workers: int) -> None:
        # Plain subprocesses running this module, not multiprocessing's spawn: spawn re-runs
        # the caller's __main__, which breaks any script that calls run_replay unguarded.
        self.n = n_workers
        self.procs, self.ctl, self.out = [], [], []
        for w in range(n_workers):
            ctl_r, ctl_w = os.pipe()
            out_r, out_w = os.pipe()
            try:
                fcntl.fcntl(out_w, _F_SETPIPE_SZ, 1 << 20)
            except OSError:
                pass
            cmd = python_module_cmd("cpbench.replaying.child", str(w), str(ctl_r), str(out_w))
            # Own process group: a terminal's Ctrl-C (sent to the foreground group) reaches the
            # parent only, which stops the workers by message after a clean hand-over. The
            # parent's session, not one of their own: under the kernel's autogroup (a
            # scheduling group per session) a worker with a session of its own was a group
            # of its own, and the parent's group, running its fold, held a CPU the workers
            # waited for (docs/design.md, "Where the lag tail at high rates goes"). The key
            # travels on stdin, never on argv.
            proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, pass_fds=(ctl_r, out_w),
                                    **_OWN_GROUP)
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
        self.saturated: dict[int, dict] = {}
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

    def pump(self, timeout_s: float, on_rows) -> None:
        """Handle whatever the workers sent within ``timeout_s``; rows go to ``on_rows``."""
        for conn in wait([self.out[w] for w in self.live], timeout=timeout_s):
            w = self.out.index(conn)
            try:
                kind, payload = conn.recv()
            except (EOFError, OSError):
                self.live.discard(w)
                continue
            self.handle(w, kind, payload, on_rows)

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

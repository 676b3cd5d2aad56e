"""Where a client's dispatch lag goes on a busy host: its run-queue waits, read from the
kernel's scheduler events.

A send is late when the worker due to make it is not on a CPU: it sleeps past its timer
(the wake-up latency), or it is runnable and waits behind another task, or it is on a CPU
busy with other work of its own. Lag p99 alone cannot tell these apart, and on a shared
2-core host it varies from run to run by more than most changes move it. This module counts
the second kind directly: every interval a client task spent runnable but not running (from
its wake-up or preemption to the switch that put it on a CPU), and what ran on that CPU
meanwhile: the client's own other tasks, the server, the client's parent process, or other
work. It also gives the length of the client's stretches on a CPU, which is how long it
makes the others wait.

:class:`SchedTrace` records ``sched:sched_switch`` and ``sched:sched_wakeup`` for all CPUs
with ``perf record -k mono`` (root, or ``kernel.perf_event_paranoid`` <= -1) around a block;
:func:`parse` and :func:`summarize` are plain functions of ``perf script`` text, used by
``tools/bench_floor.py --sched``.
"""
from __future__ import annotations

import bisect
import re
import shutil
import signal
import subprocess
import time
from collections import Counter, defaultdict
from dataclasses import dataclass
from pathlib import Path

import numpy as np

PERF_FIELDS = "pid,tid,cpu,time,event,trace"
WAIT_THRESHOLDS_MS = (0.5, 1.0)
SERVERS = ("nginx",)

_HEAD = re.compile(r"^\s*(-?\d+)/(\d+)\s+\[(\d+)\]\s+([\d.]+):\s+sched:(sched_switch|sched_wakeup):"
                   r"\s+(.*)$")
_SWITCH = re.compile(r"prev_comm=(.*?) prev_pid=(\d+) prev_prio=-?\d+ prev_state=(\S+) ==> "
                     r"next_comm=(.*?) next_pid=(\d+)")
_WAKEUP = re.compile(r"comm=(.*?) pid=(\d+) prio=-?\d+(?: success=\d+)? target_cpu=\d+")


@dataclass(frozen=True)
class Switch:
    t: float            # seconds on CLOCK_MONOTONIC (perf record -k mono)
    cpu: int
    prev_tgid: int      # the process of the task switched out
    prev: int           # its thread id
    prev_runnable: bool  # preempted (state R), not gone to sleep
    next: int           # the thread switched in (command names: parse's second result)


@dataclass(frozen=True)
class Wakeup:
    t: float
    tid: int            # the thread made runnable


def parse(lines) -> tuple[list, dict[int, str]]:
    """Events in time order from ``perf script -F pid,tid,cpu,time,event,trace`` lines, and
    each thread's last command name. Lines of other events are skipped."""
    events, comms = [], {}
    for line in lines:
        m = _HEAD.match(line)
        if m is None:
            continue
        tgid, cpu, t, what, rest = int(m.group(1)), int(m.group(3)), float(m.group(4)), \
            m.group(5), m.group(6)
        if what == "sched_switch":
            s = _SWITCH.search(rest)
            if s is None:
                continue
            comms[int(s.group(2))] = s.group(1)
            comms[int(s.group(5))] = s.group(4)
            events.append(Switch(t, cpu, tgid, int(s.group(2)), s.group(3).startswith("R"),
                                 int(s.group(5))))
        else:
            w = _WAKEUP.search(rest)
            if w is None:
                continue
            comms[int(w.group(2))] = w.group(1)
            events.append(Wakeup(t, int(w.group(2))))
    events.sort(key=lambda e: e.t)
    return events, comms


def processes_named(events: list, comms: dict[int, str], prefix: str) -> set[int]:
    """The thread-group ids of threads whose command name starts with ``prefix`` (the
    floor's ``floor``, cpbench's workers' ``cpbench-w``)."""
    return {e.prev_tgid for e in events
            if isinstance(e, Switch) and comms.get(e.prev, "").startswith(prefix)}


def summarize(events: list, comms: dict[int, str], clients: set[int],
              parent: int | None = None, servers: tuple[str, ...] = SERVERS,
              window: tuple[float, float] | None = None) -> dict:
    """Run-queue waits and on-CPU stretches of the threads of the ``clients`` processes
    (thread-group ids).

    Returns the time on a CPU (ms), the stretch lengths' p50/p99/p99.9/max (µs) and how many
    exceeded 0.5 ms; the waits over each of ``WAIT_THRESHOLDS_MS`` (count and ms in all);
    and, over the waits of more than the first threshold, the ms each kind of task ran on the waiting CPU meanwhile:
    ``client`` (another client thread), ``server`` (``servers`` by command name), ``parent``
    (the ``parent`` process's threads), ``idle`` and ``other``. With ``window`` (seconds on
    the trace's clock) only the stretches and waits that begin within it count.
    """
    lo, hi = window if window is not None else (float("-inf"), float("inf"))
    tgid_of: dict[int, int] = {}
    for e in events:
        if isinstance(e, Switch):
            tgid_of[e.prev] = e.prev_tgid

    def is_client(tid: int) -> bool:
        return tgid_of.get(tid) in clients

    def kind(tid: int) -> str:
        if tid == 0:
            return "idle"
        if is_client(tid):
            return "client"
        if parent is not None and tgid_of.get(tid) == parent:
            return "parent"
        if comms.get(tid, "").split("/")[0] in servers:
            return "server"
        return "other"

    timeline: dict[int, tuple[list[float], list[int]]] = defaultdict(lambda: ([], []))
    ready: dict[int, float] = {}
    on_cpu: dict[int, float] = {}
    waits, stretches = [], []
    for e in events:
        if isinstance(e, Wakeup):
            if is_client(e.tid) and e.tid not in ready:
                ready[e.tid] = e.t
            continue
        ts, tids = timeline[e.cpu]
        ts.append(e.t)
        tids.append(e.next)
        if e.prev in on_cpu:
            began = on_cpu.pop(e.prev)
            if lo <= began <= hi:
                stretches.append(e.t - began)
        if is_client(e.prev):
            if e.prev_runnable:
                ready[e.prev] = e.t          # preempted: it waits from now
            else:
                ready.pop(e.prev, None)      # asleep: a wake-up starts its next wait
        if e.next in ready:
            began = ready.pop(e.next)
            if lo <= began <= hi:
                waits.append((began, e.t, e.cpu))
        if is_client(e.next):
            on_cpu[e.next] = e.t

    def ran(cpu: int, a: float, b: float) -> Counter:
        # Seconds each kind of task ran on ``cpu`` within [a, b].
        ts, tids = timeline[cpu]
        out: Counter = Counter()
        k = bisect.bisect_right(ts, a) - 1
        if k < 0:
            return out
        t = a
        for k in range(k, len(ts)):
            end = ts[k + 1] if k + 1 < len(ts) else b
            end = min(end, b)
            if end > t:
                out[kind(tids[k])] += end - t
                t = end
            if t >= b:
                break
        return out

    s_us = np.sort(np.array(stretches)) * 1e6 if stretches else np.zeros(1)
    result = {"stretches": len(stretches), "on_cpu_ms": sum(stretches) * 1e3,
              "stretch_us": {q: float(np.percentile(s_us, p)) for q, p in
                             (("p50", 50), ("p99", 99), ("p99.9", 99.9))}
              | {"max": float(s_us[-1])},
              "stretches_over_0.5ms": int((s_us > 500).sum()),
              "waits": len(waits)}
    for thr in WAIT_THRESHOLDS_MS:
        long = [(a, b, c) for a, b, c in waits if b - a > thr / 1e3]
        result[f"waits_over_{thr:g}ms"] = len(long)
        result[f"wait_ms_over_{thr:g}ms"] = sum(b - a for a, b, _ in long) * 1e3
    behind: Counter = Counter()
    for a, b, cpu in waits:
        if b - a > WAIT_THRESHOLDS_MS[0] / 1e3:
            behind.update(ran(cpu, a, b))
    result["behind_ms"] = {k: behind.get(k, 0.0) * 1e3
                           for k in ("client", "server", "parent", "idle", "other")}
    return result


class SchedTrace:
    """``perf record`` of the scheduler's switch and wake-up events on every CPU while the
    block runs; :attr:`lines` is ``perf script``'s text afterwards.

    Raises RuntimeError at the start when perf is missing or may not record (not root, or
    ``kernel.perf_event_paranoid`` too high)."""

    def __init__(self, folder: Path) -> None:
        self.data = folder / f"sched-{time.monotonic_ns()}.data"
        self.proc: subprocess.Popen | None = None
        self.lines: list[str] = []

    def __enter__(self) -> "SchedTrace":
        if shutil.which("perf") is None:
            raise RuntimeError("perf is not installed (Debian: linux-perf)")
        self.proc = subprocess.Popen(
            ["perf", "record", "-q", "-a", "-k", "mono", "-e", "sched:sched_switch", "-e",
             "sched:sched_wakeup", "-o", str(self.data)],
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        time.sleep(0.5)                      # perf has opened its events
        if self.proc.poll() is not None:
            raise RuntimeError("perf record could not start: "
                               + self.proc.stderr.read().decode(errors="replace").strip())
        return self

    def __exit__(self, *exc) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGINT)             # only the perf started here
        try:
            self.proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        if exc[0] is None:
            out = subprocess.run(["perf", "script", "-i", str(self.data), "-F", PERF_FIELDS],
                                 capture_output=True, text=True, check=True)
            self.lines = out.stdout.splitlines()
        self.data.unlink(missing_ok=True)

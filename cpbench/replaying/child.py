"""The body of one replay worker process: map its plan, connect, send on time, report.

Started by :class:`cpbench.replaying.pool.WorkerPool` as ``python -m cpbench.replaying.child W
CTL OUT`` with its configuration on stdin. It imports NumPy, the event loop and the dispatcher but not
pyarrow or the trace reader, and memory-maps the plan the parent saved, so a worker's
resident memory is the interpreter plus the pages of its plan it has reached. Messages to
the parent (pickled on the OUT pipe by an :class:`Outbox` thread, so a parent slow to read
never stalls the sends): ``ready``, ``rows``, ``progress``, ``warning``, ``error`` and
``done``.
"""
from __future__ import annotations

import asyncio
import gc
import json
import os
import queue
import resource
import signal
import sys
import threading
import time
from multiprocessing.connection import Connection
from pathlib import Path

from cpbench._core.hist import Histogram
from cpbench.replaying.dispatch import Dispatcher, DispatchOptions
from cpbench.errors import CpbenchError
from cpbench.replaying.plan import load_plan
from cpbench.replaying.timer import (WORKER_SLICE_NS, name_thread, request_slice,
                                     tighten_timer_slack)
from cpbench.replaying.wire import Target


def _new_loop(name: str) -> asyncio.AbstractEventLoop:
    if name == "uvloop":
        import uvloop
        return uvloop.new_event_loop()
    return asyncio.new_event_loop()


def set_realtime(priority: int) -> str | None:
    """Move this process to SCHED_FIFO at ``priority``; None, or why it could not.

    The dispatcher waits in the event loop's epoll between sends (it spins only with
    ``--spin-us``, at most that long before each send), so a real-time worker only takes the
    CPU when a send is due or a response arrives: on a busy host its sends stop waiting behind
    other processes' time slices. A worker that is itself
    saturated would keep its core (the kernel's real-time throttling leaves others 5 %).
    """
    try:
        os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(priority))
    except (OSError, AttributeError) as exc:
        return getattr(exc, "strerror", None) or str(exc)
    return None


def peak_rss_kb() -> int:
    """This process's own peak resident set (VmHWM) in KiB.

    Not ``ru_maxrss``: Linux carries that over fork and exec, so a worker would report its
    parent's peak at the moment it was started.
    """
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1])
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss


class Outbox:
    """Messages to the parent, sent in order by a thread of their own.

    A batch of result rows is about 1 MB at 14,000 req/s a worker (a flush every 0.5 s there);
    the pipe holds 1 MB, so a send can wait for the parent to read, and on the event loop's
    thread that wait stalls every send due meanwhile: the stalls that pushed lag over 2 ms at
    28,000 req/s began at 0.30, 0.80, 1.30 … s into the run, the flush cadence. Here only this
    thread waits (the write releases the GIL). Measured at 28,000 chat req/s, 2 workers, six
    interleaved runs each: lag p99 median 1.71 → 1.10 ms, worst lag median 10.6 → 6.6 ms;
    no change at 24,000 (0.94 and 0.95 ms, four runs each). :meth:`close` returns once every
    message is sent, or the parent is gone.
    """

    def __init__(self, out) -> None:
        self._out = out
        self._queue: queue.SimpleQueue = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="cpbench-outbox", daemon=True)
        self._thread.start()

    def put(self, kind: str, payload: object) -> None:
        self._queue.put((kind, payload))

    def _run(self) -> None:
        while (msg := self._queue.get()) is not None:
            try:
                self._out.send(msg)
            except (BrokenPipeError, EOFError, OSError):
                return                              # the parent went away: nobody to tell

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join()


def worker_main(cfg: dict, worker: int, ctl: Connection, out: Connection) -> None:
    """Body of worker process ``worker``: map its plan, connect, wait for the start, run,
    report."""
    # The parent coordinates stopping (it forwards SIGINT/SIGTERM as a "stop" message). In a
    # Ray actor (cpbench.replaying.cluster) this runs in a thread and Ray owns the signals.
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGINT, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    # "cpbench-w0", ... in ps, top -H and perf, for this thread and the ones it starts.
    name_thread(f"cpbench-w{worker}")
    outbox = Outbox(out)
    try:
        _work(cfg, worker, ctl, outbox.put)
    finally:
        outbox.close()


def _work(cfg: dict, worker: int, ctl: Connection, emit) -> None:
    loop = _new_loop(cfg["loop"])
    asyncio.set_event_loop(loop)
    tighten_timer_slack()
    try:
        plan = load_plan(Path(cfg["plan"]))
        hist = Histogram()
        disp = Dispatcher(Target.from_url(cfg["url"]), plan, DispatchOptions(**cfg["dispatch"]),
                          worker, emit, hist)
        loop.run_until_complete(disp.open_pool())
    except CpbenchError as exc:
        emit("error", str(exc))
        return
    # The Dispatcher's renderer has built the shared prompt text (tens of ms), so the first
    # send does not. Everything built so far lives for the whole run: keep the collector off
    # it.
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
        disp.stop()

    loop.add_reader(ctl.fileno(), on_control)
    disp.wake_on(ctl.fileno())
    realtime = False
    if cfg.get("realtime"):
        problem = set_realtime(int(cfg["realtime"]))
        realtime = problem is None
        if problem is not None:
            emit("warning", f"worker {worker}: --realtime not granted ({problem}); running at "
                            "normal priority")
    # A short time slice lets the worker's wake-ups preempt a busy process at once (a
    # real-time worker preempts anyway, and keeps its policy).
    slice_ns = request_slice(WORKER_SLICE_NS)
    cpu0 = time.process_time()
    ctx0 = resource.getrusage(resource.RUSAGE_SELF).ru_nivcsw
    counters = loop.run_until_complete(disp.run(msg[1]))
    cpu_s = time.process_time() - cpu0
    usage = resource.getrusage(resource.RUSAGE_SELF)
    # Involuntary switches tell a lag spike caused by a busy host from one caused by us.
    counters["preempted"] = usage.ru_nivcsw - ctx0
    emit("done", {"counters": counters, "cpu_s": cpu_s, "max_rss_kb": peak_rss_kb(),
                  "itl_hist": hist.encode(), "realtime": realtime, "slice_ns": slice_ns})
    loop.close()


if __name__ == "__main__":
    # python -m cpbench.replaying.child W CTL_FD OUT_FD, config JSON on stdin (see WorkerPool).
    _w, _ctl, _out = (int(a) for a in sys.argv[1:4])
    worker_main(json.loads(sys.stdin.read()), _w, Connection(_ctl, writable=False),
                Connection(_out, readable=False))

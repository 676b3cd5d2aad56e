"""The open-loop dispatcher of one process: send each request when the plan says, record it.

The hot path is lean by design (docs/design.md, "The hot path"): no task, future or dict per
request, and nothing kept per request once it is recorded. The per-request path is compiled
(:mod:`cpbench._core.conn`): a :class:`~cpbench._core.conn.Sender` sends each due row on an
idle keep-alive connection, each connection is a :class:`~cpbench._core.conn.Conn` that parses
its own responses and writes a finished request's row straight into the C buffers of a
:class:`~cpbench._core.conn.Recorder` (which reads the plan's columns in C), and inter-token
gaps go straight into the ITL histogram; each request's bytes are rendered in C too
(:class:`~cpbench._core.render.Renderer`, built by :func:`cpbench.replaying.wire.renderer`).
On plain HTTP the sockets are read and written from C too: one
:class:`~cpbench._core.conn.Poller` (an epoll set where the worker waits) per dispatcher, so a
response costs no transport, ``bytes`` object or Python call per read, and the only Python
call per request is the renderer's; TLS connections are the loop's transports, with its
callback plumbing per read. This module owns the rest: opening connections (a request due
while every connection is busy opens a new one; open loop: nothing caps the in-flight count
unless ``max_concurrency`` is set, but at most
``CONNECTS_MAX`` connects run at once and a worker holds at most its open-file limit's worth:
past either, requests wait for a connection, and the wait is their dispatch lag), timeouts,
idle trimming, the check that the client keeps its schedule (``--max-behind``), row
hand-over and progress.

Timing: event-loop timers tick in whole milliseconds, so sends are timed by a timerfd
(:class:`cpbench.replaying.timer.MonotonicTimer`) armed for the next due instant to the
nanosecond (the worker sets 1 ns timer slack, so the kernel fires it within microseconds). On
plain HTTP the timer is in the poller's set with the sockets, and the worker waits there, in C
(:meth:`Poller.wait`): a wake-up for a due send or a response is one ``epoll_wait`` and no
Python call, and the loop gets a turn between waits (sweeps, the control pipe the moment it is
readable, connects). Over TLS the timer is in the loop's own set beside the transports. The
next request's bytes are built before the wait, so at the due time a send is one write, and
any response that finds a send due sends it first, so a send waits for at most one response's
parse, not for a whole turn of the loop. ``--spin-us`` wakes that much early and waits out the
rest on the clock. It runs on uvloop or the stock asyncio loop alike.
"""
from __future__ import annotations

import asyncio
import errno
import fcntl
import os
import resource
import socket
import ssl as ssl_module
import time
from collections import deque
from dataclasses import dataclass
from typing import Callable

import numpy as np

from cpbench._core.conn import Conn, Poller, Recorder, Sender
from cpbench.errors import TargetError
from cpbench.replaying.plan import COLUMNS, Plan
from cpbench.replaying.rows import ERROR_CODE
from cpbench.replaying.wire import Target, renderer
from cpbench.replaying.timer import MonotonicTimer

BURST_MAX = 64                   # sends in a row before the loop gets to read responses
FLUSH_S = 0.25                   # row hand-over cadence
FLUSH_SLACK_NS = 500_000         # ... when the next send is at least this far away
PROGRESS_S = 0.5
SWEEP_S = 0.05                   # timeout check cadence
WAIT_SLICE_NS = 10_000_000       # longest wait in C before the loop's turn (plain HTTP)
WAIT_CONNECT_S = 0.001           # ... the loop's own waits while a connect is in progress
IDLE_CLOSE_NS = 2_000_000_000    # an idle connection above the floor is closed after this
IDLE_TRIM_S = 0.5                # ... checked this often
POOL_WINDOW_NS = 50_000_000      # default pool: every request due in the busiest 50 ms ...
POOL_MIN, POOL_MAX = 32, 1024    # ... within these bounds (and a quarter of the fd limit)
CONNECTS_MAX = 256               # connects in progress at once; later rows wait for one
FD_HEADROOM = 64                 # descriptors kept for the worker's own pipes, timer, files
FD_TABLE_MAX = 65536             # the descriptor table is grown to the open-file limit, at most
BEHIND_HOLD_S = 0.5              # behind by more than max_behind this long: saturated
_NEVER = 1 << 62
E_CONNECT, E_TIMEOUT = ERROR_CODE["connect"], ERROR_CODE["timeout"]
E_INTERRUPTED = ERROR_CODE["interrupted"]
__all__ = ["Dispatcher", "DispatchOptions", "Plan", "Target"]


@dataclass(frozen=True)
class DispatchOptions:
    """Per-process dispatch settings, already split between workers by the caller.

    No defaults here: they are :class:`cpbench.replaying.options.ReplayOptions`'s, and
    :meth:`~cpbench.replaying.options.ReplayOptions.dispatch_config` builds these fields.
    """

    hints: str
    timeout_s: float
    max_concurrency: int              # this worker's share; 0 = open loop
    connections: int                  # keep-alive connections opened before the start (0:
                                      # pool_size of this worker's schedule)
    grace_s: float                    # in-flight allowance after a stop
    bearer: str | None
    stream: bool                      # chat/completions with "stream": true (else one JSON body)
    spin_ns: int                      # wake this early before a send and busy-wait (0: none)
    max_behind_ns: int                # stop when this far behind the schedule (0: never)


class Dispatcher:
    """Sends one plan open loop (or capped) and records every request.

    Parameters
    ----------
    target : Target
    plan : Plan
    options : DispatchOptions
    worker : int
        This process's index, stored in each row.
    emit : callable
        ``emit(kind, payload)`` hands ``"rows"`` (:meth:`Recorder.take_rows`) and
        ``"progress"`` (dict) messages to the parent.
    itl_hist : cpbench._core.hist.Histogram
        Receives every inter-token gap seen, a stream that fails later included; tokens that
        arrive in one socket read are 0 ns apart (the histogram's underflow count).
    """

    def __init__(self, target: Target, plan: Plan, options: DispatchOptions, worker: int,
                 emit: Callable[[str, object], None], itl_hist) -> None:
        self.target, self.plan, self.options = target, plan, options
        self.emit, self.itl_hist = emit, itl_hist
        self.col = _Columns(plan)
        columns = {name: getattr(self.col, name) for name in COLUMNS}
        self.recorder = Recorder(columns)
        self.renderer = renderer(columns, self.col.prompts, self.col.messages, plan.models,
                                 hints=options.hints, stream=options.stream, target=target,
                                 bearer=options.bearer)
        # The compiled send side; its pools and waiting queue are the ones used here.
        self.sender = Sender(self.recorder, self.renderer.render, self._spawn_open,
                             self._schedule_ended, deque(), options.max_concurrency, BURST_MAX,
                             options.spin_ns, CONNECTS_MAX, connection_limit())
        self.idle: list[Conn] = self.sender.idle
        self.busy: set[Conn] = self.sender.busy
        self.waiting: deque[int] = self.sender.waiting
        self.retried = 0
        self.emfile = 0             # connects refused by the open-file limit
        self.idle_closed = 0        # idle connections above the floor closed (trim_idle)
        self.behind_max_ns = 0      # the furthest behind the schedule the client fell
        self._behind_since = None   # loop time it went over max_behind_ns, None when under
        self._tasks: set[asyncio.Task] = set()
        self._sending: asyncio.Future | None = None     # done when the schedule is
        self._timer: MonotonicTimer | None = None
        self._ssl = ssl_module.create_default_context() if target.tls else None
        # Plain HTTP: the sockets are read and written from C, in one epoll set where the
        # worker waits (the loop watches it too); TLS stays on the loop's transports.
        self.poller = None if target.tls else Poller()
        self._watching = None           # the loop watching the poller
        self._address: tuple | None = None      # (family, sockaddr) that answered first
        # The floor of the keep-alive pool: opened before the start, never trimmed below.
        self.pool_floor = options.connections or pool_size(plan.intended_ns)

    # -- connections -------------------------------------------------------------------
    async def _connect(self) -> Conn:
        loop = asyncio.get_running_loop()
        t = self.target
        if self.poller is None:
            _, conn = await loop.create_connection(
                lambda: Conn(self, self.sender, self.itl_hist, self.options.stream), t.host,
                t.port, ssl=self._ssl)
            self.sender.opened += 1
        else:
            self._watch(loop)
            conn = Conn(self, self.sender, self.itl_hist, self.options.stream)
            conn.attach(self.poller, await self._connect_socket(loop))
        return conn

    def _start_connect(self) -> int:
        # Plain HTTP, once an address has answered: a non-blocking socket whose connect to it
        # has begun, for the poller to finish (Conn.attach(..., connecting=True)); -1 when it
        # failed at once (the loop's connect then tries again and reports why).
        family, addr = self._address
        try:
            sock = socket.socket(family, socket.SOCK_STREAM)
        except OSError:
            return -1
        try:
            sock.setblocking(False)
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            err = sock.connect_ex(addr)
        except OSError:
            err = -1
        if err not in (0, errno.EINPROGRESS):
            sock.close()
            return -1
        return sock.detach()

    async def _connect_socket(self, loop: asyncio.AbstractEventLoop) -> int:
        # A connected non-blocking TCP socket's descriptor. The first connect tries the
        # target's addresses in order (as create_connection does); later ones reuse the
        # address that answered.
        if self._address is not None:
            candidates = [self._address]
        else:
            infos = await loop.getaddrinfo(self.target.host, self.target.port,
                                           type=socket.SOCK_STREAM)
            candidates = [(family, addr) for family, _, _, _, addr in infos]
        error: OSError | None = None
        for family, addr in candidates:
            sock = socket.socket(family, socket.SOCK_STREAM)
            try:
                sock.setblocking(False)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
                await loop.sock_connect(sock, addr)
            except OSError as exc:
                sock.close()
                error = exc
                continue
            except BaseException:
                sock.close()
                raise
            self._address = (family, addr)
            return sock.detach()
        raise error if error is not None else OSError(f"no address for {self.target.host}")

    def _watch(self, loop: asyncio.AbstractEventLoop) -> None:
        # The loop calls the poller when any of its sockets is ready.
        if self._watching is not loop:
            loop.add_reader(self.poller.fd, self.poller.dispatch)
            self._watching = loop

    def _unwatch(self) -> None:
        if self._watching is not None:
            self._watching.remove_reader(self.poller.fd)
            self._watching = None

    async def open_pool(self) -> None:
        """Open the keep-alive connections; a refused target raises TargetError. First the
        process's descriptor table is grown for every connection it may hold
        (:func:`grow_descriptor_table`), so that no growth stalls the run."""
        grow_descriptor_table()
        try:
            conns = await asyncio.gather(*[self._connect()
                                           for _ in range(self.pool_floor)])
        except OSError as exc:
            raise TargetError(f"cannot connect to {self.target.host}:{self.target.port}: "
                              f"{exc.strerror or exc}; is the server running?") from exc
        self.idle.extend(conns)

    def forget(self, conn: Conn) -> None:
        """Drop an idle connection the server closed."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def trim_idle(self, now_ns: int) -> int:
        """Close idle connections above the floor (:attr:`pool_floor`) unused for 2 s.

        A burst opens as many connections as it has requests in flight; without this they
        stay open for the rest of the run, so a long run's descriptors follow its worst
        second, not its load. The pool is a stack (the most recent on top), so the bottom
        holds the longest idle. Returns how many it closed.
        """
        closed = 0
        floor = self.pool_floor
        while len(self.idle) > floor and now_ns - self.idle[0].idle_since_ns > IDLE_CLOSE_NS:
            conn = self.idle.pop(0)
            conn.close()
            closed += 1
        self.idle_closed += closed
        return closed

    def retry(self, conn: Conn, j: int) -> None:
        """Send row ``j`` again on a new connection: ``conn`` was closed under it unanswered."""
        self.busy.discard(conn)
        self.retried += 1
        if self.stopping:
            self._record_connect_failure(j, "connection closed before any response byte")
            return
        self._spawn_open(j, None, retry=True)

    # -- counters the compiled sender keeps ---------------------------------------------
    @property
    def opened(self) -> int:
        """Connections whose connect succeeded."""
        return self.sender.opened

    @property
    def stopping(self) -> bool:
        return self.sender.stopping

    @property
    def sent(self) -> int:
        return self.sender.sent

    @property
    def due_abs_ns(self) -> int:
        return self.sender.due_abs_ns

    # -- sending -----------------------------------------------------------------------
    def _spawn_open(self, j: int, data: bytes | None = None, retry: bool = False) -> None:
        # No idle connection for row j: open one and send there. On plain HTTP, once an
        # address has answered, the connect starts here and the poller finishes it and sends,
        # in C, with no turn of the loop (a connect through the loop cost a row 0.25 ms of
        # dispatch lag: docs/design.md, "Connects in C").
        if self.poller is not None and self._address is not None:
            fd = self._start_connect()
            if fd >= 0:
                conn = Conn(self, self.sender, self.itl_hist, self.options.stream)
                conn.attach(self.poller, fd, True)
                self.sender.write(conn, j, data, retry)
                return
        # Otherwise the loop connects: counted before the task runs, so the drain never
        # misses a request being connected; the set holds the task (the loop keeps only a
        # weak reference).
        self.sender.opening += 1
        task = asyncio.get_running_loop().create_task(self._open_and_send(j, retry, data))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_and_send(self, j: int, retry: bool, data: bytes | None) -> None:
        try:
            conn = await self._connect()
        except OSError as exc:
            self.sender.opening -= 1
            if exc.errno == errno.EMFILE:
                self.emfile += 1
            if not retry:
                self.sender.sent += 1
            self._record_connect_failure(j, f"connect failed: {exc.strerror or exc}")
            self.sender.admit()
            return
        self.sender.opening -= 1
        if self.stopping and not retry:
            conn.close()
            return
        self.sender.write(conn, j, data, retry)
        self.sender.admit()             # a connect slot is free: rows waiting for one go

    # -- recording ---------------------------------------------------------------------
    def _record_connect_failure(self, j: int, detail: str) -> None:
        self.recorder.record_failure(j, E_CONNECT, detail)

    def flush(self) -> None:
        """Hand the buffered rows to the parent (raw buffers: tens of µs)."""
        packed = self.recorder.take_rows()
        if packed is not None:
            self.emit("rows", packed)

    def progress(self) -> dict:
        """Counters since the start, and the dispatch-lag p99 since the last call."""
        lags = self.recorder.take_lags()
        lag_p99_ns = lag_max_ns = 0
        if len(lags):
            # Nearest rank by partition: a twentieth of np.percentile's cost in the hot loop.
            k = min(len(lags) - 1, int(0.99 * len(lags)))
            lag_p99_ns = int(np.partition(lags, k)[k])
            lag_max_ns = int(lags.max())
        rec = self.recorder
        return {"sent": self.sent, "done": rec.done, "errors": rec.errors,
                "in_flight": len(self.busy) + self.sender.opening, "waiting": len(self.waiting),
                "lag_p99_ns": lag_p99_ns, "lag_max_ns": lag_max_ns,
                "connections": self.opened, "open_connections": len(self.idle) + len(self.busy),
                "idle_closed": self.idle_closed, "emfile": self.emfile, "retried": self.retried,
                "behind_ns": self.sender.behind_ns(time.monotonic_ns()),
                "behind_max_ns": self.behind_max_ns, "fd_limited": self.sender.fd_limited,
                "connection_limit": self.sender.connections_max}

    # -- the run -----------------------------------------------------------------------
    async def run(self, start_ns: int) -> dict:
        """Send the plan from ``start_ns`` (absolute monotonic ns) on; returns final counters."""
        self.recorder.start_ns = start_ns
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._ticks())
        try:
            await self._schedule()
            self.sender.due_abs_ns = _NEVER
            await self._drain()
        finally:
            ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self.busy):
                if conn.j is not None:
                    conn.fail(E_INTERRUPTED, "still in flight when the run stopped",
                              close=True)
            for conn in self.idle:
                conn.close()
            if self.poller is not None:
                self._unwatch()
            self.flush()
        return self.progress()

    def stop(self) -> None:
        """Stop scheduling: in-flight requests get the grace period, then the run ends."""
        self.sender.stopping = True
        if self._sending is not None and not self._sending.done():
            self._sending.set_result(None)

    async def _schedule(self) -> None:
        # The sender's timerfd callback sends every row at its instant; this waits for the end.
        if not len(self.plan) or self.stopping:
            return
        loop = asyncio.get_running_loop()
        self._sending = loop.create_future()
        self._timer = timer = MonotonicTimer()
        if self.poller is None:
            loop.add_reader(timer.fd, self.sender.on_timer)
        else:
            self._watch(loop)
            self.poller.watch_timer(timer.fd, self.sender)
            self.sender.connect_after_reading = True
        try:
            self.sender.start(timer.fd)
            if self.poller is None:
                await self._sending
            else:
                await self._wait_in_c()
        finally:
            if self.poller is None:
                loop.remove_reader(timer.fd)
            else:
                self.poller.unwatch_timer()
                self.sender.connect_after_reading = False
                self.sender.admit()     # rows a last batch left waiting for the reads
            timer.close()

    async def _wait_in_c(self) -> None:
        # Plain HTTP: the timer and every socket are in the poller's set, so the worker waits
        # there, in C, and the loop gets a turn between waits (a sweep's ticks, the control
        # pipe the moment it is readable: wake_on). While a connect of the loop's is in
        # progress (rare: the poller makes the rest), the loop waits for everything.
        while not self._sending.done():
            if self.sender.opening:
                await asyncio.sleep(WAIT_CONNECT_S)
            else:
                self.poller.wait(time.monotonic_ns() + WAIT_SLICE_NS)
                await asyncio.sleep(0)

    def wake_on(self, fd: int) -> None:
        """While waiting in C, give the event loop its turn as soon as ``fd`` is readable
        (the worker's control pipe, which the loop reads)."""
        if self.poller is not None:
            self.poller.wake_on(fd)

    def _schedule_ended(self) -> None:
        # The sender has no row left to arm for (or was stopped): quiet the timer, end the wait.
        self._timer.clear()
        if not self._sending.done():
            self._sending.set_result(None)

    async def _drain(self) -> None:
        # Waiting requests still go out after the schedule ends (closed loop), in-flight ones
        # get their timeout, or the grace period after a stop.
        loop = asyncio.get_running_loop()
        deadline = None
        while self.busy or self.waiting or self.sender.opening:
            if self.stopping:
                self.waiting.clear()
                if deadline is None:
                    deadline = loop.time() + self.options.grace_s
                if loop.time() >= deadline:
                    return
            await asyncio.sleep(0.005)

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = next_progress = next_trim = loop.time()
        timeout_ns = int(self.options.timeout_s * 1e9)
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic_ns()
            for conn in [c for c in self.busy if now - c.sent_abs > timeout_ns]:
                if conn.j is not None:
                    conn.fail(E_TIMEOUT, f"no complete response in {self.options.timeout_s:g} s",
                              close=True)
            t = loop.time()
            # A flush takes tens to a few hundred microseconds: do it when the next send is
            # further away than that, unless rows have piled up for another period.
            slack_ns = self.due_abs_ns - now
            if t >= next_flush and (slack_ns > FLUSH_SLACK_NS or t >= next_flush + FLUSH_S
                                    or len(self.recorder) >= 8192):
                self.flush()
                next_flush = t + FLUSH_S
            if t >= next_trim and slack_ns > FLUSH_SLACK_NS:
                self.trim_idle(now)
                next_trim = t + IDLE_TRIM_S
            self._check_behind(now, t)
            if t >= next_progress:
                self.emit("progress", self.progress())
                next_progress = t + PROGRESS_S

    def _check_behind(self, now_ns: int, t: float) -> None:
        # Open loop past the client's capacity only gets later, and the results describe the
        # client, not the target. Behind the schedule by more than max_behind for
        # BEHIND_HOLD_S on end, the worker stops itself and says why; a pause the client
        # catches up from (a preemption on a busy host, a burst) does not stop it.
        behind = self.sender.behind_ns(now_ns)
        self.behind_max_ns = max(self.behind_max_ns, behind)
        limit = self.options.max_behind_ns
        if not limit or self.stopping or behind <= limit:
            self._behind_since = None
            return
        if self._behind_since is None:
            self._behind_since = t
        elif t - self._behind_since >= BEHIND_HOLD_S:
            self.emit("saturated", {
                "at_ns": now_ns - self.recorder.start_ns, "behind_ns": behind,
                "sent": self.sent, "due": self._due_count(now_ns), "waiting": len(self.waiting),
                "opening": self.sender.opening + self.sender.connecting,
                "open_connections": len(self.idle) + len(self.busy),
                "connection_limit": self.sender.connections_max})
            self.stop()

    def _due_count(self, now_ns: int) -> int:
        """Rows of this worker's plan due by ``now_ns`` (absolute monotonic ns)."""
        return int(np.searchsorted(self.plan.intended_ns, now_ns - self.recorder.start_ns,
                                   side="right"))


def connection_limit() -> int:
    """Connections one worker may hold: its soft open-file limit less FD_HEADROOM. Past it a
    row waits for a connection to free up (dispatch lag) instead of failing to connect with
    EMFILE, which would count the client's own limit as the target's error."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    if soft == resource.RLIM_INFINITY:
        return 0
    return max(POOL_MIN, soft - FD_HEADROOM)


def grow_descriptor_table() -> int:
    """Grow this process's descriptor table to its soft open-file limit (at most
    ``FD_TABLE_MAX``) before the run; returns the lowest size it now has.

    The kernel doubles the table when a descriptor past its end is allocated, and in a process
    with threads (the worker's outbox, the loop's resolver) each doubling waits for an RCU
    grace period: 7–36 ms here at 256, 512 and 1,024 descriptors. A replay against an engine
    that answers in seconds opens connections all through the run, and every send due during
    such a wait was late by it (docs/design.md, "The descriptor table is grown before the
    run"). ``F_DUPFD`` at the top allocates a descriptor there without touching any open one;
    closing it keeps the table.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    size = FD_TABLE_MAX if soft == resource.RLIM_INFINITY else min(soft, FD_TABLE_MAX)
    src = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        os.close(fcntl.fcntl(src, fcntl.F_DUPFD_CLOEXEC, size - 1))
    except OSError:
        return 0                     # the top is taken, or the limit was lowered meanwhile
    finally:
        os.close(src)
    return size


def pool_size(intended_ns: np.ndarray, window_ns: int = POOL_WINDOW_NS) -> int:
    """Keep-alive connections to open before the start for a schedule (sorted offsets, ns):
    one for every request due in its busiest ``window_ns``, at least ``POOL_MIN``, at most
    ``POOL_MAX`` and a quarter of the open-file limit.

    Opening a connection when a request finds none idle costs a connect on the send path
    (socket, handshake, the server's accept); when a stall of the worker (a preemption on a
    busy host) leaves every connection busy, each late send pays a connect, which makes the
    next sends later still. Measured with 2 workers and nginx on the same 2 cores: at 24,000
    chat req/s a fixed 32 per worker grew to 1,756 connections and lag p99 63.9 ms. At 28,000,
    over every run of this size: the busiest 10 ms (~170 per worker) held lag p99 ≤ 1 ms in 3
    of 8 runs (median 2.4 ms, worst 15.9 ms, three runs cascading into 1,118–1,319
    connections); 700 per worker (this rule's 50 ms) in 5 of 10 (median 1.0 ms, worst 1.7
    ms), with no connection opened during the run.
    """
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    high = POOL_MAX if soft == resource.RLIM_INFINITY else min(POOL_MAX, soft // 4)
    n = len(intended_ns)
    busiest = 0
    if n:
        ends = np.searchsorted(intended_ns, intended_ns + window_ns, side="left")
        busiest = int((ends - np.arange(n)).max())
    return max(1, min(max(POOL_MIN, busiest), high))


class _Columns:
    """The plan's columns (:data:`cpbench.replaying.plan.COLUMNS`, same names) as memoryviews: indexing
    one gives a Python number, with no conversion up front and nothing for the garbage
    collector to walk."""

    __slots__ = (*COLUMNS, "prompts", "messages")

    def __init__(self, plan: Plan) -> None:
        for name, dtype in COLUMNS.items():
            # The memoryview holds its array.
            setattr(self, name, memoryview(np.ascontiguousarray(getattr(plan, name), dtype)))
        self.prompts = plan.prompts
        self.messages = plan.messages

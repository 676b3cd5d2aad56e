"""The open-loop dispatcher of one process: send each request when the plan says, record it.

The hot path is lean by design (DESIGN "Performance notes"): no task, future or dict per
request. Each keep-alive connection is a plain :class:`asyncio.Protocol` that parses its own
HTTP/1.1 responses with ``bytes.find`` and scans SSE bodies with
:class:`cpbench.endpoints.StreamScan`; a finished request becomes one row of typed columns in
:class:`cpbench.results.RowBuffer`. Connections are opened before the start and reused; a
request due while every connection is busy opens a new one (open loop: nothing caps the
in-flight count unless ``max_concurrency`` is set).

Timing: event-loop timers tick in whole milliseconds, so the scheduler sleeps on the loop
until about 2 ms before the next send, then blocks in ``select`` with a microsecond timeout on
a private epoll set holding every connection and the control pipe. A readable socket ends the
wait early so responses are stamped when they arrive; everything due is sent in one batch.
It runs on uvloop or the stock asyncio loop alike.
"""
from __future__ import annotations

import array
import asyncio
import errno
import json
import select
import ssl as ssl_module
import time
from collections import deque
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import pyarrow as pa

from cpbench.endpoints import (KINDS, StreamScan, Target, check_embedding, header_block,
                               request_body, strip_credentials)
from cpbench.errors import TargetError
from cpbench.results import ERROR_CODE, PRIORITY_VALUES, RowBuffer

SLEEP_MARGIN_NS = 2_000_000      # leave the loop's ms timer this early, then wait precisely
BLOCK_ROWS = 8192                # plan rows turned into Python lists at a time
BURST_MAX = 64                   # sends in a row before the loop gets to read responses
FLUSH_S = 0.25                   # record batch cadence
FLUSH_SLACK_NS = 1_500_000       # ... when the next send is at least this far away
PROGRESS_S = 0.5
SWEEP_S = 0.05                   # timeout check cadence
_MAX_HEAD_BYTES = 65_536
_E_CONNECT, _E_TIMEOUT = ERROR_CODE["connect"], ERROR_CODE["timeout"]
_E_4XX, _E_5XX = ERROR_CODE["http_4xx"], ERROR_CODE["http_5xx"]
_E_BROKEN, _E_PAYLOAD = ERROR_CODE["stream_broken"], ERROR_CODE["bad_payload"]
_EMBEDDING = KINDS.index("embedding")
__all__ = ["Dispatcher", "DispatchOptions", "Plan", "Target", "strip_credentials"]


@dataclass
class Plan:
    """This worker's share of the trace, in send order (NumPy arrays, one entry per request)."""

    rows: np.ndarray            # int64 trace row index
    intended_ns: np.ndarray     # int64 offset from the run start
    kind: np.ndarray            # int32 code into KINDS
    priority: np.ndarray        # int32 code into PRIORITY_VALUES
    model: np.ndarray           # int32 code into models
    input_tokens: np.ndarray    # int32
    output_tokens: np.ndarray   # int32, -1 = none asked
    batch_size: np.ndarray      # int32
    slo_ttft_ms: np.ndarray     # float64, defaults applied
    slo_e2e_ms: np.ndarray      # float64, defaults applied
    warmup: np.ndarray          # int32 0/1
    prompts: pa.Array | None    # string, null = build from input_tokens
    models: list[str] = field(default_factory=list)

    def __len__(self) -> int:
        return len(self.rows)


@dataclass(frozen=True)
class DispatchOptions:
    """Per-process dispatch settings (already split between workers by the caller)."""

    hints: str = "sagellm"
    timeout_s: float = 60.0
    max_concurrency: int = 0          # 0 = open loop
    connections: int = 32             # keep-alive connections opened before the start
    grace_s: float = 5.0              # in-flight allowance after a stop
    bearer: str | None = None


class _Conn(asyncio.Protocol):
    """One keep-alive HTTP/1.1 connection and the state of the request it carries."""

    def __init__(self, d: "Dispatcher") -> None:
        self.d = d
        self.transport: asyncio.Transport | None = None
        self.fd = -1
        self.req: tuple | None = None
        self.scan = StreamScan()
        self.buf = bytearray()
        self.body = bytearray()

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]
        sock = transport.get_extra_info("socket")
        if sock is not None:
            self.fd = sock.fileno()
            self.d.watch(self.fd)

    def connection_lost(self, exc: Exception | None) -> None:
        d = self.d
        d.unwatch(self.fd)
        self.transport = None
        if self.req is None:
            d.forget(self)
        elif self.head_done and self.mode == 2:     # body delimited by the close
            self._complete(time.monotonic_ns())
        elif self.first_byte < 0:
            self._fail(_E_CONNECT, "connection closed before any response byte")
        else:
            self._fail(_E_BROKEN, "connection closed mid-response")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if self.req is None:
            return                                   # late bytes of a timed-out request
        if self.first_byte < 0:
            self.first_byte = now
        if not self.head_done:
            self.buf += data
            if self.buf.startswith(b"\r\n"):     # a late CRLF of the previous chunked body
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD_BYTES:
                    self._fail(_E_PAYLOAD, "response headers too long", close=True)
                return
            if not self._parse_head(bytes(self.buf[:end]).lower()):
                return
            data = bytes(self.buf[end + 4:])
            self.buf.clear()
            if self.mode == 0 and self.left <= 0:
                self._complete(now)
                return
        if self.mode == 1:
            payload, last = self._dechunk(data)
        else:
            payload = data
            if self.mode == 0:
                self.left -= len(data)
            last = self.mode == 0 and self.left <= 0
        if payload:
            if self.streaming:
                self._tokens(self.scan.feed(payload), now)
            else:
                self.body += payload
        if last:
            self._complete(now)

    # -- request life ------------------------------------------------------------------
    def begin(self, req: tuple, sent_abs_ns: int) -> None:
        """Start carrying ``req`` (the dispatcher's per-request tuple)."""
        self.req = req
        self.sent_abs = sent_abs_ns
        self.first_byte = self.first_token = self.last_token = -1
        self.tokens = self.itl_max = self.itl_sum = 0
        self.head_done = False
        self.status = 0
        self.mode = 0               # 0 content-length, 1 chunked, 2 until close
        self.left = 0
        self.chunk_left = 0
        self.close_after = False
        self.streaming = False
        self.encoding = None
        self.buf.clear()
        self.body.clear()

    def _parse_head(self, head: bytes) -> bool:
        try:
            self.status = int(head[9:12])
        except ValueError:
            self._fail(_E_PAYLOAD, f"not an HTTP response: {head[:40]!r}", close=True)
            return False
        self.head_done = True
        self.close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        i = head.find(b"\r\ncontent-length:")
        if b"\r\ntransfer-encoding: chunked" in head:
            self.mode = 1
        elif i >= 0:
            self.mode = 0
            j = head.find(b"\r\n", i + 2)
            self.left = int(head[i + 17: j if j >= 0 else len(head)])
        else:
            self.mode = 2
            self.close_after = True
        i = head.find(b"\r\ncontent-encoding:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            coding = head[i + 19: j if j >= 0 else len(head)].strip()
            # We send Accept-Encoding: identity; anything else cannot be scanned as text.
            self.encoding = None if coding in (b"identity", b"") else coding.decode("latin-1")
        kind = self.req[1]
        self.streaming = self.status == 200 and kind != _EMBEDDING
        if self.streaming:
            self.scan.reset(KINDS[kind])
        return True

    def _dechunk(self, data: bytes) -> tuple[bytes, bool]:
        # Payload of every complete part of the chunked encoding in data; partial parts wait.
        buf = self.buf
        buf += data
        out = []
        pos, n = 0, len(buf)
        last = False
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                out.append(bytes(buf[pos:pos + take]))
                self.chunk_left -= take
                pos += take
                if self.chunk_left:
                    break
                self.chunk_left = -2            # the CRLF after the chunk data
            if self.chunk_left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size = int(bytes(buf[pos:eol]).split(b";", 1)[0], 16)
            pos = eol + 2
            if size == 0:
                last = True                     # trailers (none expected) are ignored
                pos = n
                break
            self.chunk_left = size
        del buf[:pos]
        return b"".join(out), last

    def _tokens(self, n: int, now: int) -> None:
        if n <= 0:
            return
        if self.first_token < 0:
            self.first_token = now
            n -= 1
            self.tokens += 1
            self.last_token = now
        if n > 0:
            gap = now - self.last_token
            self.d.itl_append(gap)
            # Tokens that arrived in the same read are 0 ns apart, as the client saw them.
            for _ in range(n - 1):
                self.d.itl_append(0)
            self.itl_sum += gap
            if gap > self.itl_max:
                self.itl_max = gap
            self.tokens += n
            self.last_token = now

    def _complete(self, now: int) -> None:
        status, req = self.status, self.req
        if status >= 400 or status < 200:
            detail = f"HTTP {status}: " + bytes(self.body[:120]).decode("utf-8", "replace")
            self._fail(_E_5XX if status >= 500 else _E_4XX, detail.strip(), status=status)
            return
        if self.encoding is not None:
            self._fail(_E_PAYLOAD, f"response has Content-Encoding {self.encoding}, which "
                       "was not asked for", status=status)
            return
        if not self.streaming:
            problem, prompt_tokens = check_embedding(bytes(self.body), req[6])
            if problem is not None:
                self._fail(_E_PAYLOAD, problem, status=status)
                return
            self.first_token = now
            self._record(now, status, -1, None, prompt_tokens, 0)
            return
        scan = self.scan
        if scan.malformed:
            self._fail(_E_PAYLOAD, "malformed SSE event", status=status)
            return
        if scan.error is not None:
            self._fail(_E_BROKEN, "error event in stream: "
                       + scan.error.decode("utf-8", "replace"), status=status)
            return
        if not scan.done and scan.usage is None:
            self._fail(_E_BROKEN, "stream ended without [DONE]", status=status)
            return
        prompt_tokens, completion_tokens = scan.usage_tokens()
        out = self.tokens if completion_tokens is None else completion_tokens
        self._record(now, status, -1, None, prompt_tokens, out)

    def _fail(self, code: int, detail: str, *, status: int | None = None,
              close: bool = False) -> None:
        if status is not None:
            self.status = status
        if close:
            self.close_after = True
        self._record(time.monotonic_ns(), self.status, code, detail, None, self.tokens)

    def _record(self, now: int, status: int, code: int, detail: str | None,
                prompt_tokens: int | None, out_tokens: int) -> None:
        req = self.req
        self.req = None
        d = self.d
        start = d.start_ns
        gaps = self.tokens - 1
        d.record((
            req[0], req[1], req[2], req[3], req[4], self.sent_abs - start,
            self.first_byte - start if self.first_byte >= 0 else -1,
            self.first_token - start if self.first_token >= 0 else -1,
            now - start,
            req[5] if prompt_tokens is None else prompt_tokens, out_tokens, req[6], status, code,
            self.itl_sum // gaps if gaps > 0 else -1, self.itl_max if gaps > 0 else -1,
            req[7], req[8], req[9],
        ), detail)
        reusable = code < 0 or code in (_E_4XX, _E_5XX)
        d.release(self, reusable and not self.close_after and self.transport is not None)


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
        ``emit(kind, payload)`` hands ``"batch"`` (Arrow IPC bytes) and ``"progress"`` (dict)
        messages to the parent.
    itl_hist : cpbench._core.hist.Histogram
        Receives every inter-token gap seen, a stream that fails later included; tokens that
        arrive in one socket read are 0 ns apart (the histogram's underflow count).
    """

    def __init__(self, target: Target, plan: Plan, options: DispatchOptions, worker: int,
                 emit: Callable[[str, object], None], itl_hist) -> None:
        self.target, self.plan, self.options = target, plan, options
        self.emit, self.itl_hist = emit, itl_hist
        self.rows = RowBuffer(plan.models, worker)
        self.idle: list[_Conn] = []
        self.busy: set[_Conn] = set()
        self.waiting: deque = deque()
        self.start_ns = 0
        self.stopping = False
        self.sent = self.done = self.errors = self.opened = self._opening = 0
        self._next_due_ns = 1 << 62
        self.emfile = 0             # connects refused by the open-file limit
        self._tasks: set[asyncio.Task] = set()
        self._itl = array.array("q")
        self.itl_append = self._itl.append
        self._lags = array.array("q")
        self._ep = select.epoll()
        self._ssl = ssl_module.create_default_context() if target.tls else None
        self._heads: dict[tuple, bytes] = {}
        self._models_json = [f'"{m}"' if m.isalnum() else json.dumps(m)
                             for m in plan.models]

    # -- epoll set for the precise wait ------------------------------------------------
    def watch(self, fd: int) -> None:
        try:
            self._ep.register(fd, select.EPOLLIN)
        except (OSError, ValueError):
            pass

    def unwatch(self, fd: int) -> None:
        try:
            self._ep.unregister(fd)
        except (OSError, ValueError):
            pass

    # -- connections -------------------------------------------------------------------
    async def _connect(self) -> _Conn:
        loop = asyncio.get_running_loop()
        t = self.target
        _, conn = await loop.create_connection(lambda: _Conn(self), t.host, t.port,
                                               ssl=self._ssl)
        self.opened += 1
        return conn

    async def open_pool(self) -> None:
        """Open the keep-alive connections; a refused target raises TargetError."""
        try:
            conns = await asyncio.gather(*[self._connect()
                                           for _ in range(max(1, self.options.connections))])
        except OSError as exc:
            raise TargetError(f"cannot connect to {self.target.host}:{self.target.port}: "
                              f"{exc.strerror or exc}; is the server running?") from exc
        self.idle.extend(conns)

    def forget(self, conn: _Conn) -> None:
        """Drop an idle connection the server closed."""
        try:
            self.idle.remove(conn)
        except ValueError:
            pass

    def release(self, conn: _Conn, reusable: bool) -> None:
        """A request finished on ``conn``: reuse it (next waiting request first) or close it."""
        self.busy.discard(conn)
        if not reusable:
            if conn.transport is not None:
                conn.transport.abort()
            conn = None
        if self.waiting and not self.stopping:
            blk, j = self.waiting.popleft()
            if conn is None:
                self._spawn_open(blk, j)
            else:
                self._write(conn, blk, j)
            return
        if conn is not None:
            self.idle.append(conn)

    # -- sending -----------------------------------------------------------------------
    def _send(self, blk: "_Block", j: int) -> None:
        cap = self.options.max_concurrency
        if cap and len(self.busy) + self._opening >= cap:
            self.waiting.append((blk, j))
            return
        if self.idle:
            self._write(self.idle.pop(), blk, j)
        else:
            self._spawn_open(blk, j)

    def _spawn_open(self, blk: "_Block", j: int) -> None:
        # Counted before the task runs, so the drain never misses a request being connected;
        # the set holds the task (the loop keeps only a weak reference).
        self._opening += 1
        task = asyncio.get_running_loop().create_task(self._open_and_send(blk, j))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _open_and_send(self, blk: "_Block", j: int) -> None:
        try:
            conn = await self._connect()
        except OSError as exc:
            self._opening -= 1
            if exc.errno == errno.EMFILE:
                self.emfile += 1
            now = time.monotonic_ns() - self.start_ns
            self.sent += 1
            self.record((blk.rows[j], blk.kind[j], blk.prio[j], blk.model[j], blk.intended[j],
                         now, -1, -1, now, blk.inp[j], 0, blk.batch[j], 0, _E_CONNECT, -1, -1,
                         blk.slo_ttft[j], blk.slo_e2e[j], blk.warmup[j]),
                        f"connect failed: {exc.strerror or exc}")
            return
        self._opening -= 1
        if self.stopping:
            conn.transport.close()
            return
        self._write(conn, blk, j)

    def _write(self, conn: _Conn, blk: "_Block", j: int) -> None:
        kind, prio = blk.kind[j], blk.prio[j]
        row = blk.rows[j]
        hints = self.options.hints
        prompt = blk.prompts[j] if blk.prompts is not None else None
        out = blk.out[j]
        body = request_body(KINDS[kind], self._models_json[blk.model[j]], row, blk.inp[j],
                            None if out < 0 else out, blk.batch[j], prompt,
                            PRIORITY_VALUES[prio], hints)
        head = self._heads.get((kind, prio)) or self._head(kind, prio)
        if hints == "sagellm":
            # The static headers are cached; only the per-request hints are formatted.
            head = b"%sX-Request-ID: cpbench-%d\r\nX-SLO-Deadline-Ms: %s\r\n" % (
                head, row, b"%g" % blk.slo_e2e[j])
        req = (row, kind, prio, blk.model[j], blk.intended[j], blk.inp[j], blk.batch[j],
               blk.slo_ttft[j], blk.slo_e2e[j], blk.warmup[j])
        now = time.monotonic_ns()
        conn.begin(req, now)
        self.busy.add(conn)
        conn.transport.write(b"%sContent-Length: %d\r\n\r\n%s" % (head, len(body), body))
        self.sent += 1
        self._lags.append(now - self.start_ns - blk.intended[j])

    def _head(self, kind: int, prio: int) -> bytes:
        # sageLLM's X-Request-ID and X-SLO-Deadline-Ms differ per request: _write adds them.
        head = header_block(KINDS[kind], self.target.host_header, bearer=self.options.bearer,
                            request_id=None, priority=PRIORITY_VALUES[prio], deadline_ms=None,
                            hints=self.options.hints, path_prefix=self.target.base_path)
        self._heads[(kind, prio)] = head
        return head

    # -- recording ---------------------------------------------------------------------
    def record(self, values: tuple, detail: str | None) -> None:
        """Append one finished request (RowBuffer field order) and count it."""
        self.rows.append(values, detail)
        self.done += 1
        if values[13] >= 0:
            self.errors += 1

    def flush(self) -> None:
        """Hand the buffered rows to the parent as one record batch; fold in the ITLs."""
        if self._itl:
            itl, self._itl = self._itl, array.array("q")
            self.itl_append = self._itl.append
            self.itl_hist.record_array(np.frombuffer(itl, dtype=np.int64))
        batch = self.rows.take_batch()
        if batch is not None:
            # A whole IPC stream per batch: it carries the dictionaries along.
            sink = pa.BufferOutputStream()
            with pa.ipc.new_stream(sink, batch.schema) as writer:
                writer.write_batch(batch)
            self.emit("batch", sink.getvalue().to_pybytes())

    def progress(self) -> dict:
        """Counters since the start, and the dispatch-lag p99 since the last call."""
        lags = np.frombuffer(self._lags, dtype=np.int64)
        self._lags = array.array("q")
        lag_p99_ns = int(np.percentile(lags, 99)) if len(lags) else 0
        lag_max_ns = int(lags.max()) if len(lags) else 0
        return {"sent": self.sent, "done": self.done, "errors": self.errors,
                "in_flight": len(self.busy) + self._opening, "waiting": len(self.waiting),
                "lag_p99_ns": lag_p99_ns, "lag_max_ns": lag_max_ns,
                "connections": self.opened, "emfile": self.emfile}

    # -- the run -----------------------------------------------------------------------
    async def run(self, start_ns: int) -> dict:
        """Send the plan from ``start_ns`` (absolute monotonic ns) on; returns final counters."""
        self.start_ns = start_ns
        loop = asyncio.get_running_loop()
        ticker = loop.create_task(self._ticks())
        try:
            await self._schedule()
            self._next_due_ns = 1 << 62
            await self._drain()
        finally:
            ticker.cancel()
            for task in list(self._tasks):
                task.cancel()
            for conn in list(self.busy):
                if conn.req is not None:
                    conn._fail(_E_TIMEOUT, "interrupted: still in flight after the grace period",
                               close=True)
            for conn in self.idle:
                if conn.transport is not None:
                    conn.transport.close()
            self.flush()
            self._ep.close()
        return self.progress()

    async def _schedule(self) -> None:
        plan = self.plan
        for b0 in range(0, len(plan), BLOCK_ROWS):
            blk = _Block(plan, b0, min(b0 + BLOCK_ROWS, len(plan)))
            intended, m, j = blk.intended, len(blk.intended), 0
            while j < m:
                if self.stopping:
                    return
                await self._wait_until(intended[j])
                now = time.monotonic_ns() - self.start_ns
                burst = 0
                while j < m and intended[j] <= now and burst < BURST_MAX:
                    self._send(blk, j)
                    j += 1
                    burst += 1
                if burst == BURST_MAX:
                    await asyncio.sleep(0)      # far behind: let responses be read too

    async def _wait_until(self, t_ns: int) -> None:
        self._next_due_ns = t_ns
        mono, start, ep = time.monotonic_ns, self.start_ns, self._ep.fileno()
        while not self.stopping:
            wait = t_ns - (mono() - start)
            if wait <= 0:
                return
            if wait > SLEEP_MARGIN_NS + 1_000_000:
                await asyncio.sleep((wait - SLEEP_MARGIN_NS) / 1e9)
                continue
            # Sub-millisecond wait the loop's timer cannot give: block until the due time
            # or until a socket is readable, whichever is first.
            if select.select([ep], [], [], wait / 1e9)[0]:
                await asyncio.sleep(0)

    async def _drain(self) -> None:
        # Waiting requests still go out after the schedule ends (closed loop), in-flight ones
        # get their timeout, or the grace period after a stop.
        loop = asyncio.get_running_loop()
        deadline = None
        while self.busy or self.waiting or self._opening:
            if self.stopping:
                self.waiting.clear()
                if deadline is None:
                    deadline = loop.time() + self.options.grace_s
                if loop.time() >= deadline:
                    return
            await asyncio.sleep(0.005)

    async def _ticks(self) -> None:
        loop = asyncio.get_running_loop()
        next_flush = next_progress = loop.time()
        timeout_ns = int(self.options.timeout_s * 1e9)
        while True:
            await asyncio.sleep(SWEEP_S)
            now = time.monotonic_ns()
            for conn in [c for c in self.busy if now - c.sent_abs > timeout_ns]:
                if conn.req is not None:
                    conn._fail(_E_TIMEOUT, f"no complete response in {self.options.timeout_s:g} s",
                               close=True)
            t = loop.time()
            # A flush takes up to about a millisecond: do it when the next send is further
            # away than that, unless rows have piled up for a second.
            slack_ns = self._next_due_ns - (now - self.start_ns)
            if t >= next_flush and (slack_ns > FLUSH_SLACK_NS or t >= next_flush + 1.0
                                    or len(self.rows) >= 8192):
                self.flush()
                next_flush = t + FLUSH_S
            if t >= next_progress:
                self.emit("progress", self.progress())
                next_progress = t + PROGRESS_S


class _Block:
    """Plan rows ``[a, b)`` as Python lists: list indexing is the cheapest per-send access."""

    __slots__ = ("rows", "intended", "kind", "prio", "model", "inp", "out", "batch",
                 "slo_ttft", "slo_e2e", "warmup", "prompts")

    def __init__(self, plan: Plan, a: int, b: int) -> None:
        self.rows = plan.rows[a:b].tolist()
        self.intended = plan.intended_ns[a:b].tolist()
        self.kind = plan.kind[a:b].tolist()
        self.prio = plan.priority[a:b].tolist()
        self.model = plan.model[a:b].tolist()
        self.inp = plan.input_tokens[a:b].tolist()
        self.out = plan.output_tokens[a:b].tolist()
        self.batch = plan.batch_size[a:b].tolist()
        self.slo_ttft = plan.slo_ttft_ms[a:b].tolist()
        self.slo_e2e = plan.slo_e2e_ms[a:b].tolist()
        self.warmup = plan.warmup[a:b].tolist()
        self.prompts = None if plan.prompts is None else plan.prompts[a:b].to_pylist()

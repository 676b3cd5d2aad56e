"""The dispatcher of one process (cpbench.replaying.dispatch) against the fault-injecting
loopback server (tests/support/faulty_server.py), under both the stock asyncio loop and
uvloop."""
from __future__ import annotations

import asyncio
import time

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
import uvloop

from cpbench._core.hist import Histogram
from cpbench.redact import redact_url
from cpbench.replaying.dispatch import (POOL_MAX, POOL_MIN, POOL_WINDOW_NS, Dispatcher,
                                        DispatchOptions, Target, pool_size)
from cpbench.errors import ConfigError, TargetError
from cpbench.results import rows_to_batch
from cpbench.replaying.options import ReplayOptions
from cpbench.replaying.planning import build_plan, select_rows
from cpbench.replaying.rows import ERROR_CODE
from cpbench.vocab import KINDS
from support import trace_table
from support.faulty_server import TOKENS, FaultyServer

pytestmark = pytest.mark.integration
LOOPS = ["asyncio", "uvloop"]


@pytest.fixture(scope="module")
def server():
    with FaultyServer() as srv:
        yield srv


def trace(models: list[str], kinds: list[str], gap_ms: float = 2.0) -> pa.Table:
    return trace_table(models, kinds, gap_ms, embed_batch=3)


def dispatch_options(max_concurrency: int = 0, bearer: str | None = None,
                     **replay_options) -> DispatchOptions:
    """One worker's settings as a replay with these options would give it."""
    return DispatchOptions(**ReplayOptions(**replay_options).dispatch_config(max_concurrency,
                                                                             bearer))


def dispatch(url: str, table: pa.Table, loop_name: str, **opts) -> tuple[pa.Table, Histogram]:
    plan = build_plan(table, select_rows(table), 0, 1)
    batches: list[pa.RecordBatch] = []

    def emit(kind, payload):
        if kind == "rows":
            batches.append(rows_to_batch(payload, plan.models, 0))

    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    hist = Histogram()
    try:
        disp = Dispatcher(Target.from_url(url), plan, dispatch_options(**opts), 0, emit, hist)
        loop.run_until_complete(disp.open_pool())
        loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
    finally:
        loop.close()
    return pa.Table.from_batches(batches).sort_by("row"), hist


@pytest.mark.parametrize("loop_name", LOOPS)
def test_error_classes_tokens_and_clock_order(server, loop_name):
    models = ["ok", "status:500:body", "status:429:body", "cut:2", "badjson", "nousage", "ok",
              "fewvectors", "ok", "delay:0.05"]
    kinds = ["chat", "chat", "embedding", "chat", "chat", "chat", "embedding", "embedding",
             "completion", "completion"]
    res, hist = dispatch(server.url, trace(models, kinds), loop_name, timeout_s=5.0,
                         connections=2)
    rows = res.to_pylist()
    assert [r["row"] for r in rows] == list(range(len(models)))
    assert [r["error_class"] for r in rows] == [
        None, "http_5xx", "http_4xx", "stream_broken", "bad_payload", None, None,
        "bad_payload", None, None]
    assert [r["status"] for r in rows][:3] == [200, 500, 429]
    assert rows[0]["output_tokens"] == TOKENS and rows[0]["input_tokens"] == 5   # usage
    assert rows[5]["output_tokens"] == TOKENS and rows[5]["input_tokens"] == 6   # counted
    assert rows[8]["output_tokens"] == TOKENS                                    # completion
    assert rows[6]["output_tokens"] == 0 and rows[6]["input_tokens"] == 7
    assert "injected" in rows[1]["error_detail"]
    for r in rows:
        assert r["intended_ns"] <= r["sent_ns"] <= r["done_ns"]
        if r["error_class"] is None:
            assert r["sent_ns"] < r["first_byte_ns"] <= r["first_token_ns"] <= r["done_ns"]
    ok_llm = [r for r in rows if r["error_class"] is None and r["kind"] != "embedding"]
    assert all(r["slo_met"] for r in ok_llm)
    assert not any(r["slo_met"] for r in rows if r["error_class"] is not None)
    # Every streamed token after the first is one ITL sample; the broken and garbled streams
    # add the gaps seen before they failed.
    assert hist.total_count > sum(TOKENS - 1 for _ in ok_llm)


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_spin_never_sends_early_and_sends_everything(server, loop_name):
    # --spin-us wakes the worker before each instant and busy-waits the rest: every request
    # still goes out, none before its instant (the clock is the one the rows are stamped on).
    n = 40
    res, _ = dispatch(server.url, trace(["ok"] * n, ["chat"] * n, gap_ms=2.0), loop_name,
                      spin_us=300)
    assert res.num_rows == n and res.column("error_class").null_count == n
    lag = (res.column("sent_ns").to_numpy() - res.column("intended_ns").to_numpy())
    assert (lag >= 0).all()


def test_spin_option_is_bounded():
    with pytest.raises(ConfigError, match="--spin-us must be at most 1000"):
        ReplayOptions(spin_us=1001)
    with pytest.raises(ConfigError, match="--spin-us must be an integer >= 0"):
        ReplayOptions(spin_us=-1)
    assert ReplayOptions(spin_us=20).dispatch_config(0, None)["spin_ns"] == 20_000


@pytest.mark.parametrize("loop_name", LOOPS)
def test_open_loop_sends_everything_while_the_server_stalls(server, loop_name):
    n = 12
    res, _ = dispatch(server.url, trace(["delay:0.4"] * n, ["chat"] * n, gap_ms=5.0),
                      loop_name, connections=1)
    assert res.num_rows == n and res.column("error_class").null_count == n
    # Open loop: the last request left before the first answer arrived.
    assert max(res.column("sent_ns").to_pylist()) < min(res.column("first_byte_ns").to_pylist())


@pytest.mark.parametrize("loop_name", LOOPS)
def test_closed_loop_waits_and_the_wait_shows_as_lag(server, loop_name):
    n = 6
    res, _ = dispatch(server.url, trace(["delay:0.06"] * n, ["chat"] * n, gap_ms=1.0),
                      loop_name, max_concurrency=1)
    rows = res.to_pylist()
    for prev, cur in zip(rows, rows[1:]):
        assert cur["sent_ns"] >= prev["done_ns"]
    # From the intended time the user waited longer than the server took.
    last = rows[-1]
    assert last["first_token_ns"] - last["intended_ns"] > 3 * (last["first_token_ns"]
                                                               - last["sent_ns"])


def _max_overlap(rows: list[dict]) -> int:
    """The most requests in flight (sent, not yet done) at any instant."""
    events = sorted([(r["sent_ns"], 1) for r in rows] + [(r["done_ns"], -1) for r in rows])
    level = peak = 0
    for _, step in events:
        level += step
        peak = max(peak, level)
    return peak


@pytest.mark.parametrize("loop_name", LOOPS)
def test_rows_wait_for_a_connection_past_the_fd_limit_and_none_fails(server, loop_name,
                                                                      monkeypatch):
    # 30 requests 1 ms apart, each answered after 0.2 s, open loop: they would need 30
    # connections at once. A worker whose open-file limit leaves it 6 (and 2 connects at a
    # time) sends the rest as those free up: late (dispatch lag), never a connect error.
    import cpbench.replaying.dispatch as dispatch_mod
    monkeypatch.setattr(dispatch_mod, "CONNECTS_MAX", 2)
    monkeypatch.setattr(dispatch_mod, "connection_limit", lambda: 6)
    n = 30
    res, _ = dispatch(server.url, trace(["delay:0.2"] * n, ["chat"] * n, gap_ms=1.0),
                      loop_name, connections=1, timeout_s=10.0)
    rows = res.to_pylist()
    assert [r["error_class"] for r in rows] == [None] * n
    assert _max_overlap(rows) == 6
    # Rows 6 on went out only after an earlier answer freed its connection.
    first_done = min(r["done_ns"] for r in rows)
    assert all(r["sent_ns"] >= first_done for r in rows[6:])
    assert all(r["sent_ns"] - r["intended_ns"] > 100_000_000 for r in rows[6:])


def test_sender_caps_connects_and_connections_and_admits_oldest_first():
    from collections import deque

    from cpbench._core.conn import Recorder, Sender
    from cpbench.replaying.plan import COLUMNS
    n = 8
    rec = Recorder({name: (np.arange(n, dtype=dtype) * 1000 if name == "intended_ns"
                           else np.zeros(n, dtype)) for name, dtype in COLUMNS.items()})
    opened: list[int] = []

    def open_and_send(j, data):
        opened.append(j)
        sender.opening += 1

    sender = Sender(rec, lambda j: b"x", open_and_send, lambda: None, deque(), 0, 64, 0,
                    connects_max=2, connections_max=5)
    rec.start_ns = time.monotonic_ns() - 10_000_000          # every row is 2+ ms late
    assert sender.send_due() == n
    assert opened == [0, 1] and list(sender.waiting) == [2, 3, 4, 5, 6, 7]
    now = time.monotonic_ns()
    # Behind by the oldest waiting row's lateness (row 2, due at 2 µs).
    assert sender.behind_ns(now) == now - rec.start_ns - 2000
    sender.opening -= 1                 # a connect ended: one more may start, oldest first
    sender.admit()
    assert opened == [0, 1, 2] and list(sender.waiting) == [3, 4, 5, 6, 7]
    sender.busy.update(object() for _ in range(3))           # 3 carrying + 2 connecting = 5
    sender.opening -= 1
    sender.admit()
    assert opened == [0, 1, 2, 3] and not sender.may_open()
    sender.opening -= 1                                       # 3 busy + 1 connecting: room
    sender.admit()
    assert opened == [0, 1, 2, 3, 4] and list(sender.waiting) == [5, 6, 7]
    sender.waiting.clear()
    assert sender.behind_ns(time.monotonic_ns()) == 0         # nothing due is left unsent


@pytest.mark.parametrize("loop_name", LOOPS)
def test_a_worker_that_stays_behind_stops_itself_and_says_why(server, loop_name, monkeypatch):
    # 100 requests 2 ms apart, answered after 1.5 s, with room for 4 connections: the rest
    # wait, the worker stays more than 50 ms behind, and after half a second it stops.
    import cpbench.replaying.dispatch as dispatch_mod
    monkeypatch.setattr(dispatch_mod, "connection_limit", lambda: 4)
    n = 100
    table = trace(["delay:1.5"] * n, ["chat"] * n, gap_ms=2.0)
    plan = build_plan(table, select_rows(table), 0, 1)
    said: list[tuple] = []
    batches: list[pa.RecordBatch] = []

    def emit(kind, payload):
        said.append((kind, payload))
        if kind == "rows":
            batches.append(rows_to_batch(payload, plan.models, 0))

    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        disp = Dispatcher(Target.from_url(server.url), plan,
                          dispatch_options(connections=1, max_behind_s=0.05), 0, emit,
                          Histogram())
        loop.run_until_complete(disp.open_pool())
        counters = loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
    finally:
        loop.close()
    saturated = [p for k, p in said if k == "saturated"]
    assert len(saturated) == 1
    info = saturated[0]
    assert info["sent"] == 4 and info["open_connections"] == 4 and info["opening"] == 0
    assert info["waiting"] == info["due"] - 4 > 0
    assert info["behind_ns"] > 50_000_000 and 0.5e9 <= info["at_ns"] < 1.5e9
    # Stopped before any answer came; the four in flight finished in the grace period.
    rows = pa.Table.from_batches(batches).to_pylist()
    assert [r["row"] for r in rows] == [0, 1, 2, 3]
    assert [r["error_class"] for r in rows] == [None] * 4
    assert counters["sent"] == 4 and counters["behind_max_ns"] >= info["behind_ns"]


@pytest.mark.parametrize("loop_name", LOOPS)
def test_reused_connection_closed_unanswered_is_sent_again(server, loop_name):
    # The server closes each kept-alive connection as a request arrives on it: every
    # request still completes, on a new connection, and the retries are counted.
    n = 4
    table = trace(["dropreused"] * n, ["chat"] * n, gap_ms=30.0)
    plan = build_plan(table, select_rows(table), 0, 1)
    packed = []
    loop = uvloop.new_event_loop() if loop_name == "uvloop" else asyncio.new_event_loop()
    try:
        disp = Dispatcher(Target.from_url(server.url), plan, dispatch_options(connections=1), 0,
                          lambda kind, payload: packed.append(payload) if kind == "rows" else None,
                          Histogram())
        loop.run_until_complete(disp.open_pool())
        counters = loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
    finally:
        loop.close()
    res = pa.Table.from_batches([rows_to_batch(p, plan.models, 0) for p in packed])
    assert res.num_rows == n and res.column("error_class").null_count == n
    assert res.column("output_tokens").to_pylist() == [TOKENS] * n
    assert counters["retried"] == n - 1 and counters["sent"] == n


def test_idle_connections_above_the_floor_are_closed(server):
    """A burst opens a connection per request in flight; once they have been idle for 2 s the
    ones above the floor (--connections) are closed, so descriptors follow the load."""
    n = 10
    table = trace(["delay:0.3"] * n + ["ok"], ["chat"] * (n + 1), gap_ms=0.1)
    arrivals = table.column("arrival_ns").to_numpy().copy()
    arrivals[-1] = 3_500_000_000                # well after the burst's connections idle 2 s
    table = table.set_column(0, "arrival_ns", pa.array(arrivals))
    plan = build_plan(table, select_rows(table), 0, 1)
    loop = uvloop.new_event_loop()
    try:
        disp = Dispatcher(Target.from_url(server.url), plan, dispatch_options(connections=1), 0,
                          lambda kind, payload: None, Histogram())
        loop.run_until_complete(disp.open_pool())
        counters = loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
    finally:
        loop.close()
    assert counters["connections"] == n and counters["done"] == n + 1
    assert counters["idle_closed"] == n - 1     # the floor of one stayed for the last request


def test_pool_size_counts_the_busiest_window_within_bounds(monkeypatch):
    ms = 1_000_000
    assert pool_size(np.array([], np.int64)) == POOL_MIN
    assert pool_size(np.arange(1000, dtype=np.int64) * 20 * ms) == POOL_MIN   # 1 per window
    burst = np.zeros(100, np.int64)
    assert pool_size(burst) == 100
    # The window is half open: a request exactly 10 ms after another is not in its window.
    steady = np.arange(400, dtype=np.int64) * (POOL_WINDOW_NS // 80)        # 80 per 10 ms
    assert pool_size(steady) == 80
    two_bursts = np.concatenate([np.zeros(40, np.int64), np.full(60, POOL_WINDOW_NS)])
    assert pool_size(two_bursts) == 60
    assert pool_size(np.zeros(5000, np.int64)) == POOL_MAX
    import resource
    monkeypatch.setattr(resource, "getrlimit", lambda which: (1024, 4096))
    assert pool_size(np.zeros(5000, np.int64)) == 256               # a quarter of the fd limit


def test_default_pool_is_opened_before_the_start(server):
    # No --connections: the busiest 10 ms of this schedule (a 70-request burst) is opened up
    # front, so the burst opens no connection while it is sent.
    n = 70
    table = trace(["ok"] * n, ["chat"] * n, gap_ms=0.0)
    plan = build_plan(table, select_rows(table), 0, 1)
    loop = uvloop.new_event_loop()
    try:
        disp = Dispatcher(Target.from_url(server.url), plan, dispatch_options(), 0,
                          lambda kind, payload: None, Histogram())
        assert disp.pool_floor == n
        loop.run_until_complete(disp.open_pool())
        assert disp.opened == n
        counters = loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
    finally:
        loop.close()
    assert counters["done"] == n and counters["connections"] == n


def test_timeout_is_counted_not_raised(server):
    res, _ = dispatch(server.url, trace(["stall:3", "ok"], ["chat", "chat"]), "uvloop",
                      timeout_s=0.3)
    rows = res.to_pylist()
    assert rows[0]["error_class"] == "timeout" and rows[0]["status"] == 0
    assert rows[0]["done_ns"] - rows[0]["sent_ns"] >= 300_000_000
    assert rows[1]["error_class"] is None


def test_refused_target_raises_one_line_error():
    import socket
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    with pytest.raises(TargetError, match=f"cannot connect to 127.0.0.1:{port}"):
        dispatch(f"http://127.0.0.1:{port}", trace(["ok"], ["chat"]), "uvloop")


def test_target_parsing_and_credential_stripping():
    t = Target.from_url("https://u:secret@example.org/v1")
    assert (t.host, t.port, t.tls, t.base_path) == ("example.org", 443, True, "")
    assert Target.from_url("http://h:81/proxy").base_path == "/proxy"
    assert redact_url("http://u:secret@h:1/x") == "http://h:1/x"
    with pytest.raises(ConfigError):
        Target.from_url("ftp://h")




def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


def _one_token_answer() -> bytes:
    """A whole streamed chat answer: one content event, then [DONE]."""
    return (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + _chunked(b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n',
                       b"data: [DONE]\n\n"))


def _one_row_conn(kind: int = 0, batch_size: int = 1):
    """A Conn on a one-row plan (row 7 of the trace), its owner, recorder and ITL histogram."""
    from collections import deque

    from cpbench._core.conn import Conn, Recorder, Sender
    from cpbench._core.hist import Histogram
    from cpbench.replaying.plan import COLUMNS
    values = {"rows": 7, "kind": kind, "batch_size": batch_size, "input_tokens": 5,
              "output_tokens": -1, "slo_ttft_ms": 100.0, "slo_e2e_ms": 1000.0}
    rec = Recorder({name: np.full(1, values.get(name, 0), dtype)
                    for name, dtype in COLUMNS.items()})
    sender = Sender(rec, None, None, None, deque(), 0, 64)     # nothing due: never called
    hist = Histogram()
    conn = Conn(None, sender, hist, True)
    conn.transport = _Transport()
    return conn, sender, rec, hist


class _Transport:
    """What a Conn needs of its transport here: nothing is written or aborted but counted."""

    aborted = 0

    def abort(self):
        self.aborted += 1


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_response_parsed_whatever_the_read_boundaries(step):
    from cpbench.replaying.rows import ROW_INT_FIELDS
    events = [b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(3)]
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\n'
    wire = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + _chunked(events[0] + events[1][:9], events[1][9:], events[2], usage,
                       b"data: [DONE]\n\n"))
    conn, sender, rec, hist = _one_row_conn()
    rec.start_ns = 4
    conn.begin(0, 10)
    for i in range(0, len(wire), step):
        conn.data_received(wire[i:i + step])
    n, ints, floats, details = rec.take_rows()
    v = dict(zip(ROW_INT_FIELDS, np.frombuffer(ints, np.int64).tolist()))
    assert n == 1 and details == {} and conn.j is None
    assert v["row"] == 7 and v["error_class"] == -1                 # no error class
    assert (v["output_tokens"], v["input_tokens"], v["status"]) == (3, 4, 200)
    assert v["sent_ns"] == 6 < v["first_byte_ns"] <= v["first_token_ns"] <= v["done_ns"]
    assert np.frombuffer(floats).tolist() == [100.0, 1000.0]
    assert hist.total_count == 2                                 # 3 tokens, 2 gaps
    assert sender.idle == [conn] and conn.transport.aborted == 0       # kept for reuse


@settings(max_examples=200, deadline=None)
@given(st.integers(1, 12), st.lists(st.integers(1, 40), min_size=1, max_size=12),
       st.lists(st.integers(1, 60), min_size=1, max_size=30), st.booleans(), st.booleans())
def test_any_chunking_and_read_split_gives_the_same_row(tokens, chunk_sizes, reads, crlf,
                                                        shouting):
    # The same stream, framed in chunks of any sizes and cut into reads anywhere, with either
    # event separator and header names in any case: one success row with the same counts.
    from cpbench.replaying.rows import ROW_INT_FIELDS
    sep = b"\r\n\r\n" if crlf else b"\n\n"
    body = b"".join(b'data: {"choices":[{"delta":{"content":"w%d"}}]}' % i + sep
                    for i in range(tokens))
    body += b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":%d}}' % tokens
    body += sep + b"data: [DONE]" + sep
    parts, pos, k = [], 0, 0
    while pos < len(body):
        size = chunk_sizes[k % len(chunk_sizes)]
        parts.append(body[pos:pos + size])
        pos, k = pos + size, k + 1
    head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    wire = (head.upper() if shouting else head) + _chunked(*parts)
    conn, sender, rec, hist = _one_row_conn()
    conn.begin(0, 10)
    pos, k = 0, 0
    while pos < len(wire):
        size = reads[k % len(reads)]
        conn.data_received(wire[pos:pos + size])
        pos, k = pos + size, k + 1
    n, ints, _, details = rec.take_rows()
    v = dict(zip(ROW_INT_FIELDS, np.frombuffer(ints, np.int64).tolist()))
    assert (n, details, v["error_class"], v["status"]) == (1, {}, -1, 200)
    assert (v["output_tokens"], v["input_tokens"]) == (tokens, 3)
    assert hist.total_count == tokens - 1 and sender.idle == [conn]


@pytest.mark.parametrize("head, body, want", [
    (b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n",
     b'{"data":[{"embedding":[0.1]},{"embedding":[0.2]}],"usage":{"prompt_tokens":9}}',
     {"status": 200, "error_class": -1, "input_tokens": 9}),
    (b"HTTP/1.1 200 OK\r\nCONTENT-LENGTH:   %d  \r\nConnection: Close\r\n\r\n",
     b'{"data":[{"embedding":[0.1]}]}',
     {"status": 200, "error_class": ERROR_CODE["bad_payload"], "input_tokens": 5}),
    (b"HTTP/1.1 503 Busy\r\ncontent-length: %d\r\n\r\n", b"overloaded",
     {"status": 503, "error_class": ERROR_CODE["http_5xx"]}),
    (b"HTTP/1.1 200 OK\r\nContent-Length: -%d\r\n\r\n", b"x",
     {"status": 200, "error_class": ERROR_CODE["bad_payload"]}),
    (b"HTTP/1.1 200 OK\r\nContent-Encoding: gzip\r\nContent-Length: %d\r\n\r\n",
     b'{"data":[{"embedding":[0.1]},{"embedding":[0.2]}]}',
     {"status": 200, "error_class": ERROR_CODE["bad_payload"]}),
])
def test_embedding_bodies_checked_whole_and_classified(head, body, want):
    from cpbench.replaying.rows import ROW_INT_FIELDS
    conn, sender, rec, _ = _one_row_conn(kind=KINDS.index("embedding"), batch_size=2)
    conn.begin(0, 10)
    wire = head % len(body) + body
    conn.data_received(wire[:20])
    conn.data_received(wire[20:])
    n, ints, _, details = rec.take_rows()
    v = dict(zip(ROW_INT_FIELDS, np.frombuffer(ints, np.int64).tolist()))
    assert n == 1 and {k: v[k] for k in want} == want
    assert (v["error_class"] < 0) == (details == {})
    # A 5xx keeps the connection; a bad body, a close or a bad header does not.
    kept = want["error_class"] in (-1, ERROR_CODE["http_5xx"]) and b"Close" not in head
    assert (sender.idle == [conn], conn.transport.aborted) == (kept, int(not kept))


def _only_row(rec) -> tuple[dict, dict]:
    from cpbench.replaying.rows import ROW_INT_FIELDS
    n, ints, _, details = rec.take_rows()
    assert n == 1
    return dict(zip(ROW_INT_FIELDS, np.frombuffer(ints, np.int64).tolist())), details


@pytest.mark.parametrize("reads, detail", [
    ([b"SSH-2.0-OpenSSH_9.6\r\n\r\n"], "not an HTTP response: b'ssh-2.0-openssh_9.6'"),
    ([b"HTTP/1.1 200 OK\r\n"] + [b"X-Padding: %s\r\n" % (b"y" * 1000)] * 70,
     "response headers too long"),
    ([b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n", b"zz\r\nabc\r\n"],
     "bad chunk size: b'zz'"),
])
def test_a_broken_head_or_framing_is_a_bad_payload_and_closes(reads, detail):
    conn, sender, rec, _ = _one_row_conn(kind=KINDS.index("embedding"))
    conn.begin(0, 10)
    for data in reads:
        conn.data_received(data)
    v, details = _only_row(rec)
    assert v["error_class"] == ERROR_CODE["bad_payload"] and details == {0: detail}
    assert sender.idle == [] and conn.transport.aborted == 1


def test_a_body_without_length_ends_with_the_close():
    conn, sender, rec, _ = _one_row_conn(kind=KINDS.index("embedding"))
    conn.begin(0, 10)
    conn.data_received(b"HTTP/1.0 200 OK\r\n\r\n{\"data\":[{\"embedding\":[0.5]}],")
    conn.data_received(b"\"usage\":{\"prompt_tokens\":9}}")
    assert rec.take_rows() is None                      # nothing ends it but the close
    conn.connection_lost(None)
    v, details = _only_row(rec)
    assert (v["error_class"], v["status"], v["input_tokens"], details) == (-1, 200, 9, {})
    assert sender.idle == [] and conn.transport is None       # not reused: it closed


def test_https_goes_through_the_loops_transports_with_the_same_rows(monkeypatch):
    # Plain HTTP is read and written from C (a Poller); TLS keeps the event loop's
    # transports. The same faults give the same rows either way.
    from support.faulty_server import TLS_CERT
    monkeypatch.setenv("SSL_CERT_FILE", str(TLS_CERT))
    models = ["ok", "status:503", "cut", "split", "ok", "badjson"]
    table = trace(models, ["chat", "chat", "chat", "chat", "embedding", "chat"])
    rows = {}
    for tls in (False, True):
        with FaultyServer(tls=tls) as srv:
            assert srv.url.startswith("https://" if tls else "http://")
            res, hist = dispatch(srv.url, table, "uvloop")
            assert srv.requests == len(models)
        rows[tls] = [(r["status"], r["error_class"], r["output_tokens"], r["input_tokens"])
                     for r in res.to_pylist()]
    assert rows[True] == rows[False]
    assert [r[1] for r in rows[True]] == [None, "http_5xx", "stream_broken", None, None,
                                          "bad_payload"]


def test_a_poller_socket_sends_what_it_could_not_take_in_order_then_reads_the_answer():
    # A request bigger than the socket takes at once waits for EPOLLOUT; a next request
    # queued meanwhile follows it and never overtakes it. Then the answer is read from the
    # socket and parsed, and the peer's close ends the connection with no callback left.
    import select
    import socket

    from cpbench._core.conn import Conn, Poller
    from cpbench.replaying.rows import ROW_INT_FIELDS

    class Owner:
        forgotten: list = []

        def forget(self, conn):
            self.forgotten.append(conn)

    _, sender, rec, hist = _one_row_conn()
    owner = Owner()
    conn = Conn(owner, sender, hist, True)
    ours, peer = socket.socketpair()
    ours.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    ours.setblocking(False)
    poller = Poller()
    conn.attach(poller, ours.detach())
    assert conn.is_open and poller.watched == 1
    first, second = b"a" * 2_000_000, b"b" * 1000
    sender.write(conn, 0, first, False)
    sender.write(conn, 0, second, False)
    got = bytearray()
    deadline = time.monotonic() + 10
    peer.setblocking(False)
    while len(got) < len(first) + len(second) and time.monotonic() < deadline:
        select.select([poller.fd, peer], [], [], 0.1)
        poller.dispatch()
        try:
            got += peer.recv(1 << 20)
        except BlockingIOError:
            pass
    assert bytes(got) == first + second
    events = b'data: {"choices":[{"delta":{"content":"x"}}]}\n\n' * 3
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\n'
    peer.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                 b"Transfer-Encoding: chunked\r\n\r\n"
                 + _chunked(events, usage, b"data: [DONE]\n\n"))
    while rec.done == 0 and time.monotonic() < deadline:
        select.select([poller.fd], [], [], 0.1)
        poller.dispatch()
    n, ints, _, details = rec.take_rows()
    v = dict(zip(ROW_INT_FIELDS, np.frombuffer(ints, np.int64).tolist()))
    assert (n, details, v["status"], v["error_class"], v["output_tokens"]) == (1, {}, 200, -1, 3)
    assert sender.idle == [conn] and conn.is_open                  # kept for reuse
    peer.close()
    while conn.is_open and time.monotonic() < deadline:
        select.select([poller.fd], [], [], 0.1)
        poller.dispatch()
    assert not conn.is_open and poller.watched == 0 and owner.forgotten == [conn]
    assert rec.take_rows() is None           # an idle connection's close records nothing


def test_dispatch_of_plain_http_drives_sockets_from_c(server, monkeypatch):
    # No transport for plain HTTP: every connection the pool opened is a Poller's socket,
    # opened after the descriptor table was grown (once, before any connection).
    import cpbench.replaying.dispatch as dispatch_module
    grown_with = []
    monkeypatch.setattr(dispatch_module, "grow_descriptor_table",
                        lambda: grown_with.append(len(disp.idle)))
    table = trace(["ok"] * 4, ["chat"] * 4)
    plan = build_plan(table, select_rows(table), 0, 1)
    loop = uvloop.new_event_loop()
    try:
        disp = Dispatcher(Target.from_url(server.url), plan, dispatch_options(connections=3),
                          0, lambda kind, payload: None, Histogram())
        loop.run_until_complete(disp.open_pool())
        assert grown_with == [0] and disp.poller.watched == 3
        assert all(c.is_open and c.transport is None for c in disp.idle)
        loop.run_until_complete(disp.run(time.monotonic_ns() + 20_000_000))
        assert disp.poller.watched == 0 and disp.recorder.done == 4
    finally:
        loop.close()


def test_waiting_in_c_ends_at_the_deadline_or_when_a_wake_descriptor_is_readable():
    # The worker waits in the poller's set between the loop's turns; its control pipe must
    # end that wait at once (a stop), and nothing else may end it early.
    import os

    from cpbench._core.conn import Poller
    poller = Poller()
    r, w = os.pipe()
    try:
        poller.wake_on(r)
        assert poller.wait(time.monotonic_ns() + 20_000_000) is False     # the deadline
        os.write(w, b"stop")
        assert poller.wait(time.monotonic_ns() + 60_000_000_000) is True  # woken, not 60 s
        assert os.read(r, 4) == b"stop"               # the descriptor is left to its reader
    finally:
        os.close(r)
        os.close(w)


def test_one_dispatch_reads_every_ready_socket_not_one_batch():
    # A worker that was stopped finds thousands of answers waiting. Reading one batch of
    # events per turn of the loop left their connections busy while rows fell due, each
    # opened a connection, and a 150 ms stop of one worker at 40,000 req/s grew into 140,000
    # connects. One dispatch must take every ready socket.
    import socket

    from cpbench._core.conn import Conn, Poller

    _, sender, rec, hist = _one_row_conn()
    poller = Poller()
    answer = _one_token_answer()
    peers = []
    try:
        for _ in range(300):                 # more than one epoll batch
            ours, peer = socket.socketpair()
            ours.setblocking(False)
            conn = Conn(None, sender, hist, True)
            conn.attach(poller, ours.detach())
            conn.begin(0, 10)
            peer.sendall(answer)
            peers.append(peer)
        poller.dispatch()
        assert rec.done == 300 and len(sender.idle) == 300
    finally:
        for conn in list(sender.idle):
            conn.close()
        for peer in peers:
            peer.close()


@pytest.mark.parametrize("loop_connects", [False, True])
def test_a_row_that_needs_a_connection_is_sent_before_the_next_row_is_due(server,
                                                                         monkeypatch,
                                                                         loop_connects):
    # Waiting in C, a row that finds no idle connection must not be held until the wait
    # ends, however long the wait may last (here a minute): the poller connects it, in C,
    # with no turn of the loop; where the loop connects (an immediate failure to start the
    # connect, forced here), the wait hands the loop its turn at once. One pooled
    # connection, each answer 2 s late: rows 2-4 each need a new connection.
    import cpbench.replaying.dispatch as dispatch_module
    monkeypatch.setattr(dispatch_module, "WAIT_SLICE_NS", 60_000_000_000)
    through_loop = []
    open_and_send = Dispatcher._open_and_send

    def counted(self, j, retry, data):
        through_loop.append(j)
        return open_and_send(self, j, retry, data)
    monkeypatch.setattr(Dispatcher, "_open_and_send", counted)
    if loop_connects:
        monkeypatch.setattr(Dispatcher, "_start_connect", lambda self: -1)
    n = 4
    res, _ = dispatch(server.url, trace(["delay:2"] * n, ["chat"] * n, gap_ms=500.0),
                      "uvloop", connections=1)
    assert res.column("error_class").null_count == n
    intended, sent = res.column("intended_ns").to_pylist(), res.column("sent_ns").to_pylist()
    assert intended == sorted(intended)
    assert all(sent[k] < intended[k + 1] for k in range(n - 1))
    # The pool's connect is the loop's (the first resolves the address); then only the
    # forced ones.
    assert len(through_loop) == (3 if loop_connects else 0)


def _listener(backlog: int = 16):
    import socket
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(backlog)
    return srv


def _connecting_socket(address) -> int:
    """A non-blocking socket whose connect to ``address`` has begun (loopback: EINPROGRESS)."""
    import errno
    import socket
    sock = socket.socket()
    sock.setblocking(False)
    assert sock.connect_ex(address) == errno.EINPROGRESS
    return sock.detach()


def test_a_connect_in_progress_ends_in_c_and_its_row_is_stamped_sent_when_it_leaves():
    # A row that found no idle connection is handed to one whose connect has just begun. A
    # listener with a full accept queue drops the SYN, so the connect stays in progress:
    # the bytes wait, the row is not stamped sent, the connection counts as connecting. When
    # the queue has room, the SYN sent again a second later gets through; the poller then
    # sends the bytes, stamps the row sent (its lag) and counts the connection opened.
    import socket

    from cpbench._core.conn import Conn, Poller
    _, sender, rec, hist = _one_row_conn()
    poller = Poller()
    srv = _listener(0)
    filler = socket.create_connection(srv.getsockname())     # the queue is full
    try:
        conn = Conn(None, sender, hist, True)
        conn.attach(poller, _connecting_socket(srv.getsockname()), True)
        assert (sender.connecting, sender.opened, poller.watched) == (1, 0, 1)
        request = b"POST /v1/chat/completions HTTP/1.1\r\nContent-Length: 0\r\n\r\n"
        sender.write(conn, 0, request, False)
        assert sender.connecting == 1 and sender.busy == {conn}
        assert len(rec.take_lags()) == 0                     # not sent yet
        room_ns = time.monotonic_ns()
        srv.accept()[0].close()
        deadline = time.monotonic() + 10
        while sender.connecting and time.monotonic() < deadline:
            poller.wait(time.monotonic_ns() + 100_000_000)
        assert (sender.connecting, sender.opened) == (0, 1)
        lags = rec.take_lags()             # intended 0, run start 0: the lag is the stamp
        assert len(lags) == 1 and lags[0] > room_ns
        peer, _ = srv.accept()
        peer.settimeout(10)
        assert peer.recv(1000) == request
        peer.sendall(_one_token_answer())
        while rec.done == 0 and time.monotonic() < deadline:
            poller.wait(time.monotonic_ns() + 100_000_000)
        v, details = _only_row(rec)
        assert (v["status"], v["error_class"], details) == (200, -1, {})
        assert v["sent_ns"] == lags[0] and sender.idle == [conn]
        conn.close()
        peer.close()
    finally:
        filler.close()
        srv.close()


def test_a_refused_connect_ends_its_row_as_a_connect_failure_at_the_next_dispatch():
    # A refused connect shows on the first send; the row ends at the next dispatch (the
    # socket's hang-up), not inside the send, where ending it would admit the next waiting
    # row and nest its connect inside this one.
    from cpbench._core.conn import Conn, Poller
    _, sender, rec, hist = _one_row_conn()
    poller = Poller()
    srv = _listener()
    closed_port = srv.getsockname()
    srv.close()
    conn = Conn(None, sender, hist, True)
    conn.attach(poller, _connecting_socket(closed_port), True)
    sender.write(conn, 0, b"GET / HTTP/1.1\r\n\r\n", False)
    assert rec.done == 0 and sender.connecting == 1
    poller.dispatch()
    v, details = _only_row(rec)
    assert v["error_class"] == ERROR_CODE["connect"]
    assert details == {0: "connect failed: Connection refused"}
    assert not conn.is_open and poller.watched == 0
    assert (sender.connecting, sender.opened, sender.busy) == (0, 0, set())


def test_a_row_that_finds_every_connection_busy_takes_one_an_unread_answer_frees():
    # Connects no longer wait for the loop, so a row that finds no idle connection must
    # still wait until the poller has read every ready answer: a worker behind its schedule
    # has its answers unread, and connecting at once opened a connection per late row (a
    # 150 ms stop of a worker at 40,000 req/s: 190,000 connections, 149,000 retries). Rows
    # 0-2 fall due together with one connection: row 0 takes it; 1 and 2 wait. Row 0's
    # answer is ready, unread: the dispatch reads it, row 1 takes the connection it frees,
    # and only row 2 connects.
    import socket
    from collections import deque

    from cpbench._core.conn import Conn, Poller, Recorder, Sender
    from cpbench.replaying.plan import COLUMNS
    from cpbench.replaying.timer import MonotonicTimer
    rec = Recorder({name: np.zeros(3, dtype) for name, dtype in COLUMNS.items()})
    rec.start_ns = time.monotonic_ns()
    connects = []
    request = b"GET / HTTP/1.1\r\n\r\n"
    sender = Sender(rec, lambda j: request, lambda j, data: connects.append(j), None, deque(),
                    0, 64)
    poller, hist, timer = Poller(), Histogram(), MonotonicTimer()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    conn = Conn(None, sender, hist, True)
    conn.attach(poller, ours.detach())
    sender.idle.append(conn)
    try:
        poller.watch_timer(timer.fd, sender)           # the schedule is the poller's
        sender.connect_after_reading = True
        assert sender.send_due() == 3
        assert list(sender.waiting) == [1, 2] and connects == []
        peer.settimeout(10)
        assert peer.recv(1000) == request
        peer.sendall(_one_token_answer())
        deadline = time.monotonic() + 10
        while rec.done == 0 and time.monotonic() < deadline:
            poller.dispatch()
        assert peer.recv(1000) == request                  # row 1, on the freed connection
        assert rec.done == 1 and sender.busy == {conn} and conn.j == 1
        assert connects == [2] and not sender.waiting
    finally:
        poller.unwatch_timer()
        timer.close()
        conn.close()
        peer.close()


def test_the_descriptor_table_is_grown_to_the_open_file_limit_with_nothing_left_open():
    # In a process with threads each doubling of the kernel's descriptor table waits for an
    # RCU grace period (7-36 ms here); grown before the run, the table never grows during it.
    # /proc/self/status's FDSize is the table's size. In a child with a 4,096 soft limit:
    import subprocess
    import sys
    code = """
import os, resource, threading
from cpbench.replaying.dispatch import grow_descriptor_table
resource.setrlimit(resource.RLIMIT_NOFILE, (4096, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
threading.Thread(target=lambda: None).start()
size = lambda: int([l for l in open('/proc/self/status') if l.startswith('FDSize')][0].split()[1])
before, fds = size(), sorted(os.listdir('/proc/self/fd'))
print(before, grow_descriptor_table(), size(), sorted(os.listdir('/proc/self/fd')) == fds)
"""
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True).stdout.split()
    before, grown, after, same_fds = int(out[0]), int(out[1]), int(out[2]), out[3]
    assert before < 4096 and grown == 4096 and after >= 4096 and same_fds == "True"


def test_thousands_of_waiting_rows_facing_refused_connects_fail_one_after_another():
    # A target that stops listening mid-run, with 3,000 rows waiting for a connect slot:
    # each failure frees a slot and the next waiting row connects, and fails, in turn. Had a
    # failure ended its row inside the send, each would nest the next (RecursionError).
    from collections import deque

    from cpbench._core.conn import Conn, Poller, Recorder, Sender
    from cpbench.replaying.plan import COLUMNS
    n = 3000
    rec = Recorder({name: np.zeros(n, dtype) for name, dtype in COLUMNS.items()})
    poller, hist = Poller(), Histogram()
    srv = _listener()
    closed_port = srv.getsockname()
    srv.close()
    sender = None

    def open_and_send(j, data):
        conn = Conn(None, sender, hist, True)
        conn.attach(poller, _connecting_socket(closed_port), True)
        sender.write(conn, j, data, False)

    sender = Sender(rec, lambda j: b"GET / HTTP/1.1\r\n\r\n", open_and_send, None,
                    deque(range(n)), 0, 64, 0, 8)             # 8 connects at once
    sender.admit()
    assert sender.connecting == 8 and len(sender.waiting) == n - 8
    deadline = time.monotonic() + 60
    while rec.done < n and time.monotonic() < deadline:
        poller.dispatch()
    assert rec.done == rec.errors == n and sender.sent == n
    assert sender.connecting == 0 and poller.watched == 0 and not sender.waiting


def test_a_send_on_a_socket_the_peer_closed_ends_the_request_as_a_connect_failure():
    # A failed send is left to epoll: the hang-up it reports ends the connection, and the
    # request (never answered, on a connection that served nothing) is a connect failure.
    import socket

    from cpbench._core.conn import Conn, Poller
    _, sender, rec, hist = _one_row_conn()
    poller = Poller()
    ours, peer = socket.socketpair()
    ours.setblocking(False)
    conn = Conn(None, sender, hist, True)
    conn.attach(poller, ours.detach())
    peer.close()
    sender.write(conn, 0, b"x" * 100, False)          # EPIPE: nothing raised here
    poller.dispatch()
    v, details = _only_row(rec)
    assert v["error_class"] == ERROR_CODE["connect"]
    assert details == {0: "connection closed before any response byte"}
    assert not conn.is_open and poller.watched == 0 and sender.busy == set()

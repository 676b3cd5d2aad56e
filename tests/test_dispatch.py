"""The dispatcher of one process (cpbench.replaying.dispatch) against the fault-injecting
loopback server (tests/support/faulty_server.py), under both the stock asyncio loop and
uvloop."""
from __future__ import annotations

import asyncio
import time

import pyarrow as pa
import pytest
import uvloop

from cpbench._core.hist import Histogram
from cpbench.redact import redact_url
from cpbench.replaying.dispatch import Dispatcher, DispatchOptions, Target
from cpbench.errors import ConfigError, TargetError
from cpbench.results import rows_to_batch
from cpbench.replaying.options import ReplayOptions
from cpbench.replaying.planning import build_plan, select_rows
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


class _FakeOwner:
    """What an HttpConn needs of its dispatcher, recording the outcomes it reports."""

    due_abs_ns = 1 << 62            # nothing to send

    def __init__(self):
        self.options = dispatch_options()
        self.outcomes, self.itl = [], []
        self.itl_append = self.itl.append

    def finished(self, conn, j, reusable, *outcome):
        self.outcomes.append((j, outcome))
        self.reusable = reusable


def _chunked(*parts: bytes) -> bytes:
    return b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in parts) + b"0\r\n\r\n"


@pytest.mark.parametrize("step", [1, 2, 3, 7, 1000])
def test_response_parsed_whatever_the_read_boundaries(step):
    from cpbench.replaying.http1 import HttpConn
    events = [b'data: {"choices":[{"delta":{"content":"t%d"}}]}\n\n' % i for i in range(3)]
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":4,"completion_tokens":3}}\n\n'
    wire = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n"
            + _chunked(events[0] + events[1][:9], events[1][9:], events[2], usage,
                       b"data: [DONE]\n\n"))
    d = _FakeOwner()
    conn = HttpConn(d)
    conn.transport = object()                   # only tested for presence here
    conn.begin(7, 0, 1, 10)
    for i in range(0, len(wire), step):
        conn.data_received(wire[i:i + step])
    (j, outcome), = d.outcomes
    sent, first_byte, first_token, done, status, code, detail, prompt, out = outcome[:9]
    assert j == 7 and code == -1 and detail is None             # no error class
    assert (out, prompt, status) == (3, 4, 200)
    assert sent == 10 < first_byte <= first_token <= done
    assert len(d.itl) == 2                                       # 3 tokens, 2 gaps
    assert d.reusable

"""Faulty servers: every run completes, every request is in results.arrow exactly once, each
failure is counted under the right error class, and the report shows it.

Two kinds of misbehaving target: ``cpbench sim`` with its seeded fault modes (errors, stalls,
disconnects, malformed chunks; counts checked against the sim's own fault counters), and the
raw-socket ``tests/support/faulty_server.py`` for what a real server library would never do
(row by row: each trace row names the fault it gets, so the test knows which class every row
must have).
Runs go through the real CLI (``python -m cpbench replay``) with two worker processes.
"""
from __future__ import annotations

import re
import signal
import subprocess
import sys
import time
import urllib.request
from collections import Counter

import pytest

from support import (check_accounting, check_report_shows, read_run, run_cli, wait_ready_file,
                     write_trace_for)
from support.faulty_server import FaultyServer

pytestmark = pytest.mark.integration

# model (= fault) -> expected error class for (chat, embedding); None = success.
MIXED = {
    "ok": (None, None),
    "status:429:body": ("http_4xx", "http_4xx"),
    "status:429:empty": ("http_4xx", "http_4xx"),
    "status:500:body": ("http_5xx", "http_5xx"),
    "status:500:close": ("http_5xx", "http_5xx"),
    "status:503:body": ("http_5xx", "http_5xx"),
    "status:503:empty": ("http_5xx", "http_5xx"),
    "stall:4": ("timeout", "timeout"),          # stall before headers, past --timeout 1.5
    "cut:2": ("stream_broken", None),           # stream cut after 2 content chunks
    "nodata": ("bad_payload", None),            # SSE events without `data:`
    "badjson": ("bad_payload", "bad_payload"),  # an event / the body not JSON
    "fewvectors": (None, "bad_payload"),        # one embedding short of the inputs
    "nousage": (None, None),                    # no usage event: tokens counted
    "bigchunk": (None, None),                   # one 1 MB content event
    "neverend": ("timeout", None),              # a chunk every 50 ms, forever
    "slowloris": ("timeout", "timeout"),        # one byte per second
}
TIMEOUT_S = "1.5"


def _expected(table, table_of: dict) -> list[tuple]:
    """(row, model, kind, got, want) for every row whose error class is not the expected one."""
    wrong = []
    for row, model, kind, got in zip(*(table.column(c).to_pylist()
                                       for c in ("row", "model", "kind", "error_class"))):
        want = table_of[model][1 if kind == "embedding" else 0]
        if got != want:
            wrong.append((row, model, kind, got, want))
    return wrong


def _replay(trace, out, url, *extra, timeout_s=120):
    proc = run_cli("replay", str(trace), "--url", url, "-o", str(out), "--workers", "2",
                   "--timeout", TIMEOUT_S, *extra, timeout_s=timeout_s)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def test_raw_server_faults_each_request_once_under_its_class(tmp_path):
    n = len(MIXED) * 8
    trace = write_trace_for(tmp_path / "mixed.arrow", list(MIXED), n, gap_ms=20)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url)
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, n)
    assert _expected(table, MIXED) == []
    statuses = Counter(zip(table.column("model").to_pylist(), table.column("status").to_pylist()))
    assert statuses[("status:429:body", 429)] == statuses[("status:429:empty", 429)] == 8
    assert statuses[("status:500:close", 500)] == 8
    ok = [t for m, t, e in zip(*(table.column(c).to_pylist()
                                 for c in ("model", "output_tokens", "error_class")))
          if e is None and m in ("ok", "bigchunk")]
    assert ok and set(ok) <= {0, 4}                # chat: 4 tokens (usage); embeddings: 0
    check_report_shows(tmp_path / "out", classes)
    # The console says how many failed and how (exit 0: no --max-error-ratio given).
    assert f"errors {sum(v for k, v in classes.items() if k):,}" in proc.stdout


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
@pytest.mark.parametrize("fault,want", [
    ("split", (None, None)),
    ("gzip", ("bad_payload", "bad_payload")),
    ("badlength:-5", ("bad_payload", "bad_payload")),
    ("badlength:12abc", ("bad_payload", "bad_payload")),
    ("badchunk", ("bad_payload", "bad_payload")),
])
def test_raw_server_framing_faults(tmp_path, fault, want, loop):
    """An SSE stream whose chunks and events cross TCP reads (7-byte writes) is read correctly;
    a gzip-encoded garbage body the client never asked for, a Content-Length that is not a
    number and a chunk size that is not hexadecimal are bad payloads, with no traceback in the
    log. Both event loops:
    they hand the parser differently sized reads."""
    table_of = {"ok": (None, None), fault: want}
    trace = write_trace_for(tmp_path / "t.arrow", ["ok", fault], 24, gap_ms=25)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--no-report", "--loop", loop)
    assert proc.returncode == 0, proc.stderr
    assert "Fatal error" not in proc.stderr, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, 24)
    assert _expected(table, table_of) == []
    check_report_shows(tmp_path / "out", classes)


def test_connection_refused_mid_run(tmp_path):
    """After 30 requests the server stops listening and drops every connection: those 30
    succeed, each later one is a `connect` failure, and the run still completes."""
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"], 100, gap_ms=15)
    with FaultyServer("refuse-after:30") as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--no-report")
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, 100)
    assert classes == {None: 30, "connect": 70}


def test_server_that_accepts_and_never_reads(tmp_path):
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"], 20, gap_ms=20)
    with FaultyServer("accept-never-read") as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--no-report")
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, 20)
    assert classes == {"timeout": 20}
    check_report_shows(tmp_path / "out", classes)


# -- --max-error-ratio -----------------------------------------------------------------------

def test_max_error_ratio_stops_early_with_exit_3(tmp_path):
    n = 600
    trace = write_trace_for(tmp_path / "t.arrow", ["ok", "status:503:body"], n, gap_ms=5)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--max-error-ratio", "0.2",
                       "--no-report")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "--max-error-ratio 0.2" in lines[0], lines
    assert str(tmp_path / "out") in lines[0]
    table, summary = read_run(tmp_path / "out")
    check_accounting(table, summary)
    assert 100 <= table.num_rows < n            # stopped early, after the 100-request floor
    assert summary["run"]["interrupted"] is True


def test_a_short_run_over_the_ratio_exits_3_at_its_end(tmp_path):
    """Under the 100-answer floor nothing stops the run early; its end judges every answer:
    30 of 40 failed is over 0.5, so exit 3 with everything written."""
    trace = write_trace_for(tmp_path / "t.arrow", ["ok", "status:503:body", "status:503:body",
                                                   "status:503:body"], 40, gap_ms=5,
                            embed_every=0)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--max-error-ratio", "0.5",
                       "--no-report")
    assert proc.returncode == 3, (proc.returncode, proc.stderr)
    assert "30 of 40 requests failed" in proc.stderr and "--max-error-ratio 0.5" in proc.stderr
    table, summary = read_run(tmp_path / "out")
    assert check_accounting(table, summary, 40) == {None: 10, "http_5xx": 30}
    assert summary["run"]["interrupted"] is False          # it ran to its end


def test_errors_under_the_ratio_exit_0_and_are_counted_on_the_console(tmp_path):
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"] * 9 + ["status:500:empty"], 120,
                            gap_ms=5, embed_every=0)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--max-error-ratio", "0.5",
                       "--no-report")
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    assert check_accounting(table, summary, 120) == {None: 108, "http_5xx": 12}
    assert "errors 12 (http_5xx 12)" in proc.stdout


def test_quiet_run_with_errors_still_says_how_many_failed(tmp_path):
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"] * 9 + ["status:500:empty"], 60,
                            gap_ms=5, embed_every=0)
    with FaultyServer() as server:
        proc = _replay(trace, tmp_path / "out", server.url, "--quiet", "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert re.search(r"\b6 of 60 requests failed\b", proc.stderr), proc.stderr


# -- the sim's own fault modes --------------------------------------------------------------

def _start_sim(tmp_path, *flags):
    ready = tmp_path / "sim-ready.json"
    log = open(tmp_path / "sim.log", "wb")
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--port", "0",
                             "--ready-file", str(ready), "--seed", "7", *flags],
                            stdout=subprocess.DEVNULL, stderr=log)
    return proc, wait_ready_file(proc, ready)["url"]


def _stop(proc) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(5)


def _injected(url: str) -> dict[str, int]:
    text = urllib.request.urlopen(url + "/metrics", timeout=5).read().decode()
    return {m: int(float(v)) for m, v in
            re.findall(r'^cpbench_sim_faults_total\{mode="(\w+)"\} (\S+)$', text, re.M)}


def _sim_trace(tmp_path, n):
    return write_trace_for(tmp_path / "t.arrow", [], n, gap_ms=8, output_tokens=8,
                           llm_model="cpbench-llm-7b", embed_model="cpbench-embed-bge")


@pytest.mark.slow
def test_sim_errors_and_disconnects_counted_exactly(tmp_path):
    n = 300
    trace = _sim_trace(tmp_path, n)
    sim, url = _start_sim(tmp_path, "--fault-error-percent", "12", "--fault-error-statuses",
                          "429,503", "--fault-disconnect-percent", "12")
    try:
        proc = _replay(trace, tmp_path / "out", url, "--no-report")
        injected = _injected(url)
    finally:
        _stop(sim)
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, n)
    status = Counter(table.column("status").to_pylist())
    assert injected["error"] > 0 and injected["disconnect"] > 0
    assert classes.get("http_4xx", 0) == status[429]
    assert classes.get("http_5xx", 0) == status[503]
    assert status[429] + status[503] == injected["error"]
    assert classes.get("stream_broken", 0) == injected["disconnect"]
    assert set(classes) <= {None, "http_4xx", "http_5xx", "stream_broken"}
    check_report_shows(tmp_path / "out", classes)


@pytest.mark.slow
def test_sim_malformed_chunks_and_stalls_past_the_timeout(tmp_path):
    n = 200
    trace = _sim_trace(tmp_path, n)
    sim, url = _start_sim(tmp_path, "--fault-malformed-percent", "15",
                          "--fault-stall-percent", "8", "--fault-stall-ms", "2500")
    try:
        proc = _replay(trace, tmp_path / "out", url, "--no-report")
        time.sleep(2.0)                 # stalled requests are marked once their stall ends
        injected = _injected(url)
    finally:
        _stop(sim)
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary, n)
    assert classes.get("timeout", 0) == injected["stall"] > 0
    # A malformed mark on a request that had already timed out is never seen by the client.
    assert injected["malformed"] - injected["stall"] <= classes.get("bad_payload", 0) \
        <= injected["malformed"]
    assert classes.get("bad_payload", 0) > 0
    assert set(classes) <= {None, "timeout", "bad_payload"}
    check_report_shows(tmp_path / "out", classes)

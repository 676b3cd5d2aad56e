"""`cpbench replay` end to end: the real CLI in a subprocess against real loopback servers
(the fault-injecting server of tests/support/faulty_server.py, and the embedded sim),
asserting on the files it writes."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpbench.replaying.timer import WORKER_SLICE_NS
from cpbench.results import read_results
from cpbench.summary import decode_histogram
from support import custom_slices, run_cli, write_table_trace
from support.faulty_server import TOKENS, FaultyServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def server():
    with FaultyServer() as srv:
        yield srv


def make_trace(path: Path, models: list[str], kinds: list[str], gap_ms: float = 2.0,
               priorities: list[str] | None = None) -> Path:
    return write_table_trace(path, models, kinds, gap_ms, priorities=priorities)


def cpbench(*args, env: dict | None = None, timeout: float = 60) -> subprocess.CompletedProcess:
    return run_cli(*args, timeout_s=timeout, env={**os.environ, **(env or {})}, cwd=ROOT)


def summary_of(out: Path) -> dict:
    return json.loads((out / "summary.json").read_text())


MIXED = (["ok", "status:503:body", "ok", "status:404:body", "cut:2", "badjson", "nousage",
          "ok"] * 5,
         ["chat", "chat", "embedding", "embedding", "chat", "completion", "chat",
          "completion"] * 5)
EXPECTED = [None, "http_5xx", None, "http_4xx", "stream_broken", "bad_payload", None, None] * 5


@pytest.mark.parametrize("loop", ["uvloop", "asyncio"])
def test_replay_writes_results_summary_and_table(server, tmp_path, loop):
    trace = make_trace(tmp_path / "t.arrow", *MIXED)
    out = tmp_path / "out"
    proc = cpbench("replay", trace, "--url", server.url, "-o", out, "--workers", 2,
                   "--warmup", 8, "--loop", loop, "--no-report", "--timeout", 10)
    assert proc.returncode == 0, proc.stderr
    assert "dispatch lag ms" in proc.stdout and "ttft_from_intended" in proc.stdout
    res = read_results(out / "results.arrow").sort_by("row")
    n = len(EXPECTED)
    assert res.column("row").to_pylist() == list(range(n))
    assert set(res.column("worker").to_pylist()) == {0, 1}
    assert res.column("error_class").to_pylist() == EXPECTED
    assert res.column("warmup").to_pylist() == [True] * 8 + [False] * (n - 8)
    run_meta = json.loads(res.schema.metadata[b"cpbench.run"])
    assert run_meta["target"] == server.url and run_meta["workers"] == 2
    summary = summary_of(out)
    assert summary["run"]["interrupted"] is False
    recorded = json.loads((out / "manifest.json").read_text())["workload"]["trace_sha256"]
    assert recorded == summary["run"]["trace_sha256"] and len(recorded) == 64
    assert summary["requests"]["sent"] == n - 8 and summary["requests"]["warmup"] == 8
    assert summary["requests"]["by_error_class"]["http_5xx"] == 4     # warm-up rows excluded
    assert summary["latency_ms"]["ttft_from_sent"]["count"] > 0
    assert set(summary["dispatch_lag_ms"]) >= {"p50", "p99", "max"}


def test_multi_worker_merge_is_exact(server, tmp_path):
    n = 60
    trace = make_trace(tmp_path / "t.arrow", ["ok"] * n, ["chat", "completion"] * (n // 2),
                       gap_ms=1.0)
    runs = {}
    for workers in (1, 2):
        out = tmp_path / f"w{workers}"
        proc = cpbench("replay", trace, "--url", server.url, "-o", out, "--workers", workers,
                       "--no-report", "--quiet")
        assert proc.returncode == 0, proc.stderr
        runs[workers] = (read_results(out / "results.arrow").sort_by("row"), summary_of(out))
    one, two = runs[1][0], runs[2][0]
    for col in ("row", "kind", "status", "error_class", "output_tokens", "input_tokens",
                "intended_ns"):
        assert one.column(col).to_pylist() == two.column(col).to_pylist(), col
    assert sorted(set(two.column("worker").to_pylist())) == [0, 1]
    # Every gap between streamed tokens is one ITL sample; same-read gaps (0 ns)
        # count as underflow within the total.
    for _, summary in runs.values():
        itl = decode_histogram(summary, "itl")
        assert itl.total_count == n * (TOKENS - 1)


def test_stalled_server_separates_from_intended_and_from_sent(server, tmp_path):
    n = 8
    trace = make_trace(tmp_path / "t.arrow", ["delay:0.15"] * n, ["chat"] * n, gap_ms=5.0)
    out = tmp_path / "out"
    # Two workers asked, a cap of one: the cap wins (one worker holds it).
    proc = cpbench("replay", trace, "--url", server.url, "-o", out, "--workers", 2,
                   "--max-concurrency", 1, "--no-report", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert summary_of(out)["run"]["workers"] == 1
    lat = summary_of(out)["latency_ms"]
    # Closed loop: each request waited for every stalled one before it.
    assert lat["ttft_from_intended"]["p50"] > 2 * lat["ttft_from_sent"]["p50"]
    assert lat["e2e_from_intended"]["max"] > 4 * lat["e2e_from_sent"]["max"]
    res = read_results(out / "results.arrow").sort_by("row").to_pylist()
    for prev, cur in zip(res, res[1:]):
        assert cur["sent_ns"] >= prev["done_ns"]


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_interruption_keeps_a_valid_results_file(server, tmp_path, sig):
    n = 2000
    trace = make_trace(tmp_path / "t.arrow", ["ok"] * n, ["chat"] * n, gap_ms=5.0)
    out = tmp_path / "out"
    server.seen.clear()
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "replay", str(trace), "--url",
                             server.url, "-o", str(out), "--workers", "2", "--no-report",
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline and len(server.seen) < 100:
            time.sleep(0.05)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=30)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err
    res = read_results(out / "results.arrow")
    assert 0 < res.num_rows < n
    assert res.column("done_ns").null_count == 0
    summary = summary_of(out)
    assert summary["run"]["interrupted"] is True
    assert summary["run"]["stop_reason"] == sig.name


def test_auth_and_hints_reach_the_server_but_no_file(server, tmp_path):
    trace = make_trace(tmp_path / "t.arrow", ["ok", "ok"], ["chat", "embedding"],
                       priorities=["HIGH", "LOW"])
    port = server.url.rsplit(":", 1)[1]
    for hints in ("sagellm", "vllm"):
        out = tmp_path / hints
        server.seen.clear()
        proc = cpbench("replay", trace, "--url", f"http://me:pw-secret@127.0.0.1:{port}",
                       "-o", out, "--hints", hints, "--workers", 1, "--quiet",
                       env={"OPENAI_API_KEY": "sk-test-secret"})
        assert proc.returncode == 0, proc.stderr
        seen = sorted(server.seen, key=lambda s: "input" in s["body"])
        assert all(s["headers"]["Authorization"] == "Bearer sk-test-secret" for s in seen)
        if hints == "sagellm":
            assert seen[0]["headers"]["X-Request-Priority"] == "HIGH"
            assert seen[0]["headers"]["X-Request-ID"] == "cpbench-0"
            assert "X-SLO-Deadline-Ms" in seen[1]["headers"]
        else:
            assert [s["body"]["priority"] for s in seen] == [0, 2]
            assert "X-Request-Priority" not in seen[0]["headers"]
        for f in out.iterdir():
            data = f.read_bytes()
            assert b"sk-test-secret" not in data and b"pw-secret" not in data, f.name
    assert (tmp_path / "sagellm" / "report.html").exists()


def test_unreachable_server_is_one_line_and_exit_1(tmp_path):
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    sock.close()
    trace = make_trace(tmp_path / "t.arrow", ["ok"], ["chat"])
    proc = cpbench("replay", trace, "--url", f"http://127.0.0.1:{port}", "-o", tmp_path / "o")
    assert proc.returncode == 1
    assert proc.stderr.strip().count("\n") == 0 and "cannot reach" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_bad_input_exits_2_without_traceback(server, tmp_path):
    trace = make_trace(tmp_path / "t.arrow", ["ok"], ["chat"])
    for args in (["replay", tmp_path / "missing.arrow", "--url", server.url],
                 ["replay", trace, "--url", server.url, "--policy", "fifo"],
                 ["replay", trace, "--url", server.url, "--warmup", "ten"],
                 ["replay", trace, "--url", server.url, "--speed", "0"]):
        proc = cpbench(*args, "-o", tmp_path / "o")
        assert proc.returncode == 2, (args, proc.stderr)
        assert "Traceback" not in proc.stderr and proc.stderr.startswith("cpbench: error:")


def test_max_error_ratio_stops_with_exit_3_and_writes_everything(server, tmp_path):
    n = 400
    trace = make_trace(tmp_path / "t.arrow", ["status:500:body"] * n, ["chat"] * n, gap_ms=5.0)
    out = tmp_path / "out"
    proc = cpbench("replay", trace, "--url", server.url, "-o", out, "--max-error-ratio", 0.5,
                   "--workers", 1, "--no-report", "--quiet")
    assert proc.returncode == 3 and "--max-error-ratio" in proc.stderr
    assert 0 < read_results(out / "results.arrow").num_rows < n
    assert summary_of(out)["run"]["stop_reason"] == "max-error-ratio"


@pytest.mark.slow
def test_embedded_sim_with_policy(tmp_path):
    n = 24
    kinds = ["chat", "embedding"] * (n // 2)
    trace = make_trace(tmp_path / "t.arrow", ["cpbench-llm-7b", "cpbench-embed-bge"] * (n // 2),
                       kinds, gap_ms=10.0)
    out = tmp_path / "out"
    proc = cpbench("replay", trace, "-o", out, "--policy", "priority", "--workers", 2,
                   "--no-report", timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(out)
    assert summary["run"]["embedded_target"] is True and summary["run"]["policy"] == "priority"
    assert summary["requests"]["completed"] == n
    assert (out / "monitor.arrow").exists()


@pytest.mark.slow
def test_no_stream_reads_one_body_per_answer_and_counts_its_usage(server, tmp_path):
    """--no-stream: chat and completions ask for one JSON body; the answer arrives whole, so
    first token = done, no inter-token gaps, and output tokens are the body's usage. A server
    that streams anyway is a bad payload, never a crash."""
    kinds = ["chat", "completion", "embedding"] * 6
    models = ["cpbench-llm-7b", "cpbench-llm-7b", "cpbench-embed-bge"] * 6
    trace = make_trace(tmp_path / "t.arrow", models, kinds, gap_ms=10.0)
    out = tmp_path / "sim"
    proc = cpbench("replay", trace, "-o", out, "--no-stream", "--workers", 1, "--no-report",
                   timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(out)
    assert summary["requests"]["completed"] == 18 and summary["requests"]["errors"] == 0
    assert summary["run"]["options"]["stream"] is False
    rows = read_results(out / "results.arrow").to_pylist()
    llm = [r for r in rows if r["kind"] != "embedding"]
    assert all(r["first_token_ns"] == r["done_ns"] for r in llm)
    assert all(r["output_tokens"] == TOKENS and r["itl_mean_ns"] is None for r in llm)
    assert decode_histogram(summary, "itl").total_count == 0
    # The fault server streams whatever it is asked: its chat answers are not one JSON body.
    out = tmp_path / "faulty"
    proc = cpbench("replay", make_trace(tmp_path / "f.arrow", ["ok"] * 4, ["chat", "embedding"] * 2),
                   "--url", server.url, "-o", out, "--no-stream", "--workers", 1, "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert summary_of(out)["requests"]["by_error_class"] == {"bad_payload": 2}


@pytest.mark.slow
def test_embedded_sim_serves_foreign_model_names(tmp_path):
    """Imported traces keep their own model names (BurstGPT's 'ChatGPT', 'GPT-4'); the embedded
    control plane serves them with the engine of their kind instead of answering 404."""
    n = 12
    kinds = ["chat", "embedding", "chat"] * (n // 3)
    models = ["ChatGPT", "text-embedding-3-small", "GPT-4"] * (n // 3)
    trace = make_trace(tmp_path / "t.arrow", models, kinds, gap_ms=10.0)
    out = tmp_path / "out"
    proc = cpbench("replay", trace, "-o", out, "--workers", 1, "--no-report", timeout=120)
    assert proc.returncode == 0, proc.stderr
    summary = summary_of(out)
    assert summary["requests"]["completed"] == n and summary["requests"]["errors"] == 0
    table = read_results(out / "results.arrow")
    assert sorted(set(table.column("model").to_pylist())) == sorted(set(models))


def test_workers_ask_for_a_short_time_slice(server, tmp_path):
    trace = make_trace(tmp_path / "t.arrow", ["ok"] * 6, ["chat", "embedding"] * 3)
    out = tmp_path / "out"
    done = cpbench("replay", trace, "--url", server.url, "-o", out, "--workers", "2",
                   "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    want = WORKER_SLICE_NS if custom_slices() else 0
    assert summary_of(out)["run"]["client"]["worker_slice_ns"] == [want, want]


def _children(pid: int) -> dict[int, tuple[str, int, int]]:
    """``pid``'s child processes (/proc): their command name, as ps and top show it, process
    group and session."""
    found = {}
    for entry in Path("/proc").iterdir():
        try:
            stat = (entry / "stat").read_text()
        except (OSError, ValueError):
            continue                     # not a process, or one that just ended
        comm, rest = stat[stat.index("(") + 1:stat.rindex(")")], stat[stat.rindex(")") + 2:]
        _, ppid, pgrp, session = rest.split()[:4]
        if int(ppid) == pid:
            found[int(entry.name)] = (comm, int(pgrp), int(session))
    return found


def _fold_threads(pid: int) -> dict[int, int]:
    """``pid``'s threads named cpbench-fold, with their nice values."""
    found = {}
    for task in Path(f"/proc/{pid}/task").glob("*"):
        try:
            if (task / "comm").read_text().strip() == "cpbench-fold":
                found[int(task.name)] = os.getpriority(os.PRIO_PROCESS, int(task.name))
        except OSError:
            continue                     # a thread that just ended
    return found


def test_workers_are_named_grouped_and_the_run_clock_origin_is_recorded(server, tmp_path):
    # ps, top -H and perf show each worker as cpbench-wN, not "python". Each leads a process
    # group of its own (a terminal's Ctrl-C reaches the parent only) in the parent's session
    # (one autogroup with it, not one each). The parent writes and folds rows in a thread
    # named cpbench-fold at nice 19. summary.json gives the run clock's origin on
    # CLOCK_MONOTONIC, so rows line up with perf -k mono stamps.
    trace = make_trace(tmp_path / "t.arrow", ["ok"] * 60, ["chat"] * 60, gap_ms=50.0)
    out = tmp_path / "out"
    before = time.monotonic_ns()
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "replay", str(trace), "--url",
                             server.url, "-o", str(out), "--workers", "2", "--no-report",
                             "--quiet"], cwd=ROOT, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    workers: dict[int, tuple[str, int, int]] = {}
    folds: dict[int, int] = {}
    try:
        deadline = time.monotonic() + 30
        while proc.poll() is None and time.monotonic() < deadline and \
                ({"cpbench-w0", "cpbench-w1"} - {comm for comm, _, _ in workers.values()}
                 or not folds):
            workers.update({p: c for p, c in _children(proc.pid).items()
                            if c[0].startswith("cpbench-w")})
            folds.update(_fold_threads(proc.pid))
            time.sleep(0.05)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    after = time.monotonic_ns()
    assert proc.returncode == 0, err
    assert sorted(comm for comm, _, _ in workers.values()) == ["cpbench-w0", "cpbench-w1"]
    assert all(pgrp == p and session == os.getsid(0) for p, (_, pgrp, session) in
               workers.items())                  # the CLI runs in this test's session
    assert list(folds.values()) == [19]
    assert summary_of(out)["run"]["client"]["fold_nice"] == 19
    start = summary_of(out)["run"]["start_monotonic_ns"]
    sent = read_results(out / "results.arrow").column("sent_ns").to_numpy()
    assert before < start and start + sent.max() < after


def test_realtime_workers_or_a_warning(server, tmp_path):
    # As root (CI) the workers get SCHED_FIFO; elsewhere each says why not, and runs anyway.
    trace = make_trace(tmp_path / "t.arrow", ["ok"] * 6, ["chat", "embedding"] * 3)
    out = tmp_path / "out"
    done = cpbench("replay", trace, "--url", server.url, "-o", out, "--workers", "2",
                   "--realtime", "--quiet", "--no-report")
    assert done.returncode == 0, done.stderr
    client = summary_of(out)["run"]["client"]
    assert len(client["worker_realtime"]) == 2
    refused = [w for w, got in enumerate(client["worker_realtime"]) if not got]
    for w in refused:
        assert f"worker {w}: --realtime not granted" in done.stderr
    # A real-time worker keeps SCHED_FIFO (a slice request would undo it); one refused asks
    # for the short slice like any worker.
    want = WORKER_SLICE_NS if custom_slices() else 0
    assert client["worker_slice_ns"] == [0 if got else want
                                         for got in client["worker_realtime"]]
    assert summary_of(out)["requests"]["completed"] == 6
    bad = cpbench("replay", trace, "--url", server.url, "-o", tmp_path / "bad", "--realtime",
                  "100", "--quiet")
    assert bad.returncode == 2 and bad.stderr.count("\n") == 1
    assert "--realtime priority must be 1-99; got 100" in bad.stderr

"""The client's own limits, through the real CLI: a worker that runs out of descriptors makes
requests wait for a connection (dispatch lag), never fail to connect; a client that stays
behind the schedule stops the run, keeps every result and says why in one line (exit 4).

The worker's limit is made small on purpose: ``cpbench replay`` runs with an open-file limit
of 128 (``RLIMIT_NOFILE``, inherited by its workers), which leaves one worker 64 connections;
the loopback server answers each request after a delay, so open loop would need more.
"""
from __future__ import annotations

import json
import re
import resource
import subprocess
import sys

import pytest

from support import check_accounting, read_run, run_cli, write_table_trace
from support.faulty_server import FaultyServer

pytestmark = pytest.mark.integration
NOFILE = 128                     # -> 128 - FD_HEADROOM = 64 connections for the one worker


def _cpbench_with_few_fds(*argv) -> subprocess.CompletedProcess:
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (NOFILE, hard))

    proc = subprocess.run([sys.executable, "-m", "cpbench", *map(str, argv)],
                          capture_output=True, text=True, timeout=120, preexec_fn=limit)
    assert "Traceback" not in proc.stdout + proc.stderr, proc.stderr
    return proc


def _replay_delayed(tmp_path, n: int, delay_s: float, max_behind: str):
    """``n`` chat requests 1 ms apart, each answered after ``delay_s``, replayed by one worker
    with few descriptors; returns the finished process and the results directory."""
    trace = write_table_trace(tmp_path / "t.arrow", [f"delay:{delay_s:g}"] * n, ["chat"] * n,
                              1.0)
    with FaultyServer() as server:
        proc = _cpbench_with_few_fds("replay", trace, "--url", server.url, "-o",
                                     tmp_path / "out", "--workers", "1", "--quiet",
                                     "--no-report", "--max-behind", max_behind)
    return proc, tmp_path / "out"


def test_past_the_fd_limit_requests_wait_for_a_connection_and_none_fails(tmp_path):
    # 150 requests 1 ms apart, each answered after 0.5 s: 64 at a time fit, the rest go out as
    # answers free connections. Before, the 65th on failed with "Too many open files".
    n = 150
    proc, out = _replay_delayed(tmp_path, n, 0.5, "0")
    assert proc.returncode == 0, proc.stderr
    table, summary = read_run(out)
    assert check_accounting(table, summary, n) == {None: n}
    sent = table.column("sent_ns").to_numpy()
    done = table.column("done_ns").to_numpy()
    lag = sent - table.column("intended_ns").to_numpy()
    # Never more than 64 in flight; the requests past them waited for the first answers.
    in_flight = [(sent <= t).sum() - (done <= t).sum() for t in sent]
    assert max(in_flight) == 64
    assert (lag[table.column("row").to_numpy() >= 64] > 0.3e9).all()
    assert summary["run"]["client"]["connections"] <= 64
    assert summary["run"]["stop_reason"] is None
    assert summary["run"]["client"]["behind_max_s"] > 0.3
    assert "requests waited for a connection because a worker held all the 64" in proc.stderr


def test_a_client_that_stays_behind_stops_the_run_and_keeps_its_results(tmp_path):
    # The same, answered after 2 s, with --max-behind 0.1: the 64 connections are all busy
    # from 64 ms on, the waiting requests fall behind, and half a second past 0.1 s the run
    # stops. The 64 in flight finish in the grace period; nothing else was sent.
    n = 300
    proc, out = _replay_delayed(tmp_path, n, 2.0, "0.1")
    assert proc.returncode == 4, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1, proc.stderr
    line = lines[0]
    assert "fell more than 0.1 s behind the schedule" in line
    assert re.search(r"had sent 64 of the \d+ requests due, \d+ waiting for a connection, "
                     r"0 connects in progress, 64 connections open; 64 connections is all its "
                     r"open-file limit allows: raise it with `ulimit -n`\)", line), line
    assert str(out) in line
    table, summary = read_run(out)
    assert check_accounting(table, summary) == {None: 64}
    assert sorted(table.column("row").to_pylist()) == list(range(64))
    run = summary["run"]
    assert run["interrupted"] is True and run["stop_reason"] == "client-saturated"
    info = run["saturated"]["0"]
    assert info["sent"] == 64 and info["waiting"] == info["due"] - 64 > 0
    assert 0.6e9 <= info["at_ns"] < 2e9 and info["behind_ns"] > 0.1e9
    assert summary["requests"]["scheduled"] == n
    # The report says so where it gives the run's duration.
    report = run_cli("report", out, "--markdown", out / "report.md")
    assert report.returncode == 0, report.stderr
    for name in ("report.html", "report.md"):
        assert "STOPPED: the client fell behind its schedule" in (out / name).read_text()


def test_a_sweep_marks_the_rates_the_client_cannot_send_and_never_passes_them(tmp_path):
    # Answers after 0.2 s and 64 connections: the client sends at most 320 req/s. At 100
    # req/s the probe runs through; at 1,000 the client falls behind and stops the probe,
    # which the sweep records as the client's limit, not the target's, and never passes.
    n = 2000
    trace = write_table_trace(tmp_path / "t.arrow", ["delay:0.2"] * n, ["chat"] * n, 1.0)
    out = tmp_path / "sweep"
    with FaultyServer() as server:
        proc = _cpbench_with_few_fds("sweep", trace, "--rates", "100,1000", "--knee",
                                     "--knee-by", "throughput", "--max-probes", "1",
                                     "--probe-s", "2", "--drain-s", "0", "--url", server.url,
                                     "--no-switch", "--workers", "1", "--max-behind", "0.1",
                                     "-o", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "experiment.json").read_text())
    points = {p["rate_rps"]: p for p in result["points"]}
    assert points[100.0]["client_saturated"] is None
    assert "fell more than 0.1 s behind the schedule" in points[1000.0]["client_saturated"]
    run = json.loads((out / "rate-1000" / "summary.json").read_text())["run"]
    assert run["stop_reason"] == "client-saturated"
    assert not [p for p in result["knee"]["probes"] if p["rate_rps"] == 1000.0 and p["passed"]]
    assert "the client could not send at " in result["knee"]["note"]
    assert "1000 rps" in result["knee"]["note"]
    assert "client saturated" in proc.stdout
    assert "rate 1000 rps: the client fell more than 0.1 s behind" in proc.stdout

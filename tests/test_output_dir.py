"""Runs are never lost or mixed: a used output directory is refused (or replaced whole with
--overwrite), a directory being written is locked, a failed run leaves nothing behind, and a
terminal's Ctrl-C records in-flight requests as `interrupted`, never as a server fault.

Each case runs the real ``python -m cpbench replay`` against a loopback server and reads the
files it wrote.
"""
from __future__ import annotations

import fcntl
import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pyarrow as pa
import pytest

from support import write_trace_for
from support.faulty_server import FaultyServer

pytestmark = pytest.mark.integration
ROOT = Path(__file__).resolve().parents[1]


def cpbench(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


def one_line_error(proc: subprocess.CompletedProcess, status: int, text: str) -> None:
    assert proc.returncode == status, proc.stderr
    assert proc.stderr.count("\n") == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert text in proc.stderr, proc.stderr


@pytest.fixture(scope="module")
def server():
    with FaultyServer() as srv:
        yield srv


@pytest.fixture
def trace(tmp_path):
    return write_trace_for(tmp_path / "t.arrow", ["ok"], 20, gap_ms=2)


def replay(trace: Path, out: Path, url: str, *extra: str) -> subprocess.CompletedProcess:
    return cpbench("replay", trace, "--url", url, "-o", out, "--workers", "1", "--quiet",
                   *extra)


def test_a_used_output_directory_is_refused_and_overwrite_replaces_it_whole(
        tmp_path, trace, server):
    out = tmp_path / "out"
    first = replay(trace, out, server.url)
    assert first.returncode == 0, first.stderr
    assert (out / "report.md").is_file()
    again = replay(trace, out, server.url, "--no-report")
    one_line_error(again, 2, "already holds results")
    assert "--overwrite" in again.stderr
    # --overwrite clears the directory first: no report of the earlier run beside the new one.
    (out / "notes.txt").write_text("left by hand")
    replaced = replay(trace, out, server.url, "--no-report", "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "report.md").exists() and not (out / "notes.txt").exists()
    assert (out / "summary.json").is_file() and not (out / ".cpbench.lock").exists()


def test_a_file_as_output_is_one_line(tmp_path, trace, server):
    target = tmp_path / "taken"
    target.write_text("x")
    one_line_error(replay(trace, target, server.url), 2, "is an existing file")


def test_a_directory_being_written_is_locked(tmp_path, trace, server):
    out = tmp_path / "busy"
    out.mkdir()
    with open(out / ".cpbench.lock", "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)   # another run holds it
        one_line_error(replay(trace, out, server.url), 2, "being written by another")
    assert not (out / "results.arrow").exists()


def test_a_failed_replay_leaves_no_directory(tmp_path, trace):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]       # bound, never listening: connections are refused
        out = tmp_path / "nothing" / "here"
        one_line_error(replay(trace, out, f"http://127.0.0.1:{port}"), 1, "cannot reach")
    assert not out.exists()


def test_ctrl_c_to_the_process_group_blames_no_server(tmp_path):
    """SIGINT to the whole foreground group, as a terminal sends it, during a replay against
    the embedded sim: the sim outlives the drain, nothing is `stream_broken`."""
    trace = ROOT / "traces" / "medium.arrow"
    out = tmp_path / "cc"
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "replay", str(trace), "-o",
                             str(out), "--workers", "1", "--quiet", "--no-report",
                             "--grace", "0.5"],
                            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        deadline = time.monotonic() + 60
        while not (out / "manifest.json").exists():
            assert proc.poll() is None, proc.communicate()
            assert time.monotonic() < deadline
            time.sleep(0.05)
        time.sleep(4.0)                         # requests in flight (LLM answers take seconds)
        os.killpg(proc.pid, signal.SIGINT)
        stdout, stderr = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["interrupted"] and summary["run"]["stop_reason"] == "SIGINT"
    classes = summary["requests"]["by_error_class"]
    assert "stream_broken" not in classes and "connect" not in classes, classes
    assert summary["requests"]["errors"] == 0
    assert summary["requests"]["interrupted"] == classes.get("interrupted", 0) > 0
    table = pa.ipc.open_file(out / "results.arrow").read_all()
    assert table.num_rows == summary["requests"]["sent"]
    assert "failed" not in stderr and "interrupted" in stderr


def test_multi_run_commands_refuse_a_used_directory_and_overwrite_it_whole(tmp_path):
    """`cpbench run` (and compare, sweep, experiment, which share the check) into a used -o:
    refused before any run; --overwrite empties it, so no earlier run sits beside the new."""
    out = tmp_path / "run"
    args = ("run", "--requests", "15", "--rate", "30", "--workers", "1", "--no-report",
            "-o", out)
    first = cpbench(*args)
    assert first.returncode == 0, first.stderr
    (out / "earlier.txt").write_text("an earlier run's file")
    again = cpbench(*args)
    one_line_error(again, 2, "already holds results")
    assert (out / "earlier.txt").is_file()              # refused before touching anything
    cmp = cpbench("compare", "--policies", "fifo,priority", "--requests", "15", "--rate", "30",
                  "--workers", "1", "-o", out)
    one_line_error(cmp, 2, "already holds results")
    replaced = cpbench(*args, "--overwrite")
    assert replaced.returncode == 0, replaced.stderr
    assert not (out / "earlier.txt").exists()
    assert sorted(p.name for p in out.iterdir()) == ["run", "trace.arrow"]


def test_a_run_against_a_url_is_labelled_with_the_policy_the_target_reports(tmp_path, trace):
    """Without --policy a replay against a URL records the target's GET /admin/policy; a
    target without that endpoint leaves the label empty."""
    from cpbench.sim import SimConfig, SimThread
    with SimThread(SimConfig(policy="slo_aware", accept_any_model=True)) as sim:
        proc = replay(trace, tmp_path / "sim", sim.url, "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "sim" / "summary.json").read_text())["run"]["policy"] \
        == "slo_aware"
    with FaultyServer() as plain:
        proc = replay(trace, tmp_path / "plain", plain.url, "--no-report")
    assert proc.returncode == 0, proc.stderr
    assert json.loads((tmp_path / "plain" / "summary.json").read_text())["run"]["policy"] \
        is None


def test_a_misspelt_policy_is_one_line_naming_the_choices(tmp_path, trace):
    proc = cpbench("replay", trace, "--policy", "fifoo", "-o", tmp_path / "x")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
    assert proc.stderr.count("\n") == 1 and "fifoo" in proc.stderr
    assert "slo_aware" in proc.stderr and not (tmp_path / "x").exists()

"""Interruption and resources: SIGINT, SIGTERM and a worker killed mid-run, a full output
filesystem, and file-descriptor exhaustion.

Each run is the real ``python -m cpbench replay`` against the raw-socket server of
``tests/support/faulty_server.py`` (which counts the requests it received), so "every completed request
is in results.arrow exactly once" is checked against what the server actually saw.
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from support import check_accounting, read_run, readable_batches, write_trace_for
from support.faulty_server import FaultyServer

pytestmark = pytest.mark.integration

N = 1500
MODELS = ["ok", "ok", "ok", "delay:0.3"]     # a quarter of requests are in flight for 300 ms


def _start(trace: Path, out: Path, url: str, *extra: str, nofile: int | None = None):
    cmd = [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url, "-o", str(out),
           "--workers", "2", "--quiet", "--no-report", *extra]
    if nofile:                                  # the shell's `ulimit -n`, then the replay
        cmd = ["bash", "-c", f'ulimit -n {nofile} && exec "$@"', "bash", *cmd]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(server: FaultyServer, n: int, proc, timeout_s: float = 60) -> None:
    deadline = time.monotonic() + timeout_s
    while server.requests < n:
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "the run did not get going"
        time.sleep(0.02)


def _finish(proc, timeout_s: float = 60) -> tuple[int, str, str]:
    out, err = proc.communicate(timeout=timeout_s)
    assert "Traceback" not in out + err, err
    return proc.returncode, out, err


def _worker_pids(parent: int) -> dict[int, int]:
    """{worker index: pid} of the replay's worker processes (children running cpbench.replaying.child)."""
    with open(f"/proc/{parent}/task/{parent}/children") as fh:
        children = [int(p) for p in fh.read().split()]
    pids = {}
    for pid in children:
        try:
            argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        # argv: python -c <boot code naming cpbench.replaying.child> W CTL OUT (cpbench.spawn)
        at = [i for i, a in enumerate(argv) if b"cpbench.replaying.child" in a]
        if at:
            pids[int(argv[at[0] + 1])] = pid
    return pids


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=["SIGINT", "SIGTERM"])
def test_signal_mid_run_keeps_every_completed_request(tmp_path, sig):
    trace = write_trace_for(tmp_path / "t.arrow", MODELS, N, gap_ms=4)
    with FaultyServer() as server:
        proc = _start(trace, tmp_path / "out", server.url)
        _wait_for(server, 200, proc)
        proc.send_signal(sig)
        rc, _, err = _finish(proc)
        received = server.requests
    assert rc == 130, err
    table, summary = read_run(tmp_path / "out")
    classes = check_accounting(table, summary)
    # Everything the server received was answered within the grace period and recorded once.
    assert table.num_rows == received and classes == {None: received}
    assert 200 <= received < N
    run = summary["run"]
    assert run["interrupted"] is True and run["stop_reason"] == sig.name
    assert run["scheduled"] == N                  # the trace's, of which only part was sent


def test_killed_worker_run_completes_marked_degraded(tmp_path):
    trace = write_trace_for(tmp_path / "t.arrow", MODELS, N, gap_ms=4)
    with FaultyServer() as server:
        proc = _start(trace, tmp_path / "out", server.url)
        _wait_for(server, 200, proc)
        workers = _worker_pids(proc.pid)
        assert sorted(workers) == [0, 1]
        os.kill(workers[1], signal.SIGKILL)
        rc, _, err = _finish(proc)
    assert rc == 130 and "worker(s) [1] exited before finishing" in err, err
    table, summary = read_run(tmp_path / "out")
    check_accounting(table, summary)
    rows = table.column("row").to_pylist()
    # Worker 0 (every even row) carried on to the end: all of its requests, once each.
    assert sorted(r for r in rows if r % 2 == 0) == list(range(0, N, 2))
    assert any(r % 2 for r in rows)              # worker 1's flushed batches are kept
    run = summary["run"]
    assert run["interrupted"] is True and run["stop_reason"] == "worker-exited", run


# -- resources --------------------------------------------------------------------------------

def _mount_tmpfs(path: Path, size: str) -> None:
    path.mkdir()
    if shutil.which("mount") is None or os.geteuid() != 0:
        pytest.skip("mounting a tmpfs needs root and mount(8)")
    res = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                         capture_output=True, text=True)
    if res.returncode != 0:
        pytest.skip(f"mount -t tmpfs not permitted here: {res.stderr.strip()}")


def test_full_output_filesystem_is_a_clear_error_and_keeps_what_was_written(tmp_path):
    mnt = tmp_path / "small"
    _mount_tmpfs(mnt, "96k")
    try:
        trace = write_trace_for(tmp_path / "t.arrow", ["ok"], 3000, gap_ms=1)
        with FaultyServer() as server:
            proc = _start(trace, mnt / "out", server.url)
            rc, _, err = _finish(proc)
        lines = err.strip().splitlines()
        assert rc == 1 and len(lines) == 1, err
        assert "No space left on device" in lines[0] and str(mnt / "out") in lines[0]
        kept = readable_batches(mnt / "out" / "results.arrow")
        rows = kept.column("row").to_pylist()
        assert len(rows) > 0 and len(rows) == len(set(rows))
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def test_fd_exhaustion_says_what_to_raise(tmp_path):
    # 2,000 requests in 20 ms, each answered after 1.5 s, under `ulimit -n 256`: each of the two
    # workers may hold 192 connections. The rest wait for one (late, never failed: the
    # client's limit is not the target's error), and the run says which limit to raise.
    n = 2000
    trace = write_trace_for(tmp_path / "t.arrow", ["delay:1.5"], n, gap_ms=0.01, embed_every=0)
    with FaultyServer() as server:
        proc = _start(trace, tmp_path / "out", server.url, "--timeout", "20", "--max-behind",
                      "0", nofile=256)
        rc, out, err = _finish(proc, timeout_s=120)
    assert rc == 0, err
    table, summary = read_run(tmp_path / "out")
    assert check_accounting(table, summary, n) == {None: n}
    assert summary["run"]["client"]["connections"] <= 2 * 192
    waited = n - 2 * 192
    assert ("requests waited for a connection because a worker held all the 192 its "
            "open-file limit allows") in err, err
    assert int(err.split(" requests waited")[0].split()[-1]) >= waited
    assert "ulimit -n" in err

"""tools/bench_revs.py measures a tree's replay from the files it wrote: pinned against the
test server with ``--no-wire`` (no tcpdump, no root), the way a change is compared at rates
where the capture's own CPU would be part of the measurement."""
from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np

from cpbench.results import read_results
from support.faulty_server import FaultyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bench_revs  # noqa: E402  (tools/ is not a package)
from bench_replay import SEED, make_trace  # noqa: E402


def test_one_run_without_the_wire_reports_lag_and_cpu_of_that_tree(tmp_path):
    trace = tmp_path / "t.arrow"
    n = make_trace(trace, "chat", 300.0, 1.0, SEED)
    with FaultyServer() as server:
        point = bench_revs.one_run(ROOT, trace, server.url, tmp_path / "out", 1, wire=False)
    res = read_results(tmp_path / "out" / "results.arrow")
    lag_us = (res.column("sent_ns").to_numpy() - res.column("intended_ns").to_numpy()) / 1e3
    assert point["requests"] == n == res.num_rows
    assert point["lag_p99_us"] == float(np.percentile(lag_us, 99))
    assert point["lag_p50_us"] <= point["lag_p99_us"] <= point["lag_p999_us"]
    assert 0 < point["parent_cpu_us_per_request"] < point["cpu_us_per_request"]
    assert "wire_cv_excess" not in point and "wire_packets" not in point
    assert not (tmp_path / "out.pcap").exists()


def test_main_compares_two_trees_and_writes_medians(tmp_path, monkeypatch):
    # nginx is bench_revs's server; the test server stands in for it, and a sleeping process
    # for the nginx master it stops by pid at the end.
    stand_in = subprocess.Popen(["sleep", "60"])
    try:
        with FaultyServer() as server:
            monkeypatch.setattr(bench_revs, "start_nginx",
                                lambda prefix: (stand_in.pid, server.url))
            out = tmp_path / "revs.json"
            assert bench_revs.main(["--base", str(ROOT), "--head", str(ROOT), "--rates", "200",
                                    "--repeats", "2", "--seconds", "0.5", "--no-wire",
                                    "-o", str(out)]) == 0
        assert stand_in.wait(5) == -signal.SIGTERM
    finally:
        if stand_in.poll() is None:             # main failed before stopping it
            stand_in.kill()
            stand_in.wait()
    got = json.loads(out.read_text())
    assert set(got["medians"]) == {"base 200", "head 200"}
    assert [len(v) for v in got["runs"].values()] == [2, 2]
    for key, runs in got["runs"].items():
        assert got["medians"][key]["lag_p99_us"] == float(
            np.median([r["lag_p99_us"] for r in runs]))

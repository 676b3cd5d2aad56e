"""tools/bench_connects.py measures the dispatch lag of rows that must connect, from the files
the replay wrote: pinned against the test server, with answers late enough that the pool
opened before the start runs out."""
from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np

from cpbench.results import read_results
from support import write_trace_for
from support.faulty_server import FaultyServer

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import bench_connects  # noqa: E402  (tools/ is not a package)


def test_one_run_reports_the_lag_and_connections_the_replay_wrote(tmp_path):
    # 100 rows in 1 s, each answered 0.5 s late: about 50 in flight, past the pool of 32.
    trace = tmp_path / "t.arrow"
    write_trace_for(trace, ["delay:0.5"], 100, 10.0, embed_every=0)
    with FaultyServer() as server:
        run = bench_connects.one_run(ROOT, trace, server.url, tmp_path / "out", 1, None)
        pooled = bench_connects.one_run(ROOT, trace, server.url, tmp_path / "pooled", 1, 120)
    res = read_results(tmp_path / "out" / "results.arrow")
    lag_us = (res.column("sent_ns").to_numpy() - res.column("intended_ns").to_numpy()) / 1e3
    assert run["requests"] == 100 == res.num_rows
    assert run["lag_p99_us"] == float(np.percentile(lag_us, 99))
    assert run["lag_max_us"] == float(lag_us.max())
    assert run["late_rows"] == int((lag_us > bench_connects.LATE_US).sum())
    assert run["connections"] > 32                    # rows connected during the run
    assert pooled["connections"] == 120               # none did


def test_main_runs_both_variants_per_tree_and_writes_every_run(tmp_path, capsys):
    out = tmp_path / "runs.json"
    assert bench_connects.main(["--trees", str(ROOT), "--rate", "100", "--seconds", "0.6",
                                "--delay", "0.4", "--repeats", "1", "-o", str(out)]) == 0
    runs = json.loads(out.read_text())
    assert [r["variant"] for r in runs] == ["connect", "pooled"]
    assert all(r["requests"] == 60 for r in runs)
    assert runs[1]["connections"] == int(100 * 1.4) + 32
    printed = capsys.readouterr().out
    assert "medians over 1 repeats" in printed and "pooled" in printed

"""`cpbench replay --ray`: the real CLI through a local Ray instance, a simulated two-node
cluster and a killed actor, each inside a network namespace this test creates (only 127.0.0.1
exists there; tests/ray_scenarios.py asserts Ray reports no other node address before any
replay starts). Plus the no-Ray and version-mismatch paths, which need no cluster."""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

from support.faulty_server import TOKENS

from cpbench.results import read_results
from cpbench.summary import decode_histogram

ROOT = Path(__file__).resolve().parents[1]


def _netns_ok() -> bool:
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return False
    return subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                          capture_output=True).returncode == 0


needs_netns = pytest.mark.skipif(not _netns_ok(), reason="needs `unshare -n` (root) to keep "
                                                          "Ray on loopback")


def scenario(name: str, tmp_path: Path) -> dict:
    pytest.importorskip("ray")
    script = f"ip link set lo up; exec {sys.executable} {ROOT / 'tests' / 'ray_scenarios.py'} " \
             f"{name} {tmp_path}"
    proc = subprocess.run(["unshare", "-n", "sh", "-c", script], capture_output=True,
                          text=True, timeout=240, cwd=ROOT,
                          env={**os.environ, "RAY_USAGE_STATS_ENABLED": "0"})
    assert proc.returncode == 0, proc.stderr[-3000:]
    seen = json.loads((tmp_path / "scenario.json").read_text())
    assert seen["addresses"] and set(seen["addresses"]) == {"127.0.0.1"}
    return seen


def _schema(path: Path):
    with ipc.open_file(path) as f:
        return f.schema.remove_metadata()


def same_run(tmp_path: Path, seen: dict, n_nodes: int) -> None:
    assert seen["local"]["rc"] == 0 and seen["ray"]["rc"] == 0, seen
    local, ray = tmp_path / "local", tmp_path / "ray"
    a, b = read_results(local / "results.arrow"), read_results(ray / "results.arrow")
    assert a.num_rows == b.num_rows == 400
    assert sorted(a.column("row").to_pylist()) == sorted(b.column("row").to_pylist())
    assert _schema(local / "results.arrow") == _schema(ray / "results.arrow")
    sa = json.loads((local / "summary.json").read_text())
    sb = json.loads((ray / "summary.json").read_text())
    assert sb["requests"]["completed"] == sa["requests"]["completed"] == 400
    # The ITL histogram is merged from every worker (processes or actors): exact counts.
    chats = int((a.column("kind").to_pylist().count("chat")))
    for s in (sa, sb):
        assert decode_histogram(s, "itl").total_count == chats * (TOKENS - 1)
    cluster = sb["run"]["cluster"]
    assert len(cluster["nodes"]) == n_nodes
    assert sorted(w for n in cluster["nodes"] for w in n["workers"]) == \
        sorted(set(b.column("worker").to_pylist()))
    for node in cluster["nodes"]:
        assert node["address"] == "127.0.0.1" and node["actors"] == len(node["workers"])
        # One host: the true offset is 0, so it lies within the stated uncertainty.
        clock = node["clock"]
        assert clock["samples"] >= 8 and abs(clock["offset_ns"]) <= clock["uncertainty_ns"]
        assert node["dispatch_lag_ms"]["count"] == int(sum(
            w in node["workers"] for w in b.column("worker").to_pylist()))
    manifest = json.loads((ray / "manifest.json").read_text())
    assert [n["actors"] for n in manifest["cluster"]["nodes"]] == \
        [n["actors"] for n in cluster["nodes"]]
    assert {n["cpbench_version"] for n in manifest["cluster"]["nodes"]} == \
        {sb["cpbench_version"]}
    assert manifest["workload"]["options"]["ray"]
    # The report shows the lag per node, from the summary alone.
    from cpbench.reporting import write_report
    md = write_report([ray], tmp_path / "ray.html", markdown_path=tmp_path / "ray.md")
    text = (tmp_path / "ray.md").read_text()
    assert "Dispatch lag per Ray node" in text and md.is_file()
    section = text.split("Dispatch lag per Ray node", 1)[1].split("\n## ", 1)[0]
    assert section.count("| 127.0.0.1 |") == n_nodes


@pytest.mark.integration
@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("name, n_nodes", [("local", 1), ("cluster", 2)])
def test_ray_replay_matches_the_local_one(name, n_nodes, tmp_path):
    same_run(tmp_path, scenario(name, tmp_path), n_nodes)


@pytest.mark.integration
@pytest.mark.slow
@needs_netns
@pytest.mark.parametrize("name", ["kill", "node"])
def test_a_lost_actor_keeps_partial_results_and_names_its_node(name, tmp_path):
    # kill: one actor process SIGKILLed; node: a node of the simulated cluster removed.
    seen = scenario(name, tmp_path)
    assert name == "node" or "killed_pid" in seen
    # Interrupted runs exit 130 (docs/cli.md) with everything written.
    assert seen["ray"]["rc"] == 130, seen["ray"]
    assert "on node 127.0.0.1" in seen["ray"]["stderr"]
    out = tmp_path / "ray"
    results = read_results(out / "results.arrow")
    summary = json.loads((out / "summary.json").read_text())
    run = summary["run"]
    assert run["stop_reason"] == "worker-exited" and run["interrupted"]
    assert len(run["lost_workers"]) == 1 and "127.0.0.1" in run["lost_workers"][0]
    assert 0 < results.num_rows < 1500 == summary["requests"]["scheduled"]
    rows = results.column("row").to_pylist()
    assert len(set(rows)) == len(rows) and all(0 <= r < 1500 for r in rows)
    assert summary["requests"]["sent"] == results.num_rows


@pytest.mark.integration
@pytest.mark.slow
@needs_netns
def test_ctrl_c_stops_every_actor_and_keeps_the_rows(tmp_path):
    # SIGINT to the CLI's whole process group (a terminal's Ctrl-C), its own local Ray.
    seen = scenario("sigint", tmp_path)
    assert seen["ray"]["rc"] == 130, seen["ray"]
    assert seen["actors_left"] == []
    out = tmp_path / "ray"
    summary = json.loads((out / "summary.json").read_text())
    assert summary["run"]["stop_reason"] == "SIGINT"
    results = read_results(out / "results.arrow")
    assert 0 < results.num_rows < 1500 and summary["requests"]["sent"] == results.num_rows


def test_without_ray_one_line_names_the_extra(tmp_path):
    # Ray made unimportable: the CLI says how to install it, exit 2, no traceback.
    from cpbench.calibrate import poisson_trace
    trace = tmp_path / "t.arrow"
    poisson_trace(trace, "chat", 100.0, 0.1, 1)
    code = ("import sys; sys.modules['ray'] = None; from cpbench.cli import main; "
            f"sys.exit(main(['replay', {str(trace)!r}, '--url', 'http://127.0.0.1:9', "
            "'--ray', '--quiet', '--no-report', '-o', " + repr(str(tmp_path / 'o')) + "]))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60, cwd=tmp_path)
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and 'pip install "cpbench[ray]"' in lines[0], proc.stderr


def test_workers_per_node_without_ray_is_refused(tmp_path):
    from cpbench.cli import main
    from cpbench.calibrate import poisson_trace
    trace = tmp_path / "t.arrow"
    poisson_trace(trace, "chat", 100.0, 0.1, 1)
    assert main(["replay", str(trace), "--workers-per-node", "2", "--quiet"]) == 2


def test_an_unreachable_cluster_is_one_line_not_a_hang(tmp_path, capsys):
    # Ray would retry a dead GCS address for minutes; cpbench probes it first.
    pytest.importorskip("ray")
    from cpbench.calibrate import poisson_trace
    from cpbench.cli import main
    trace = tmp_path / "t.arrow"
    poisson_trace(trace, "chat", 100.0, 0.1, 1)
    import socket
    with socket.socket() as s:                  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["replay", str(trace), "--url", "http://127.0.0.1:9", "--ray",
                 f"127.0.0.1:{port}", "--quiet", "-o", str(tmp_path / "o")]) == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and f"cannot reach the Ray cluster at 127.0.0.1:{port}" in lines[0]


def test_a_version_mismatch_is_one_line():
    from cpbench import __version__
    from cpbench.errors import ConfigError
    from cpbench.replaying.cluster import check_versions
    import platform
    ok = {"address": "10.0.0.1", "hostname": "a", "cpbench_version": __version__,
          "python_version": platform.python_version()}
    check_versions([ok])
    bad = {**ok, "address": "10.0.0.2", "hostname": "b", "cpbench_version": "0.0.9"}
    with pytest.raises(ConfigError, match=r"^Ray node 10\.0\.0\.2 \(b\) runs cpbench 0\.0\.9"):
        check_versions([ok, bad])
    older = {**ok, "python_version": "3.9.18"}
    with pytest.raises(ConfigError, match="Python 3.9"):
        check_versions([older])


def test_api_cluster_and_config_ray_reach_the_ray_option(tmp_path, monkeypatch):
    # cluster= (API) and ray = "..." (config file) are --ray: without Ray, the same one line.
    # cpbench.api.replay, not cpbench.replay: importing the cpbench.replay subpackage
    # (cluster.py) rebinds that package attribute to the subpackage.
    from cpbench.api import replay
    from cpbench.calibrate import poisson_trace
    from cpbench.cli import main
    from cpbench.errors import ConfigError
    monkeypatch.setitem(sys.modules, "ray", None)
    trace = tmp_path / "t.arrow"
    poisson_trace(trace, "chat", 100.0, 0.1, 1)
    with pytest.raises(ConfigError, match=r'pip install "cpbench\[ray\]"'):
        replay(trace, "http://127.0.0.1:9", cluster="auto", output=tmp_path / "a")
    config = tmp_path / "run.toml"
    config.write_text('ray = "127.0.0.1:6379"\nworkers-per-node = 1\n')
    assert main(["replay", str(trace), "--url", "http://127.0.0.1:9", "--config", str(config),
                 "-o", str(tmp_path / "b"), "--quiet"]) == 2

"""Test support (no tests here): Ray scenarios run inside a loopback-only network namespace.

``tests/test_replay_ray.py`` starts ``unshare -n`` with ``ip link set lo up`` and this script
in it, so only 127.0.0.1 exists and Ray cannot bind or probe anything else. Each scenario
starts the test server (tests/support/faulty_server.py) and a Ray instance (local or a simulated two-node
``ray.cluster_utils.Cluster``), asserts that every node address Ray reports is 127.0.0.1,
and only then runs the real ``cpbench replay`` CLI against them; it writes what it saw to
``OUT/scenario.json`` for the test to check.

    python tests/ray_scenarios.py local|cluster|node|kill|sigint OUT
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np
import pyarrow as pa

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from support.faulty_server import TOKENS, FaultyServer  # noqa: E402

from cpbench.trace import write_trace  # noqa: E402


def make_trace(path: Path, n: int, gap_ms: float) -> Path:
    """``n`` requests ``gap_ms`` apart: chats and embeddings, two models, two priorities."""
    kinds = ["embedding" if i % 4 == 3 else "chat" for i in range(n)]
    llm = [k == "chat" for k in kinds]
    table = pa.table({
        "arrival_ns": pa.array((np.arange(n) * gap_ms * 1e6).astype(np.int64)),
        "kind": pa.array(kinds).dictionary_encode(),
        "model": pa.array(["ok" if i % 3 else "ok2" for i in range(n)]).dictionary_encode(),
        "input_tokens": pa.array([6] * n, pa.int32()),
        "output_tokens": pa.array([TOKENS if x else None for x in llm], pa.int32()),
        "batch_size": pa.array([1 if x else 2 for x in llm], pa.int16()),
        "priority": pa.array(["HIGH" if i % 2 else "NORMAL" for i in range(n)])
        .dictionary_encode(),
    })
    write_trace(table, path, metadata={"generator": "tests", "params": {}, "seed": None,
                                       "source": "synthetic"})
    return path


def replay(trace: Path, url: str, out: Path, *extra: str, timeout_s: float = 120):
    cmd = [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", url, "-o", str(out),
           "--quiet", "--no-report", *extra]
    return subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def finish(proc: subprocess.Popen, timeout_s: float = 120) -> dict:
    stdout, stderr = proc.communicate(timeout=timeout_s)
    return {"rc": proc.returncode, "stderr": stderr[-4000:]}


def loopback_only(ray) -> list[str]:
    """Every node address Ray reports; the scenario refuses to go on unless all are
    127.0.0.1."""
    addresses = [n["NodeManagerAddress"] for n in ray.nodes() if n["Alive"]]
    assert addresses and all(a == "127.0.0.1" for a in addresses), addresses
    return addresses


def wait_first_batch(results: Path, then_s: float = 0.5) -> None:
    """Until the run is sending: results.arrow is opened before the actors exist and grows
    with the first batch of rows."""
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline and not results.exists():
        time.sleep(0.05)
    opened = results.stat().st_size
    while time.monotonic() < deadline and results.stat().st_size == opened:
        time.sleep(0.05)
    time.sleep(then_s)


def kill_one_actor_later(results: Path, seen: dict) -> threading.Thread:
    """SIGKILL one DispatchActor process once the run sends (a crash, as a lost node looks)."""

    def body() -> None:
        wait_first_batch(results)
        pids = sorted(pid for pid in _pids() if "DispatchActor" in _cmdline(pid))
        if len(pids) >= 2:
            os.kill(pids[0], signal.SIGKILL)
            seen["killed_pid"] = pids[0]
    thread = threading.Thread(target=body, daemon=True)
    thread.start()
    return thread


def _pids() -> list[int]:
    return [int(d) for d in os.listdir("/proc") if d.isdigit()]


def _cmdline(pid: int) -> str:
    # Ray names an actor's process after its class (ray::DispatchActor...).
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def main(scenario: str, out: Path) -> None:
    import ray

    os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
    server = FaultyServer().start()
    seen: dict = {"scenario": scenario}
    if scenario == "sigint":
        # The CLI starts its own local Ray instance (--ray, nothing running here) in a new
        # process group; SIGINT to the whole group is what Ctrl-C in a terminal sends.
        trace = make_trace(out / "sigint.arrow", n=1500, gap_ms=4.0)      # 6 s
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpbench", "replay", str(trace), "--url", server.url,
             "-o", str(out / "ray"), "--quiet", "--no-report", "--ray"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
        wait_first_batch(out / "ray" / "results.arrow")
        os.killpg(proc.pid, signal.SIGINT)
        seen["ray"] = finish(proc)
        seen["actors_left"] = [pid for pid in _pids() if "DispatchActor" in _cmdline(pid)]
        # The CLI's own instance: the addresses its actors reported before the start.
        summary = json.loads((out / "ray" / "summary.json").read_text())
        seen["addresses"] = [n["address"] for n in summary["run"]["cluster"]["nodes"]]
        server.stop()
        (out / "scenario.json").write_text(json.dumps(seen))
        return
    if scenario in ("cluster", "node"):
        from ray.cluster_utils import Cluster
        cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 2})
        second = cluster.add_node(num_cpus=2)
        cluster.wait_for_nodes()
        address = cluster.address
        ray.init(address=address)
    else:
        ctx = ray.init(num_cpus=2 if scenario == "local" else 3, include_dashboard=False)
        address = ctx.address_info["gcs_address"]
    seen["addresses"] = loopback_only(ray)
    if scenario == "node":
        # The second node goes away mid-run, its raylet and actor with it.
        trace = make_trace(out / "node.arrow", n=1500, gap_ms=4.0)      # 6 s
        proc = replay(trace, server.url, out / "ray", "--ray", address)
        wait_first_batch(out / "ray" / "results.arrow")
        cluster.remove_node(second, allow_graceful=False)
        seen["ray"] = finish(proc)
    elif scenario == "kill":
        trace = make_trace(out / "kill.arrow", n=1500, gap_ms=4.0)      # 6 s
        killer = kill_one_actor_later(out / "ray" / "results.arrow", seen)
        seen["ray"] = finish(replay(trace, server.url, out / "ray", "--ray", address,
                                    "--workers-per-node", "2"))
        killer.join(10)
    else:
        trace = make_trace(out / "trace.arrow", n=400, gap_ms=2.0)
        seen["local"] = finish(replay(trace, server.url, out / "local", "--workers", "2"))
        seen["ray"] = finish(replay(trace, server.url, out / "ray", "--ray", address))
    ray.shutdown()
    if scenario in ("cluster", "node"):
        cluster.shutdown()
    server.stop()
    (out / "scenario.json").write_text(json.dumps(seen))


if __name__ == "__main__":
    main(sys.argv[1], Path(sys.argv[2]))

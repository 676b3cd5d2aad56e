"""A fleet, real routers in front of it, and cpbench runs through them, all in one network
namespace: the lab that tests/test_routers.py and tools/bench_routers.py share.

Third-party routers may try to reach the network on their own (tokenizer downloads,
telemetry, address discovery). ``run_lab`` therefore re-executes this file under
``unshare -n`` (a fresh network namespace whose only interface is loopback), where it starts
``cpbench sim --fleet N``, every router of the spec (vllm-router, sglang-router) through
``cpbench.experiments.launch`` (ports picked free, ``/health`` awaited, stopped by PID), and
then runs each cpbench command of the spec, bracketing it with direct scrapes of every
engine's ``/metrics`` so the per-engine requests, tokens and prefix hits of that step are the
engines' own counts. It writes ``OUT/lab.json``: what ran, exit codes, stderr tails and the
per-step engine figures. A router that cannot start is recorded as ``router_failed`` with the
reason (callers skip on it).

Spec (JSON): {"fleet": 4, "fleet_args": [...], "routers": {"rr": ["vllm", "round_robin"]},
"steps": [["replay", "{trace}", "--url", "{router:rr}", "-o", "{out}/rr"], ...]}.
Placeholders: {router:NAME} (its URL), {router_metrics:NAME}, {engine:I} (the I-th engine's
URL), {engines_metrics} (every engine's /metrics, comma-separated), {out}.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
ROUTER_COMMANDS = {
    # vllm-router's own CLI (vllm-project/router, main.rs); --prometheus-* keep its metrics
    # page on loopback and on a port of ours instead of 0.0.0.0:29000.
    "vllm": "vllm-router --host 127.0.0.1 --port {port} --prometheus-host 127.0.0.1 "
            "--prometheus-port {metrics_port} --policy POLICY --worker-urls WORKERS",
    # sglang-router's `launch` (sgl-project/sglang sgl-router, launch_router.py).
    "sglang": "sglang-router launch --host 127.0.0.1 --port {port} --prometheus-host 127.0.0.1 "
              "--prometheus-port {metrics_port} --policy POLICY --worker-urls WORKERS",
}
ROUTER_BINARIES = {"vllm": "vllm-router", "sglang": "sglang-router"}


def netns_problem() -> str | None:
    """Why the lab cannot run here (no unshare, no privilege, no router), or None."""
    if shutil.which("unshare") is None or shutil.which("ip") is None:
        return "unshare or ip not found (util-linux, iproute2)"
    probe = subprocess.run(["unshare", "-n", "sh", "-c", "ip link set lo up"],
                           capture_output=True, text=True, timeout=10)
    if probe.returncode != 0:
        return f"cannot create a network namespace: {probe.stderr.strip()[:200]}"
    return None


def router_missing(kind: str) -> str | None:
    """Why router ``kind`` cannot start here, or None."""
    binary = ROUTER_BINARIES[kind]
    if shutil.which(binary) is None:
        return f"{binary} is not installed (pip install 'cpbench[routers]')"
    return None


def run_lab(spec: dict, out: Path, *, timeout_s: float = 300) -> dict:
    """Run ``spec`` in a new network namespace; the parsed ``OUT/lab.json``."""
    out.mkdir(parents=True, exist_ok=True)
    spec_path = out / "lab-spec.json"
    spec_path.write_text(json.dumps(spec), encoding="utf-8")
    cmd = ["unshare", "-n", "sh", "-c", 'ip link set lo up && exec "$@"', "sh",
           sys.executable, str(Path(__file__).resolve()), str(spec_path), str(out)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s,
                          env={**os.environ, "NO_PROXY": "*"})
    lab = out / "lab.json"
    if not lab.is_file():
        raise RuntimeError(f"the lab wrote no lab.json (exit {proc.returncode}): "
                           f"{proc.stderr.strip()[-2000:]}")
    return json.loads(lab.read_text(encoding="utf-8"))


def write_prefix_trace(path: Path, *, groups: int = 6, per_group: int = 16,
                       prefix_words: int = 256, tail_words: int = 16, output_tokens: int = 8,
                       gap_ms: float = 40.0, seed: int = 0, salt: str = "") -> Path:
    """A chat trace whose prompts share ``groups`` system prompts (explicit ``prompt`` text).

    Each request is one group's ``prefix_words``-word prefix and a tail of its own; the groups
    are interleaved in a seeded random order, so a router that spreads a group over engines
    pays that prefix's prefill on each of them, and a cache-aware one need not. ``salt``
    changes every word, so runs on one fleet do not share cache entries.
    """
    import numpy as np
    import pyarrow as pa

    from cpbench.trace import write_trace
    rng = np.random.default_rng(np.random.SeedSequence(seed))
    order = rng.permutation(np.repeat(np.arange(groups), per_group))
    prompts = [" ".join([f"{salt}g{g}w{i}" for i in range(prefix_words)]
                        + [f"{salt}r{row}t{i}" for i in range(tail_words)])
               for row, g in enumerate(order)]
    n = len(prompts)
    table = pa.table({
        "arrival_ns": pa.array((np.arange(n) * gap_ms * 1e6).astype(np.int64)),
        "kind": pa.array(["chat"] * n).dictionary_encode(),
        "model": pa.array(["cpbench-llm-7b"] * n).dictionary_encode(),
        "input_tokens": pa.array([prefix_words + tail_words] * n, pa.int32()),
        "output_tokens": pa.array([output_tokens] * n, pa.int32()),
        "batch_size": pa.array([1] * n, pa.int16()),
        "priority": pa.array(["NORMAL"] * n).dictionary_encode(),
        "prompt": pa.array(prompts),
    })
    write_trace(table, path, metadata={"generator": "tools/routerlab.py write_prefix_trace",
                                       "params": {"groups": groups, "per_group": per_group,
                                                  "prefix_words": prefix_words,
                                                  "tail_words": tail_words, "gap_ms": gap_ms,
                                                  "salt": salt},
                                       "seed": seed, "source": "synthetic"})
    return path


def _start_fleet(n: int, args: list[str], tmp: Path) -> tuple[subprocess.Popen, list[str]]:
    ready = tmp / "fleet.json"
    with open(tmp / "fleet.log", "wb") as log:
        proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--fleet", str(n),
                                 "--port", "0", "--ready-file", str(ready), *args],
                                stdout=subprocess.DEVNULL, stderr=log, stdin=subprocess.DEVNULL,
                                cwd=ROOT)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if ready.is_file():
            return proc, list(json.loads(ready.read_text())["urls"])
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    stop_fleet(proc)
    raise RuntimeError(f"cpbench sim --fleet {n} did not come up: "
                       f"{(tmp / 'fleet.log').read_text(errors='replace')[-500:]}")


def _fill(arg: str, values: dict[str, str]) -> str:
    for key, value in values.items():
        arg = arg.replace("{" + key + "}", value)
    return arg


def _scrape_all(engines: list[str]) -> dict[str, dict[str, float]]:
    from cpbench.monitor.engines import scrape_totals
    return {url: scrape_totals(url) for url in engines}


def _inside(spec: dict, out: Path) -> dict:
    from cpbench.experiments.launch import Launch, LaunchError, start, stop_process
    from cpbench.monitor.engines import balance, delta

    lab: dict = {"routers": {}, "steps": []}
    with tempfile.TemporaryDirectory(prefix="cpbench-lab-") as tmp_name:
        tmp = Path(tmp_name)
        fleet, engines = _start_fleet(int(spec.get("fleet", 4)), spec.get("fleet_args", []), tmp)
        procs = []
        try:
            values = {"out": str(out), "engines_metrics": ",".join(u + "/metrics" for u in engines)}
            values.update({f"engine:{i}": u for i, u in enumerate(engines)})
            for name, (kind, policy) in spec.get("routers", {}).items():
                command = (ROUTER_COMMANDS[kind].replace("POLICY", policy)
                           .replace("WORKERS", " ".join(engines)))
                try:
                    proc, running = start(Launch(name, command), tmp, start_timeout_s=60)
                except LaunchError as exc:
                    lab["routers"][name] = {"router_failed": str(exc)}
                    continue
                procs.append(proc)
                lab["routers"][name] = {"url": running.url, "metrics_url": running.metrics_url,
                                        "command": running.command}
                values[f"router:{name}"] = running.url
                values[f"router_metrics:{name}"] = running.metrics_url or ""
            if any("router_failed" in r for r in lab["routers"].values()):
                return lab
            for step in spec.get("steps", []):
                argv = [_fill(str(a), values) for a in step]
                before = _scrape_all(engines)
                started = time.monotonic()
                proc = subprocess.run([sys.executable, "-m", "cpbench", *argv], cwd=ROOT,
                                      capture_output=True, text=True, timeout=240)
                wall_s = time.monotonic() - started
                after = _scrape_all(engines)
                lab["steps"].append({
                    "argv": argv, "rc": proc.returncode, "wall_s": wall_s,
                    "stdout": proc.stdout[-3000:], "stderr": proc.stderr[-3000:],
                    "engines": balance({u: delta(before[u], after[u]) for u in engines})})
        finally:
            for proc in reversed(procs):
                stop_process(proc)
            stop_fleet(fleet)
    return lab


def stop_fleet(proc: subprocess.Popen) -> None:
    """SIGTERM the fleet by its PID, SIGKILL after 5 s."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def main(argv: list[str]) -> int:
    spec_path, out = Path(argv[0]), Path(argv[1])
    sys.path.insert(0, str(ROOT))
    spec = json.loads(spec_path.read_text(encoding="utf-8"))
    try:
        lab = _inside(spec, out)
    except Exception as exc:  # noqa: BLE001 - recorded for the caller, which reports it
        lab = {"error": f"{type(exc).__name__}: {exc}"}
    (out / "lab.json").write_text(json.dumps(lab, indent=2), encoding="utf-8")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

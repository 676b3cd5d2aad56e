"""Prefix sharing end to end: a trace with prefix blocks, replayed by the real CLI/API against
``cpbench sim --fleet 1``. The cache lowers TTFT (a comparison within one test, never a time
asserted), and the sim's hit counters equal the reuse ``cpbench info`` computes, exactly."""
from __future__ import annotations

import contextlib
import io
import json
import os
import re
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from cpbench.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
PREFIX_TRACE = ROOT / "traces" / "prefix.arrow"


@contextlib.contextmanager
def fleet(tmp_path: Path, *flags: str):
    """``cpbench sim --fleet 1`` in its own process; yields its URL."""
    ready = tmp_path / f"fleet{len(list(tmp_path.iterdir()))}.json"
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--fleet", "1", "--port",
                             "0", "--ready-file", str(ready), *flags],
                            stdout=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not ready.exists():
            assert proc.poll() is None and time.monotonic() < deadline, "fleet did not start"
            time.sleep(0.05)
        yield json.loads(ready.read_text())["urls"][0]
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(20)


def _counter(url: str, name: str) -> int:
    with urllib.request.urlopen(url + "/metrics", timeout=10) as resp:
        text = resp.read().decode()
    m = re.search(rf"^{re.escape(name)}{{[^}}]*}} (\S+)$", text, re.M)
    assert m, f"{name} not exposed"
    return int(float(m.group(1)))


def _replay(trace: Path, url: str, out: Path, *extra: str) -> dict:
    assert main(["replay", str(trace), "--url", url, "-o", str(out), "--workers", "1",
                 "--quiet", "--no-report", *extra]) == 0
    return json.loads((out / "summary.json").read_text())


def test_prefix_trace_ttft_is_lower_with_the_prefix_cache(tmp_path):
    """traces/prefix.arrow, 4x compressed, its first 4 s: the same requests against one
    engine with and without its prefix cache."""
    ttft = {}
    for label, flags in (("cache", ()), ("no cache", ("--no-prefix-cache",))):
        with fleet(tmp_path, *flags) as url:
            s = _replay(PREFIX_TRACE, url, tmp_path / label.replace(" ", "_"),
                        "--speed", "4", "--duration", "4")
            assert s["requests"]["completed"] == s["requests"]["sent"] > 50
            ttft[label] = s["latency_ms"]["ttft_from_intended"]["p50"]
            if label == "cache":
                assert _counter(url, "vllm:prefix_cache_hits_total") > 0
    assert ttft["cache"] < ttft["no cache"], ttft


def test_sim_hit_ratio_equals_info_reuse_exactly(tmp_path):
    """A small trace that fits the cache: the engine's hit and query counters are the reused
    and prompt tokens ``cpbench info`` computes, and ``prefix_hit_ratio`` in summary.json is
    their ratio (scraped through run_replay's metrics_urls)."""
    from cpbench.runner import run_replay

    trace = tmp_path / "small.arrow"
    assert main(["record", "synth", "--rate", "20", "--requests", "60", "--seed", "4",
                 "--prefix-groups", "3", "--prefix-tokens", "96", "--turns", "2",
                 "--input-tokens", "uniform:5,60", "--output-tokens", "uniform:1,20",
                 "--chat-share", "0.7", "-o", str(trace)]) == 0
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["info", "--json", str(trace)]) == 0
    reuse = json.loads(buf.getvalue())["prefix"]
    assert reuse["reused_tokens"] > 0 and reuse["block_tokens"] == 16
    with fleet(tmp_path, "--decode-step-ms", "1") as url:
        out = run_replay(trace, url=url, out_dir=tmp_path / "out", workers=1, quiet=True,
                         report=False, metrics_urls=[url + "/metrics"])
        hits = _counter(url, "vllm:prefix_cache_hits_total")
        queries = _counter(url, "vllm:prefix_cache_queries_total")
    assert (hits, queries) == (reuse["reused_tokens"], reuse["prompt_tokens"])
    summary = json.loads((Path(out) / "summary.json").read_text())
    assert summary["prefix_cache"] == {"hit_ratio": hits / queries, "hits_tokens": hits,
                                       "queries_tokens": queries, "instances": 1}
    assert summary["prefix_hit_ratio"] == hits / queries

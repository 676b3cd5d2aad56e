"""The README's comparison on the shipped burst trace, with the sim's real (7B on one H100)
parameters: the policies differ the way docs/policies.md says they should.

One `cpbench compare` of the four policies over the first burst of traces/burst.arrow,
time-compressed 3x (~450 requests in 1 s, ~315 of them LLM requests, against an engine that
holds ~220), with a 6 s client timeout so the backlog a policy leaves ends with the run
instead of draining for half a minute. Only counts and orderings are asserted; the README's
own comparison (uncompressed, all four bursts) is measured in traces/README.md.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow.ipc as ipc
import pytest

from cpbench.cli import main

pytestmark = [pytest.mark.integration, pytest.mark.slow]

BURST = Path(__file__).resolve().parents[1] / "traces" / "burst.arrow"
POLICIES = ("fifo", "priority", "slo_aware", "hybrid_slo")
TIMEOUT_S = 6


@pytest.fixture(scope="module")
def comparison(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("shipped") / "cmp"
    status = main(["compare", "--policies", ",".join(POLICIES), str(BURST), "--speed", "3",
                   "--duration", "3.5", "--timeout", str(TIMEOUT_S), "--drain-s", "0",
                   "--resamples", "500", "--quiet", "-o", str(out)])
    assert status == 0
    result = json.loads((out / "comparison.json").read_text())
    result["dir"] = out
    return result


def _group(result: dict, policy: str, kind: str, priority: str = "all") -> dict:
    for g in result["stats"]["policies"][policy]["groups"]:
        if g["kind"] == kind and g["priority"] == priority:
            return g
    raise AssertionError(f"no group {policy}/{kind}/{priority}")


def _met(result: dict, policy: str, kinds: tuple[str, ...]) -> int:
    """Requests of these kinds that met their SLO (attainment x requests, summed)."""
    return round(sum(g["requests"] * g["metrics"]["slo_attainment_pct"]["mean"] / 100.0
                     for g in (_group(result, policy, k) for k in kinds)))


def _diff(result: dict, policy: str, kind: str, priority: str, metric: str) -> dict:
    for d in result["stats"]["differences"]:
        if (d["policy"], d["kind"], d["priority"], d["metric"]) == (policy, kind, priority,
                                                                      metric):
            return d
    raise AssertionError(f"no difference {policy}/{kind}/{priority}/{metric}")


def _ttft_ms(run_dir: Path, priority: str) -> np.ndarray:
    """TTFT (from the intended time) of the run's chat requests of ``priority``; a request
    that never got its first token waited at least the client timeout, so it counts as that
    (censored: the true figure is larger, so differences below are lower bounds)."""
    with ipc.open_file(str(run_dir / "results.arrow")) as f:
        t = f.read_all()
    sel = np.array([k == "chat" and p == priority for k, p in
                    zip(t.column("kind").to_pylist(), t.column("priority").to_pylist())])
    first = np.array([np.nan if v is None else float(v)
                      for v in t.column("first_token_ns").to_pylist()])
    ttft_ms = (first[sel] - t.column("intended_ns").to_numpy()[sel]) / 1e6
    return np.where(np.isnan(ttft_ms), TIMEOUT_S * 1000.0, ttft_ms)


def test_priority_gives_high_a_lower_ttft_p99_than_low(comparison):
    high = _ttft_ms(comparison["dir"] / "priority", "HIGH")
    low = _ttft_ms(comparison["dir"] / "priority", "LOW")
    assert len(high) >= 30 and len(low) >= 30
    # p99(LOW) - p99(HIGH) under priority, with a 95 % bootstrap interval (the classes are
    # different requests, so each is resampled on its own); the interval excludes 0.
    rng = np.random.default_rng(0)
    diffs = [np.percentile(rng.choice(low, low.size), 99)
             - np.percentile(rng.choice(high, high.size), 99) for _ in range(1000)]
    low_ci, high_ci = np.percentile(diffs, [2.5, 97.5])
    assert np.percentile(low, 99) > np.percentile(high, 99)
    assert 0 < low_ci <= high_ci, (low_ci, high_ci)


def test_slo_aware_attains_more_deadlines_than_fifo(comparison):
    d = _diff(comparison, "slo_aware", "all", "all", "slo_attainment_pct")
    assert d["ci_low"] > 0 and d["verdict"] == "better", d


def test_hybrid_slo_meets_more_embedding_deadlines_without_a_net_llm_loss(comparison):
    llm = ("chat", "completion")
    emb_gain = _met(comparison, "hybrid_slo", ("embedding",)) - _met(comparison, "fifo",
                                                                     ("embedding",))
    llm_change = _met(comparison, "hybrid_slo", llm) - _met(comparison, "fifo", llm)
    assert emb_gain > 0
    assert -llm_change <= emb_gain, (emb_gain, llm_change)

"""compare / sweep / experiment / run end to end: the real CLI against the embedded sim.

The sim is configured small so the control plane, not the client, is the bottleneck and the
answers are known: on the shipped burst trace a deadline-aware policy beats FIFO (FIFO makes
500 ms embeddings wait behind a queue of LLM requests), and the throughput knee of an
embedding-only sim with a computable capacity lies within 10% of that capacity.
"""
from __future__ import annotations

import json
from pathlib import Path

import pyarrow.ipc as ipc
import pytest

from cpbench.cli import main

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[1]
BURST = ROOT / "traces" / "burst.arrow"
# LLM engine with 16 slots and 2 ms steps: the first burst of burst.arrow (324 LLM requests,
# 150 embeddings in 3 s) queues at the control plane for seconds.
BURST_SIM = {"llm": [{"max_running_seqs": 16, "decode_base_ns": 2_000_000,
                      "decode_ns_per_seq": 0, "decode_ns_per_context_token": 0,
                      "prefill_ns_per_token": 1_000}]}
# Embedding-only sim, one input per batch, 4 engines x 20 ms per batch: capacity 200 req/s.
KNEE_ENGINE = {"model": "cpbench-embed-bge", "instances": 4, "max_batch_inputs": 1,
               "batch_base_ns": 20_000_000, "ns_per_token": 0}
KNEE_SIM = {"llm": [], "embedding": [KNEE_ENGINE]}
KNEE_TOKENS = 8


def _config(tmp_path: Path, name: str, data: dict) -> str:
    path = tmp_path / name
    path.write_text(json.dumps(data))
    return str(path)


def _capacity_rps(engine: dict, tokens: int) -> float:
    """Requests per second the sim serves when each request is one batch of its own."""
    batch_ns = engine["batch_base_ns"] + engine["ns_per_token"] * tokens
    return engine["instances"] * 1e9 / batch_ns


def _rows(result_dir: Path) -> int:
    with ipc.open_file(str(result_dir / "results.arrow")) as f:
        return f.read_all().num_rows


def test_compare_on_burst_trace_deadline_aware_beats_fifo(tmp_path, capsys):
    out = tmp_path / "cmp"
    status = main(["compare", "--policies", "fifo,slo_aware,hybrid_slo", str(BURST),
                   "--duration", "5", "--drain-s", "0.2", "--resamples", "500",
                   "--sim-config", _config(tmp_path, "sim.json", BURST_SIM), "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert "run 1 of 3: policy fifo" in captured.err and "run 3 of 3" in captured.err
    result = json.loads((out / "comparison.json").read_text())
    for policy in ("fifo", "slo_aware", "hybrid_slo"):
        assert _rows(out / policy) == result["stats"]["paired_rows"] > 200
        assert (out / policy / "summary.json").is_file()
    assert (out / "report.html").stat().st_size > 10_000 and (out / "report.md").is_file()
    overall = {d["policy"]: d for d in result["stats"]["differences"]
               if d["kind"] == "all" and d["metric"] == "slo_attainment_pct"}
    winners = [p for p in ("slo_aware", "hybrid_slo")
               if overall[p]["verdict"] == "better" and overall[p]["ci_low"] > 0]
    assert winners, overall
    assert result["answer"]["best_policy"]["policy"] in ("slo_aware", "hybrid_slo")
    # Embeddings are where FIFO loses: the paired difference is per kind too.
    emb = [d for d in result["stats"]["differences"] if d["kind"] == "embedding"
           and d["priority"] == "all" and d["metric"] == "slo_attainment_pct"]
    assert any(d["diff"] > 0 for d in emb)
    assert "best policy on SLO attainment: " in captured.out and "baseline" in captured.out


def test_sweep_knee_within_ten_percent_of_sim_capacity(tmp_path, capsys):
    trace = tmp_path / "emb.arrow"
    assert main(["record", "synth", "--pattern", "uniform", "--rate", "100", "--requests",
                 "400", "--mode", "hybrid", "--llm-ratio", "0", "--embed-batch", "fixed:1",
                 "--embed-tokens", f"fixed:{KNEE_TOKENS}", "--embed-slo-ms", "100",
                 "--seed", "1", "-o", str(trace)]) == 0
    out = tmp_path / "sweep"
    status = main(["sweep", str(trace), "--rates", "150,250", "--knee", "--rel-tol", "0.05",
                   "--max-probes", "6", "--drain-s", "0.2", "-o", str(out),
                   "--sim-config", _config(tmp_path, "sim.json", KNEE_SIM)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads((out / "experiment.json").read_text())
    capacity = _capacity_rps(KNEE_ENGINE, KNEE_TOKENS)
    knee = result["knee"]["knee_rps"]
    assert knee is not None and abs(knee - capacity) <= 0.10 * capacity, result["knee"]
    assert result["knee"]["converged"]
    probes = {round(p["rate_rps"], 6) for p in result["knee"]["probes"]}
    assert {150.0, 250.0} <= probes and len(result["points"]) == len(probes)
    assert all((Path(p["dir"]) / "results.arrow").is_file() for p in result["points"])
    assert (out / "report.html").is_file()
    assert f"knee: {knee:.2f} rps" in captured.out


def test_run_synthesizes_sets_policy_and_replays(tmp_path, capsys):
    out = tmp_path / "run"
    status = main(["run", "--mode", "hybrid", "--policy", "hybrid_slo", "--requests", "30",
                   "--rate", "30", "--llm-ratio", "0.5", "--no-report", "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    assert (out / "trace.arrow").is_file() and _rows(out / "run") == 30
    summary = json.loads((out / "run" / "summary.json").read_text())
    assert summary["run"]["policy"] == "hybrid_slo"
    # One summary from one source: the replay's table, the results path once, no second
    # table re-derived from the results (it used to print TTFT p99 62.70 and then 62.8).
    assert "(policy hybrid_slo)" in captured.out
    assert captured.out.count(str(out / "run")) == 1
    assert "SLO attained %" not in captured.out and captured.out.count("TTFT") <= 1


# Overloads the small LLM engine of BURST_SIM: 150 requests at 150 req/s.
SMALL_LOAD = ["--rate", "150", "--requests", "150", "--drain-s", "0.2", "--resamples", "300"]


@pytest.mark.slow
def test_experiment_slo_answers_per_priority(tmp_path, capsys):
    out = tmp_path / "slo"
    status = main(["experiment", "--name", "slo", "--policies", "fifo,hybrid_slo",
                   *SMALL_LOAD, "--sim-config", _config(tmp_path, "sim.json", BURST_SIM),
                   "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads((out / "experiment.json").read_text())
    assert result["experiment"] == "slo" and (out / "trace.arrow").is_file()
    best = result["answer"]["best_policy"]
    assert best["metric"] == "slo_attainment_pct" and best["policy"] == "hybrid_slo"
    groups = {(g["kind"], g["priority"]) for g in result["stats"]["policies"]["fifo"]["groups"]}
    assert {("chat", "HIGH"), ("embedding", "LOW")} <= groups
    assert "HIGH SLO %" in captured.out and (out / "report.html").is_file()


@pytest.mark.slow
def test_experiment_latency_and_mixed_ratio(tmp_path, capsys):
    sim = _config(tmp_path, "sim.json", BURST_SIM)
    out = tmp_path / "lat"
    assert main(["experiment", "--name", "latency", "--policies", "fifo,slo_aware",
                 *SMALL_LOAD, "--sim-config", sim, "-o", str(out)]) == 0
    best = json.loads((out / "experiment.json").read_text())["answer"]["best_policy"]
    assert best["metric"] == "e2e_from_intended_p99_ms" and best["runner_up"] is not None
    out_text = capsys.readouterr().out
    # The answer uses the report's metric names, and names a best policy only when the
    # paired interval tells it from the runner-up.
    assert "e2e_from_intended" not in out_text
    if best["verdict"] == "better":
        assert f"best policy on E2E p99: {best['policy']}" in out_text
    else:
        assert "no policy is distinguishable on E2E p99" in out_text
        assert "best policy" not in out_text
    out = tmp_path / "mix"
    assert main(["experiment", "--name", "mixed_ratio", "--policies", "fifo,hybrid_slo",
                 "--ratios", "0,1", *SMALL_LOAD, "--sim-config", sim, "-o", str(out)]) == 0
    result = json.loads((out / "experiment.json").read_text())
    assert [p["llm_ratio"] for p in result["points"]] == [0.0, 1.0]
    assert set(result["answer"]["best_policy_by_ratio"]) == {"0", "1"}
    for ratio in ("0", "1"):
        for policy in ("fifo", "hybrid_slo"):
            assert (out / f"ratio-{ratio}" / policy / "results.arrow").is_file()
    # Embedding-only load never queues on the LLM engine: every policy meets every deadline.
    assert result["points"][0]["attainment_pct"] == {"fifo": 100.0, "hybrid_slo": 100.0}
    assert "LLM ratio" in capsys.readouterr().out


@pytest.mark.slow
def test_experiment_throughput_knee_per_policy(tmp_path, capsys):
    trace = tmp_path / "emb.arrow"
    assert main(["record", "synth", "--pattern", "uniform", "--rate", "100", "--requests",
                 "400", "--mode", "hybrid", "--llm-ratio", "0", "--embed-batch", "fixed:1",
                 "--embed-tokens", f"fixed:{KNEE_TOKENS}", "--embed-slo-ms", "100",
                 "--seed", "2", "-o", str(trace)]) == 0
    out = tmp_path / "thr"
    status = main(["experiment", "--name", "throughput", "--trace", str(trace), "--policies",
                   "fifo,slo_aware", "--rates", "150,250", "--rel-tol", "0.1",
                   "--max-probes", "3", "--drain-s", "0.2", "-o", str(out),
                   "--sim-config", _config(tmp_path, "sim.json", KNEE_SIM)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    answer = json.loads((out / "experiment.json").read_text())["answer"]
    capacity = _capacity_rps(KNEE_ENGINE, KNEE_TOKENS)
    for policy in ("fifo", "slo_aware"):
        # Three bisection probes only, on a shared machine: a loose band here; the 10% claim
        # is test_sweep_knee_within_ten_percent_of_sim_capacity's.
        knee = answer["knee_rps"][policy]
        assert knee is not None and 0.75 * capacity <= knee <= 1.1 * capacity, answer
        assert (out / policy / "experiment.json").is_file()
    assert answer["best_policy"] in ("fifo", "slo_aware")
    assert "best policy on throughput" in captured.out


def _documented_llm_capacity_rps() -> float:
    """The LLM capacity traces/README.md documents for the default sim (**~30 LLM requests/s**)."""
    import re
    text = (ROOT / "traces" / "README.md").read_text()
    return float(re.search(r"\*\*~(\d+) LLM requests/s\*\*", text).group(1))


@pytest.mark.slow
def test_throughput_knee_against_the_default_sim_is_near_its_capacity(tmp_path, capsys):
    """Issue 22: 150 requests squeezed into ever shorter probes gave a knee of 2,385 req/s.
    Each probe now lasts --probe-s and the knee is where the sim stops keeping up."""
    out = tmp_path / "thr"
    status = main(["experiment", "--name", "throughput", "--policies", "fifo", "--mode", "llm",
                   "--rate", "20", "--requests", "150", "--rates", "20,40", "--rel-tol", "0.1",
                   "--max-probes", "3", "--probe-s", "20", "--drain-s", "0.2", "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    capacity = _documented_llm_capacity_rps()
    result = json.loads((out / "fifo" / "experiment.json").read_text())
    knee = result["knee"]["knee_rps"]
    assert knee is not None and abs(knee - capacity) <= 0.25 * capacity, result["knee"]
    # The requested rate is the rate run and named; every probe held its duration.
    assert (out / "fifo" / "rate-20" / "results.arrow").is_file()
    assert result["points"][0]["rate_rps"] == 20.0
    assert all(p["window_s"] > 15 for p in result["points"])
    assert f"knee: {knee:.2f} rps" in captured.out


def test_a_probe_too_short_for_a_steady_state_never_gives_the_knee(tmp_path, capsys):
    """40 LLM requests at 300 req/s are 0.13 s of load: every deadline is met, and the probe
    says it proves nothing (the knee search treats it as not passing)."""
    trace = tmp_path / "short.arrow"
    assert main(["record", "synth", "--rate", "20", "--requests", "40", "--seed", "1",
                 "--output-tokens", "fixed:16", "-o", str(trace)]) == 0
    out = tmp_path / "sweep"
    status = main(["sweep", str(trace), "--rates", "300", "--knee", "--max-probes", "1",
                   "--drain-s", "0.2", "-o", str(out)])
    captured = capsys.readouterr()
    assert status == 0, captured.err
    result = json.loads((out / "experiment.json").read_text())
    points = {p["rate_rps"]: p for p in result["points"]}
    assert points[300.0]["slo_attainment_pct"] >= 95.0 and points[300.0]["too_short"]
    passed = [p["rate_rps"] for p in result["knee"]["probes"] if p["passed"]]
    assert 300.0 not in passed and all(not points[r]["too_short"] for r in passed)
    assert result["knee"]["knee_rps"] in passed + [None]
    assert "rate 300 rps: too short for a steady state" in captured.out
    note = result["knee"]["note"]
    assert "too short to reach a steady state (at " in note and "300 rps)" in note

"""Statistics of experiments without any server: paired bootstrap, repeat spread, knee search."""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc
import pytest

from cpbench.errors import ConfigError
from cpbench.experiments.stats import (RunArrays, bootstrap_mean_ci, find_knee, run_arrays,
                                       paired_comparison, repeat_spread, run_metrics, verdict)


def _run(rows, kind, prio, met, ttft, e2e, path="x") -> RunArrays:
    return RunArrays(Path(path), np.asarray(rows, dtype=np.int64),
                     np.asarray(kind, dtype=object), np.asarray(prio, dtype=object),
                     np.asarray(met, dtype=bool),
                     {"ttft_from_intended": np.asarray(ttft, float),
                      "e2e_from_intended": np.asarray(e2e, float)})


def _pair(n=600, shift_ms=0.0, flip=0.0, seed=0, noise_seed=None):
    """A baseline and a candidate on the same rows: candidate latency = baseline + shift."""
    rng = np.random.default_rng(seed)
    kind = np.where(rng.random(n) < 0.5, "chat", "embedding")
    prio = rng.choice(["HIGH", "NORMAL", "LOW"], n)
    base_lat = rng.lognormal(np.log(100), 0.4, n)
    base_met = base_lat < 200
    noise = np.random.default_rng(noise_seed).normal(0, 1, n) if noise_seed is not None else 0
    cand_lat = base_lat + shift_ms + noise
    cand_met = cand_lat < 200
    if flip:
        cand_met = cand_met | (rng.random(n) < flip)
    rows = np.arange(n)
    return (_run(rows, kind, prio, base_met, base_lat, base_lat * 2, "base"),
            _run(rows, kind, prio, cand_met, cand_lat, cand_lat * 2, "cand"))


def _diff(result, policy, kind, prio, metric):
    for d in result["differences"]:
        if (d["policy"], d["kind"], d["priority"], d["metric"]) == (policy, kind, prio, metric):
            return d
    raise AssertionError(f"no difference for {policy} {kind} {prio} {metric}")


def test_identical_runs_are_indistinguishable_with_zero_difference():
    base, _ = _pair()
    res = paired_comparison({"fifo": [base], "same": [base]}, baseline="fifo", seed=1)
    for d in res["differences"]:
        assert d["diff"] == 0.0
        small_tail = d["metric"].endswith("p99_ms") and d["rows"] < 100
        assert d["verdict"] == ("insufficient data" if small_tail else "indistinguishable"), d
    assert res["paired_rows"] == 600


def test_latency_shift_is_detected_with_ci_covering_it():
    base, cand = _pair(shift_ms=-20.0, noise_seed=3)
    res = paired_comparison({"fifo": [base], "fast": [cand]}, baseline="fifo", seed=1)
    d = _diff(res, "fast", "all", "all", "ttft_from_intended_p50_ms")
    assert d["verdict"] == "better"
    assert d["ci_low"] <= -20.0 + 1.0 and d["ci_high"] >= -20.0 - 1.0
    assert d["ci_high"] < 0
    att = _diff(res, "fast", "all", "all", "slo_attainment_pct")
    assert att["diff"] > 0 and att["verdict"] == "better"
    slow = paired_comparison({"fifo": [cand], "slow": [base]}, baseline="fifo", seed=1)
    assert _diff(slow, "slow", "all", "all", "ttft_from_intended_p50_ms")["verdict"] == "worse"


def test_pure_noise_is_not_called_a_difference():
    base, cand = _pair(shift_ms=0.0, noise_seed=4)
    res = paired_comparison({"fifo": [base], "noisy": [cand]}, baseline="fifo", seed=2)
    assert _diff(res, "noisy", "all", "all", "ttft_from_intended_p50_ms")["verdict"] == \
        "indistinguishable"


def test_groups_per_kind_and_priority_and_seeded_reproducibility():
    base, cand = _pair(shift_ms=-10.0, noise_seed=5)
    a = paired_comparison({"fifo": [base], "b": [cand]}, baseline="fifo", seed=7)
    b = paired_comparison({"fifo": [base], "b": [cand]}, baseline="fifo", seed=7)
    assert a == b
    groups = {(d["kind"], d["priority"]) for d in a["differences"]}
    assert ("chat", "HIGH") in groups and ("embedding", "LOW") in groups
    assert ("completion", "all") not in groups
    rows = {(d["kind"], d["priority"]): d["rows"] for d in a["differences"]}
    assert rows[("chat", "all")] == sum(rows[("chat", p)] for p in ("HIGH", "NORMAL", "LOW"))


def test_join_on_row_ignores_order_and_missing_rows():
    base, cand = _pair(n=300, shift_ms=-30.0)
    keep = np.arange(300) % 3 != 0  # the candidate lost a third of its rows
    lost = _run(cand.row[keep][::-1], cand.kind[keep][::-1], cand.priority[keep][::-1],
                cand.slo_met[keep][::-1], cand.latency_ms["ttft_from_intended"][keep][::-1],
                cand.latency_ms["e2e_from_intended"][keep][::-1])
    order = np.argsort(lost.row)  # run_arrays sorts by row; emulate it
    lost = _run(lost.row[order], lost.kind[order], lost.priority[order], lost.slo_met[order],
                lost.latency_ms["ttft_from_intended"][order],
                lost.latency_ms["e2e_from_intended"][order])
    res = paired_comparison({"fifo": [base], "c": [lost]}, baseline="fifo", seed=0)
    assert res["paired_rows"] == 200
    assert res["unpaired_rows"]["fifo"] == 100
    d = _diff(res, "c", "all", "all", "ttft_from_intended_p50_ms")
    assert d["diff"] == pytest.approx(-30.0, abs=1e-9)


def test_repeats_spread_and_noisy_repeats_mark_indistinguishable():
    base, cand = _pair(shift_ms=-5.0, noise_seed=6)
    res = paired_comparison({"fifo": [base, base], "c": [cand, cand]}, baseline="fifo", seed=0)
    spread = res["policies"]["c"]["groups"][0]["metrics"]["ttft_from_intended_p50_ms"]
    assert spread["n"] == 2 and spread["std"] == 0.0
    # Run-to-run noise larger than the effect: the repeat test must overrule the row bootstrap.
    wobble = [_run(base.row, base.kind, base.priority, base.slo_met,
                   base.latency_ms["ttft_from_intended"] + s,
                   base.latency_ms["e2e_from_intended"]) for s in (-40.0, 40.0)]
    res = paired_comparison({"fifo": wobble, "c": [cand, cand]}, baseline="fifo", seed=0)
    d = _diff(res, "c", "all", "all", "ttft_from_intended_p50_ms")
    assert d["repeats_overlap"] is True and d["verdict"] == "indistinguishable"
    # Repeats that do not overlap keep the row bootstrap's verdict.
    apart = [_run(base.row, base.kind, base.priority, base.slo_met,
                  base.latency_ms["ttft_from_intended"] + s,
                  base.latency_ms["e2e_from_intended"]) for s in (-1.0, 1.0)]
    res = paired_comparison({"fifo": apart, "c": [cand, cand]}, baseline="fifo", seed=0)
    d = _diff(res, "c", "all", "all", "ttft_from_intended_p50_ms")
    assert d["repeats_overlap"] is False and d["verdict"] == "better"


def test_repeat_spread_and_verdict_edges():
    s = repeat_spread([1.0, 3.0, float("nan")])
    assert s == {"n": 2, "mean": 2.0, "std": pytest.approx(math.sqrt(2)), "min": 1.0, "max": 3.0}
    assert repeat_spread([])["n"] == 0
    assert verdict("slo_attainment_pct", (1.0, 2.0)) == "better"
    assert verdict("e2e_from_intended_p99_ms", (1.0, 2.0)) == "worse"
    assert verdict("e2e_from_intended_p99_ms", (math.nan, 2.0)) == "insufficient data"
    assert bootstrap_mean_ci(np.full(5, 3.0), confidence=0.95, n_resamples=100,
                             rng=np.random.default_rng(0)) == (3.0, 3.0)


def test_bad_arguments_raise_config_error():
    base, _ = _pair(n=50)
    with pytest.raises(ConfigError, match="baseline"):
        paired_comparison({"fifo": [base]}, baseline="nope")
    with pytest.raises(ConfigError, match="confidence"):
        paired_comparison({"fifo": [base]}, baseline="fifo", confidence=1.5)


def test_run_arrays_reads_results_file_and_drops_warmup(tmp_path):
    """Per-request latencies by the summary's definitions (request_latencies_ns)."""
    d = pa.dictionary(pa.int32(), pa.string())
    table = pa.table({
        "row": pa.array([2, 0, 1], pa.int64()),
        "kind": pa.array(["chat", "embedding", "chat"]).dictionary_encode().cast(d),
        "priority": pa.array(["HIGH", "LOW", "HIGH"]).dictionary_encode().cast(d),
        "intended_ns": pa.array([0, 0, 0], pa.int64()),
        "sent_ns": pa.array([1_000, 0, 0], pa.int64()),
        "first_token_ns": pa.array([5_000_000, None, 2_000_000], pa.int64()),
        "output_tokens": pa.array([3, 0, 2], pa.int32()),
        "slo_ttft_met": pa.array([True, False, False]),
        "slo_e2e_met": pa.array([True, False, False]),
        "done_ns": pa.array([9_000_000, 1_000_000, 4_000_000], pa.int64()),
        "error_class": pa.array([None, "timeout", None]).dictionary_encode().cast(d),
        "slo_met": pa.array([True, False, False]),
        "warmup": pa.array([False, False, True]),
    })
    with ipc.new_file(str(tmp_path / "results.arrow"), table.schema) as w:
        w.write_table(table)
    run = run_arrays(tmp_path)
    assert run.row.tolist() == [0, 2]
    assert run.kind.tolist() == ["embedding", "chat"]
    assert math.isnan(run.latency_ms["ttft_from_intended"][0])
    assert math.isnan(run.latency_ms["e2e_from_intended"][0])  # failed: no latency
    assert run.latency_ms["e2e_from_intended"][1] == 9.0
    m = run_metrics(run)
    assert m["slo_attainment_pct"] == 50.0 and m["ttft_from_intended_p50_ms"] == 5.0
    with pytest.raises(ConfigError, match="result directory"):
        run_arrays(tmp_path / "missing")


def _step(knee: float, calls: list):
    def measure(rate: float) -> float:
        calls.append(rate)
        return 100.0 if rate <= knee else max(0.0, 100.0 - 2.0 * (rate - knee))
    return measure


@pytest.mark.parametrize("knee,start", [(137.0, 10.0), (137.0, 1000.0), (3.3, 50.0),
                                        (137.0, 137.0)])
def test_knee_bisection_finds_known_knee(knee, start):
    calls: list[float] = []
    res = find_knee(_step(knee, calls), start_rps=start, target_pct=95.0, rel_tol=0.02,
                    max_probes=30)
    true_knee = knee + 2.5  # attainment 100 - 2 (r - knee) >= 95  <=>  r <= knee + 2.5
    assert res.converged
    assert res.knee_rps <= true_knee < res.high_rps
    assert res.high_rps - res.knee_rps <= 0.02 * res.knee_rps
    assert len(calls) == len(set(calls)) == len(res.probes)
    assert all(p["passed"] == (p["rate_rps"] <= true_knee) for p in res.probes)


def test_knee_edges_never_pass_never_fail_and_probe_bound():
    res = find_knee(lambda r: 0.0, start_rps=10, min_rps=1.0)
    assert res.knee_rps is None and not res.converged and "even at" in res.note
    res = find_knee(lambda r: 100.0, start_rps=10, max_rps=100.0)
    assert res.knee_rps == 100.0 and res.high_rps is None and not res.converged
    calls: list[float] = []
    res = find_knee(_step(137.0, calls), start_rps=10, rel_tol=1e-6, max_probes=6)
    assert len(calls) == 6 and not res.converged and res.knee_rps <= 139.5
    with pytest.raises(ConfigError):
        find_knee(lambda r: 0.0, start_rps=0)


def test_knee_upper_bound_caps_doubling():
    calls: list[float] = []
    res = find_knee(_step(137.0, calls), start_rps=100.0, upper_rps=150.0, rel_tol=0.02,
                    max_probes=30)
    assert calls[:2] == [100.0, 150.0]
    assert res.converged and res.knee_rps <= 139.5 < res.high_rps


def test_p99_of_a_small_group_gives_no_interval():
    base, cand = _pair(n=150, shift_ms=-20.0, noise_seed=1)
    res = paired_comparison({"fifo": [base], "c": [cand]}, baseline="fifo", seed=0)
    for d in res["differences"]:
        if d["metric"].endswith("p99_ms"):
            expect_none = d["rows"] < 100
            assert (d["verdict"] == "insufficient data") == expect_none, d
    assert _diff(res, "c", "all", "all", "e2e_from_intended_p99_ms")["verdict"] == "better"


def test_large_groups_rescaled_subsample_matches_full_bootstrap():
    from cpbench.experiments.stats import bootstrap_percentile_diff_ci
    rng = np.random.default_rng(11)
    n = 20_000
    a = rng.lognormal(np.log(100), 0.5, n)
    b = a - 5.0 + rng.normal(0, 10, n)
    d = (rng.random(n) < 0.6).astype(float) - (rng.random(n) < 0.5)
    kw = {"confidence": 0.95, "n_resamples": 400}
    full = bootstrap_mean_ci(d, rng=np.random.default_rng(1), max_rows=n, **kw)
    sub = bootstrap_mean_ci(d, rng=np.random.default_rng(1), max_rows=2_000, **kw)
    width = full[1] - full[0]
    assert abs((sub[1] - sub[0]) - width) < 0.25 * width
    assert sub[0] < d.mean() < sub[1]
    full = bootstrap_percentile_diff_ci(a, b, (50.0,), rng=np.random.default_rng(2),
                                        max_rows=n, **kw)[0]
    sub = bootstrap_percentile_diff_ci(a, b, (50.0,), rng=np.random.default_rng(2),
                                       max_rows=2_000, **kw)[0]
    est = np.percentile(b, 50) - np.percentile(a, 50)
    assert sub[0] < est < sub[1]
    assert abs((sub[1] - sub[0]) - (full[1] - full[0])) < 0.35 * (full[1] - full[0])


def test_print_answer_names_no_best_policy_when_none_is_distinguishable():
    """`experiment --name latency` named a best policy when every difference held 0."""
    import io

    from cpbench.experiments.compare import print_answer
    from cpbench.experiments.stats import metric_label
    assert metric_label("e2e_from_intended_p99_ms") == "E2E p99"
    assert metric_label("ttft_from_intended_p50_ms") == "TTFT p50"
    assert metric_label("slo_attainment_pct") == "SLO attainment"
    m = {"n": 1, "mean": 10.0, "std": 0.0, "min": 10.0, "max": 10.0}
    stats = {"confidence": 0.95, "differences": [], "policies": {
        p: {"repeats": 1, "groups": [{"metrics": {
            "slo_attainment_pct": m, "ttft_from_intended_p99_ms": m,
            "e2e_from_intended_p99_ms": m}}]} for p in ("fifo", "priority")}}
    best = {"metric": "e2e_from_intended_p99_ms", "policy": "priority", "value": 10.0,
            "runner_up": "fifo", "diff": -1.5, "ci_low": -4.0, "ci_high": 1.0,
            "verdict": "indistinguishable"}
    out = io.StringIO()
    print_answer({"answer": {"best_policy": best}, "stats": stats}, out)
    text = out.getvalue()
    assert "no policy is distinguishable on E2E p99" in text and "best policy" not in text
    assert "[-4.0, 1.0]" in text and "e2e_from_intended" not in text
    out = io.StringIO()
    print_answer({"answer": {"best_policy": {**best, "verdict": "better", "ci_high": -0.5}},
                  "stats": stats}, out)
    assert "best policy on E2E p99: priority (10.0 ms)" in out.getvalue()
    # Both beat the baseline but not each other: two leaders, not "none".
    stats["differences"] = [{"kind": "all", "priority": "all", "policy": "priority",
                             "metric": "e2e_from_intended_p99_ms", "verdict": "better"}]
    out = io.StringIO()
    print_answer({"answer": {"best_policy": best}, "stats": stats}, out)
    assert "best policy on E2E p99: none alone, priority and fifo lead" in out.getvalue()


def test_find_knee_runs_rounded_rates_and_never_passes_a_nan_probe():
    """A too-short probe measures NaN: it never passes, so it never becomes the knee; each rate
    measured is the rate recorded (rounded before the run, as the sweep names it)."""
    from cpbench.experiments.sweep import probe_rate
    seen = []

    def measure(rate):
        seen.append(rate)
        return math.nan if rate >= 40 else (100.0 if rate <= 30.8 else 0.0)

    res = find_knee(measure, start_rps=20.0, rel_tol=0.01, max_probes=12, round_rate=probe_rate)
    assert [p["rate_rps"] for p in res.probes] == seen
    assert all(r == probe_rate(r) for r in seen)
    assert (res.knee_rps, res.high_rps, res.converged) == (30.6, 30.9, True)
    assert {p["value_pct"] for p in res.probes if p["rate_rps"] >= 40} == {None}
    assert probe_rate(18.6358) == 18.6 and probe_rate(2385.38) == 2390.0


def test_keep_up_counts_completions_per_send_in_the_second_half():
    from cpbench.experiments.steady import keep_up_pct
    sent = np.arange(0, 100, dtype=np.int64) * 10**9         # one send a second for 100 s
    kept = sent + 2 * 10**9                                   # each done 2 s later
    assert keep_up_pct(sent, kept) == 100.0                   # 50 sent in [49.5, 99], 50 done
    behind = np.where(sent >= 50 * 10**9, -1, kept)           # nothing sent later completes
    assert keep_up_pct(sent, behind) == pytest.approx(100.0 * 2 / 50)
    assert math.isnan(keep_up_pct(np.array([], np.int64), np.array([], np.int64)))


def test_run_metrics_are_the_summarys_percentiles(tmp_path):
    """One definition: the per-run figures of compare/sweep are nearest-rank percentiles of
    the same latencies summary.json reports (there within its histograms' 4.9e-4 bound)."""
    import json

    from support.result_dirs import make_result_dir
    d = make_result_dir(tmp_path / "run", n_requests=400, seed=4, monitor=False)
    summary = json.loads((d / "summary.json").read_text())
    m = run_metrics(run_arrays(d))
    for metric in ("ttft_from_intended", "e2e_from_intended"):
        for p in (50, 99):
            assert m[f"{metric}_p{p}_ms"] == pytest.approx(
                summary["latency_ms"][metric][f"p{p}"], rel=5e-4), (metric, p)

"""cpbench.summary on hand-built results tables with exact expected numbers."""
from __future__ import annotations

import json
import math
import os

import numpy as np
import pyarrow as pa
import pytest

from cpbench._core.hist import Histogram
from cpbench.errors import ConfigError, OutputError
from cpbench.summary import (decode_histogram, load_summary, percent_key, summarize,
                             write_summary)

RUN = {"trace": "t.arrow", "policy": "fifo", "workers": 1}


def _dict(values):
    return pa.array(values, pa.string()).dictionary_encode()


def results_table(rows):
    """rows: dicts with the columns summarize reads; nullable ones may be None."""
    def col(name, typ):
        return pa.array([r[name] for r in rows], typ)
    n = len(rows)
    return pa.table({
        "row": pa.array(range(n), pa.int64()),
        "kind": _dict([r["kind"] for r in rows]),
        "priority": _dict([r["priority"] for r in rows]),
        "model": _dict(["m"] * n),
        "worker": pa.array([0] * n, pa.int16()),
        "intended_ns": col("intended", pa.int64()),
        "sent_ns": col("sent", pa.int64()),
        "first_byte_ns": col("first", pa.int64()),
        "first_token_ns": col("first", pa.int64()),
        "done_ns": col("done", pa.int64()),
        "input_tokens": pa.array([8] * n, pa.int32()),
        "output_tokens": col("out", pa.int32()),
        "batch_size": pa.array([1] * n, pa.int16()),
        "status": pa.array([200 if r["error"] is None else 503 for r in rows], pa.int16()),
        "error_class": _dict([r["error"] for r in rows]),
        "error_detail": pa.array([None] * n, pa.string()),
        "itl_mean_ns": pa.array([None] * n, pa.int64()),
        "itl_max_ns": pa.array([None] * n, pa.int64()),
        "slo_ttft_ms": pa.array([1.0] * n, pa.float32()),
        "slo_e2e_ms": pa.array([1.0] * n, pa.float32()),
        "slo_ttft_met": col("ttft_met", pa.bool_()),
        "slo_e2e_met": col("e2e_met", pa.bool_()),
        "slo_met": col("met", pa.bool_()),
        "warmup": col("warmup", pa.bool_()),
    })


def row(kind, priority, intended, sent, first, done, out, error=None, flags=(False,) * 3,
        warmup=False):
    return {"kind": kind, "priority": priority, "intended": intended, "sent": sent,
            "first": first, "done": done, "out": out, "error": error, "ttft_met": flags[0],
            "e2e_met": flags[1], "met": flags[2], "warmup": warmup}


# Latencies between 1000 and 2047 ns are held exactly by the 3-digit histograms (unit 1 ns),
# so every expected statistic below is exact.
ROWS = [
    row("chat", "HIGH", 0, 100, 1_100, 2_000, 10, flags=(True, True, True)),
    row("chat", "HIGH", 500, 500, 1_700, 2_500, 20, flags=(True, False, False)),
    row("embedding", "NORMAL", 1_000, 1_200, 2_500, 2_500, 0, flags=(True, True, True)),
    row("chat", "NORMAL", 1_500, 1_500, None, 2_600, 0, error="http_5xx"),
    # Warmup: counted, never in statistics (its huge latency would show in max).
    row("chat", "HIGH", 0, 0, 9_000_000, 9_000_000, 99, flags=(True, True, True), warmup=True),
]
WINDOW_S = 2_600 / 1e9   # first intended (0) to last done (2600)


@pytest.fixture(scope="module")
def summary():
    itl = Histogram()
    itl.record_array(np.array([1_000, 1_500, 2_000], np.int64))
    return summarize(results_table(ROWS), itl_hist=itl, run=RUN, slice_s=1e-6)


def test_counts_and_rates(summary):
    assert summary["run"] == RUN and summary["cpbench_version"]
    assert summary["requests"] == {"scheduled": 4, "sent": 4, "not_sent": 0, "completed": 3,
                                   "errors": 1, "interrupted": 0, "warmup": 1,
                                   "by_error_class": {"http_5xx": 1}}
    rates = summary["rates"]
    # Offered and sent rates over the span of the schedule and of the sends, as `cpbench
    # info` computes a trace's rate ((n - 1) / span), not over the run's tail.
    assert rates["scheduled_rps"] == pytest.approx(3 / 1_500e-9)
    assert rates["achieved_rps"] == pytest.approx(3 / 1_400e-9)
    assert rates["completed_rps"] == pytest.approx(3 / WINDOW_S)
    assert rates["output_tps"] == pytest.approx(30 / WINDOW_S)
    assert summary["slo"] == {"attainment": 0.5, "goodput_rps": pytest.approx(2 / WINDOW_S)}


def test_interrupted_run_counts_the_requests_it_never_sent():
    """run["scheduled"] is the plan's size (warm-up included); unsent rows are not in results."""
    out = summarize(results_table(ROWS), run={**RUN, "scheduled": 9}, slice_s=1e-6)
    assert out["requests"]["scheduled"] == 8      # 9 planned - 1 warm-up
    assert out["requests"]["sent"] == 4
    assert out["requests"]["not_sent"] == 4


def test_scheduled_rate_is_the_whole_schedule_even_when_cut_short():
    """A run stopped early offered the rate its plan had, not the rows that made it out."""
    run = {**RUN, "scheduled": 9, "schedule": {"requests": 9, "span_s": 2.0}}
    out = summarize(results_table(ROWS), run=run, slice_s=1e-6)
    assert out["rates"]["scheduled_rps"] == pytest.approx(4.0)


def test_interrupted_requests_are_not_server_errors():
    rows = ROWS[:3] + [row("chat", "NORMAL", 1_500, 1_500, None, None, 0,
                           error="interrupted")]
    out = summarize(results_table(rows), run=RUN, slice_s=1e-6)
    assert out["requests"]["errors"] == 0
    assert out["requests"]["interrupted"] == 1
    assert out["requests"]["by_error_class"] == {"interrupted": 1}


def test_latencies_from_intended_and_from_sent(summary):
    lat = summary["latency_ms"]
    assert set(lat) == {"ttft_from_sent", "ttft_from_intended", "e2e_from_sent",
                        "e2e_from_intended", "itl"}
    assert lat["ttft_from_sent"] == {"count": 3, "underflow": 0, "overflow": 0, "mean": pytest.approx(3_500 / 3 / 1e6),
                                     "min": 0.001, "max": 0.0013, "p50": 0.0012,
                                     "p90": 0.0013, "p95": 0.0013, "p99": 0.0013,
                                     "p99.9": 0.0013}
    ttft_i = lat["ttft_from_intended"]   # 1100, 1200, 1500
    assert (ttft_i["min"], ttft_i["p50"], ttft_i["max"]) == (0.0011, 0.0012, 0.0015)
    # e2e from sent: 1900, 2000, 1300; from intended: 2000, 2000, 1500.
    e2e_s, e2e_i = lat["e2e_from_sent"], lat["e2e_from_intended"]
    assert (e2e_s["min"], e2e_s["p50"], e2e_s["max"]) == (0.0013, 0.0019, 0.002)
    assert (e2e_i["min"], e2e_i["p50"], e2e_i["max"]) == (0.0015, 0.002, 0.002)
    assert e2e_i["mean"] == pytest.approx(5_500 / 3 / 1e6)
    assert lat["itl"]["count"] == 3 and lat["itl"]["p50"] == 0.0015
    # Lags 100, 0, 200, 0 ns; the warmup row is excluded.
    assert summary["dispatch_lag_ms"] == {"p50": 0.0, "p90": 0.0002, "p95": 0.0002,
                                          "p99": 0.0002, "p99.9": 0.0002, "max": 0.0002,
                                          "mean": 0.000075, "overflow": 0}


def test_latencies_outside_the_histogram_range_are_counted_not_dropped():
    """Under 1 us and over 1 h: counted as underflow/overflow in each latency block (and in
    count, min, max), so a reader of summary.json sees them without decoding histograms."""
    hour_ns = 3_600 * 10**9
    rows = [row("chat", "HIGH", 0, 0, 500, 2_000, 1, flags=(True,) * 3),           # TTFT 500 ns
            row("chat", "HIGH", 0, 0, 1_500, hour_ns + 5_000, 1),                  # e2e > 1 h
            row("chat", "HIGH", 0, 0, 1_200, 1_900, 1, flags=(True,) * 3)]
    out = summarize(results_table(rows), run=RUN, slice_s=3_600.0)
    ttft, e2e = out["latency_ms"]["ttft_from_sent"], out["latency_ms"]["e2e_from_sent"]
    assert (ttft["count"], ttft["underflow"], ttft["overflow"]) == (3, 1, 0)
    assert ttft["min"] == 0.0005
    assert (e2e["count"], e2e["underflow"], e2e["overflow"]) == (3, 0, 1)
    assert e2e["max"] == (hour_ns + 5_000) / 1e6
    chat = out["by_kind"][0]["latency_ms"]
    assert chat["ttft_from_intended"]["underflow"] == 1
    assert chat["e2e_from_intended"]["overflow"] == 1
    hist = decode_histogram(out, "e2e_from_sent")
    assert (hist.underflow_count, hist.overflow_count) == (0, 1)


def test_by_class_and_by_kind(summary):
    classes = [(c["kind"], c["priority"], c["requests"], c["completed"], c["errors"],
                c["ttft_met"], c["e2e_met"], c["slo_met"], c["attainment"])
               for c in summary["by_class"]]
    assert classes == [("chat", "HIGH", 2, 2, 0, 2, 1, 1, 0.5),
                       ("chat", "NORMAL", 1, 0, 1, 0, 0, 0, 0.0),
                       ("embedding", "NORMAL", 1, 1, 0, 1, 1, 1, 1.0)]
    high = summary["by_class"][0]
    assert high["goodput_rps"] == pytest.approx(1 / WINDOW_S)
    assert high["latency_ms"]["ttft_from_intended"]["max"] == 0.0012
    assert summary["by_class"][1]["latency_ms"]["e2e_from_intended"]["count"] == 0
    assert summary["by_class"][1]["latency_ms"]["e2e_from_intended"]["p50"] is None
    kinds = [(k["kind"], k["requests"], k["completed"], k["errors"], k["slo_met"])
             for k in summary["by_kind"]]
    assert kinds == [("chat", 3, 2, 1, 1), ("embedding", 1, 1, 0, 1)]
    assert "priority" not in summary["by_kind"][0]
    assert summary["by_kind"][0]["latency_ms"]["e2e_from_intended"]["count"] == 2


def test_timeslices(summary):
    ts = summary["timeslices"]
    assert ts["slice_s"] == 1e-6 and ts["t_s"] == [0.0, 1e-6, 2e-6]
    assert ts["scheduled"] == [2, 2, 0]
    assert ts["sent"] == [2, 2, 0]
    assert ts["completed"] == [0, 0, 3]
    assert ts["errors"] == [0, 0, 1]
    assert ts["output_tokens"] == [0, 0, 30]
    assert ts["in_flight"] == [2, 4, 0]
    assert ts["slo_met"] == [0, 0, 2]
    # 2-digit slices: values in [1024, 2048) sit in buckets 8 ns wide, reported at midpoint.
    assert ts["ttft_p50_ms"] == [0.0011, 0.0015, None]
    assert ts["ttft_p99_ms"] == [0.001204, 0.0015, None]
    assert ts["e2e_p50_ms"] == [0.002004, 0.0015, None]
    assert ts["lag_p99_ms"] == [0.0001, 0.0002, None]


def test_histograms_decode_to_the_statistics(summary):
    assert set(summary["histograms"]) == {"ttft_from_sent", "ttft_from_intended",
                                          "e2e_from_sent", "e2e_from_intended",
                                          "dispatch_lag", "itl"}
    e2e = decode_histogram(summary, "e2e_from_intended")
    assert e2e.total_count == 3 and e2e.max == 2_000
    assert decode_histogram(summary, "dispatch_lag").mean == 75.0


def test_write_and_load_roundtrip(summary, tmp_path):
    path = tmp_path / "summary.json"
    write_summary(summary, path)
    assert load_summary(path) == json.loads(json.dumps(summary))
    assert os.listdir(tmp_path) == ["summary.json"]
    with pytest.raises(OutputError, match="cannot write summary"):
        write_summary(summary, tmp_path / "missing" / "summary.json")
    (tmp_path / "bad.json").write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON"):
        load_summary(tmp_path / "bad.json")
    (tmp_path / "other.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a cpbench summary"):
        load_summary(tmp_path / "other.json")


def test_bad_results_raise_config_error():
    with pytest.raises(ConfigError, match="lacks column"):
        summarize(results_table(ROWS).drop_columns(["warmup"]), run=RUN)
    broken = ROWS[:1] + [row("chat", "LOW", 100, 900, 500, 2_000, 1)]   # first token < sent
    with pytest.raises(ConfigError, match="negative"):
        summarize(results_table(broken), run=RUN)
    # 1 ns slices over 3 s would be 3 * 10^9 of them: the series takes 2^22 ns slices instead
    # (the first power of two under which 3 s fits in 1,024), and says so.
    tiny = summarize(results_table([row("chat", "HIGH", 0, 0, 5_000, 3 * 10**9, 1)]), run=RUN,
                     slice_s=1e-9)["timeslices"]
    assert tiny["slice_s"] == 2**22 / 1e9 and len(tiny["t_s"]) == 3 * 10**9 // 2**22 + 1
    with pytest.raises(ConfigError, match="slice_s"):
        summarize(results_table(ROWS), run=RUN, slice_s=0)
    with pytest.raises(ConfigError, match="percentiles"):
        summarize(results_table(ROWS), run=RUN, percentiles=(50, 120))


def test_empty_results_and_no_itl():
    s = summarize(results_table(ROWS[4:]), run=RUN)   # only a warmup row
    assert s["requests"]["scheduled"] == 0 and s["requests"]["warmup"] == 1
    assert s["rates"]["achieved_rps"] == 0.0 and s["slo"]["attainment"] is None
    assert s["latency_ms"]["itl"]["count"] == 0 and "itl" not in s["histograms"]
    assert s["by_class"] == [] and s["timeslices"]["t_s"] == []
    json.dumps(s, allow_nan=False)


def test_large_table_matches_numpy():
    rng = np.random.default_rng(5)
    n = 100_000
    intended = np.sort(rng.integers(0, 60 * 10**9, n))
    sent = intended + rng.integers(0, 2_000_000, n)
    ttft = rng.lognormal(math.log(30e6), 0.5, n).astype(np.int64)
    e2e = ttft + rng.lognormal(math.log(300e6), 0.8, n).astype(np.int64)
    failed = rng.random(n) < 0.02
    rows = [row(("chat", "embedding")[i % 2], ("HIGH", "NORMAL", "LOW")[i % 3], int(a), int(b),
                None if f else int(b + t), int(b + e), 5, "timeout" if f else None,
                (not f, not f, not f))
            for i, (a, b, t, e, f) in enumerate(zip(intended, sent, ttft, e2e, failed))]
    s = summarize(results_table(rows), run=RUN, percentiles=(50, 99))
    assert s["requests"]["errors"] == int(failed.sum())
    want = np.percentile((sent + e2e - intended)[~failed], 99, method="inverted_cdf")
    assert s["latency_ms"]["e2e_from_intended"]["p99"] == pytest.approx(want / 1e6, rel=5e-4)
    assert sum(c["requests"] for c in s["by_class"]) == n
    assert sum(s["timeslices"]["scheduled"]) == n


def test_percent_keys():
    assert [percent_key(p) for p in (50, 99.9, 99.99, 0, 100.0)] == [
        "p50", "p99.9", "p99.99", "p0", "p100"]

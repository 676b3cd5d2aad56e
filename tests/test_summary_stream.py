"""The summary folded batch by batch equals the whole-table summary it replaced, field for field.

The oracle is ``support.summary_reference`` (the whole-table code as of eeb82d6). Rows vary
under hypothesis -- kinds and priorities outside the vocabulary and null, unsent and early
requests, errors with and without a done time, warm-up rows, latencies below and above the
histograms' range -- and so does the split into batches (empty batches, each batch with its
own dictionaries), the timeslice length, the percentiles and the run block.
"""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from cpbench._core.hist import Histogram
from cpbench.errors import ConfigError
from cpbench.summary import RunningSummary, summarize
from cpbench.vocab import ERROR_CLASSES
from support.summary_reference import dispatch_lag_of_workers, summarize_whole_table

KIND_LABELS = ("chat", "completion", "embedding", "rerank", None)
PRIORITY_LABELS = ("HIGH", "NORMAL", "LOW", "URGENT", None)
# Mostly milliseconds; now and then below 1 us (underflow) or above 1 h (overflow).
GAPS_NS = st.one_of(st.integers(0, 50_000_000), st.integers(0, 999),
                    st.integers(3_600_000_000_000, 3_700_000_000_000))


@st.composite
def result_rows(draw) -> dict:
    intended = draw(st.integers(0, 30_000_000_000))
    sent = draw(st.one_of(st.just(-1), st.integers(max(0, intended - 50_000), intended),
                          st.builds(lambda g: intended + g, GAPS_NS)))
    error = draw(st.one_of(st.none(), st.sampled_from(ERROR_CLASSES)))
    first = done = None
    if sent >= 0:
        start = max(sent, intended)      # no negative latency: that is an error case below
        if draw(st.booleans()):
            first = start + draw(GAPS_NS)
        if error is None or draw(st.booleans()):
            done = (first if first is not None else start) + draw(GAPS_NS)
    return {"kind": draw(st.sampled_from(KIND_LABELS)),
            "priority": draw(st.sampled_from(PRIORITY_LABELS)),
            "worker": draw(st.integers(0, 3)), "intended": intended, "sent": sent,
            "first": first, "done": done, "out": draw(st.integers(0, 500)), "error": error,
            "ttft_met": draw(st.booleans()), "e2e_met": draw(st.booleans()),
            "met": draw(st.booleans()), "warmup": draw(st.integers(0, 9)) == 0}


def results_batch(rows: list[dict]) -> pa.RecordBatch:
    """A results.arrow batch of ``rows`` (the columns summarize reads, and the worker)."""
    def col(name, typ):
        return pa.array([r[name] for r in rows], typ)

    def labels(name):
        return pa.array([r[name] for r in rows], pa.string()).dictionary_encode()
    return pa.record_batch({
        "kind": labels("kind"), "priority": labels("priority"),
        "worker": col("worker", pa.int16()),
        "intended_ns": col("intended", pa.int64()), "sent_ns": col("sent", pa.int64()),
        "first_token_ns": col("first", pa.int64()), "done_ns": col("done", pa.int64()),
        "output_tokens": col("out", pa.int32()),
        "error_class": labels("error"),
        "slo_ttft_met": col("ttft_met", pa.bool_()), "slo_e2e_met": col("e2e_met", pa.bool_()),
        "slo_met": col("met", pa.bool_()), "warmup": col("warmup", pa.bool_()),
    })


def split(rows: list[dict], cuts: list[int]) -> list[pa.RecordBatch]:
    bounds = [0, *sorted(min(c, len(rows)) for c in cuts), len(rows)]
    return [results_batch(rows[a:b]) for a, b in zip(bounds, bounds[1:])]


def itl_histogram(gaps: list[int]) -> Histogram:
    hist = Histogram()
    hist.record_array(np.array(gaps, np.int64))
    return hist


def same(streamed: dict, whole: dict) -> None:
    assert streamed == whole
    # Key order too: summary.json is written as the dict is ordered.
    assert json.dumps(streamed, allow_nan=False) == json.dumps(whole, allow_nan=False)


runs = st.fixed_dictionaries({"trace": st.just("t.arrow")}, optional={
    "scheduled": st.integers(0, 400),
    "schedule": st.fixed_dictionaries({"requests": st.integers(0, 400),
                                       "span_s": st.sampled_from([0.0, 0.001, 2.5, 40.0])})})


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(rows=st.lists(result_rows(), max_size=120), cuts=st.lists(st.integers(0, 120),
                                                                    max_size=6),
       slice_s=st.sampled_from([0.5, 1.0, 3.0]),
       percentiles=st.sampled_from([(50, 90, 95, 99, 99.9), (0, 100), (99.99, 25)]),
       run=runs, itl=st.one_of(st.none(), st.lists(st.integers(1_000, 10**9), max_size=5)))
def test_folding_batches_gives_the_whole_table_summary(rows, cuts, slice_s, percentiles,
                                                         run, itl):
    batches = split(rows, cuts)
    itl_hist = itl_histogram(itl) if itl is not None else None
    whole = summarize_whole_table(pa.Table.from_batches(batches), itl_hist=itl_hist, run=run,
                                  slice_s=slice_s, percentiles=percentiles)
    running = RunningSummary(slice_s=slice_s, percentiles=percentiles)
    for batch in batches:
        running.add(batch)
    same(running.finish(run=run, itl_hist=itl_hist), whole)
    same(summarize(pa.Table.from_batches(batches), itl_hist=itl_hist, run=run,
                   slice_s=slice_s, percentiles=percentiles), whole)
    table = pa.Table.from_batches(batches)
    for workers in ([0], [1, 3], [0, 1, 2, 3], [7]):
        assert running.dispatch_lag_of_workers(workers) == dispatch_lag_of_workers(table,
                                                                                   workers)


def test_a_realistic_run_in_many_batches_gives_the_whole_table_summary():
    """10^4 rows of a synthetic chat and embedding run, as a worker hands them over."""
    from support.result_dirs import make_results_table
    table = make_results_table(10_000, rate_rps=500.0, llm_ratio=0.7, seed=3, model_name="m",
                               error_detail="HTTP 503", error_ratio=0.02, stall_ms=40.0)
    run = {"trace": "t.arrow", "scheduled": 10_050}
    whole = summarize_whole_table(table, run=run)
    running = RunningSummary()
    for batch in table.to_batches(max_chunksize=337):
        running.add(batch)
    same(running.finish(run=run), whole)


def test_a_bad_batch_is_raised_at_the_end_not_in_the_middle_of_a_run():
    one = {"kind": "chat", "priority": "HIGH", "worker": 0, "intended": 0, "sent": 10,
           "first": 2_000, "done": 3_000, "out": 1, "error": None, "ttft_met": True,
           "e2e_met": True, "met": True, "warmup": False}
    good = results_batch([one])
    backwards = results_batch([{**one, "done": 5}])   # done before sent: not one clock
    running = RunningSummary()
    running.add(good)
    running.add(backwards)                  # kept, not raised: the run goes on
    running.add(good.drop_columns(["warmup"]))
    with pytest.raises(ConfigError, match="negative e2e from sent"):
        running.finish(run={})
    with pytest.raises(ConfigError, match="lacks column"):
        summarize(pa.Table.from_batches([good]).drop_columns(["warmup"]).slice(0, 0), run={})


def test_bad_settings_are_refused_at_once():
    with pytest.raises(ConfigError, match="percents"):
        RunningSummary(percentiles=(50, 101))
    with pytest.raises(ConfigError, match="slice_s"):
        RunningSummary(slice_s=0.0)

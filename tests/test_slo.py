"""Exact-count and property tests of cpbench._core.slo (SloCounters, Timeslices)."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpbench._core.slo import SloCounters, Timeslices

S = 1_000_000_000


def test_slo_counters_exact_counts():
    c = SloCounters()
    # chat/HIGH: 3 requests, 2 completed (one met both, one only TTFT), 1 error whose flags
    # claim "met" but must not count; embedding/LOW: 1 completed, met.
    c.add_arrays(kind_codes=[0, 0, 0, 2], priority_codes=[0, 0, 0, 2],
                 completed=[True, True, False, True], errored=[False, False, True, False],
                 ttft_met=[True, True, True, True], e2e_met=[True, False, True, True],
                 slo_met=[True, False, True, True])
    assert c.counts("chat", "HIGH") == {"requests": 3, "completed": 2, "errors": 1,
                                        "ttft_met": 2, "e2e_met": 1, "slo_met": 1}
    assert c.counts("embedding") == {"requests": 1, "completed": 1, "errors": 0,
                                     "ttft_met": 1, "e2e_met": 1, "slo_met": 1}
    assert c.counts()["requests"] == 4 and c.counts(priority="NORMAL")["requests"] == 0
    assert c.attainment() == 0.5
    assert c.attainment("chat") == pytest.approx(1 / 3)
    assert math.isnan(c.attainment("completion"))
    assert c.goodput_rps(4.0) == 0.5
    c.add("completion", "NORMAL", completed=True, errored=False, ttft_met=True, e2e_met=True,
          slo_met=True)
    assert c.counts("completion", "NORMAL")["slo_met"] == 1


def test_slo_counters_reject_bad_input():
    c = SloCounters()
    with pytest.raises(ValueError, match="kind_codes"):
        c.add_arrays([3], [0], [1], [0], [1], [1], [1])
    with pytest.raises(ValueError, match="shape"):
        c.add_arrays([0, 1], [0], [1], [0], [1], [1], [1])
    with pytest.raises(ValueError, match="unknown class"):
        c.add("video", "HIGH", completed=True, errored=False, ttft_met=True, e2e_met=True,
              slo_met=True)
    with pytest.raises(ValueError, match="different classes"):
        c.merge(SloCounters(kinds=("chat",)))
    with pytest.raises(ValueError, match="window_s"):
        c.goodput_rps(0)


requests = st.lists(st.tuples(st.integers(0, 2), st.integers(0, 2), st.booleans(),
                              st.booleans(), st.booleans(), st.booleans()), max_size=60)


def _slo_from(rows):
    c = SloCounters()
    if rows:
        k, p, ok, t, e, m = (np.array(col) for col in zip(*rows))
        c.add_arrays(k, p, ok, ~ok, t, e, m)
    return c


@settings(max_examples=40, deadline=None)
@given(requests)
def test_widened_keeps_the_counts_and_adds_empty_classes(rows):
    """A label first seen in a later batch widens the classes; the counts so far stay put."""
    c = _slo_from(rows)
    wide = c.widened(c.kinds + ("rerank",), c.priorities + ("unknown",))
    assert wide.counts() == c.counts()
    for kind in c.kinds:
        for priority in c.priorities:
            assert wide.counts(kind, priority) == c.counts(kind, priority)
    assert wide.counts("rerank")["requests"] == wide.counts(priority="unknown")["requests"] == 0
    with pytest.raises(ValueError, match="start with"):
        c.widened(c.kinds[::-1], c.priorities)

@settings(max_examples=60, deadline=None)
@given(requests, requests)
def test_slo_merge_and_encode_are_exact(a, b):
    merged = _slo_from(a).merge(_slo_from(b))
    assert merged == _slo_from(a + b)
    assert SloCounters.decode(merged.encode()) == merged


def _columns(rows):
    """rows: (intended, lag, ttft, e2e, ok, met, tokens) -> add_arrays columns."""
    if not rows:
        z = np.zeros(0, np.int64)
        return z, z, z, z, z, z.astype(bool), z.astype(bool), z.astype(bool)
    intended, lag, ttft, e2e, ok, met, tokens = (np.array(c) for c in zip(*rows))
    sent = intended + lag
    first = np.where(ok, intended + ttft, -1)
    done = np.where(ok, intended + ttft + e2e, sent + 5)
    return intended, sent, first, done, tokens, ok, ~ok, met & ok


def _slices_from(rows, slice_ns=S):
    t = Timeslices(slice_ns)
    t.add_arrays(*_columns(rows))
    return t


rows_st = st.lists(st.tuples(st.integers(0, 5 * S), st.integers(0, 10**6),
                             st.integers(1_000, 3 * S), st.integers(0, 3 * S), st.booleans(),
                             st.booleans(), st.integers(0, 500)), max_size=80)


@settings(max_examples=60, deadline=None)
@given(rows_st)
def test_coarsening_equals_building_with_twice_the_slice(rows):
    # Exact: counters and every per-slice histogram, as if the slices had been 2 S long.
    assert _slices_from(rows).coarsen() == _slices_from(rows, 2 * S)
    assert _slices_from(rows).coarsen().coarsen() == _slices_from(rows, 4 * S)


def test_a_long_series_coarsens_itself_and_its_memory_stays_bounded():
    from cpbench._core.slo import MAX_SLICES
    # One request a second for 4 * MAX_SLICES seconds, fed in time order in batches: the
    # series ends with 4 s slices, no more than MAX_SLICES of them, and holds exactly what a
    # series built with 4 s slices from the start holds.
    t = np.arange(4 * MAX_SLICES, dtype=np.int64) * S
    cols = (t, t + 1_000, t + 50_000_000, t + 900_000_000, np.full(t.size, 7, np.int64),
            np.ones(t.size, bool), np.zeros(t.size, bool), np.ones(t.size, bool))
    grown = Timeslices(S)
    for lo in range(0, t.size, 500):
        grown.add_arrays(*(c[lo:lo + 500] for c in cols))
    direct = Timeslices(4 * S)
    direct.add_arrays(*cols)
    assert grown.slice_ns == 4 * S and grown.n_slices <= MAX_SLICES
    assert grown == direct
    assert grown.counters()["sent"].sum() == t.size


@settings(max_examples=60, deadline=None)
@given(rows_st, rows_st)
def test_timeslices_merge_equals_one_ingest_and_encode_roundtrips(a, b):
    merged = _slices_from(a).merge(_slices_from(b))
    both = _slices_from(a + b)
    assert merged == both
    assert Timeslices.decode(both.encode()) == both


@settings(max_examples=60, deadline=None)
@given(rows_st, rows_st, rows_st)
def test_timeslices_ingested_batch_by_batch_equal_one_ingest(a, b, c):
    """Batches in any time order (a late one reaching back to early slices, an empty one)
    fold into the very store one ingest of every row makes."""
    t = Timeslices(S)
    for batch in (a, [], b, c):
        t.add_arrays(*_columns(batch))
    one = _slices_from(a + b + c)
    assert t == one
    assert Timeslices.decode(t.encode()) == one

@settings(max_examples=40, deadline=None)
@given(rows_st, st.sampled_from([50, 90, 99, 100]))
def test_slice_percentiles_within_two_digit_bound(rows, p):
    t = _slices_from(rows)
    series = t.percentile_series("ttft", p)
    for s in range(t.n_slices):
        values = sorted(r[2] for r in rows if r[0] // S == s and r[4])
        if not values:
            assert math.isnan(series[s])
            continue
        want = values[max(1, math.ceil(p / 100 * len(values) * (1 - 1e-12))) - 1]
        assert abs(series[s] - want) <= want / 256


def test_timeslices_exact_counters():
    # Four requests over three 1 s slices:
    #  r0 scheduled 0.0 s, completed at 1.5 s with 10 tokens, met its deadlines;
    #  r1 scheduled 0.5 s, failed without a done time (counted at its send, 0.5 s);
    #  r2 scheduled 1.0 s, completed at 1.02 s with 20 tokens, missed;
    #  r3 scheduled 2.0 s, sent, still in flight at the end.
    intended = np.array([0, S // 2, S, 2 * S])
    sent = intended + 100
    first = np.array([5_000_000, -1, S + 7_000_000, -1])
    done = np.array([1_500_000_000, -1, S + 20_000_000, -1])
    t = Timeslices()
    t.add_arrays(intended, sent, first, done, [10, 0, 20, 0], [True, False, True, False],
                 [False, True, False, False], [True, False, False, False])
    c = t.counters()
    assert t.n_slices == 3
    assert list(c["scheduled"]) == [2, 1, 1]
    assert list(c["sent"]) == [2, 1, 1]
    assert list(c["completed"]) == [0, 2, 0]
    assert list(c["errors"]) == [1, 0, 0]
    assert list(c["output_tokens"]) == [0, 30, 0]
    assert list(c["slo_met"]) == [0, 1, 0]
    assert list(c["in_flight"]) == [1, 0, 1]
    assert list(t.slice_counts("ttft")) == [1, 1, 0]
    assert list(t.slice_counts("lag")) == [2, 1, 1]
    assert list(t.percentile_series("lag", 100)) == [100.0, 100.0, 100.0]
    e2e = t.percentile_series("e2e", 50)
    assert abs(e2e[0] - 1_500_000_000) <= 1_500_000_000 / 256
    assert math.isnan(e2e[2])


def test_timeslices_overflow_is_inf_and_early_send_is_zero_lag():
    t = Timeslices(highest_ns=10 * S)
    t.add_arrays([S], [S - 50], [S + 20 * S], [S + 30 * S], [1], [True], [False], [True])
    assert t.percentile_series("ttft", 50)[1] == math.inf
    assert t.percentile_series("lag", 50)[1] == 0.0


def test_timeslices_reject_bad_input_and_corrupt_blobs():
    with pytest.raises(ValueError, match="intended_ns"):
        Timeslices().add_arrays([-1], [0], [0], [0], [0], [True], [False], [True])
    with pytest.raises(ValueError, match="metric"):
        Timeslices().percentile_series("itl", 50)
    with pytest.raises(ValueError, match="digits"):
        Timeslices(digits=4)
    # 1 ns slices over a second would be 10^9 of them: the series lengthens its slices to
    # 2^20 ns (the first power of two that covers a second in 1,024 slices) instead.
    tiny = Timeslices(slice_ns=1)
    tiny.add_arrays([0, 10**9], [0, 10**9], [-1, -1], [-1, -1], [0, 0],
                    [False, False], [False, False], [False, False])
    assert tiny.slice_ns == 2**20 and tiny.n_slices == 10**9 // 2**20 + 1
    blob = _slices_from([(0, 10, 2_000, 3_000, True, True, 1)]).encode()
    for cut in range(0, len(blob), 7):
        with pytest.raises(ValueError, match="timeslices|cpbench"):
            Timeslices.decode(blob[:cut])
    broken = bytearray(blob)
    broken[len(blob) // 2] ^= 0xFF
    with pytest.raises(ValueError, match="timeslices blob"):
        Timeslices.decode(bytes(broken))


def test_one_hour_of_slices_stays_small():
    # One hour from 1 s slices, 300 requests per second with lognormal latencies: the sparse
    # per-slice histograms must keep the whole structure far below the 50 MB budget.
    rng = np.random.default_rng(11)
    n = 3600 * 300
    intended = np.sort(rng.integers(0, 3600 * S, n))
    lat = rng.lognormal(math.log(80e6), 0.7, n).astype(np.int64)
    ok = np.ones(n, bool)
    t = Timeslices()
    t.add_arrays(intended, intended + rng.integers(0, 200_000, n), intended + lat // 4,
                 intended + lat, np.full(n, 100), ok, ~ok, lat < 2e8)
    # Past 1,024 slices the series doubled its slices twice, to 4 s; completions of the last
    # seconds land after the hour.
    assert t.slice_ns == 4 * S and t.n_slices >= 900
    assert int(t.counters()["scheduled"].sum()) == n
    assert t.nbytes < 50 * 1024 * 1024

"""Property and known-answer tests of cpbench._core.hist.Histogram against brute-force NumPy."""
from __future__ import annotations

import math
import pickle
import statistics
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpbench._core.hist import Histogram, _bench_cdef_record

HOUR_NS = 3_600_000_000_000
in_range = st.integers(min_value=1_000, max_value=HOUR_NS)
any_value = st.integers(min_value=0, max_value=2**62)
percents = st.floats(min_value=0.0, max_value=100.0, allow_nan=False)


def exact_percentile(values, p):
    """Nearest rank with the percent read as the decimal it prints as.

    numpy.percentile(method="inverted_cdf") agrees except where float noise in p * n moves
    the rank by one (p=99.9, n=20000); those cases compare against this exact reference.
    """
    ordered = sorted(values)
    rank = max(1, math.ceil(Fraction(repr(float(p))) * len(ordered) / 100))
    return ordered[rank - 1]


@settings(max_examples=150, deadline=None)
@given(st.lists(in_range, min_size=1, max_size=300), st.lists(percents, min_size=1, max_size=8),
       st.sampled_from([2, 3, 4]), st.sampled_from([0, 1_000, 999_999]))
def test_percentiles_within_stated_relative_error(values, ps, digits, lowest_ns):
    # lowest_ns=999_999 gives a unit of 2**9 (3 digits): buckets start wider than 1 ns.
    values = [max(v, lowest_ns) for v in values]
    h = Histogram(lowest_ns=lowest_ns, digits=digits)
    h.record_array(np.array(values, dtype=np.int64))
    assert h.underflow_count == h.overflow_count == 0
    got = h.percentiles(ps)
    for p, g in zip(ps, got):
        want = exact_percentile(values, p)
        assert abs(int(g) - want) <= h.relative_error * want, (p, g, want)
        assert h.value_at_percentile(p) == g


@settings(max_examples=30, deadline=None)
@given(st.integers(min_value=0, max_value=2**32 - 1), st.sampled_from([0.5, 1.0, 2.0]))
def test_percentiles_on_lognormal_and_bimodal_streams(seed, sigma):
    rng = np.random.default_rng(seed)
    lognormal = rng.lognormal(math.log(50e6), sigma, 20_000).astype(np.int64)
    bimodal = np.where(rng.random(20_000) < 0.9, rng.normal(1e6, 1e5, 20_000),
                       rng.normal(2e9, 1e8, 20_000)).astype(np.int64)
    ps = [50, 90, 99, 99.9, 99.99]
    for values in (lognormal, bimodal):
        h = Histogram()
        h.record_array(values)
        want = np.array([exact_percentile(values, p) for p in ps])
        # numpy agrees wherever float noise does not move the rank.
        assert exact_percentile(values, 50) == np.percentile(values, 50, method="inverted_cdf")
        assert np.all(np.abs(h.percentiles(ps) - want) <= h.relative_error * want)
        assert h.relative_error <= 1e-3


@settings(max_examples=100, deadline=None)
@given(st.lists(any_value, max_size=200), st.lists(any_value, max_size=200))
def test_merge_equals_recording_both_streams(a, b):
    ha, hb, hab = Histogram(), Histogram(), Histogram()
    ha.record_array(np.array(a, dtype=np.int64))
    for v in b:
        hb.record(v)
    hab.record_array(np.array(a + b, dtype=np.int64))
    assert ha.merge(hb) == hab
    assert list(ha.percentiles([0, 50, 99, 100])) == list(hab.percentiles([0, 50, 99, 100]))
    assert (ha.mean == hab.mean) or (math.isnan(ha.mean) and math.isnan(hab.mean))


@settings(max_examples=100, deadline=None)
@given(st.lists(any_value, max_size=300), st.sampled_from([2, 3, 4]))
def test_decode_of_encode_is_identical(values, digits):
    h = Histogram(lowest_ns=0, digits=digits)
    h.record_array(np.array(values, dtype=np.int64))
    back = Histogram.decode(h.encode())
    assert back == h
    assert back.total_count == h.total_count == len(values)
    assert np.array_equal(back.counts_array(), h.counts_array())
    assert pickle.loads(pickle.dumps(h)) == h


def test_exact_moments_and_extremes():
    values = [1_000, 2_500, 7_777_777, 123_456_789_012, HOUR_NS]
    h = Histogram()
    for v in values:
        h.record(v)
    assert h.total_count == 5
    assert (h.min, h.max) == (1_000, HOUR_NS)
    assert h.mean == sum(values) / 5
    assert h.stdev == pytest.approx(statistics.pstdev(values), rel=1e-15)
    assert h.value_at_percentile(0) == 1_000 and h.value_at_percentile(100) == HOUR_NS


def test_out_of_range_values_are_counted_not_clipped():
    h = Histogram(lowest_ns=1_000, highest_ns=1_000_000)
    h.record_array(np.array([5, 10, 2_000, 3_000, 4_000, 7_000_000], dtype=np.int64))
    assert (h.underflow_count, h.overflow_count, h.total_count) == (2, 1, 6)
    assert (h.min, h.max) == (5, 7_000_000)
    assert int(h.counts_array().sum()) == 3
    # Ranks 1-2 are the underflow (reported as min), rank 6 the overflow (reported as max).
    # 4000 lies in a bucket of width 2 (values above 2047): its midpoint is 4001.
    assert list(h.percentiles([10, 33.3, 50, 66.7, 100])) == [5, 5, 2_000, 4_001, 7_000_000]
    assert h.mean == sum([5, 10, 2_000, 3_000, 4_000, 7_000_000]) / 6


def test_small_values_are_exact_with_lowest_zero():
    h = Histogram(lowest_ns=0)
    h.record_array(np.array([0, 0, 1, 2, 3, 1500], dtype=np.int64))
    assert h.underflow_count == 0
    assert list(h.percentiles([0, 33, 50, 66, 83, 100])) == [0, 0, 1, 2, 3, 1500]


def test_negative_values_raise_and_record_nothing():
    h = Histogram()
    with pytest.raises(ValueError, match="-3"):
        h.record(-3)
    with pytest.raises(ValueError, match="index 2"):
        h.record_array(np.array([5_000, 6_000, -1, 7_000], dtype=np.int64))
    assert h.total_count == 0
    with pytest.raises(ValueError):
        h.record_corrected(-1, 10)


def test_record_corrected_fills_in_the_stalled_samples():
    h = Histogram(lowest_ns=0)
    h.record_corrected(1_500, 300)
    assert h.total_count == 5
    assert list(h.percentiles([0, 20, 40, 60, 80, 100])) == [300, 300, 600, 900, 1_200, 1_500]
    h.record_corrected(500, 1_000)
    assert h.total_count == 6


def test_cdef_record_path_matches_record_array():
    values = np.random.default_rng(7).lognormal(15, 2, 50_000).astype(np.int64)
    a, b = Histogram(), Histogram()
    a.record_array(values)
    _bench_cdef_record(b, values)
    assert a == b


def test_empty_histogram():
    h = Histogram()
    assert h.total_count == 0 and h.min == 0 and h.max == 0
    assert math.isnan(h.mean) and math.isnan(h.stdev)
    assert list(h.percentiles([50, 99])) == [0, 0]
    assert Histogram.decode(h.encode()) == h


def test_invalid_arguments_raise():
    with pytest.raises(ValueError, match="digits"):
        Histogram(digits=5)
    with pytest.raises(ValueError, match="lowest_ns"):
        Histogram(lowest_ns=-1)
    with pytest.raises(ValueError, match="highest_ns"):
        Histogram(highest_ns=2**60)
    with pytest.raises(ValueError, match=r"\[0, 100\]"):
        Histogram().percentiles([101])
    with pytest.raises(ValueError, match="layouts"):
        Histogram().merge(Histogram(digits=2))


def test_memory_within_budget():
    assert Histogram().nbytes <= 300 * 1024


def _sample_blob():
    h = Histogram()
    h.record_array(np.random.default_rng(3).lognormal(17, 1, 5_000).astype(np.int64))
    return h.encode()


def test_truncated_blob_raises_value_error():
    blob = _sample_blob()
    for cut in range(len(blob)):
        with pytest.raises(ValueError, match="histogram blob|cpbench histogram"):
            Histogram.decode(blob[:cut])


@settings(max_examples=200, deadline=None)
@given(st.data())
def test_corrupted_blob_raises_value_error(data):
    blob = bytearray(_BLOB)
    pos = data.draw(st.integers(0, len(blob) - 1))
    blob[pos] ^= data.draw(st.integers(1, 255))
    with pytest.raises(ValueError, match="histogram blob|cpbench histogram"):
        Histogram.decode(bytes(blob))


_BLOB = _sample_blob()


def test_wrong_version_is_named():
    blob = bytearray(_BLOB)
    blob[4] = 9
    body = bytes(blob[:-4])
    import zlib
    with pytest.raises(ValueError, match="version 9"):
        Histogram.decode(body + zlib.crc32(body).to_bytes(4, "little"))


def test_record_array_equals_per_value_records_across_blocks():
    # record_array works in blocks of 1024; blocks with and without out-of-range values.
    rng = np.random.default_rng(9)
    values = rng.lognormal(15, 3, 5_000).astype(np.int64)
    values[[10, 2_500, 4_999]] = [3, 2**60, 0]
    bulk, one_by_one = Histogram(), Histogram()
    bulk.record_array(values)
    for v in values.tolist():
        one_by_one.record(v)
    assert bulk == one_by_one
    assert bulk.underflow_count >= 2 and bulk.overflow_count >= 1
    assert bulk.mean == float(np.sum(values.astype(object))) / values.size

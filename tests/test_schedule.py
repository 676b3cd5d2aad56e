"""cpbench._core.schedule: statistics, reproducibility and parameter checks of arrival schedules."""
from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy import stats

from cpbench._core import schedule

GOLDEN = Path(__file__).parent / "data" / "schedule_golden.json"
NS = 1e9


def gaps_s(arrivals: np.ndarray) -> np.ndarray:
    return np.diff(arrivals) / NS


# --- shapes and reproducibility --------------------------------------------------------------

@pytest.mark.parametrize("make", [
    lambda **kw: schedule.poisson(200.0, **kw, seed=1),
    lambda **kw: schedule.gamma(200.0, 0.5, **kw, seed=1),
    lambda **kw: schedule.burst(10.0, 500.0, 0.5, 2.0, **kw, seed=1),
    lambda **kw: schedule.ramp(50.0, 400.0, **kw, seed=1),
    lambda **kw: schedule.uniform(200.0, **kw),
])
def test_sorted_int64_nonnegative_by_count_and_duration(make):
    by_count = make(count=5000)
    assert by_count.dtype == np.int64 and by_count.shape == (5000,)
    assert by_count[0] >= 0 and np.all(np.diff(by_count) >= 0)
    by_duration = make(duration_s=3.0)
    assert by_duration.dtype == np.int64
    assert np.all(np.diff(by_duration) >= 0)
    assert by_duration.size == 0 or by_duration[-1] < 3 * NS


def test_same_seed_same_schedule_other_seed_differs():
    a = schedule.poisson(1000.0, count=10_000, seed=42)
    b = schedule.poisson(1000.0, count=10_000, seed=42)
    c = schedule.poisson(1000.0, count=10_000, seed=43)
    assert np.array_equal(a, b)
    assert not np.array_equal(a, c)


def test_seed_sequence_accepted_and_equivalent_to_int():
    a = schedule.gamma(100.0, 2.0, count=1000, seed=np.random.SeedSequence(7))
    b = schedule.gamma(100.0, 2.0, count=1000, seed=7)
    assert np.array_equal(a, b)


def test_duration_prefix_of_count_schedule():
    """By duration is the same stream cut at the deadline, whatever buffer growth happened."""
    by_count = schedule.poisson(500.0, count=20_000, seed=3)
    by_duration = schedule.poisson(500.0, duration_s=10.0, seed=3)
    assert np.array_equal(by_duration, by_count[: by_duration.size])
    assert by_count[by_duration.size] >= 10 * NS


def test_known_answers_match_golden_vectors():
    """Bit-for-bit reproducibility promise: stored schedules for fixed seeds never change silently."""
    golden = json.loads(GOLDEN.read_text())
    for name, case in golden.items():
        fn = getattr(schedule, case["fn"])
        got = fn(*case["args"], **case["kwargs"])
        assert got.tolist() == case["expected"], name


def test_uniform_exact_gaps():
    a = schedule.uniform(4.0, count=5)
    assert a.tolist() == [0, 250_000_000, 500_000_000, 750_000_000, 1_000_000_000]
    assert schedule.uniform(10.0, duration_s=1.0).tolist() == [i * 100_000_000 for i in range(10)]
    assert schedule.uniform(3.0, count=0).size == 0


# --- statistics ------------------------------------------------------------------------------

@pytest.mark.parametrize("seed", [0, 1, 2, 3, 4])
def test_poisson_gaps_pass_ks_against_exponential(seed):
    rate = 1000.0
    g = gaps_s(schedule.poisson(rate, count=20_001, seed=seed))
    result = stats.kstest(g, "expon", args=(0, 1 / rate))
    assert result.pvalue > 0.001, result


def test_poisson_mean_rate_within_one_percent_on_a_million():
    a = schedule.poisson(2500.0, count=1_000_000, seed=11)
    achieved = (a.size - 1) / ((a[-1] - a[0]) / NS)
    assert abs(achieved / 2500.0 - 1) < 0.01


@pytest.mark.parametrize("shape", [0.25, 0.5, 1.0, 4.0])
def test_gamma_cv_is_one_over_sqrt_shape(shape):
    g = gaps_s(schedule.gamma(1000.0, shape, count=400_001, seed=5))
    cv = g.std() / g.mean()
    assert abs(cv / (1 / math.sqrt(shape)) - 1) < 0.02
    assert abs(g.mean() * 1000.0 - 1) < 0.02


def test_burst_rates_inside_and_outside_bursts():
    base, peak, on_s, period_s = 20.0, 400.0, 2.0, 10.0
    a = schedule.burst(base, peak, on_s, period_s, duration_s=2000.0, seed=9)
    phase = (a / NS) % period_s
    inside = np.count_nonzero(phase < on_s) / (2000.0 / period_s * on_s)
    outside = np.count_nonzero(phase >= on_s) / (2000.0 / period_s * (period_s - on_s))
    assert abs(inside / peak - 1) < 0.02
    assert abs(outside / base - 1) < 0.05


def test_burst_with_zero_base_is_silent_between_bursts():
    a = schedule.burst(0.0, 300.0, 0.5, 5.0, count=10_000, seed=2)
    phase = (a / NS) % 5.0
    assert np.all(phase < 0.5 + 1e-9)


def test_ramp_instantaneous_rate_follows_the_line():
    r0, r1, duration = 100.0, 1100.0, 200.0
    a = schedule.ramp(r0, r1, duration_s=duration, seed=4) / NS
    counts, edges = np.histogram(a, bins=20, range=(0, duration))
    centres = (edges[:-1] + edges[1:]) / 2
    expected = (r0 + (r1 - r0) * centres / duration) * (duration / 20)
    assert np.all(np.abs(counts / expected - 1) < 0.05)
    assert abs(a.size / ((r0 + r1) / 2 * duration) - 1) < 0.01


def test_ramp_by_count_spans_the_expected_time():
    a = schedule.ramp(0.0, 1000.0, count=50_000, seed=6)
    # 50_000 arrivals are expected by 2 * 50_000 / (0 + 1000) = 100 s.
    assert abs(a[-1] / NS / 100.0 - 1) < 0.02


@settings(max_examples=40, deadline=None)
@given(rate=st.floats(0.5, 1e5), count=st.integers(0, 2000), seed=st.integers(0, 2**63))
def test_any_valid_poisson_is_sorted_and_sized(rate, count, seed):
    a = schedule.poisson(rate, count=count, seed=seed)
    assert a.size == count
    assert np.all(np.diff(a) >= 0) and (count == 0 or a[0] >= 0)


# --- bad parameters --------------------------------------------------------------------------

@pytest.mark.parametrize("call, fragment", [
    (lambda: schedule.poisson(0, count=1, seed=1), "rate_rps"),
    (lambda: schedule.poisson(-3, count=1, seed=1), "rate_rps"),
    (lambda: schedule.poisson(float("nan"), count=1, seed=1), "rate_rps"),
    (lambda: schedule.poisson(float("inf"), count=1, seed=1), "rate_rps"),
    (lambda: schedule.poisson("fast", count=1, seed=1), "rate_rps"),
    (lambda: schedule.poisson(1.0, count=-1, seed=1), "count"),
    (lambda: schedule.poisson(1.0, count=2.5, seed=1), "count"),
    (lambda: schedule.poisson(1.0, seed=1), "exactly one"),
    (lambda: schedule.poisson(1.0, count=1, duration_s=1, seed=1), "exactly one"),
    (lambda: schedule.poisson(1.0, duration_s=-1, seed=1), "duration_s"),
    (lambda: schedule.poisson(1.0, count=1), "seed"),
    (lambda: schedule.poisson(1.0, count=1, seed=-5), "seed"),
    (lambda: schedule.gamma(1.0, 0, count=1, seed=1), "shape"),
    (lambda: schedule.burst(10, 5, 1, 2, count=1, seed=1), "burst_rps"),
    (lambda: schedule.burst(1, 5, 3, 2, count=1, seed=1), "burst_s"),
    (lambda: schedule.burst(-1, 5, 1, 2, count=1, seed=1), "base_rps"),
    (lambda: schedule.ramp(1, 0, count=1, seed=1), "end_rps"),
    (lambda: schedule.poisson(1e9, duration_s=1e6, seed=1), "duration_s"),
])
def test_bad_parameters_raise_value_error_naming_them(call, fragment):
    with pytest.raises(ValueError, match=fragment):
        call()

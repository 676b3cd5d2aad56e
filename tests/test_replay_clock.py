"""The NTP-style offset estimator against injected clock offsets and asymmetric delays."""
from __future__ import annotations

import pytest
from hypothesis import given, strategies as st

from cpbench.replaying.clock import ClockSample, estimate_offset, measure_offset


class FakeLink:
    """A local clock, a remote clock ``offset_ns`` ahead, and per-round (out, back) delays."""

    def __init__(self, offset_ns: int, delays: list[tuple[int, int]], start_ns: int = 10**12):
        self.now = start_ns
        self.offset_ns = offset_ns
        self.delays = list(delays)

    def clock_ns(self) -> int:
        return self.now

    def read_remote_ns(self) -> int:
        out_ns, back_ns = self.delays.pop(0)
        self.now += out_ns
        remote = self.now + self.offset_ns
        self.now += back_ns
        return remote


def test_symmetric_delay_recovers_the_offset_exactly():
    link = FakeLink(offset_ns=-3_000_000_017, delays=[(400_000, 400_000)] * 4)
    est = measure_offset(link.read_remote_ns, rounds=4, clock_ns=link.clock_ns)
    assert est.offset_ns == -3_000_000_017
    assert est.rtt_ns == 800_000 and est.uncertainty_ns == 400_000 and est.samples == 4


def test_the_minimum_rtt_sample_is_kept():
    # A queued round trip (5 ms out) would be 2.5 ms off; the 100 µs one is exact.
    link = FakeLink(offset_ns=7_000, delays=[(5_000_000, 50_000), (50_000, 50_000),
                                             (900_000, 900_000)])
    est = measure_offset(link.read_remote_ns, rounds=3, clock_ns=link.clock_ns)
    assert est.offset_ns == 7_000 and est.rtt_ns == 100_000 and est.uncertainty_ns == 50_000


def test_asymmetric_delay_errs_by_half_the_difference():
    # Out 300 µs, back 100 µs: the midpoint guess is 100 µs early, so the estimate is 100 µs
    # high, inside the stated uncertainty of 200 µs.
    est = estimate_offset([ClockSample(0, 300_000 + 5_000_000, 400_000)])
    assert est.offset_ns == 5_000_000 + 100_000
    assert est.uncertainty_ns == 200_000


@given(offset=st.integers(-10**15, 10**15),
       delays=st.lists(st.tuples(st.integers(0, 10**8), st.integers(0, 10**8)),
                       min_size=1, max_size=12))
def test_the_true_offset_is_always_within_the_uncertainty(offset, delays):
    link = FakeLink(offset, delays)
    est = measure_offset(link.read_remote_ns, rounds=len(delays), clock_ns=link.clock_ns)
    assert abs(est.offset_ns - offset) <= est.uncertainty_ns
    assert est.rtt_ns == min(a + b for a, b in delays)
    assert est.to_remote(123) == 123 + est.offset_ns


def test_bad_samples_are_refused():
    with pytest.raises(ValueError):
        estimate_offset([])
    with pytest.raises(ValueError):
        estimate_offset([ClockSample(10, 0, 5)])

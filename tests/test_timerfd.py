"""cpbench.replaying.timer.MonotonicTimer: readable from its instant on, quiet again once re-armed;
and the worker's real-time request that may be refused."""
from __future__ import annotations

import select
import time

from cpbench.replaying.timer import MonotonicTimer


def test_fires_at_its_instant_and_rearming_or_clearing_resets_it():
    timer = MonotonicTimer()
    ep = select.epoll()
    try:
        ep.register(timer.fd, select.EPOLLIN)
        at = time.monotonic_ns() + 2_000_000
        timer.arm(at)
        assert ep.poll(5.0)
        assert time.monotonic_ns() >= at                  # never before its instant
        timer.arm(time.monotonic_ns() + 10**10)
        assert ep.poll(0) == []                            # re-armed: quiet again, no read
        timer.arm(1)                                       # an instant long past: at once
        assert ep.poll(5.0)
        timer.clear()
        assert ep.poll(0) == []
    finally:
        ep.close()
        timer.close()


def test_realtime_refusal_is_reported_not_raised():
    # The worker turns this string into its one-line warning and runs at normal priority.
    from cpbench.replaying.child import set_realtime
    problem = set_realtime(100)                     # outside SCHED_FIFO's 1-99 for anyone
    assert isinstance(problem, str) and problem

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


def test_a_slice_request_reads_back_what_the_kernel_took():
    # In a thread of its own: the setting is per thread and must not outlive the test.
    import threading

    from support import custom_slices

    from cpbench.replaying.timer import request_slice
    got: dict = {}

    def ask() -> None:
        got["slice"] = request_slice(200_000)
        with open("/proc/thread-self/sched") as fh:
            got["sched"] = fh.read()
        got["clamped"] = request_slice(10)          # below the kernel's 0.1 ms floor

    t = threading.Thread(target=ask)
    t.start()
    t.join()
    if custom_slices():
        assert got["slice"] == 200_000
        line = next(x for x in got["sched"].splitlines() if x.startswith("se.slice"))
        assert int(line.split(":")[1]) == 200_000
        assert got["clamped"] == 0                  # the kernel made it 0.1 ms, not 10 ns
    else:
        assert got["slice"] == 0 and got["clamped"] == 0


def test_a_slice_request_leaves_a_real_time_thread_real_time():
    # A worker started under `chrt -f` (or --realtime) must stay SCHED_FIFO: a sched_setattr
    # naming SCHED_OTHER would quietly demote it.
    import os
    import threading

    import pytest

    from cpbench.replaying.timer import request_slice
    got: dict = {}

    def ask() -> None:
        try:
            os.sched_setscheduler(0, os.SCHED_FIFO, os.sched_param(1))
        except PermissionError:
            got["skip"] = True
            return
        got["slice"] = request_slice(200_000)
        got["policy"] = os.sched_getscheduler(0)

    t = threading.Thread(target=ask)
    t.start()
    t.join()
    if got.get("skip"):
        pytest.skip("SCHED_FIFO needs root or CAP_SYS_NICE")
    assert got == {"slice": 0, "policy": os.SCHED_FIFO}

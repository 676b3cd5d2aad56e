"""A Linux timerfd on CLOCK_MONOTONIC: a file descriptor that turns readable at an instant.

Event-loop timers (asyncio's and libuv's) wake in whole milliseconds. A timerfd is an ordinary
descriptor in the loop's own epoll set, armed for an absolute nanosecond instant, so the loop
wakes when a send is due and handles responses in the same wait: no second poll, no task
switch, no spinning. With the process's timer slack at 1 ns the kernel fires it within
microseconds. This module creates, clears and closes the descriptor (Python 3.13's
``os.timerfd_create``, before that libc through ctypes); arming it is one C call,
:func:`cpbench._core.conn.arm_timerfd`, the one the compiled ``Sender`` makes before each send.
"""
from __future__ import annotations

import ctypes
import os
import platform
import struct

from cpbench._core.conn import arm_timerfd
from cpbench.errors import CpbenchError

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_PR_SET_TIMERSLACK = 29
_PR_SET_NAME = 15
# struct sched_attr as of SCHED_ATTR_SIZE_VER1 (56 bytes): size, policy, flags, nice,
# priority, runtime, deadline, period, util_min, util_max. The syscall numbers per machine.
_SCHED_ATTR = struct.Struct("=IIQiIQQQII")
_SCHED_SETATTR, _SCHED_GETATTR = {"x86_64": (314, 315), "aarch64": (274, 275)}.get(
    platform.machine(), (None, None))
WORKER_SLICE_NS = 100_000        # a replay worker's scheduler time slice (request_slice)


def _libc():
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.timerfd_create  # noqa: B018 - present, or AttributeError
        return libc
    except (OSError, AttributeError):
        return None


_LIBC = _libc()


class MonotonicTimer:
    """One-shot timer: :meth:`arm` it for an absolute ``time.monotonic_ns()`` instant; its
    descriptor :attr:`fd` is readable from then until :meth:`clear` or the next :meth:`arm`.

    Raises
    ------
    CpbenchError
        Not on Linux (no timerfd).
    """

    def __init__(self) -> None:
        if hasattr(os, "timerfd_create"):
            self.fd = os.timerfd_create(os.CLOCK_MONOTONIC,
                                        flags=os.TFD_NONBLOCK | os.TFD_CLOEXEC)
        elif _LIBC is not None:
            self.fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if self.fd < 0:
                raise CpbenchError(f"timerfd_create failed: {os.strerror(ctypes.get_errno())}")
        else:
            raise CpbenchError("cpbench replay needs Linux: it times its sends with a timerfd")

    def arm(self, at_ns: int) -> None:
        """Fire at ``at_ns`` (absolute CLOCK_MONOTONIC ns); an instant past fires at once."""
        arm_timerfd(self.fd, at_ns)

    def clear(self) -> None:
        """Consume the expiry, so the descriptor stops being readable."""
        try:
            os.read(self.fd, 8)
        except BlockingIOError:
            pass

    def close(self) -> None:
        os.close(self.fd)


def tighten_timer_slack() -> bool:
    """Ask Linux for 1 ns timer slack in this process instead of the default 50 µs.

    The kernel may defer a normal process's timer wake-up by its slack: at the default that
    was most of the median dispatch lag. Returns whether the setting took.
    """
    return _LIBC is not None and _LIBC.prctl(_PR_SET_TIMERSLACK, 1, 0, 0, 0) == 0


def name_thread(name: str) -> bool:
    """Give the calling thread (and the threads it starts from now on) the command name
    ``name``, cut to 15 bytes, as ``ps``, ``top -H`` and ``perf`` show it. Returns whether it
    took."""
    return _LIBC is not None and \
        _LIBC.prctl(_PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0) == 0


def request_slice(slice_ns: int) -> int:
    """Ask the scheduler for a ``slice_ns`` time slice for the calling thread; returns
    ``slice_ns`` when the kernel took it, else 0.

    Since Linux 6.12 a normal (SCHED_OTHER or SCHED_BATCH) thread may choose its EEVDF slice,
    0.1 to 100 ms, through ``sched_setattr``'s ``sched_runtime``, without privileges. A shorter
    slice means an earlier virtual deadline, so a worker woken for a due send preempts a busy
    process at once instead of waiting out that process's slice (1.4 ms by default on the
    2-core machine where this was measured). Measured there with 2 workers and nginx on the
    same cores, four interleaved runs each: dispatch-lag p99 median at 32,000 chat req/s 1.15
    -> 0.72 ms (runs held 1 -> 3 of 4), at 36,000 1.20 -> 1.02 ms, embeddings at 36,000 1.01
    -> 0.82 ms; at 4,000 chat req/s the wire's KS distance to the exponential 1.81-2.20x ->
    0.77-1.43x the ideal and lag p99 88-118 -> 69-74 us.

    A thread under any other policy (SCHED_FIFO from ``--realtime`` or ``chrt``, SCHED_IDLE) is
    left as it is: the call would move it to the policy it names. An older kernel ignores the
    field for a normal thread and reads back its own slice or 0: either way, 0 here.
    """
    if _LIBC is None or _SCHED_SETATTR is None:
        return 0
    policy = os.sched_getscheduler(0)
    if policy not in (os.SCHED_OTHER, os.SCHED_BATCH):
        return 0
    attr = ctypes.create_string_buffer(
        _SCHED_ATTR.pack(_SCHED_ATTR.size, policy, 0, os.getpriority(os.PRIO_PROCESS, 0), 0,
                         slice_ns, 0, 0, 0, 0), _SCHED_ATTR.size)
    if _LIBC.syscall(_SCHED_SETATTR, 0, attr, 0) != 0:
        return 0
    got = ctypes.create_string_buffer(_SCHED_ATTR.size)
    if _LIBC.syscall(_SCHED_GETATTR, 0, got, _SCHED_ATTR.size, 0) != 0:
        return 0
    return slice_ns if _SCHED_ATTR.unpack(got.raw)[5] == slice_ns else 0

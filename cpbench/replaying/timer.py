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

from cpbench._core.conn import arm_timerfd
from cpbench.errors import CpbenchError

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_PR_SET_TIMERSLACK = 29


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

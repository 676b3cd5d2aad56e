"""A Linux timerfd on CLOCK_MONOTONIC: a file descriptor that turns readable at an instant.

Event-loop timers (asyncio's and libuv's) wake in whole milliseconds. A timerfd is an ordinary
descriptor in the loop's own epoll set, armed for an absolute nanosecond instant, so the loop
wakes when a send is due and handles responses in the same wait: no second poll, no task
switch, no spinning. With the process's timer slack at 1 ns the kernel fires it within
microseconds. This module creates, clears and closes the descriptor; on the send path the
compiled :class:`cpbench._core.conn.Sender` re-arms it with ``timerfd_settime`` itself, and
:meth:`MonotonicTimer.arm` is the same call from Python (Python 3.13's ``os.timerfd_*``, before
that libc through ctypes).
"""
from __future__ import annotations

import ctypes
import os

from cpbench.errors import CpbenchError

_CLOCK_MONOTONIC = 1
_TFD_NONBLOCK = 0o4000
_TFD_CLOEXEC = 0o2000000
_TFD_TIMER_ABSTIME = 1
_PR_SET_TIMERSLACK = 29


class _Timespec(ctypes.Structure):
    _fields_ = [("tv_sec", ctypes.c_long), ("tv_nsec", ctypes.c_long)]


class _Itimerspec(ctypes.Structure):
    _fields_ = [("it_interval", _Timespec), ("it_value", _Timespec)]


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
            self._settime = self._settime_os
        elif _LIBC is not None:
            self.fd = _LIBC.timerfd_create(_CLOCK_MONOTONIC, _TFD_NONBLOCK | _TFD_CLOEXEC)
            if self.fd < 0:
                raise CpbenchError(f"timerfd_create failed: {os.strerror(ctypes.get_errno())}")
            self._spec = _Itimerspec()
            self._spec_ref = ctypes.byref(self._spec)
            self._settime = self._settime_ctypes
        else:
            raise CpbenchError("cpbench replay needs Linux: it times its sends with a timerfd")

    def arm(self, at_ns: int) -> None:
        """Fire at ``at_ns`` (absolute CLOCK_MONOTONIC ns); an instant past fires at once."""
        self._settime(max(1, at_ns))            # 0 would disarm it

    def _settime_os(self, at_ns: int) -> None:
        os.timerfd_settime_ns(self.fd, flags=os.TFD_TIMER_ABSTIME, initial=at_ns)

    def _settime_ctypes(self, at_ns: int) -> None:
        value = self._spec.it_value
        value.tv_sec, value.tv_nsec = divmod(at_ns, 1_000_000_000)
        _LIBC.timerfd_settime(self.fd, _TFD_TIMER_ABSTIME, self._spec_ref, None)

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

"""The periodic background thread every monitor sampler runs on.

A sampler samples once at start (a baseline at t≈0), then on a fixed grid of
``interval_s`` ticks, skipping ticks it was too late for rather than bunching them up.
A failing sample is counted and its message kept: a monitor never ends a run.
"""
from __future__ import annotations

import threading
import time

from cpbench.monitor.store import SampleBuffer


class PeriodicSampler:
    """Base class: calls :meth:`sample` every ``interval_s`` on a daemon thread.

    Subclasses implement :meth:`sample` (append rows to :attr:`buffer`; raise on failure)
    and may override :meth:`setup` / :meth:`teardown`.

    Parameters
    ----------
    name : str
        Thread name suffix, for debuggers.
    interval_s : float
        Seconds between samples, > 0.
    clock_origin_ns : int
        ``time.monotonic_ns()`` of the run start; samples are stamped relative to it.
    max_rows : int, optional
        Bound of the sample buffer.
    """

    def __init__(self, name: str, interval_s: float, clock_origin_ns: int,
                 max_rows: int | None = None) -> None:
        self.name = name
        self.interval_ns = max(1, int(interval_s * 1e9))
        self.clock_origin_ns = clock_origin_ns
        self.buffer = SampleBuffer() if max_rows is None else SampleBuffer(max_rows)
        self.samples = 0
        self.failures = 0
        self.last_error: str | None = None
        self.skipped_ticks = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def now_ns(self) -> int:
        """The run clock: nanoseconds since ``clock_origin_ns``."""
        return time.monotonic_ns() - self.clock_origin_ns

    def setup(self) -> bool:
        """Prepare to sample; return False to not start the thread at all."""
        return True

    def sample(self) -> None:  # pragma: no cover - abstract
        raise NotImplementedError

    def teardown(self) -> None:
        """Release what :meth:`setup` acquired; runs after the thread ended."""

    def start(self) -> None:
        """Run :meth:`setup`, then start sampling on a daemon thread."""
        if self._thread is not None:
            return
        if not self.setup():
            return
        thread = threading.Thread(
            target=self._run, name=f"cpbench-monitor-{self.name}", daemon=True)
        try:
            thread.start()
        except BaseException:
            self.teardown()  # release NVML: stop() will find no thread to wait for
            raise
        self._thread = thread

    def signal_stop(self) -> None:
        """Ask the thread to end after its current sample; returns at once."""
        self._stop.set()

    def stop(self, timeout_s: float = 2.0) -> bool:
        """Stop sampling; return False if the thread did not end within ``timeout_s``.

        A thread stuck in a call (a scrape past its own timeout) is a daemon and is left
        behind rather than holding up the run's end.
        """
        self._stop.set()
        ended = True
        if self._thread is not None:
            self._thread.join(timeout_s)
            ended = not self._thread.is_alive()
        if ended:
            self.teardown()
        return ended

    @property
    def running(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _sample_guarded(self) -> None:
        try:
            self.sample()
            self.samples += 1
        except Exception as exc:  # noqa: BLE001 - a monitor must never end the run
            self.failures += 1
            self.last_error = f"{type(exc).__name__}: {exc}"

    def _run(self) -> None:
        next_ns = time.monotonic_ns()
        while not self._stop.is_set():
            self._sample_guarded()
            next_ns += self.interval_ns
            now = time.monotonic_ns()
            if now >= next_ns:
                # Late (a slow scrape, a starved thread): keep the grid, drop missed ticks.
                missed = (now - next_ns) // self.interval_ns + 1
                self.skipped_ticks += missed
                next_ns += missed * self.interval_ns
            self._stop.wait((next_ns - now) / 1e9)
        # One last sample at the stop, so counters (prefix-cache hits) cover the whole run.
        self._sample_guarded()

"""The arrival process as the wire saw it: tcpdump on lo, then CV, KS distance and lag.

The capture itself is :class:`bench_replay.WireCapture` (request packets whose payload starts
with ``POST``); this module adds the statistics the suite reports for every tool and point.
"""
from __future__ import annotations

import socket
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))   # tools/ for bench_replay
from bench_replay import WireCapture, start_nginx  # noqa: E402  (re-exported for the suite)

__all__ = ["ReadyCapture", "start_nginx", "gap_stats", "ideal_ks", "wire_lag_ms"]

SENTINEL = b"POST /health HTTP/1.1\r\nHost: bench\r\nContent-Length: 0\r\n\r\n"


class ReadyCapture(WireCapture):
    """A :class:`WireCapture` that is known to capture before the measured run starts.

    tcpdump says "listening" before the kernel filter passes packets (on a busy host the
    first second of a run went missing): POST sentinels to ``/health`` until one lands in the
    file, then drop everything captured up to that moment.
    """

    def __init__(self, port: int, path: Path, ready_s: float = 10.0) -> None:
        super().__init__(port, path)
        self.port = port
        deadline = time.monotonic() + ready_s
        while time.monotonic() < deadline:
            self._sentinel()
            end = time.monotonic() + 0.2
            while time.monotonic() < end and _size(path) <= 24:
                time.sleep(0.01)
            if _size(path) > 24:
                break
        self.ready_ns = time.time_ns()

    def _sentinel(self) -> None:
        with socket.create_connection(("127.0.0.1", self.port), timeout=2) as sock:
            sock.sendall(SENTINEL)
            sock.recv(4096)

    def stop(self, settle_s: float = 0.3, drain_s: float = 10.0) -> np.ndarray:
        """Drain, then stop: tcpdump interrupted while behind drops what it has not read.

        A trailing sentinel queues behind every request packet; once the file has grown past
        it and stayed the same for ``settle_s``, everything before it is written.
        """
        end_ns = time.time_ns()
        before = _size(self.path)
        self._sentinel()
        deadline = time.monotonic() + drain_s
        last, since = _size(self.path), time.monotonic()
        while time.monotonic() < deadline:
            time.sleep(0.05)
            now = _size(self.path)
            if now != last:
                last, since = now, time.monotonic()
            elif now > before and time.monotonic() - since >= settle_s:
                break
        times = super().stop()
        return times[(times > self.ready_ns) & (times < end_ns)]


def _size(path: Path) -> int:
    try:
        return path.stat().st_size
    except OSError:
        return 0


def ks_exponential(gaps: np.ndarray) -> float:
    """Kolmogorov–Smirnov distance of ``gaps`` (scaled by their mean) to Exp(1)."""
    x = np.sort(np.asarray(gaps, np.float64) / np.mean(gaps))
    n = len(x)
    cdf = 1.0 - np.exp(-x)
    i = np.arange(1, n + 1)
    return float(max(np.max(i / n - cdf), np.max(cdf - (i - 1) / n)))


def ideal_ks(n_gaps: int, seed: int = 1, repeats: int = 20) -> float:
    """Median KS distance of ideal Poisson samples of ``n_gaps`` gaps (the yardstick)."""
    rng = np.random.Generator(np.random.PCG64(seed))
    return float(np.median([ks_exponential(rng.standard_exponential(n_gaps))
                            for _ in range(repeats)]))


def gap_stats(times_ns: np.ndarray) -> dict:
    """Count, achieved rate, inter-arrival CV and KS distance of sorted arrival times."""
    t = np.sort(np.asarray(times_ns, np.int64))
    if len(t) < 3:
        return {"packets": int(len(t)), "achieved_rps": None, "cv": None, "ks": None,
                "ks_ideal": None}
    gaps = np.diff(t).astype(np.float64)
    gaps = gaps[gaps > 0] if (gaps > 0).sum() > 2 else gaps + 1.0
    return {"packets": int(len(t)),
            "achieved_rps": float((len(t) - 1) / ((t[-1] - t[0]) / 1e9)),
            "cv": float(gaps.std() / gaps.mean()), "ks": ks_exponential(gaps),
            "ks_ideal": ideal_ks(len(gaps))}


def wire_lag_ms(wire_ns: np.ndarray, sent_ns: np.ndarray, intended_ns: np.ndarray) -> dict:
    """Lag of each request packet behind its intended time (a replayed, fixed trace).

    tcpdump stamps CLOCK_REALTIME, the trace CLOCK_MONOTONIC; the offset between them is the
    median of (wire - client's sent stamp), pairing the i-th packet with the i-th send: the
    kernel's write-to-capture path on lo is microseconds, so what is left is the lag.
    """
    w, s, i = (np.sort(np.asarray(a, np.int64)) for a in (wire_ns, sent_ns, intended_ns))
    n = min(len(w), len(s), len(i))
    if n < 2:
        return {"p50": None, "p99": None, "max": None}
    offset = np.median(w[:n] - s[:n])
    lag = (w[:n] - offset - i[:n]) / 1e6
    return {"p50": float(np.percentile(lag, 50)), "p99": float(np.percentile(lag, 99)),
            "max": float(lag.max())}

"""Is one probe of a rate search long enough to mean something? Steady-state checks on a run.

A knee search replays the workload at one rate per probe. A probe that squeezes its requests
into a moment ends before the control plane has queued anything, so every deadline is met
whatever the rate (150 requests at 2,385 req/s are 63 ms of load). This module reads one
run's ``results.arrow`` and hands ``sweep`` two numbers and a verdict:

- ``keep_up_pct``: requests completed during the second half of the send window per request
  sent in it, percent. A control plane that keeps up completes as many as arrive (Little's
  law, once the first requests are through); one past its capacity completes fewer, and the
  gap is the backlog growing. This is the throughput knee's criterion.
- ``too_short``: why the probe cannot show a steady state, or ``None``. Either the load ended
  before the requests it started were served (the send window is shorter than
  ``MIN_WINDOW_LATENCIES`` median end-to-end latencies, measured from the send), or the queue
  was still rising when it ended (``keep_up_pct`` below ``RISING_KEEP_UP_PCT``).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.ipc as ipc

from cpbench.errors import ConfigError

# The load must last this many median request latencies to show queueing; a request served in
# L seconds shapes the queue only for a window of several L.
MIN_WINDOW_LATENCIES = 5.0
# Below this keep-up percentage the backlog is still growing when the load stops.
RISING_KEEP_UP_PCT = 90.0
# Fewer sends than this in the measured half-window make keep_up_pct noise.
MIN_WINDOW_REQUESTS = 20


@dataclass(frozen=True)
class ProbeHealth:
    """Steady-state facts of one probe (``to_dict`` goes into ``experiment.json``)."""

    window_s: float            # first to last send
    median_e2e_ms: float       # from sent, completed requests; NaN when none completed
    keep_up_pct: float         # completed / sent in the second half of the window; NaN: none
    too_short: str | None

    def to_dict(self) -> dict:
        def num(v: float) -> float | None:
            return round(v, 3) if math.isfinite(v) else None
        return {"window_s": num(self.window_s), "median_e2e_ms": num(self.median_e2e_ms),
                "keep_up_pct": num(self.keep_up_pct), "too_short": self.too_short}


def keep_up_pct(sent_ns: np.ndarray, done_ns: np.ndarray) -> float:
    """Completions per send in the second half of the send window, percent (NaN: no sends).

    ``done_ns`` < 0 means never completed (failed requests count as not completed).
    """
    if len(sent_ns) == 0:
        return math.nan
    first, last = int(sent_ns.min()), int(sent_ns.max())
    mid = first + (last - first) // 2
    sent = int(np.count_nonzero((sent_ns >= mid) & (sent_ns <= last)))
    done = int(np.count_nonzero((done_ns >= mid) & (done_ns <= last)))
    return 100.0 * done / sent if sent else math.nan


def probe_health(result_dir: str | Path) -> ProbeHealth:
    """Read ``results.arrow`` of one probe and judge whether it reached a steady state."""
    path = Path(result_dir) / "results.arrow"
    try:
        with pa.memory_map(str(path)) as source:
            table = ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read {str(path)!r}: {exc}") from exc
    sent = table.column("sent_ns").to_numpy().astype(np.int64)
    done = table.column("done_ns").fill_null(-1).to_numpy().astype(np.int64)
    if "error_class" in table.column_names:
        failed = table.column("error_class").is_valid().to_numpy(zero_copy_only=False)
        done = np.where(failed, -1, done)
    if len(sent) == 0:
        return ProbeHealth(0.0, math.nan, math.nan, "no request was sent")
    window_s = (int(sent.max()) - int(sent.min())) / 1e9
    completed = done >= 0
    median_ms = float(np.median(done[completed] - sent[completed])) / 1e6 \
        if completed.any() else math.nan
    keep = keep_up_pct(sent, done)
    half = np.count_nonzero(sent >= int(sent.min()) + (int(sent.max()) - int(sent.min())) // 2)
    reason = None
    if math.isfinite(median_ms) and window_s * 1e3 < MIN_WINDOW_LATENCIES * median_ms:
        reason = (f"the load lasted {window_s:.2f} s, under {MIN_WINDOW_LATENCIES:g} median "
                  f"request latencies ({median_ms / 1e3:.2f} s each)")
    elif half < MIN_WINDOW_REQUESTS:
        reason = f"only {int(half)} requests in the second half of the load"
    elif keep < RISING_KEEP_UP_PCT:
        reason = (f"the queue was still rising when the load ended ({keep:.0f}% of the "
                  f"requests sent in the second half completed in it)")
    return ProbeHealth(window_s, median_ms, keep, reason)

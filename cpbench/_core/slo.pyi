"""Type stubs for cpbench._core.slo: SLO counters per class and per-slice time series.

Attribution rules and accuracy bounds are documented in slo.pyx's module docstring.
"""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

KINDS: tuple[str, ...]  # ("chat", "completion", "embedding")
PRIORITIES: tuple[str, ...]  # ("HIGH", "NORMAL", "LOW")
FIELDS: tuple[str, ...]  # ("requests", "completed", "errors", "ttft_met", "e2e_met", "slo_met")
COUNTER_NAMES: tuple[str, ...]
METRICS: tuple[str, ...]  # ("ttft", "e2e", "lag")
MAX_SLICES: int  # add_arrays raises ValueError beyond it

Bools = npt.ArrayLike  # 1-D, converted to const uint8_t[::1]
Ints = npt.ArrayLike  # 1-D integers, converted to const int64_t[::1]

class SloCounters:
    """Counts per class (kind x priority): FIELDS; attainment and goodput from them."""

    kinds: tuple[str, ...]
    priorities: tuple[str, ...]

    def __init__(
        self, kinds: Sequence[str] = ..., priorities: Sequence[str] = ...
    ) -> None: ...
    def add_arrays(
        self, kind_codes: Ints, priority_codes: Ints, completed: Bools, errored: Bools,
        ttft_met: Bools, e2e_met: Bools, slo_met: Bools,
    ) -> None: ...  # codes index kinds / priorities; deadline flags count only if completed
    def add(
        self, kind: str, priority: str, *, completed: bool, errored: bool, ttft_met: bool,
        e2e_met: bool, slo_met: bool,
    ) -> None: ...
    def counts(self, kind: str | None = ..., priority: str | None = ...) -> dict[str, int]: ...
    def attainment(self, kind: str | None = ..., priority: str | None = ...) -> float: ...
    # share in [0, 1] of requests that completed meeting every deadline; nan when none
    def goodput_rps(
        self, window_s: float, kind: str | None = ..., priority: str | None = ...
    ) -> float: ...  # slo_met / window_s
    def as_array(self) -> npt.NDArray[np.int64]: ...  # (kinds, priorities, len(FIELDS))
    def widened(
        self, kinds: Sequence[str], priorities: Sequence[str]
    ) -> SloCounters: ...  # a copy; the labels given start with this one's
    def merge(self, other: SloCounters) -> SloCounters: ...  # same classes; returns self
    def encode(self) -> bytes: ...
    @staticmethod
    def decode(blob: bytes) -> SloCounters: ...  # ValueError if corrupt or truncated
    def __eq__(self, other: object) -> bool: ...

class Timeslices:
    """Per-slice counters and sparse per-slice histograms (TTFT, e2e, lag from intended)."""

    slice_ns: int  # int64_t
    @property
    def digits(self) -> int: ...  # 2 or 3
    @property
    def highest_ns(self) -> int: ...
    @property
    def n_slices(self) -> int: ...
    @property
    def nbytes(self) -> int: ...
    def __init__(
        self, slice_ns: int = 1_000_000_000, digits: int = 2,
        highest_ns: int = 3_600_000_000_000,
    ) -> None: ...
    def add_arrays(
        self, intended_ns: Ints, sent_ns: Ints, first_token_ns: Ints, done_ns: Ints,
        output_tokens: Ints, completed: Bools, errored: Bools, slo_met: Bools,
    ) -> None: ...  # negative time = null; intended_ns >= 0
    def counters(self) -> dict[str, npt.NDArray[np.int64]]: ...
    # scheduled, sent, completed, errors, output_tokens, slo_met, in_flight (at slice end)
    def slice_counts(self, metric: str) -> npt.NDArray[np.int64]: ...
    def percentile_series(self, metric: str, p: float) -> npt.NDArray[np.float64]: ...
    # ns per slice; nan = empty slice, inf = rank in overflow
    def coarsen(self) -> Timeslices: ...  # doubles slice_ns in place; returns self
    def merge(self, other: Timeslices) -> Timeslices: ...
    def encode(self) -> bytes: ...
    @staticmethod
    def decode(blob: bytes) -> Timeslices: ...
    def __eq__(self, other: object) -> bool: ...

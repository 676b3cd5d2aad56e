"""Type stubs for cpbench._core.hist (see hist.pyx for the accuracy and range promises)."""
from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

DEF_LOWEST_NS: int
DEF_HIGHEST_NS: int
MAGIC: bytes
VERSION: int

class Histogram:
    """Log-linear histogram of int64 nanoseconds (HdrHistogram layout).

    Out-of-range values count in ``underflow_count``/``overflow_count`` and in ``total_count``,
    ``min``, ``max``, ``mean``, ``stdev``; a percentile whose rank falls among them reports
    ``min`` (underflow) or ``max`` (overflow). Cython code may ``cimport`` the class from
    ``hist.pxd`` and call ``record_ns(v)`` without the GIL.
    """

    lowest_ns: int  # int64_t, >= 0
    highest_ns: int  # int64_t, <= 2**53
    digits: int  # int, 2..4
    counts_len: int  # int64_t

    def __init__(
        self, lowest_ns: int = 1_000, highest_ns: int = 3_600_000_000_000, digits: int = 3
    ) -> None: ...
    def record(self, value: int) -> None: ...  # int64_t; ValueError if negative
    def record_corrected(self, value: int, expected_interval_ns: int) -> None: ...
    def record_array(self, values: npt.ArrayLike) -> None: ...  # const int64_t[::1]
    def merge(self, other: Histogram) -> Histogram: ...  # same layout; returns self
    def reset(self) -> None: ...
    def copy(self) -> Histogram: ...
    def value_at_percentile(self, p: float) -> int: ...  # p in [0, 100]; ns
    def percentiles(self, ps: Sequence[float] | npt.ArrayLike) -> npt.NDArray[np.int64]: ...
    @property
    def total_count(self) -> int: ...
    @property
    def underflow_count(self) -> int: ...
    @property
    def overflow_count(self) -> int: ...
    @property
    def min(self) -> int: ...  # exact; 0 when empty
    @property
    def max(self) -> int: ...  # exact; 0 when empty
    @property
    def mean(self) -> float: ...  # exact sum / count; nan when empty
    @property
    def stdev(self) -> float: ...  # population; nan when empty
    @property
    def relative_error(self) -> float: ...  # bound on any in-range percentile
    @property
    def nbytes(self) -> int: ...  # counts memory
    def counts_array(self) -> npt.NDArray[np.int64]: ...
    def encode(self) -> bytes: ...
    @staticmethod
    def decode(blob: bytes | bytearray | memoryview) -> Histogram: ...  # ValueError if corrupt
    def __eq__(self, other: object) -> bool: ...

def _bench_cdef_record(hist: Histogram, values: npt.ArrayLike) -> None: ...

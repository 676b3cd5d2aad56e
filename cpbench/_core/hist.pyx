# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
# cython: always_allow_keywords=False
"""A log-linear histogram of int64 nanosecond values (HdrHistogram's layout and vocabulary).

Every latency cpbench measures goes through one of these, so a run of any length keeps
constant memory: 264 KiB of counts at the default 3 significant digits over 1 µs to 1 hour.

Accuracy promise. A value ``x >= lowest_ns`` lands in a bucket of width at most
``x / half_count`` (``half_count`` = 1024 at 3 digits, 128 at 2, 16384 at 4); percentiles
report the bucket's midpoint, so ``value_at_percentile(p)`` is within
``relative_error = 1 / (2 * half_count)`` (4.9e-4 at 3 digits) of the exact nearest-rank
percentile -- ``numpy.percentile(values, p, method="inverted_cdf")``, with ``p`` read to 12
significant digits -- of everything recorded in range. ``total_count``, ``min``, ``max`` and
the sums behind ``mean`` and ``stdev`` are exact (128-bit integers), so merging is exact too:
``merge`` of two histograms equals (``==``) one histogram that recorded both streams.

Out of range. Values below ``lowest_ns`` count in ``underflow_count``, above ``highest_ns`` in
``overflow_count``; never clipped into a bucket. They count in ``total_count``, ``min``,
``max``, ``mean`` and ``stdev`` (all exact), and in percentile ranks: they rank below
(underflow) or above (overflow) every in-range value, and a percentile whose rank falls among
them reports ``min`` (underflow) or ``max`` (overflow). So p0 is always ``min``, p100 always
``max``, and a report shows the two counts beside the percentiles.
"""
from __future__ import annotations

import math
import struct
import zlib

import numpy as np

cimport numpy as cnp
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport calloc, free
from libc.string cimport memset

cnp.import_array()

cdef extern from *:
    int __builtin_clzll(unsigned long long x) nogil

DEF_LOWEST_NS = 1_000
DEF_HIGHEST_NS = 3_600_000_000_000
# v * v of every in-range value must fit the 128-bit sum of squares for ages; 2**53 ns is
# 104 days, far beyond any latency.
cdef int64_t MAX_HIGHEST_NS = 1 << 53

# Blob layout, little-endian: magic, version, digits, sumsq-saturated flag, 1 pad byte, then
# int64 lowest, highest, total, underflow, overflow, min, max, the 128-bit sum (uint64 lo,
# int64 hi) and sum of squares (uint64 lo, hi), first index, n counts,
# then zlib(zigzag-LEB128 deltas of counts[first:first+n]), then CRC32 of all of the above.
# Zero runs become runs of 0 deltas, which zlib squeezes to almost nothing: the sparse part.
MAGIC = b"CPBH"
VERSION = 1
_HEADER = struct.Struct("<4sBBB1x7qQqQQqq")
_CRC = struct.Struct("<I")


cdef inline int64_t _index(int64_t v, int64_t mask, int half_mag, int64_t offset) noexcept nogil:
    # HdrHistogram's counts index, folded: with s = bucket + unit_magnitude (the shift that
    # leaves v's top half_mag + 1 bits), index = ((bucket + 1) << half_mag) + (v >> s)
    # - half_count = (s << half_mag) + (v >> s) - (unit_magnitude << half_mag).
    # 63 ^ clz is the index of the top bit (x86 bsr), for any non-zero argument.
    cdef int s = (63 ^ __builtin_clzll(<unsigned long long>(v | mask))) - half_mag
    return ((<int64_t>s) << half_mag) + (v >> s) - offset


cdef class Histogram:
    """Streaming histogram of int64 nanoseconds; see the module docstring for the promises.

    Parameters
    ----------
    lowest_ns : int
        Smallest value held in range (>= 0); smaller values count as underflow.
    highest_ns : int
        Largest value held in range (<= 2**53); larger values count as overflow.
    digits : int
        Significant decimal digits, 2 to 4.
    """

    def __cinit__(self, int64_t lowest_ns=DEF_LOWEST_NS, int64_t highest_ns=DEF_HIGHEST_NS,
                  int digits=3):
        if digits < 2 or digits > 4:
            raise ValueError(f"digits must be 2, 3 or 4; got {digits}")
        if lowest_ns < 0:
            raise ValueError(f"lowest_ns must be >= 0; got {lowest_ns}")
        if highest_ns > MAX_HIGHEST_NS or highest_ns < 2 * max(lowest_ns, 1):
            raise ValueError(f"highest_ns must be in [2 * lowest_ns, 2**53]; got {highest_ns} "
                             f"with lowest_ns={lowest_ns}")
        self.lowest_ns = lowest_ns
        self.highest_ns = highest_ns
        self.digits = digits
        sub_count_magnitude = math.ceil(math.log2(2 * 10 ** digits))
        self.half_magnitude = sub_count_magnitude - 1
        self.half_count = 1 << self.half_magnitude
        # Unit small enough that a bucket at lowest_ns is at most lowest_ns / half_count wide.
        self.unit_magnitude = max(0, int(lowest_ns).bit_length() - 1 - self.half_magnitude)
        self.sub_mask = ((1 << sub_count_magnitude) - 1) << self.unit_magnitude
        self.index_offset = self.unit_magnitude << self.half_magnitude
        buckets = 1
        smallest_untrackable = (1 << sub_count_magnitude) << self.unit_magnitude
        while smallest_untrackable <= highest_ns:
            smallest_untrackable <<= 1
            buckets += 1
        self.counts_len = (buckets + 1) * self.half_count
        self.counts = <int64_t *> calloc(self.counts_len, sizeof(int64_t))
        if self.counts == NULL:
            raise MemoryError("cannot allocate histogram counts")
        self._reset_stats()

    def __dealloc__(self):
        free(self.counts)

    cdef void _reset_stats(self) noexcept:
        self._total = 0
        self._underflow = 0
        self._overflow = 0
        self._min = 0x7FFFFFFFFFFFFFFF
        self._max = -1
        self._sum = 0
        self._sumsq = 0
        self._sumsq_saturated = False

    # --- C level: the hot path --------------------------------------------------------------

    cdef int64_t index_of(self, int64_t v) noexcept nogil:
        return _index(v, self.sub_mask, self.half_magnitude, self.index_offset)

    cdef int64_t lowest_at(self, int64_t index) noexcept nogil:
        cdef int64_t bucket = (index >> self.half_magnitude) - 1
        cdef int64_t sub = (index & (self.half_count - 1)) + self.half_count
        if bucket < 0:
            sub -= self.half_count
            bucket = 0
        return sub << (bucket + self.unit_magnitude)

    cdef int64_t width_at(self, int64_t index) noexcept nogil:
        cdef int64_t bucket = (index >> self.half_magnitude) - 1
        if bucket < 0:
            bucket = 0
        return (<int64_t>1) << (bucket + self.unit_magnitude)

    cdef void _record_out_of_range(self, int64_t v, int64_t n) noexcept nogil:
        cdef u128 sq
        if v < self.lowest_ns:
            self._underflow += n
        else:
            self._overflow += n
        # An overflow value may be huge: keep the sum of squares honest rather than wrapped.
        if v < 0 or v > MAX_HIGHEST_NS:
            self._sumsq_saturated = True
        else:
            sq = <u128>v * <u128>v * <u128>n
            if self._sumsq + sq < self._sumsq:
                self._sumsq_saturated = True
            self._sumsq += sq

    cdef void record_ns_n(self, int64_t v, int64_t n) noexcept nogil:
        if v < self.lowest_ns or v > self.highest_ns:
            self._record_out_of_range(v, n)
        else:
            self.counts[self.index_of(v)] += n
            self._sumsq += <u128>v * <u128>v * <u128>n
        self._total += n
        self._sum += <i128>v * n
        if v < self._min:
            self._min = v
        if v > self._max:
            self._max = v

    cdef void record_ns(self, int64_t v) noexcept nogil:
        # record_ns_n(v, 1) spelled out: record_array's per-sample path, no multiply by n.
        if <uint64_t>(v - self.lowest_ns) > <uint64_t>(self.highest_ns - self.lowest_ns):
            self._record_out_of_range(v, 1)
        else:
            self.counts[_index(v, self.sub_mask, self.half_magnitude, self.index_offset)] += 1
            self._sumsq += <u128>v * <u128>v
        self._total += 1
        self._sum += v
        if v < self._min:
            self._min = v
        if v > self._max:
            self._max = v

    cdef void _record_view(self, const int64_t[::1] values) noexcept nogil:
        # Blocks of 1024 values, two passes each while the block sits in L1: the first finds
        # the block's extremes and sum, the second -- when the whole block is in range, the
        # usual case -- only buckets and squares, with no branch and few enough live values
        # for the registers. A block holding an out-of-range value takes the general path.
        cdef Py_ssize_t i, start, stop, n = values.shape[0]
        cdef int64_t v, bmin, bmax, lo = self.lowest_ns, hi = self.highest_ns
        cdef int64_t mask = self.sub_mask, offset = self.index_offset
        cdef int half_mag = self.half_magnitude
        cdef int64_t *counts = self.counts
        cdef int64_t v1, bmin1, bmax1
        cdef uint64_t partial, partial1   # unsigned: wrap harmlessly in a discarded block
        cdef u128 sumsq
        for start in range(0, n, 1024):
            stop = min(start + 1024, n)
            partial = 0
            partial1 = 0
            bmin = values[start]
            bmax = bmin
            bmin1 = bmin
            bmax1 = bmin
            # Two interleaved chains of extremes: each compare waits on half as many others.
            i = start
            while i + 1 < stop:
                v = values[i]
                v1 = values[i + 1]
                partial += <uint64_t>v
                partial1 += <uint64_t>v1
                bmin = v if v < bmin else bmin
                bmax = v if v > bmax else bmax
                bmin1 = v1 if v1 < bmin1 else bmin1
                bmax1 = v1 if v1 > bmax1 else bmax1
                i += 2
            if i < stop:
                v = values[i]
                partial += <uint64_t>v
                bmin = v if v < bmin else bmin
                bmax = v if v > bmax else bmax
            partial += partial1
            bmin = bmin1 if bmin1 < bmin else bmin
            bmax = bmax1 if bmax1 > bmax else bmax
            if bmin < lo or bmax > hi:
                for i in range(start, stop):
                    self.record_ns(values[i])
                continue
            sumsq = 0
            for i in range(start, stop):
                v = values[i]
                counts[_index(v, mask, half_mag, offset)] += 1
                sumsq += <u128>v * <u128>v
            # 1024 values <= 2**53 each: the partial sum fits an int64.
            self._sum += <int64_t>partial
            self._sumsq += sumsq
            self._total += stop - start
            if bmin < self._min:
                self._min = bmin
            if bmax > self._max:
                self._max = bmax

    # --- Python level: validated entry points ------------------------------------------------

    def record(self, int64_t value):
        """Record one value (ns). Raises ValueError when it is negative."""
        if value < 0:
            raise ValueError(f"histogram values must be >= 0 ns; got {value}")
        self.record_ns_n(value, 1)

    def record_corrected(self, int64_t value, int64_t expected_interval_ns):
        """Record ``value`` and the samples a stalled, closed-loop sender failed to take.

        As HdrHistogram's ``recordValueWithExpectedInterval``: when ``value`` exceeds
        ``expected_interval_ns`` (> 0), also record ``value - k * expected_interval_ns`` for
        every k >= 1 while that is >= ``expected_interval_ns``.
        """
        if value < 0:
            raise ValueError(f"histogram values must be >= 0 ns; got {value}")
        if expected_interval_ns < 0:
            raise ValueError(f"expected_interval_ns must be >= 0; got {expected_interval_ns}")
        self.record_ns_n(value, 1)
        if expected_interval_ns == 0:
            return
        cdef int64_t missing = value - expected_interval_ns
        with nogil:
            while missing >= expected_interval_ns:
                self.record_ns_n(missing, 1)
                missing -= expected_interval_ns

    def record_array(self, values):
        """Record every value of a 1-D int64 array (ns). Raises ValueError on a negative one.

        Nothing is recorded when a value is negative (checked before the first is recorded).
        """
        cdef const int64_t[::1] view = np.ascontiguousarray(values, dtype=np.int64)
        cdef Py_ssize_t i, n = view.shape[0]
        cdef int64_t any_bits = 0
        with nogil:
            for i in range(n):
                any_bits |= view[i]   # the sign bit survives an OR: one vectorized pass
        if any_bits < 0:
            bad = int(np.argmax(np.asarray(view) < 0))
            raise ValueError(f"histogram values must be >= 0 ns; got {view[bad]} at index {bad}")
        with nogil:
            self._record_view(view)

    def merge(self, Histogram other not None):
        """Add ``other``'s counts into this histogram (same layout required). Returns self."""
        self._check_layout(other)
        cdef int64_t i, lo, hi
        if other._total == 0:
            return self
        lo, hi = other._occupied()
        with nogil:
            for i in range(lo, hi):
                self.counts[i] += other.counts[i]
        self._total += other._total
        self._underflow += other._underflow
        self._overflow += other._overflow
        self._min = min(self._min, other._min)
        self._max = max(self._max, other._max)
        self._sum += other._sum
        if self._sumsq + other._sumsq < self._sumsq or other._sumsq_saturated:
            self._sumsq_saturated = True
        self._sumsq += other._sumsq
        return self

    def reset(self):
        """Forget every recorded value, keeping the layout."""
        memset(self.counts, 0, self.counts_len * sizeof(int64_t))
        self._reset_stats()

    def copy(self):
        """An independent histogram with the same layout and counts."""
        h = Histogram(self.lowest_ns, self.highest_ns, self.digits)
        return h.merge(self)

    cdef _check_layout(self, Histogram other):
        if (other.lowest_ns, other.highest_ns, other.digits) != (
                self.lowest_ns, self.highest_ns, self.digits):
            raise ValueError(
                "cannot merge histograms with different layouts: "
                "(lowest_ns, highest_ns, digits) = "
                f"{(self.lowest_ns, self.highest_ns, self.digits)}"
                f" vs {(other.lowest_ns, other.highest_ns, other.digits)}; "
                "record both with the same layout")

    cdef tuple _occupied(self):
        """Index range [lo, hi) that can hold non-zero counts, from the exact min and max."""
        if self._total == self._underflow + self._overflow:
            return 0, 0
        cdef int64_t vmin = max(self._min, self.lowest_ns)
        cdef int64_t vmax = min(self._max, self.highest_ns)
        return self.index_of(vmin), self.index_of(vmax) + 1

    # --- queries -------------------------------------------------------------------------------

    def value_at_percentile(self, double p):
        """Value (ns) at percent ``p`` in [0, 100] (nearest rank); 0 when empty."""
        return int(self.percentiles(np.array([p], dtype=np.float64))[0])

    def percentiles(self, ps):
        """Values (int64 ns) at each percent in ``ps`` (each in [0, 100]), in one pass."""
        p_arr = np.asarray(ps, dtype=np.float64).reshape(-1)
        if p_arr.size and not (np.all(p_arr >= 0) and np.all(p_arr <= 100)):
            raise ValueError(f"percentiles must be percents in [0, 100]; got {list(p_arr)}")
        out = np.zeros(p_arr.size, dtype=np.int64)
        if self._total == 0 or p_arr.size == 0:
            return out
        # Nearest rank: the smallest value with at least p% of the values at or below it.
        # Percents are read to 12 significant digits, so that float noise in p / 100 * n
        # (99.9 / 100 * 20000 = 19980.000000000004) does not push the rank up by one.
        exact = p_arr / 100.0 * self._total
        ranks = np.maximum(np.ceil(exact * (1.0 - 1e-12)), 1).astype(np.int64)
        ranks = np.minimum(ranks, self._total)
        order = np.argsort(ranks, kind="stable")
        cdef const int64_t[::1] rk = np.ascontiguousarray(ranks[order])
        cdef int64_t[::1] res = np.empty(p_arr.size, dtype=np.int64)
        cdef Py_ssize_t j = 0, m = rk.shape[0]
        cdef int64_t i, cum = self._underflow, lo, hi, v
        # The exact extremes: rank 1 is min and rank total_count is max, wherever they fall.
        while j < m and (rk[j] <= self._underflow or rk[j] == 1):
            res[j] = self._min
            j += 1
        lo, hi = self._occupied()
        with nogil:
            i = lo
            while j < m and i < hi:
                cum += self.counts[i]
                while j < m and rk[j] <= cum and rk[j] < self._total:
                    v = self.lowest_at(i) + (self.width_at(i) >> 1)
                    res[j] = min(max(v, self._min), self._max)
                    j += 1
                i += 1
        while j < m:
            res[j] = self._max
            j += 1
        out[order] = np.asarray(res)
        return out

    @property
    def total_count(self):
        """Values recorded, in range or not."""
        return self._total

    @property
    def underflow_count(self):
        """Values recorded below ``lowest_ns``."""
        return self._underflow

    @property
    def overflow_count(self):
        """Values recorded above ``highest_ns``."""
        return self._overflow

    @property
    def min(self):
        """Smallest value recorded (exact); 0 when empty."""
        return self._min if self._total else 0

    @property
    def max(self):
        """Largest value recorded (exact); 0 when empty."""
        return self._max if self._total else 0

    @property
    def mean(self):
        """Exact mean (ns, float); nan when empty."""
        if self._total == 0:
            return math.nan
        return self._py_sum() / self._total

    @property
    def stdev(self):
        """Population standard deviation (ns, float), from exact sums; nan when empty."""
        if self._total == 0 or self._sumsq_saturated:
            return math.nan
        n = self._total
        s = self._py_sum()
        var_num = self._py_sumsq() * n - s * s   # exact integers: no cancellation error
        return math.sqrt(max(var_num, 0)) / n

    @property
    def relative_error(self):
        """Stated bound on the relative error of any in-range percentile."""
        return 1.0 / (2 * self.half_count)

    @property
    def nbytes(self):
        """Memory held by the counts array, bytes."""
        return self.counts_len * 8

    cdef object _py_sum(self):
        cdef uint64_t lo = <uint64_t>self._sum
        cdef int64_t hi = <int64_t>(self._sum >> 64)
        return (<object>hi << 64) | <object>lo

    cdef object _py_sumsq(self):
        cdef uint64_t lo = <uint64_t>self._sumsq
        cdef uint64_t hi = <uint64_t>(self._sumsq >> 64)
        return (<object>hi << 64) | <object>lo

    def counts_array(self):
        """A copy of the bucket counts (int64, ``counts_len`` long)."""
        return np.asarray(<int64_t[:self.counts_len]> self.counts).copy()

    def __eq__(self, other):
        if not isinstance(other, Histogram):
            return NotImplemented
        cdef Histogram o = other
        if (o.lowest_ns, o.highest_ns, o.digits) != (self.lowest_ns, self.highest_ns, self.digits):
            return False
        if (o._total, o._underflow, o._overflow, o.min, o.max, o._py_sum(), o._py_sumsq(),
                o._sumsq_saturated) != (self._total, self._underflow, self._overflow, self.min,
                                        self.max, self._py_sum(), self._py_sumsq(),
                                        self._sumsq_saturated):
            return False
        return bool(np.array_equal(self.counts_array(), o.counts_array()))

    __hash__ = None

    def __repr__(self):
        return (f"Histogram(lowest_ns={self.lowest_ns}, highest_ns={self.highest_ns}, "
                f"digits={self.digits}, total_count={self._total})")

    def __reduce__(self):
        return (Histogram.decode, (self.encode(),))

    # --- encoding ------------------------------------------------------------------------------

    def encode(self):
        """Compact, versioned, checksummed bytes; ``Histogram.decode`` reverses it exactly."""
        lo, hi = self._occupied()
        counts = np.asarray(<int64_t[:self.counts_len]> self.counts)[lo:hi]
        payload = zlib.compress(_leb128_zigzag(np.diff(counts, prepend=np.int64(0))), 6)
        s, q = self._py_sum(), self._py_sumsq()
        header = _HEADER.pack(
            MAGIC, VERSION, self.digits, int(self._sumsq_saturated), self.lowest_ns,
            self.highest_ns, self._total, self._underflow, self._overflow, self._min, self._max,
            s & 0xFFFFFFFFFFFFFFFF, s >> 64, q & 0xFFFFFFFFFFFFFFFF, q >> 64, lo, hi - lo)
        body = header + payload
        return body + _CRC.pack(zlib.crc32(body))

    @staticmethod
    def decode(blob):
        """Rebuild a histogram from ``encode()`` bytes; ValueError on corrupt or truncated input."""
        return _decode(bytes(blob))


cdef bytes _leb128_zigzag(cnp.ndarray deltas_obj):
    cdef const int64_t[::1] d = np.ascontiguousarray(deltas_obj, dtype=np.int64)
    cdef Py_ssize_t i, n = d.shape[0], k = 0
    cdef uint64_t z
    out = bytearray(10 * n)
    cdef unsigned char[::1] buf = out
    with nogil:
        for i in range(n):
            z = (<uint64_t>d[i] << 1) ^ <uint64_t>(d[i] >> 63)
            while z >= 0x80:
                buf[k] = <unsigned char>((z & 0x7F) | 0x80)
                k += 1
                z >>= 7
            buf[k] = <unsigned char>z
            k += 1
    return bytes(out[:k])


cdef object _unleb128_zigzag(bytes data, Py_ssize_t n):
    cdef const unsigned char[::1] buf = data
    cdef Py_ssize_t i = 0, pos = 0, size = buf.shape[0]
    cdef uint64_t z
    cdef int shift
    out = np.empty(n, dtype=np.int64)
    cdef int64_t[::1] res = out
    with nogil:
        while i < n and pos < size:
            z = 0
            shift = 0
            while pos < size and shift < 64:
                z |= (<uint64_t>(buf[pos] & 0x7F)) << shift
                shift += 7
                pos += 1
                if not (buf[pos - 1] & 0x80):
                    break
            else:
                break
            res[i] = <int64_t>(z >> 1) ^ -(<int64_t>(z & 1))
            i += 1
    if i != n or pos != size:
        raise ValueError(f"histogram blob is corrupt: its counts section decodes to {i} of "
                         f"{n} counts with {size - pos} bytes left over")
    return out


cdef Histogram _decode(bytes blob):
    if len(blob) < _HEADER.size + _CRC.size:
        raise ValueError(f"histogram blob is truncated: {len(blob)} bytes, a valid one has at "
                         f"least {_HEADER.size + _CRC.size}")
    cut = len(blob) - _CRC.size   # no negative indices: this file runs wraparound=False
    body, (crc,) = blob[:cut], _CRC.unpack(blob[cut:])
    if body[:4] != MAGIC:
        raise ValueError(f"not a cpbench histogram blob: starts with {body[:4]!r}, expected "
                         f"{MAGIC!r}")
    if zlib.crc32(body) != crc:
        raise ValueError("histogram blob is corrupt or truncated: CRC32 mismatch")
    (_, version, digits, saturated, lowest, highest, total, under, over, vmin, vmax,
     s_lo, s_hi, q_lo, q_hi, first, n) = _HEADER.unpack(body[:_HEADER.size])
    if version != VERSION:
        raise ValueError(f"histogram blob has version {version}; this cpbench reads version "
                         f"{VERSION}")
    try:
        h = Histogram(lowest, highest, digits)
    except (ValueError, OverflowError) as exc:
        raise ValueError(f"histogram blob is corrupt: bad layout ({exc})") from None
    if first < 0 or n < 0 or first + n > h.counts_len:
        raise ValueError(f"histogram blob is corrupt: counts [{first}, {first + n}) outside "
                         f"[0, {h.counts_len})")
    try:
        raw = zlib.decompress(body[_HEADER.size:])
    except zlib.error as exc:
        raise ValueError(f"histogram blob is corrupt: counts do not decompress ({exc})") from None
    counts = np.cumsum(_unleb128_zigzag(raw, n))
    if (n and counts.min() < 0) or int(counts.sum()) + under + over != total:
        raise ValueError("histogram blob is corrupt: counts do not add up to total_count")
    np.asarray(<int64_t[:h.counts_len]> h.counts)[first:first + n] = counts
    if total and (vmin > vmax or vmin < 0):
        raise ValueError(f"histogram blob is corrupt: min {vmin} > max {vmax} or negative")
    h._total, h._underflow, h._overflow, h._min, h._max = total, under, over, vmin, vmax
    cdef uint64_t c_s_lo = s_lo, c_q_lo = q_lo, c_q_hi = q_hi
    cdef int64_t c_s_hi = s_hi
    h._sum = ((<i128>c_s_hi) << 64) | <i128>c_s_lo
    h._sumsq = ((<u128>c_q_hi) << 64) | <u128>c_q_lo
    h._sumsq_saturated = bool(saturated)
    return h


def _bench_cdef_record(Histogram hist not None, values):
    """Benchmark helper: record ``values`` one at a time through the cdef ``record_ns`` path."""
    cdef const int64_t[::1] view = np.ascontiguousarray(values, dtype=np.int64)
    cdef Py_ssize_t i
    with nogil:
        for i in range(view.shape[0]):
            hist.record_ns(view[i])

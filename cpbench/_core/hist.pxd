# C-level view of cpbench._core.hist.Histogram, for other Cython modules to cimport:
#
#     from cpbench._core.hist cimport Histogram
#     with nogil:
#         hist.record_ns(first_token_ns - sent_ns)
#
# record_ns is the per-sample path of record_array (and of any Cython caller): no Python
# objects, no GIL, no checks beyond the range test. Callers must pass v >= 0 (a negative v
# there is counted as underflow, since a nogil noexcept function cannot raise). The
# dispatcher itself is Python: it collects inter-token gaps in an array and hands them to
# record_array once per flush.
cimport cython
from libc.stdint cimport int64_t, uint64_t

cdef extern from *:
    """
    typedef __int128 cph_i128;
    typedef unsigned __int128 cph_u128;
    """
    ctypedef long long i128 "cph_i128"
    ctypedef unsigned long long u128 "cph_u128"


@cython.final
cdef class Histogram:
    cdef readonly int64_t lowest_ns
    cdef readonly int64_t highest_ns
    cdef readonly int digits
    # Layout (HdrHistogram's): bucket b covers [half << (b + unit), 2 half << (b + unit)) in
    # `half` sub-buckets of width 1 << (b + unit); bucket 0 also covers [0, half << unit).
    cdef int unit_magnitude
    cdef int half_magnitude
    cdef int64_t half_count
    cdef int64_t sub_mask
    cdef int64_t index_offset    # unit_magnitude << half_magnitude, see _index
    cdef readonly int64_t counts_len
    cdef int64_t *counts
    cdef int64_t _total
    cdef int64_t _underflow
    cdef int64_t _overflow
    cdef int64_t _min
    cdef int64_t _max
    cdef i128 _sum           # exact: the mean is exact to double rounding
    cdef u128 _sumsq         # exact while it fits (see _sumsq_saturated)
    cdef bint _sumsq_saturated

    cdef void record_ns(self, int64_t v) noexcept nogil
    cdef void record_ns_n(self, int64_t v, int64_t n) noexcept nogil
    cdef void _record_out_of_range(self, int64_t v, int64_t n) noexcept nogil
    cdef int64_t index_of(self, int64_t v) noexcept nogil
    cdef int64_t lowest_at(self, int64_t index) noexcept nogil
    cdef int64_t width_at(self, int64_t index) noexcept nogil
    cdef void _record_view(self, const int64_t[::1] values) noexcept nogil
    cdef void _reset_stats(self) noexcept
    cdef _check_layout(self, Histogram other)
    cdef tuple _occupied(self)
    cdef object _py_sum(self)
    cdef object _py_sumsq(self)

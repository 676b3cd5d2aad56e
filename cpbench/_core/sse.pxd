# C-level view of cpbench._core.sse, for cpbench._core.conn to cimport: the scan of one
# response's SSE body, fed straight from the socket's bytes without a Python call.
cimport cython


cdef Py_ssize_t find_int_after(const unsigned char* p, Py_ssize_t n, const char* key,
                               Py_ssize_t klen, bint last, long long* out) noexcept nogil


@cython.final
cdef class StreamScan:
    cdef bytearray _tail
    cdef bint _chat
    cdef public object usage
    cdef public bint done
    cdef public object error
    cdef public bint malformed

    cdef void restart(self, bint chat) noexcept
    cdef long feed_ptr(self, const unsigned char* p, Py_ssize_t n) except -1
    cdef void usage_counts(self, long long* prompt, long long* completion) noexcept

# cython: boundscheck=False, wraparound=False, cdivision=True
"""A replay worker's per-request path in C: one keep-alive HTTP/1.1 connection, and the row
each request becomes.

:class:`Conn` is one connection. On plain HTTP its socket belongs to a :class:`Poller`, one
epoll set per worker with the send timer in it, where the worker waits: a ready socket is read
into one C buffer and parsed there, and a request is one ``send``, with no transport and no
Python call per read.
Over TLS it is the :class:`asyncio.Protocol` of a transport (uvloop or the stock loop call its
``data_received`` with each read). It sends a prebuilt request, stamps the first
byte, the first token and each token read on CLOCK_MONOTONIC, parses the status line and
headers, Content-Length, chunked and until-close bodies, feeds a streamed body to
:class:`cpbench._core.sse.StreamScan` and checks a whole body in place, all without a Python
object per read. A finished request goes as one row into :class:`Recorder`, which reads the
plan's typed columns and packs rows into a :class:`RowBuffer`; inter-token gaps go straight
into a :class:`cpbench._core.hist.Histogram`. :class:`Sender` is the send side: the timerfd
callback that sends each due row on an idle connection and arms the timer for the next, and
the hand-back of a finished request's connection. Per request, Python runs only to render the
next request's bytes (the dispatcher's ``encode``) and inside the event loop's own callbacks.

The owner (the dispatcher) provides ``retry(conn, j)`` (a reused connection closed under an
unanswered request) and ``forget(conn)`` (an idle connection closed).
"""
cimport cython
from cpython.bytearray cimport PyByteArray_GET_SIZE
from cpython.bytes cimport PyBytes_FromStringAndSize
from cpython.ref cimport Py_DECREF, Py_INCREF
from libc.errno cimport EAGAIN, EINTR, errno
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc, realloc
from libc.string cimport memcmp, memcpy

from cpbench._core.hist cimport Histogram
from cpbench._core.sse cimport StreamScan, find_int_after

import numpy as np

from cpbench.vocab import ERROR_CLASSES, KINDS

cdef extern from "<time.h>" nogil:
    ctypedef int clockid_t
    cdef struct timespec:
        long tv_sec
        long tv_nsec
    int clock_gettime(clockid_t clk, timespec* ts)
    clockid_t CLOCK_MONOTONIC

cdef extern from "<string.h>" nogil:
    void* memmem(const void* haystack, size_t hlen, const void* needle, size_t nlen)
    void* memchr(const void* s, int c, size_t n)
    char* strerror(int errnum)

cdef extern from "<sys/epoll.h>" nogil:
    ctypedef union epoll_data_t:
        void* ptr
        int fd
        uint64_t u64
    cdef struct epoll_event:
        uint32_t events
        epoll_data_t data
    int epoll_create1(int flags)
    int epoll_ctl(int epfd, int op, int fd, epoll_event* event)
    int epoll_wait(int epfd, epoll_event* events, int maxevents, int timeout)
    int EPOLL_CLOEXEC, EPOLL_CTL_ADD, EPOLL_CTL_MOD, EPOLL_CTL_DEL
    uint32_t EPOLLIN, EPOLLOUT, EPOLLERR, EPOLLHUP

cdef extern from "<sys/socket.h>" nogil:
    ctypedef unsigned int socklen_t
    ssize_t send(int fd, const void* buf, size_t n, int flags)
    ssize_t recv(int fd, void* buf, size_t n, int flags)
    int getsockopt(int fd, int level, int name, void* value, socklen_t* length)
    int MSG_NOSIGNAL, SOL_SOCKET, SO_ERROR

cdef extern from "<unistd.h>" nogil:
    int close(int fd)

cdef extern from "<sys/timerfd.h>" nogil:
    cdef struct itimerspec:
        timespec it_interval
        timespec it_value
    int timerfd_settime(int fd, int flags, const itimerspec* new_value, itimerspec* old_value)
    int TFD_TIMER_ABSTIME

# The fields of one packed row, in order: these integers, then the two float deadlines
# (cpbench.replaying.rows.ROW_FIELDS names them and checks this count).
N_INT_FIELDS = 17
N_FLOAT_FIELDS = 2
DEF _N_INT = 17
DEF _N_FLOAT = 2
DEF _MAX_HEAD_BYTES = 65536
DEF _KEEP_BODY_BYTES = 1 << 20                  # a body buffer larger than this is freed
DEF _READ_BYTES = 262144                        # one recv of a Poller's connection
DEF _MAX_EVENTS = 128                           # events one Poller.dispatch takes at once
DEF _TAG_TIMER = 1                              # a Poller's event for its sender's timer
DEF _TAG_WAKE = 2                               # ... for a descriptor the event loop reads
cdef int64_t NEVER = 1 << 62                     # no send due

cdef int E_CONNECT = ERROR_CLASSES.index("connect")
cdef int E_4XX = ERROR_CLASSES.index("http_4xx")
cdef int E_5XX = ERROR_CLASSES.index("http_5xx")
cdef int E_BROKEN = ERROR_CLASSES.index("stream_broken")
cdef int E_PAYLOAD = ERROR_CLASSES.index("bad_payload")
cdef int _EMBEDDING = KINDS.index("embedding")
cdef int _CHAT = KINDS.index("chat")


cdef inline int64_t now_ns() noexcept nogil:
    """``time.monotonic_ns()``: the same clock, without a Python call."""
    cdef timespec ts
    clock_gettime(CLOCK_MONOTONIC, &ts)
    return ts.tv_sec * 1_000_000_000 + ts.tv_nsec


cdef int _arm_timerfd(int fd, int64_t at_ns) noexcept nogil:
    # One-shot at an absolute CLOCK_MONOTONIC instant; 0 would disarm it, so at least 1 ns.
    cdef itimerspec spec
    at_ns = max(1, at_ns)
    spec.it_interval.tv_sec = spec.it_interval.tv_nsec = 0
    spec.it_value.tv_sec = at_ns // 1_000_000_000
    spec.it_value.tv_nsec = at_ns % 1_000_000_000
    return timerfd_settime(fd, TFD_TIMER_ABSTIME, &spec, NULL)


def arm_timerfd(int fd, int64_t at_ns):
    """Arm timerfd ``fd`` to fire at ``at_ns`` (absolute CLOCK_MONOTONIC ns; an instant past
    fires at once): the call :class:`Sender` makes before each send."""
    if _arm_timerfd(fd, at_ns) != 0:
        raise OSError(f"timerfd_settime failed on fd {fd}")


cdef inline Py_ssize_t _count(const unsigned char* p, Py_ssize_t n, const char* lit,
                              Py_ssize_t k) noexcept nogil:
    # Non-overlapping occurrences of lit in p[:n]. memchr (vectorised) finds each candidate
    # first byte: in an embeddings body that byte (a quote) is rare among the numbers, so this
    # runs at memory speed where memmem's two-way search does not.
    cdef Py_ssize_t count = 0
    cdef const unsigned char* at = p
    cdef const unsigned char* end = p + n
    cdef const unsigned char* hit
    while end - at >= k:
        hit = <const unsigned char*>memchr(at, lit[0], end - at - k + 1)
        if hit == NULL:
            break
        if memcmp(hit, lit, k) == 0:
            count += 1
            at = hit + k
        else:
            at = hit + 1
    return count


cdef object _int_or_none(const unsigned char* p, Py_ssize_t n, const char* key, Py_ssize_t k):
    cdef long long v = 0
    if n and find_int_after(p, n, key, k, True, &v):
        return v
    return None


cdef inline bytes _head_of(const unsigned char* p, Py_ssize_t n, Py_ssize_t k):
    return PyBytes_FromStringAndSize(<const char*>p, min(n, k))


cdef tuple _check_completion(const unsigned char* p, Py_ssize_t n):
    if n == 0 or p[0] != 123:
        return f"completion body is not a JSON object: {_head_of(p, n, 60)!r}", None, None
    if memmem(p, n, b'"choices"', 9) == NULL:
        return f"completion body has no choices: {_head_of(p, n, 80)!r}", None, None
    return (None, _int_or_none(p, n, b'"prompt_tokens":', 16),
            _int_or_none(p, n, b'"completion_tokens":', 20))


cdef tuple _check_embedding(const unsigned char* p, Py_ssize_t n, long batch_size):
    cdef long want = max(batch_size, 1)
    cdef Py_ssize_t vectors
    if n == 0 or p[0] != 123:
        return f"embeddings body is not a JSON object: {_head_of(p, n, 60)!r}", None
    vectors = _count(p, n, b'"embedding":', 12)
    if vectors != want:         # the spelling with a space is rare: counted only when needed
        vectors += _count(p, n, b'"embedding" :', 13)
    if vectors != want:
        return f"embeddings body has {vectors} vectors for {batch_size} inputs", None
    return None, _int_or_none(p, n, b'"prompt_tokens":', 16)


def check_completion(const unsigned char[:] body):
    """Validate a non-streamed chat or completions body (``"stream": false``) without
    decoding it: a JSON object with ``choices``. Returns ``(problem, prompt_tokens,
    completion_tokens)``; the token counts come from ``usage`` (None where absent)."""
    return _check_completion(&body[0] if body.shape[0] else NULL, body.shape[0])


def check_embedding(const unsigned char[:] body, long batch_size):
    """Validate an embeddings response body without decoding its vectors.

    Returns ``(problem, prompt_tokens)``: ``problem`` is None when the body holds one
    ``"embedding"`` per input, else a short description for ``bad_payload``.
    """
    return _check_embedding(&body[0] if body.shape[0] else NULL, body.shape[0], batch_size)


@cython.final
cdef class RowBuffer:
    """Per-request values of one worker, packed row by row into two flat C buffers.

    Appending a request writes its integers and its two deadlines in place, and
    :meth:`take_rows` hands the raw buffers over as bytes, so the sending loop never stalls on
    Arrow work. The parent turns them into a record batch with
    :func:`cpbench.results.rows_to_batch`.
    """

    cdef int64_t* ints
    cdef double* floats
    cdef Py_ssize_t n, cap
    cdef dict details

    def __cinit__(self):
        self.ints = NULL
        self.floats = NULL
        self.n = self.cap = 0
        self.details = {}

    def __dealloc__(self):
        free(self.ints)
        free(self.floats)

    def __len__(self):
        return self.n

    cdef int _grow(self) except -1:
        cdef Py_ssize_t cap = max(1024, 2 * self.cap)
        cdef int64_t* ints = <int64_t*>realloc(self.ints, cap * _N_INT * sizeof(int64_t))
        if ints == NULL:
            raise MemoryError()
        self.ints = ints
        cdef double* floats = <double*>realloc(self.floats, cap * _N_FLOAT * sizeof(double))
        if floats == NULL:
            raise MemoryError()
        self.floats = floats
        self.cap = cap
        return 0

    cdef int64_t* next_row(self, object detail) except NULL:
        """Room for one more row's integers (the floats follow at :meth:`last_floats`)."""
        if self.n == self.cap:
            self._grow()
        if detail is not None:
            self.details[self.n] = detail
        self.n += 1
        return self.ints + (self.n - 1) * _N_INT

    cdef inline double* last_floats(self) noexcept:
        return self.floats + (self.n - 1) * _N_FLOAT

    def append(self, tuple values, detail=None):
        """Record one request: ``values`` in ROW_FIELDS order (integers, then deadlines).

        Absent times and ITLs are -1; a success has ``error_class`` -1, a failure its index
        in ERROR_CLASSES. ``warmup`` is 0 or 1.
        """
        if len(values) != _N_INT + _N_FLOAT:
            raise ValueError(f"a row has {_N_INT + _N_FLOAT} values; got {len(values)}")
        cdef int64_t* ints = self.next_row(detail)
        cdef Py_ssize_t i
        for i in range(_N_INT):
            ints[i] = values[i]
        cdef double* floats = self.last_floats()
        floats[0] = values[_N_INT]
        floats[1] = values[_N_INT + 1]

    def take_rows(self):
        """The buffered rows as ``(n, ints, floats, details)`` (None when empty), cleared."""
        if self.n == 0:
            return None
        packed = (self.n,
                  PyBytes_FromStringAndSize(<char*>self.ints, self.n * _N_INT * sizeof(int64_t)),
                  PyBytes_FromStringAndSize(<char*>self.floats,
                                            self.n * _N_FLOAT * sizeof(double)),
                  self.details)
        self.n = 0
        self.details = {}
        return packed


@cython.final
cdef class _BodyBuffer:
    """The bytes of one response body that arrived over several reads, in one C buffer.

    A :class:`Sender` lends these to its connections and takes them back when the response is
    recorded, so a buffer grows once and serves the next long body as it is: a 59 kB
    embeddings answer in two or three reads costs one copy of each read, not the three a
    ``bytearray`` cost (a temporary ``bytes``, the extend, a ``realloc`` as it regrew from
    empty for every response).
    """

    cdef unsigned char* data
    cdef Py_ssize_t n, cap

    def __dealloc__(self):
        free(self.data)

    cdef int append(self, const unsigned char* p, Py_ssize_t k) except -1:
        cdef Py_ssize_t cap
        cdef unsigned char* data
        if self.n + k > self.cap:
            cap = max(self.n + k, 2 * self.cap, 4096)
            data = <unsigned char*>realloc(self.data, cap)
            if data == NULL:
                raise MemoryError()
            self.data, self.cap = data, cap
        memcpy(self.data + self.n, p, k)
        self.n += k
        return 0


cdef class _Growing:
    """An int64 array that grows in place (send lags); taken whole as a NumPy array."""

    cdef int64_t* data
    cdef Py_ssize_t n, cap

    def __dealloc__(self):
        free(self.data)

    cdef inline int add(self, int64_t v) except -1:
        cdef int64_t* data
        if self.n == self.cap:
            self.cap = max(4096, 2 * self.cap)
            data = <int64_t*>realloc(self.data, self.cap * sizeof(int64_t))
            if data == NULL:
                raise MemoryError()
            self.data = data
        self.data[self.n] = v
        self.n += 1
        return 0

    cdef object take(self):
        out = np.frombuffer(PyBytes_FromStringAndSize(<char*>self.data, self.n * 8), np.int64)
        self.n = 0
        return out


@cython.final
cdef class Recorder:
    """What becomes of each plan row: its packed result row, its send lag, the counters.

    ``columns`` maps each name of :data:`cpbench.replaying.plan.COLUMNS` to a contiguous
    array of that dtype (the plan's columns, typically memory-mapped).
    """

    cdef const int64_t[::1] rows, intended
    cdef const int32_t[::1] kind, priority, model, input_tokens, batch_size, warmup
    cdef const double[::1] slo_ttft, slo_e2e
    cdef public int64_t start_ns
    cdef readonly int64_t done, errors
    cdef readonly RowBuffer buffer
    cdef _Growing lags

    def __cinit__(self, columns):
        self.rows = columns["rows"]
        self.intended = columns["intended_ns"]
        self.kind = columns["kind"]
        self.priority = columns["priority"]
        self.model = columns["model"]
        self.input_tokens = columns["input_tokens"]
        self.batch_size = columns["batch_size"]
        self.warmup = columns["warmup"]
        self.slo_ttft = columns["slo_ttft_ms"]
        self.slo_e2e = columns["slo_e2e_ms"]
        self.buffer = RowBuffer()
        self.lags = _Growing()
        self.start_ns = self.done = self.errors = 0

    def __len__(self):
        return self.buffer.n

    cdef int add_lag(self, Py_ssize_t j, int64_t sent_abs) except -1:
        return self.lags.add(sent_abs - self.start_ns - self.intended[j])

    def take_lags(self):
        """Send lags (sent - intended, ns) recorded since the last call, as an int64 array."""
        return self.lags.take()

    def take_rows(self):
        """:meth:`RowBuffer.take_rows` of the rows recorded so far."""
        return self.buffer.take_rows()

    cdef int record(self, Py_ssize_t j, int64_t sent_abs, int64_t first_byte,
                    int64_t first_token, int64_t done, int status, int code, object detail,
                    int64_t prompt_tokens, int64_t out_tokens, int64_t itl_mean,
                    int64_t itl_max) except -1:
        # One packed row (ROW_FIELDS order): the plan's values and the outcome, run clock.
        cdef int64_t start = self.start_ns
        cdef int64_t* v = self.buffer.next_row(detail)
        v[0] = self.rows[j]
        v[1] = self.kind[j]
        v[2] = self.priority[j]
        v[3] = self.model[j]
        v[4] = self.intended[j]
        v[5] = sent_abs - start
        v[6] = first_byte - start if first_byte >= 0 else -1
        v[7] = first_token - start if first_token >= 0 else -1
        v[8] = done - start
        v[9] = self.input_tokens[j] if prompt_tokens < 0 else prompt_tokens
        v[10] = out_tokens
        v[11] = self.batch_size[j]
        v[12] = status
        v[13] = code
        v[14] = itl_mean
        v[15] = itl_max
        v[16] = self.warmup[j]
        cdef double* f = self.buffer.last_floats()
        f[0] = self.slo_ttft[j]
        f[1] = self.slo_e2e[j]
        self.done += 1
        if code >= 0:
            self.errors += 1
        return 0

    def record_failure(self, Py_ssize_t j, int code, str detail):
        """Record row ``j`` as failed now, before any byte went out (a connect failure)."""
        cdef int64_t now = now_ns()
        self.record(j, now, -1, -1, now, 0, code, detail, -1, 0, -1, -1)


cdef class Conn
cdef class Poller


@cython.final
cdef class Sender:
    """The send side of one worker's schedule: the next due row, the connection pools, the
    timerfd that wakes the loop, and the hand-back of each finished request.

    ``encode(j)`` renders plan row ``j``'s request bytes (``Renderer.render``, compiled);
    ``open_and_send(j, data)`` is called when no idle connection is free. It opens one and
    sends there: either at once, on a socket whose connect a :class:`Poller` finishes (the
    connection is busy, and counted in :attr:`connecting` until the connect ends), or through
    the event loop (counting itself in :attr:`opening` meanwhile). :attr:`opened` counts the
    connects that succeeded. ``on_end()`` is called when the schedule is done or stopped.
    ``burst_max`` caps the sends in a row before the loop reads responses.
    ``spin_ns`` > 0 arms the timer that much before each send's instant and busy-waits the
    rest in :meth:`on_timer`: the send leaves within a few µs of its instant instead of after
    the kernel's wake-up latency, for that much CPU per send (``--spin-us``).
    ``idle`` (a stack, most recent on top), ``busy`` and ``waiting`` (a deque of rows held
    back) are shared with the dispatcher. A row waits when ``max_concurrency`` is reached, or
    when no idle connection is free and a new one may not be opened: ``connects_max``
    connects are already in progress, or ``connections_max`` connections are open (0: no
    such cap). Waiting rows go out, oldest first, as connections free up or open
    (:meth:`admit`); the wait is their dispatch lag. With :attr:`connect_after_reading` (set
    while a :class:`Poller` runs the schedule) a row that would open a connection waits too,
    until the poller has read every ready answer, any of which may free one; then it
    connects.
    """

    cdef readonly Recorder recorder
    cdef const int64_t[::1] intended
    cdef Py_ssize_t n_rows, burst_max
    cdef readonly int64_t spin_ns
    cdef readonly Py_ssize_t next_row
    cdef public int64_t due_abs_ns
    cdef object next_data
    cdef object encode, open_and_send, on_end
    cdef readonly list idle
    cdef readonly set busy
    cdef readonly object waiting
    cdef readonly int max_concurrency
    cdef readonly int connects_max, connections_max
    cdef public int opening
    cdef readonly int connecting
    cdef public bint connect_after_reading
    cdef bint admit_pending               # rows wait for the reads to end (connect_after_reading)
    cdef Py_ssize_t deferred              # ... of them, those not counted in fd_limited
    cdef public int64_t opened
    cdef readonly int64_t fd_limited      # rows that waited with connections_max reached
    cdef public int64_t sent
    cdef public bint stopping
    cdef int timer_fd
    cdef list spare_bodies                # _BodyBuffers no connection holds now

    def __cinit__(self, Recorder recorder, encode, open_and_send, on_end, waiting,
                  int max_concurrency, Py_ssize_t burst_max, int64_t spin_ns=0,
                  int connects_max=0, int connections_max=0):
        self.recorder = recorder
        self.intended = recorder.intended
        self.n_rows = recorder.intended.shape[0]
        self.burst_max = burst_max
        self.spin_ns = spin_ns
        self.next_row = 0
        self.due_abs_ns = NEVER
        self.next_data = None
        self.encode, self.open_and_send, self.on_end = encode, open_and_send, on_end
        self.idle, self.busy, self.waiting = [], set(), waiting
        self.max_concurrency = max_concurrency
        self.connects_max, self.connections_max = connects_max, connections_max
        self.opening = self.connecting = 0
        self.connect_after_reading = self.admit_pending = False
        self.deferred = 0
        self.opened = 0
        self.fd_limited = 0
        self.sent = 0
        self.stopping = False
        self.timer_fd = -1
        self.spare_bodies = []

    cdef _BodyBuffer lend_body(self):
        if self.spare_bodies:
            return self.spare_bodies.pop()
        return _BodyBuffer()

    cdef void take_back_body(self, _BodyBuffer body) noexcept:
        body.n = 0
        if body.cap <= _KEEP_BODY_BYTES:
            self.spare_bodies.append(body)

    def start(self, int timer_fd):
        """Arm ``timer_fd`` (a CLOCK_MONOTONIC timerfd in the loop's reader set, which calls
        :meth:`on_timer`) for the first row, due at the recorder's ``start_ns`` plus its
        offset."""
        self.timer_fd = timer_fd
        if self.n_rows:
            self.due_abs_ns = self.recorder.start_ns + self.intended[0]
        self.arm()

    def on_timer(self):
        """The timerfd fired: send what is due, arm for the next. (No read of the expiry:
        re-arming resets it, one syscall less per send.)

        With ``spin_ns`` the timer fires up to that much early and the rest is waited out on
        the clock; a row due within ``spin_ns`` of the last send is waited for the same way in
        this call, not after a round trip through the loop (timerfd, epoll: 20 µs or more
        here, which would stretch every shorter gap of the schedule to that); ``burst_max``
        bounds the sends of one call, so responses are read in between. Without a spin every
        send pays the kernel's wake-up latency, so the next row waits for the loop too: a
        row sent at once after a late one would shorten that gap by the latency (measured:
        the wire's KS distance to the exponential tripled).
        """
        self.fire()

    cdef int fire(self) except -1:
        # on_timer's body, called from C by a Poller that watches the timer.
        cdef int64_t due
        cdef Py_ssize_t sent = 0
        while not self.stopping:
            due = self.due_abs_ns
            if self.spin_ns and due - now_ns() <= self.spin_ns:
                while now_ns() < due:        # bounded: at most spin_ns
                    pass
            sent += self.send_due()
            if self.stopping or self.next_row >= self.n_rows or sent >= self.burst_max:
                break
            if self.next_data is None:
                self.next_data = self.encode(self.next_row)
            if self.spin_ns == 0 or self.due_abs_ns - now_ns() > self.spin_ns:
                break                        # the timer wakes the loop for it
        self.arm()
        return 0

    cdef int arm(self) except -1:
        # Build the next request and set the timer for its due instant; or end the schedule.
        # A due instant already past (a burst cut at burst_max, or a row a response callback
        # sent) fires at once, after the responses ready in this turn of the loop.
        if self.stopping or self.next_row >= self.n_rows:
            self.due_abs_ns = NEVER
            self.on_end()
            return 0
        if self.next_data is None:
            # Built while there is time to spare: at the due time a send is one write.
            self.next_data = self.encode(self.next_row)
        _arm_timerfd(self.timer_fd, self.due_abs_ns - self.spin_ns)
        return 0

    cpdef Py_ssize_t send_due(self) except -1:
        """Send every plan row that is due (at most ``burst_max``); how many were sent.

        Called when the timer fires and by any response callback that finds ``due_abs_ns``
        passed, so a send waits for at most one callback, not a loop turn.
        """
        cdef Py_ssize_t j = self.next_row, sent = 0
        cdef int64_t now
        if self.stopping:
            return 0
        now = now_ns() - self.recorder.start_ns
        while j < self.n_rows and self.intended[j] <= now and sent < self.burst_max:
            data, self.next_data = self.next_data, None
            self._send(j, data)
            j += 1
            sent += 1
        self.next_row = j
        self.due_abs_ns = self.recorder.start_ns + self.intended[j] if j < self.n_rows \
            else NEVER
        return sent

    cdef int _send(self, Py_ssize_t j, object data) except -1:
        cdef int cap = self.max_concurrency
        if cap and len(self.busy) + self.opening >= cap:
            self.waiting.append(j)
        elif self.idle:
            self.write(self.idle.pop(), j, data, False)
        elif self.waiting or not self.may_open():
            if self.at_connection_limit():
                self.fd_limited += 1
            elif self.admit_pending:
                self.deferred += 1
            self.waiting.append(j)               # its bytes are rendered again when it goes
        elif self.connect_after_reading:
            # The poller reads every ready answer before this row connects: one read may
            # free a connection for it (admit_after_reading).
            self.waiting.append(j)
            self.admit_pending = True
            self.deferred = 1
        else:
            self.open_and_send(j, data)
        return 0

    cdef int admit_after_reading(self) except -1:
        # The Poller has read everything ready: rows that found no idle connection take the
        # connections those answers freed, and the rest connect.
        if self.admit_pending:
            self.admit_pending = False
            self.admit()
            if self.waiting and self.at_connection_limit():
                # Those still waiting (the newest: admit takes the oldest first) now wait
                # for the open-file limit like any row that found it reached.
                self.fd_limited += min(self.deferred, len(self.waiting))
            self.deferred = 0
        return 0

    cpdef bint may_open(self):
        """Whether one more connection may be opened now (``connects_max``,
        ``connections_max``)."""
        if self.connects_max and self.opening + self.connecting >= self.connects_max:
            return False
        return not self.at_connection_limit()

    cpdef bint at_connection_limit(self):
        """Whether the worker holds ``connections_max`` connections (open or opening)."""
        return self.connections_max > 0 and \
            len(self.idle) + len(self.busy) + self.opening >= self.connections_max

    cpdef admit(self):
        """Send waiting rows, oldest first, while a connection is idle or may be opened (and
        ``max_concurrency`` allows): after a connect ended, either way."""
        cdef int cap = self.max_concurrency
        while self.waiting and not self.stopping:
            if cap and len(self.busy) + self.opening >= cap:
                break
            if self.idle:
                self.write(self.idle.pop(), self.waiting.popleft(), None, False)
            elif self.may_open():
                self.open_and_send(self.waiting.popleft(), None)
            else:
                break

    def behind_ns(self, int64_t now_abs_ns):
        """How far the client is behind its schedule at ``now_abs_ns``: the lateness of the
        oldest row due and not yet sent (ns, 0 when none). Rows ``max_concurrency`` holds
        back wait by design and do not count."""
        cdef int64_t behind = 0
        if self.next_row < self.n_rows and self.due_abs_ns < now_abs_ns:
            behind = now_abs_ns - self.due_abs_ns
        if self.waiting and not self.max_concurrency:
            behind = max(behind, now_abs_ns - self.recorder.start_ns
                         - self.intended[<Py_ssize_t>self.waiting[0]])
        return behind

    cpdef write(self, Conn conn, Py_ssize_t j, object data, bint retry):
        """Send row ``j`` on ``conn`` (its bytes ``data``, rendered here when None)."""
        if data is None:
            data = self.encode(j)
        self.busy.add(conn)
        conn.send_now(j, data, retry)
        if not retry:
            self.sent += 1

    cpdef release(self, Conn conn, bint reusable):
        """A request finished on ``conn`` (its row is recorded): reuse it (next waiting
        request first) or close it."""
        self.busy.discard(conn)
        if not reusable:
            conn.abort()
            conn = None
        if self.waiting and not self.stopping:
            if conn is None:
                self.admit()
            else:
                self.write(conn, self.waiting.popleft(), None, False)
            return
        if conn is not None:
            conn.idle_since_ns = now_ns()
            self.idle.append(conn)


@cython.final
cdef class Conn:
    """One keep-alive connection and the state of the request it carries (``j``, or None).

    ``owner`` is the dispatcher (``retry`` and ``forget``); ``sender`` sends what falls due
    while reading and takes the connection back; its recorder receives each finished
    request's row, ``itl_hist`` every inter-token gap (ns; tokens that arrive in one read are
    0 ns apart); ``stream`` says whether chat and completions answer in SSE events.
    """

    cdef object owner
    cdef Sender sender
    cdef Recorder recorder
    cdef Histogram itl_hist
    cdef StreamScan scan
    cdef bint stream_llm
    cdef public object transport
    cdef int fd                           # the socket, when a Poller drives it (else -1)
    cdef bint connecting                  # ... and its connect has not ended yet
    cdef int connect_err                  # ... a failed first send's errno, reported later
    cdef Poller poller
    cdef bytes pending_out                # request bytes the socket did not take yet
    cdef Py_ssize_t pending_at
    cdef readonly int64_t served          # requests answered on this connection so far
    cdef public int64_t idle_since_ns     # when it last went back to the idle pool
    cdef readonly int64_t sent_abs
    cdef Py_ssize_t _j                     # the plan row carried, -1 for none
    cdef int kind, batch_size, status, mode
    cdef bint retried, head_done, close_after, streaming
    cdef object encoding
    cdef int64_t first_byte, first_token, last_token, tokens, itl_max, itl_sum
    cdef int64_t left, chunk_left
    cdef bytearray buf
    cdef _BodyBuffer body                 # a body spread over reads, lent by the sender

    def __cinit__(self, owner, Sender sender, Histogram itl_hist, bint stream):
        self.owner = owner
        self.sender = sender
        self.recorder = sender.recorder
        self.itl_hist = itl_hist
        self.stream_llm = stream
        self.scan = StreamScan()
        self.transport = None
        self.fd = -1
        self.connecting = False
        self.connect_err = 0
        self.poller = None
        self.pending_out = None
        self.buf = bytearray()
        self.body = None
        self._j = -1
        self.served = self.idle_since_ns = self.sent_abs = 0
        self.encoding = None

    @property
    def j(self):
        """The plan row this connection carries, or None when it is idle."""
        return None if self._j < 0 else self._j

    @property
    def is_open(self):
        """Whether the connection is open (its socket or its transport)."""
        return self.fd >= 0 or self.transport is not None

    def close(self):
        """Close: a transport flushes first (TLS's close_notify) and reports
        ``connection_lost`` later (an idle connection is then forgotten); a socket of a
        :class:`Poller` just closes, with no callback."""
        if self.fd >= 0:
            self._close_fd()
        elif self.transport is not None:
            self.transport.close()

    def abort(self):
        """Close now, dropping what a transport has not sent (as :meth:`close` otherwise)."""
        if self.fd >= 0:
            self._close_fd()
        elif self.transport is not None:
            self.transport.abort()

    # -- a socket a Poller drives ------------------------------------------------------
    def attach(self, Poller poller, int fd, bint connecting=False):
        """Drive non-blocking socket ``fd`` from ``poller`` (this object owns and closes it)
        instead of a transport. ``connecting``: its connect is in progress (``EINPROGRESS``),
        and ends here, in C: the first request's bytes go out as soon as the socket is
        connected (a send that succeeds, or ``EPOLLOUT``), stamped as sent then; a connect
        that fails ends that request as a ``connect`` error. Until then the sender counts the
        connection in ``connecting``."""
        self.poller = poller
        self.fd = fd
        poller.watch(self)
        if connecting:
            self.connecting = True
            self.sender.connecting += 1
        else:
            self.sender.opened += 1

    cdef void _close_fd(self) noexcept:
        if self.fd >= 0:
            self._connect_ended()
            self.poller.unwatch(self)
            close(self.fd)
            self.fd = -1
            self.pending_out = None

    cdef inline void _connect_ended(self) noexcept:
        if self.connecting:
            self.connecting = False
            self.sender.connecting -= 1

    cdef int _send_connecting(self, bytes data, int64_t now) except -1:
        # The first request on a socket whose connect may still be in progress. A loopback
        # connect has mostly finished by the time connect() returns EINPROGRESS, so try the
        # send: bytes taken mean connected; EAGAIN means still connecting (EPOLLOUT says
        # when). Any other error is the connect's, reported by the next dispatch (the socket
        # is closed, so epoll says EPOLLHUP at once), not in this call: ending the request
        # here would admit the next waiting row, whose connect could fail the same way, one
        # call inside the other.
        cdef ssize_t k = send(self.fd, <const char*>data, len(data), MSG_NOSIGNAL)
        if k >= 0:
            self._connected(now)
            if k < len(data):
                self._write_fd(data, k)
            return 0
        if errno != EAGAIN and errno != EINTR:
            self.connect_err = errno
        self.pending_out, self.pending_at = data, 0
        self.poller.want_write(self, True)
        return 0

    cdef int _connected(self, int64_t now) except -1:
        # The connect ended well: the request goes now, so it is stamped sent now.
        self._connect_ended()
        self.sender.opened += 1
        self.sent_abs = now
        if self._j >= 0 and not self.retried:
            self.recorder.add_lag(self._j, now)
        return 0

    cdef int _on_connect_event(self, uint32_t events) except -1:
        # EPOLLOUT (or an error) on a connecting socket: the connect ended, one way or the
        # other; a failed first send's errno or SO_ERROR says which.
        cdef int err = self.connect_err
        cdef socklen_t size = sizeof(err)
        cdef str reason
        if err == 0 and getsockopt(self.fd, SOL_SOCKET, SO_ERROR, &err, &size) != 0:
            err = errno
        if err == 0 and not events & (EPOLLERR | EPOLLHUP):
            self._connected(now_ns())
            if self.pending_out is not None:
                self._write_fd(self.pending_out, self.pending_at)
            self.sender.admit()             # a connect slot is free: rows waiting for one go
            return 0
        # Failed: closing the socket frees the slot, and the release admits waiting rows.
        reason = (<bytes>strerror(err)).decode("utf-8", "replace") if err \
            else "closed by the peer"
        if self._j >= 0:
            self.fail(E_CONNECT, "connect failed: " + reason, close=True)
        else:
            self._close_fd()
        return 0

    cdef int _write_fd(self, bytes data, Py_ssize_t at) except -1:
        # Write data[at:]; what the socket does not take now waits for EPOLLOUT. A failed
        # write is not handled here: the socket reports the error or hang-up to epoll, and
        # the read that follows ends the connection.
        cdef const char* p = data
        cdef Py_ssize_t n = len(data)
        cdef ssize_t k
        while at < n:
            k = send(self.fd, p + at, n - at, MSG_NOSIGNAL)
            if k >= 0:
                at += k
            elif errno == EINTR:
                continue
            elif errno == EAGAIN:                 # (EWOULDBLOCK on Linux)
                if self.pending_out is None:
                    self.poller.want_write(self, True)
                self.pending_out, self.pending_at = data, at
                return 0
            else:
                break
        if self.pending_out is not None:
            self.pending_out = None
            self.poller.want_write(self, False)
        return 0

    cdef int _on_events(self, uint32_t events, unsigned char* rbuf) except -1:
        # The Poller saw ``events`` on this socket: write what waits, read what came.
        cdef ssize_t n
        if self.fd < 0:
            return 0                                 # closed earlier in this dispatch
        if self.connecting:
            self._on_connect_event(events)
            if self.fd < 0 or self.connecting:
                return 0
            events &= ~EPOLLOUT                      # its pending bytes were just written
        if events & EPOLLOUT and self.pending_out is not None:
            self._write_fd(self.pending_out, self.pending_at)
        if not events & (EPOLLIN | EPOLLHUP | EPOLLERR):
            return 0
        while self.fd >= 0:
            n = recv(self.fd, rbuf, _READ_BYTES, 0)
            if n > 0:
                self._data(rbuf, n, now_ns())
                if n < _READ_BYTES:
                    break
            elif n < 0 and errno == EINTR:
                continue
            elif n < 0 and errno == EAGAIN:            # (EWOULDBLOCK on Linux)
                break
            else:                                    # the peer closed, or an error
                self._close_fd()
                self.connection_lost(None)
                break
        return 0

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport):
        self.transport = transport

    def connection_lost(self, exc):
        cdef Py_ssize_t j
        self.transport = None
        if self._j < 0:
            self.owner.forget(self)
        elif self.head_done and self.mode == 2:     # body delimited by the close
            self._complete(now_ns())
        elif self.first_byte < 0 and self.served and not self.retried:
            # The server closed a reused keep-alive connection as the request went out
            # (its idle timeout): nothing was answered, so it goes again on a new one.
            j, self._j = self._j, -1
            self.owner.retry(self, j)
        elif self.first_byte < 0:
            self.fail(E_CONNECT, "connection closed before any response byte")
        else:
            self.fail(E_BROKEN, "connection closed mid-response")

    def eof_received(self):
        return None                 # close the transport: connection_lost follows

    def pause_writing(self):
        pass

    def resume_writing(self):
        pass

    def data_received(self, bytes data):
        self._data(data, len(data), now_ns())

    cdef int _data(self, const unsigned char* p, Py_ssize_t n, int64_t now) except -1:
        # One read's bytes, at ``now``.
        cdef Py_ssize_t end
        cdef bytes joined
        if now >= self.sender.due_abs_ns:
            # A send fell due while the loop was reading: it goes first, not after every
            # ready socket has been read.
            self.sender.send_due()
        if self._j < 0:
            return 0                                 # late bytes of a timed-out request
        if self.first_byte < 0:
            self.first_byte = now
        if not self.head_done:
            if PyByteArray_GET_SIZE(self.buf):
                # The head began in an earlier read (rare): parse the reads joined.
                self.buf.extend(p[:n])
                joined = bytes(self.buf)
                del self.buf[:]
                p = joined
                n = len(joined)
            if n >= 2 and p[0] == 13 and p[1] == 10:
                p += 2                           # a late CRLF of the previous chunked body
                n -= 2
            end = _head_end(p, n)
            if end < 0:
                self.buf.extend(p[:n])
                self._check_head_size()
                return 0
            if not self._parse_head(p, end):
                return 0
            p += end + 4
            n -= end + 4
            if self.mode == 0 and self.left <= 0:
                self._complete(now)
                return 0
        self._body(p, n, now)
        return 0

    # -- request life ------------------------------------------------------------------
    cdef int send_now(self, Py_ssize_t j, bytes data, bint retried) except -1:
        # Carry plan row j: write its request bytes, stamped as sent now; the first send of a
        # row records its send lag.
        cdef int64_t now = now_ns()
        self._begin(j, now, retried)
        if self.connecting:
            self._send_connecting(data, now)
            return 0
        if self.fd >= 0:
            if self.pending_out is not None:
                # The last request's tail was still unsent (the answer came first): it
                # goes first, as a transport's buffer would send it.
                data = self.pending_out[self.pending_at:] + data
            self._write_fd(data, 0)
        else:
            self.transport.write(data)
        if not retried:
            self.recorder.add_lag(j, now)
        return 0

    def begin(self, Py_ssize_t j, int64_t sent_abs_ns, bint retried=False):
        """Start carrying plan row ``j``, sent at ``sent_abs_ns`` (without writing)."""
        self._begin(j, sent_abs_ns, retried)

    cdef void _begin(self, Py_ssize_t j, int64_t sent_abs, bint retried) noexcept:
        self._j = j
        self.kind = self.recorder.kind[j]
        self.batch_size = self.recorder.batch_size[j]
        self.retried = retried
        self.sent_abs = sent_abs
        self.first_byte = self.first_token = self.last_token = -1
        self.tokens = self.itl_max = self.itl_sum = 0
        self.head_done = False
        self.status = 0
        self.mode = 0               # 0 content-length, 1 chunked, 2 until close
        self.left = 0
        self.chunk_left = 0
        self.close_after = False
        self.streaming = False
        self.encoding = None
        if PyByteArray_GET_SIZE(self.buf):      # rarely: a slice object and a call each time
            del self.buf[:]
        self._return_body()

    cdef inline void _return_body(self) noexcept:
        if self.body is not None:
            self.sender.take_back_body(self.body)
            self.body = None

    cdef int _check_head_size(self) except -1:
        if PyByteArray_GET_SIZE(self.buf) > _MAX_HEAD_BYTES:
            self.fail(E_PAYLOAD, "response headers too long", close=True)
        return 0

    cdef bint _parse_head(self, const unsigned char* h, Py_ssize_t n) except -1:
        # Status line, then the headers this client acts on, matched case-insensitively.
        cdef Py_ssize_t line, colon, eol, vs, ve, k
        cdef const unsigned char* hit
        cdef bint has_length = False, chunked = False
        cdef int64_t length = 0
        if n < 12 or memcmp(h, b"HTTP/", 5) != 0 or not (_digit(h[9]) and _digit(h[10])
                                                         and _digit(h[11])):
            self.fail(E_PAYLOAD, f"not an HTTP response: {bytes(h[:min(n, 40)]).lower()!r}",
                      close=True)
            return False
        self.status = (h[9] - 48) * 100 + (h[10] - 48) * 10 + (h[11] - 48)
        self.head_done = True
        self.close_after = memcmp(h, b"HTTP/1.0", 8) == 0
        line = _next_line(h, 0, n)
        while line < n:
            eol = _next_line(h, line, n) - 2           # this line's CRLF, or n
            hit = <const unsigned char*>memchr(h + line, 58, eol - line)    # eol >= line
            colon = eol if hit == NULL else hit - h
            vs = colon + 1
            while vs < eol and (h[vs] == 32 or h[vs] == 9):
                vs += 1
            ve = eol
            while ve > vs and (h[ve - 1] == 32 or h[ve - 1] == 9):
                ve -= 1
            k = colon - line
            if _name_is(h + line, k, b"content-length", 14):
                if not has_length:
                    has_length = True
                    if ve == vs or ve - vs > 18 or not _all_digits(h + vs, ve - vs):
                        self.fail(E_PAYLOAD, "bad Content-Length: "
                                  f"{bytes(h[vs:min(ve, vs + 40)]).lower()!r}", close=True)
                        return False
                    length = _parse_digits(h + vs, ve - vs)
            elif _name_is(h + line, k, b"transfer-encoding", 17):
                chunked = _ends_with_ci(h + vs, ve - vs, b"chunked", 7)
            elif _name_is(h + line, k, b"connection", 10):
                if _ends_with_ci(h + vs, ve - vs, b"close", 5):
                    self.close_after = True
            elif _name_is(h + line, k, b"content-encoding", 16):
                # We send Accept-Encoding: identity; anything else cannot be scanned as text.
                if ve > vs and not _name_is(h + vs, ve - vs, b"identity", 8):
                    self.encoding = bytes(h[vs:ve]).lower().decode("latin-1")
            line = eol + 2
        if chunked:
            self.mode = 1
        elif has_length:
            self.mode = 0
            self.left = length
        else:
            self.mode = 2
            self.close_after = True
        self.streaming = self.status == 200 and self.kind != _EMBEDDING and self.stream_llm
        if self.streaming:
            self.scan.restart(self.kind == _CHAT)
        return True

    cdef int _body(self, const unsigned char* p, Py_ssize_t n, int64_t now) except -1:
        # The body bytes of one read: dechunked, then scanned or kept; the end completes.
        cdef long tokens = 0
        cdef bint last = False
        cdef Py_ssize_t pos = 0, eol, take, held
        cdef int64_t size
        cdef bytes work
        if self.mode == 1:
            held = PyByteArray_GET_SIZE(self.buf)
            if held:                     # a partial chunk header waits from the last read
                self.buf.extend(p[:n])
                work = bytes(self.buf)
                del self.buf[:]
                p = work
                n = len(work)
            while pos < n:
                if self.chunk_left > 0:
                    take = min(self.chunk_left, n - pos)
                    tokens += self._payload(p + pos, take)
                    self.chunk_left -= take
                    pos += take
                    if self.chunk_left:
                        break
                    self.chunk_left = -2            # the CRLF after the chunk data
                if self.chunk_left == -2:
                    if n - pos < 2:
                        break
                    pos += 2
                    self.chunk_left = 0
                    continue
                eol = pos
                while eol + 1 < n and not (p[eol] == 13 and p[eol + 1] == 10):
                    eol += 1
                if eol + 1 >= n:
                    break
                size = _chunk_size(p + pos, eol - pos)
                if size < 0:
                    field = bytes(p[pos:eol]).split(b";", 1)[0].strip()
                    self.fail(E_PAYLOAD, f"bad chunk size: {field[:40]!r}", close=True)
                    return 0
                pos = eol + 2
                if size == 0:
                    last = True                     # trailers (none expected) are ignored
                    pos = n
                    break
                self.chunk_left = size
            if pos < n:
                self.buf.extend(p[pos:n])
        elif self.mode == 0 and not self.streaming and n >= self.left \
                and self.body is None:
            # The whole body is in this read (the usual case): checked where it lies.
            self._complete(now, p, self.left)
            return 0
        else:
            tokens = self._payload(p, n)
            if self.mode == 0:
                self.left -= n
                last = self.left <= 0
        if tokens:
            self._tokens(tokens, now)
        if last:
            self._complete(now)
        return 0

    cdef long _payload(self, const unsigned char* p, Py_ssize_t n) except -1:
        if n <= 0:
            return 0
        if self.streaming:
            return self.scan.feed_ptr(p, n)
        if self.body is None:
            self.body = self.sender.lend_body()
        self.body.append(p, n)
        return 0

    cdef void _tokens(self, long n, int64_t now) noexcept:
        cdef int64_t gap
        if n <= 0:
            return
        if self.first_token < 0:
            self.first_token = now
            n -= 1
            self.tokens += 1
            self.last_token = now
        if n > 0:
            gap = now - self.last_token
            self.itl_hist.record_ns(gap)
            if n > 1:
                # Tokens that arrived in the same read are 0 ns apart, as the client saw them.
                self.itl_hist.record_ns_n(0, n - 1)
            self.itl_sum += gap
            if gap > self.itl_max:
                self.itl_max = gap
            self.tokens += n
            self.last_token = now

    cdef int _complete(self, int64_t now, const unsigned char* body=NULL,
                       Py_ssize_t body_len=0) except -1:
        # The response is whole: classify it. ``body`` points at a body that arrived in one
        # read (not copied into self.body); NULL means self.body holds it (or it is empty).
        cdef int status = self.status
        cdef StreamScan scan = self.scan
        cdef long long prompt = -1, out = -1
        if body == NULL:
            body_len = 0 if self.body is None else self.body.n
            body = <const unsigned char*>b"" if body_len == 0 else self.body.data
        if status >= 400 or status < 200:
            detail = f"HTTP {status}: " + _head_of(body, body_len, 120).decode("utf-8",
                                                                                "replace")
            self.fail(E_5XX if status >= 500 else E_4XX, detail.strip(), status=status)
            return 0
        if self.encoding is not None:
            self.fail(E_PAYLOAD, f"response has Content-Encoding {self.encoding}, which "
                      "was not asked for", status=status)
            return 0
        if not self.streaming:
            # One JSON body: the answer arrives whole, so its first token is its last.
            if self.kind == _EMBEDDING:
                problem, prompt_tokens = _check_embedding(body, body_len, self.batch_size)
                completion_tokens = 0
            else:
                problem, prompt_tokens, completion_tokens = _check_completion(body, body_len)
            if problem is not None:
                self.fail(E_PAYLOAD, problem, status=status)
                return 0
            self.first_token = now
            self._finish(now, -1, None, -1 if prompt_tokens is None else prompt_tokens,
                         completion_tokens or 0)
            return 0
        if scan.malformed:
            self.fail(E_PAYLOAD, "malformed SSE event", status=status)
            return 0
        if scan.error is not None:
            self.fail(E_BROKEN, "error event in stream: "
                      + scan.error.decode("utf-8", "replace"), status=status)
            return 0
        if not scan.done and scan.usage is None:
            self.fail(E_BROKEN, "stream ended without [DONE]", status=status)
            return 0
        scan.usage_counts(&prompt, &out)
        self._finish(now, -1, None, prompt, self.tokens if out < 0 else out)
        return 0

    def fail(self, int code, str detail, *, status=None, bint close=False):
        """End the current request as failed with error code ``code`` (timeouts, stops)."""
        if status is not None:
            self.status = status
        if close:
            self.close_after = True
        self._finish(now_ns(), code, detail, -1, self.tokens)

    cdef int _finish(self, int64_t now, int code, object detail, int64_t prompt_tokens,
                     int64_t out_tokens) except -1:
        cdef Py_ssize_t j = self._j
        cdef int64_t gaps = self.tokens - 1
        cdef bint reusable
        self._j = -1
        self.served += 1
        reusable = (code < 0 or code == E_4XX or code == E_5XX) and not self.close_after \
            and (self.fd >= 0 or self.transport is not None)
        self.recorder.record(j, self.sent_abs, self.first_byte, self.first_token, now,
                             self.status, code, detail, prompt_tokens, out_tokens,
                             self.itl_sum // gaps if gaps > 0 else -1,
                             self.itl_max if gaps > 0 else -1)
        self._return_body()
        self.sender.release(self, reusable)
        return 0


@cython.final
cdef class Poller:
    """One epoll set for a worker's plain-HTTP connections and its send timer, handled in C.

    A response's bytes are read into one buffer and parsed where they lie, with no transport,
    no ``bytes`` object and no Python call per read, and a request is one ``send``. The
    worker waits here (:meth:`wait`, without the GIL): a wake-up is one ``epoll_wait``, then
    the timer's sends (:meth:`watch_timer`) and each ready socket's events, all in C. The
    event loop watches :attr:`fd` too and calls :meth:`dispatch` (the same, with no wait) in
    its own turns, between waits or while it finishes a connect of its own. A connection is
    watched from :meth:`Conn.attach` until it closes; the set holds a reference to each,
    released at the end of the dispatch it closed in (an event of the same batch may still
    name it).
    """

    cdef readonly int fd
    cdef epoll_event* events
    cdef unsigned char* rbuf
    cdef list closed
    cdef readonly Py_ssize_t watched
    cdef Sender sender                    # whose timer is in the set (None: none is)
    cdef int timer_fd

    def __cinit__(self):
        self.fd = -1
        self.events = <epoll_event*>malloc(_MAX_EVENTS * sizeof(epoll_event))
        self.rbuf = <unsigned char*>malloc(_READ_BYTES)
        if self.events == NULL or self.rbuf == NULL:
            raise MemoryError()
        self.fd = epoll_create1(EPOLL_CLOEXEC)
        if self.fd < 0:
            raise OSError(errno, "epoll_create1 failed")
        self.closed = []
        self.watched = 0
        self.sender = None
        self.timer_fd = -1

    def __dealloc__(self):
        if self.fd >= 0:
            close(self.fd)
        free(self.events)
        free(self.rbuf)

    cdef int watch(self, Conn conn) except -1:
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.ptr = <void*>conn
        if epoll_ctl(self.fd, EPOLL_CTL_ADD, conn.fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl(ADD) failed")
        Py_INCREF(conn)
        self.watched += 1
        return 0

    cdef int want_write(self, Conn conn, bint on) except -1:
        cdef epoll_event ev
        ev.events = EPOLLIN | EPOLLOUT if on else EPOLLIN
        ev.data.ptr = <void*>conn
        if epoll_ctl(self.fd, EPOLL_CTL_MOD, conn.fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl(MOD) failed")
        return 0

    cdef void unwatch(self, Conn conn) noexcept:
        cdef epoll_event ev
        epoll_ctl(self.fd, EPOLL_CTL_DEL, conn.fd, &ev)
        self.closed.append(conn)        # the set's reference, until this dispatch ends
        Py_DECREF(conn)
        self.watched -= 1

    cdef int _add_tagged(self, int fd, uint64_t tag) except -1:
        cdef epoll_event ev
        ev.events = EPOLLIN
        ev.data.u64 = tag
        if epoll_ctl(self.fd, EPOLL_CTL_ADD, fd, &ev) != 0:
            raise OSError(errno, "epoll_ctl(ADD) failed")
        return 0

    def watch_timer(self, int fd, Sender sender):
        """Run ``sender``'s timer callback (``on_timer``) when timerfd ``fd`` fires."""
        self._add_tagged(fd, _TAG_TIMER)
        self.sender, self.timer_fd = sender, fd

    def unwatch_timer(self):
        cdef epoll_event ev
        if self.timer_fd >= 0:
            epoll_ctl(self.fd, EPOLL_CTL_DEL, self.timer_fd, &ev)
        self.sender, self.timer_fd = None, -1

    def wake_on(self, int fd):
        """End :meth:`wait` when ``fd`` is readable: the event loop reads it (the worker's
        control pipe), so the loop gets its turn at once."""
        self._add_tagged(fd, _TAG_WAKE)

    cdef bint _handle(self, int n) except -1:
        # Hand each ready event to its connection or the timer; whether a wake-up
        # descriptor is among them.
        cdef int i
        cdef uint64_t tag
        cdef bint woke = False
        cdef Conn conn
        try:
            for i in range(n):
                tag = self.events[i].data.u64
                if tag == _TAG_TIMER:
                    if self.sender is not None:
                        self.sender.fire()
                elif tag == _TAG_WAKE:
                    woke = True
                else:
                    conn = <Conn>self.events[i].data.ptr
                    conn._on_events(self.events[i].events, self.rbuf)
        finally:
            if self.closed:
                del self.closed[:]
        return woke

    def dispatch(self):
        """Handle every ready socket; the event loop's reader callback for :attr:`fd`.

        Every one, not one batch of events: when the worker is behind, thousands of answers
        wait, and a batch a turn of the loop would leave their connections busy while rows
        fall due, open a connection each, and fall further behind."""
        self._read_ready()
        if self.sender is not None:
            self.sender.admit_after_reading()

    cdef int _read_ready(self) except -1:
        # Handle what is ready until nothing is (each epoll_wait takes one batch).
        cdef int n = _MAX_EVENTS
        while n == _MAX_EVENTS:
            n = epoll_wait(self.fd, self.events, _MAX_EVENTS, 0)
            self._handle(n)
        return 0

    cdef int _admit_after_reading(self) except -1:
        # Rows that found no idle connection while this batch was handled connect only once
        # every ready socket is read: each answer read frees a connection. Connecting first,
        # a worker that fell behind (its answers unread) opened a connection per late row,
        # the connect storm of docs/design.md, "A dispatch reads every ready socket".
        if self.sender is not None and self.sender.admit_pending:
            self._read_ready()
            self.sender.admit_after_reading()
        return 0

    def wait(self, int64_t until_ns):
        """Wait in this set, in C and without the GIL, handling what is ready as it comes,
        until ``until_ns`` (absolute CLOCK_MONOTONIC), a :meth:`wake_on` descriptor is
        readable, the sender's schedule ends or stops, or a connect is to be made through the
        event loop (``Sender.opening``: a row must not wait for the deadline). Returns True
        when it ended early. Rows that found no idle connection connect after the ready
        sockets are read (:attr:`Sender.connect_after_reading`).

        A wake-up is one ``epoll_wait``: no pass through the event loop, no Python call."""
        cdef int n, timeout_ms
        cdef int64_t left
        cdef bint woke
        while True:
            if self.sender is not None and (self.sender.stopping or self.sender.opening
                                            or self.sender.due_abs_ns == NEVER):
                return True
            left = until_ns - now_ns()
            if left <= 0:
                return False
            timeout_ms = <int>((left + 999_999) // 1_000_000)
            with nogil:
                n = epoll_wait(self.fd, self.events, _MAX_EVENTS, timeout_ms)
            if n < 0:
                if errno == EINTR:
                    continue
                raise OSError(errno, "epoll_wait failed")
            woke = self._handle(n)
            self._admit_after_reading()
            if woke:
                return True


cdef inline bint _digit(unsigned char c) noexcept nogil:
    return 48 <= c <= 57


cdef inline Py_ssize_t _head_end(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    cdef void* hit = memmem(p, n, b"\r\n\r\n", 4)
    return -1 if hit == NULL else <const unsigned char*>hit - p


cdef inline Py_ssize_t _next_line(const unsigned char* h, Py_ssize_t i,
                                  Py_ssize_t n) noexcept nogil:
    # The offset after the next CRLF at or after i (n + 2 when there is none): libc's memchr
    # finds each LF (16 or 32 bytes a step), then the byte before it is checked.
    cdef const unsigned char* hit
    cdef Py_ssize_t k
    while i + 1 < n:
        hit = <const unsigned char*>memchr(h + i + 1, 10, n - i - 1)
        if hit == NULL:
            break
        k = hit - h
        if h[k - 1] == 13:
            return k + 1
        i = k
    return n + 2


cdef inline unsigned char _lower(unsigned char c) noexcept nogil:
    return c + 32 if 65 <= c <= 90 else c


cdef inline bint _name_is(const unsigned char* s, Py_ssize_t n, const char* lower,
                          Py_ssize_t k) noexcept nogil:
    cdef Py_ssize_t i
    if n != k:
        return False
    for i in range(k):
        if _lower(s[i]) != <unsigned char>lower[i]:
            return False
    return True


cdef inline bint _ends_with_ci(const unsigned char* s, Py_ssize_t n, const char* lower,
                               Py_ssize_t k) noexcept nogil:
    return n >= k and _name_is(s + n - k, k, lower, k)


cdef inline bint _all_digits(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        if not _digit(s[i]):
            return False
    return True


cdef inline int64_t _parse_digits(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    cdef int64_t v = 0
    cdef Py_ssize_t i
    for i in range(n):
        v = v * 10 + (s[i] - 48)
    return v


cdef int64_t _chunk_size(const unsigned char* s, Py_ssize_t n) noexcept nogil:
    # A chunk-size line: hex digits, optional ";extensions", whitespace around; -1 if bad.
    cdef Py_ssize_t i = 0, end = 0
    cdef int64_t v = 0
    cdef unsigned char c
    while end < n and s[end] != 59:              # ';'
        end += 1
    while i < end and _space(s[i]):
        i += 1
    while end > i and _space(s[end - 1]):
        end -= 1
    if i == end or end - i > 15:
        return -1
    while i < end:
        c = s[i]
        if 48 <= c <= 57:
            v = v * 16 + (c - 48)
        elif 97 <= c <= 102:
            v = v * 16 + (c - 87)
        elif 65 <= c <= 70:
            v = v * 16 + (c - 55)
        else:
            return -1
        i += 1
    return v


cdef inline bint _space(unsigned char c) noexcept nogil:
    return c == 32 or c == 9 or c == 10 or c == 13 or c == 11 or c == 12

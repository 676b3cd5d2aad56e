# cython: boundscheck=False, wraparound=False, cdivision=True
"""The bytes of each request of a plan: HTTP/1.1 head and OpenAI JSON body, rendered in C.

:class:`Renderer` is the one definition of what a replay sends (``Dispatcher`` builds one per
worker through :func:`cpbench.replaying.wire.renderer`; ``wire.request_body`` renders one body
through it too). Per request it
writes into two reused C buffers and makes one ``bytes``; Python runs only for the rare
parts: a literal prompt that needs JSON escaping, and a built prompt longer than the shared
text (``cpbench.prompts``). 0.24 µs for a 32-token chat request with sageLLM hints, 0.6 µs
for a batch of 16 texts of 128 tokens, against 2.7 and 4.0 µs for the Python rendering it
replaced (tests/support/request_reference.py, the oracle of tests/test_render.py).

The body, by kind (``P`` is the prompt as a JSON string, ``M`` the model):

- embedding: ``{"model":M,"input":[P,P,...]}`` with ``batch_size`` copies (at least one);
- chat: ``{"model":M,"messages":[{"role":"user","content":P}]`` or, for a row continuing a
  session, ``{"model":M,"messages":<the row's messages array>``; completion:
  ``{"model":M,"prompt":P``; then ``,"max_tokens":N`` when the trace asks for N ≥ 0, then
  ``,"stream":true,"stream_options":{"include_usage":true}`` (or ``,"stream":false``);
- with vLLM hints, ``,"priority":N`` before the closing brace (every kind).

A prompt the trace does not give is ``r<row> `` followed by the first ``input_tokens - 1``
words of :mod:`cpbench.prompts`' text (``build_prompt``), which needs no escaping. The head is
the static block of the row's kind and priority (``wire.header_block``), then with sageLLM
hints ``X-Request-ID: cpbench-<row>`` and ``X-SLO-Deadline-Ms: <slo_e2e_ms as %g>``, then
``Content-Length``.
"""
cimport cython
from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from cpython.mem cimport PyMem_Free
from libc.stdint cimport int32_t, int64_t
from libc.stdlib cimport malloc, realloc, free
from libc.string cimport memcpy, strlen

import json

cdef extern from "Python.h":
    char* PyOS_double_to_string(double val, char format_code, int precision, int flags,
                                int* ptype) except NULL

cdef bytes _STREAM_ON = b',"stream":true,"stream_options":{"include_usage":true}'
cdef bytes _STREAM_OFF = b',"stream":false'


cdef struct Buf:
    char* data
    Py_ssize_t n, cap


cdef int _reserve(Buf* b, Py_ssize_t more) except -1:
    cdef Py_ssize_t cap
    cdef char* data
    if b.n + more <= b.cap:
        return 0
    cap = max(2 * b.cap, b.n + more, 4096)
    data = <char*>realloc(b.data, cap)
    if data == NULL:
        raise MemoryError()
    b.data, b.cap = data, cap
    return 0


cdef inline int _put(Buf* b, const char* p, Py_ssize_t k) except -1:
    if b.n + k > b.cap:
        _reserve(b, k)
    memcpy(b.data + b.n, p, k)
    b.n += k
    return 0


cdef inline int _put_bytes(Buf* b, bytes s) except -1:
    return _put(b, PyBytes_AS_STRING(s), PyBytes_GET_SIZE(s))


cdef inline int _put_int(Buf* b, long long v) except -1:
    # Decimal digits, as "%lld" writes them (snprintf's format parsing cost more than this).
    cdef char tmp[24]
    cdef int k = 24
    cdef unsigned long long u = <unsigned long long>v
    if v < 0:
        u = 0 - u                                   # the magnitude, LLONG_MIN's included
    while True:
        k -= 1
        tmp[k] = <char>(48 + u % 10)
        u //= 10
        if u == 0:
            break
    if v < 0:
        k -= 1
        tmp[k] = 45                                 # '-'
    return _put(b, &tmp[k], 24 - k)


cdef inline bint _plain(const unsigned char* p, Py_ssize_t n) noexcept nogil:
    # Printable ASCII without quote or backslash: its own JSON string body.
    cdef Py_ssize_t i
    for i in range(n):
        if p[i] < 32 or p[i] > 126 or p[i] == 34 or p[i] == 92:
            return False
    return True


@cython.final
cdef class Renderer:
    """Renders plan row ``j``'s whole request (:meth:`render`).

    ``columns`` maps the plan's column names (``kind``, ``priority``, ``rows``, ``model``,
    ``input_tokens``, ``output_tokens``, ``batch_size``, ``slo_e2e_ms``) to 1-D buffers of the
    plan's dtypes; ``prompts`` and ``messages`` are ``plan.PromptColumn`` or None; ``models_json``
    the JSON string of each model code (bytes); ``heads[kind * n_priorities + priority]`` the
    static head of that kind and priority (bytes, up to ``Content-Length``); ``vllm_priority``
    the vLLM ``priority`` value of each priority code; ``sagellm``/``vllm`` the hint style;
    ``stream`` whether chat and completions stream. ``text`` and ``cuts`` are
    ``cpbench.prompts``' shared text (ASCII bytes) and its word ends; ``build_prompt`` the
    Python function for prompts longer than it.
    """

    cdef const int32_t[::1] kind, priority, model, input_tokens, output_tokens, batch_size
    cdef const int64_t[::1] rows
    cdef const double[::1] slo_e2e_ms
    cdef object prompts, messages, build_prompt
    cdef const unsigned char[::1] prompt_data, message_data
    cdef const int64_t[::1] prompt_offsets, message_offsets
    cdef const unsigned char[::1] prompt_valid, message_valid
    cdef list models_json, heads
    cdef const int64_t[::1] vllm_priority
    cdef int n_priorities, embedding, chat
    cdef bint sagellm, vllm, stream
    cdef bytes text
    cdef const int64_t[::1] cuts
    cdef Buf body, head
    cdef double deadline_value                  # the last SLO formatted, and its text: SLOs
    cdef bytes deadline_text                    # repeat per class, so most rows reuse it

    def __cinit__(self, columns, prompts, messages, list models_json, list heads,
                  int n_priorities, vllm_priority, bint sagellm, bint vllm, bint stream,
                  int embedding, int chat, bytes text, cuts, build_prompt):
        self.kind = columns["kind"]
        self.priority = columns["priority"]
        self.rows = columns["rows"]
        self.model = columns["model"]
        self.input_tokens = columns["input_tokens"]
        self.output_tokens = columns["output_tokens"]
        self.batch_size = columns["batch_size"]
        self.slo_e2e_ms = columns["slo_e2e_ms"]
        self.prompts, self.messages = prompts, messages
        if prompts is not None:
            self.prompt_data = _bytes_view(prompts.data)
            self.prompt_offsets = prompts.offsets
            self.prompt_valid = prompts.valid.view("u1")
        if messages is not None:
            self.message_data = _bytes_view(messages.data)
            self.message_offsets = messages.offsets
            self.message_valid = messages.valid.view("u1")
        self.models_json, self.heads = models_json, heads
        self.n_priorities = n_priorities
        self.vllm_priority = vllm_priority
        self.sagellm, self.vllm, self.stream = sagellm, vllm, stream
        self.embedding, self.chat = embedding, chat
        self.text, self.cuts, self.build_prompt = text, cuts, build_prompt
        self.body = Buf(NULL, 0, 0)
        self.head = Buf(NULL, 0, 0)
        self.deadline_text = None

    def __dealloc__(self):
        free(self.body.data)
        free(self.head.data)

    cdef int _prompt(self, Buf* b, Py_ssize_t j) except -1:
        # The prompt of row j as a JSON string.
        cdef Py_ssize_t start, end, words, n
        if self.prompts is not None and self.prompt_valid[j]:
            start, end = self.prompt_offsets[j], self.prompt_offsets[j + 1]
            if end == start or _plain(&self.prompt_data[start], end - start):
                _put(b, b'"', 1)
                if end > start:
                    _put(b, <const char*>&self.prompt_data[start], end - start)
                _put(b, b'"', 1)
            else:
                _put_bytes(b, json.dumps(self.prompts[j]).encode())
            return 0
        n = self.input_tokens[j]
        _put(b, b'"', 1)
        if n > 0:
            words = n - 1
            if words < self.cuts.shape[0]:
                _put(b, b"r", 1)
                _put_int(b, self.rows[j])
                if words:
                    _put(b, b" ", 1)
                    _put(b, PyBytes_AS_STRING(self.text), self.cuts[words])
            else:
                _put_bytes(b, self.build_prompt(n, self.rows[j]).encode())
        _put(b, b'"', 1)
        return 0

    cdef int _body(self, Py_ssize_t j) except -1:
        cdef Buf* b = &self.body
        cdef int kind = self.kind[j]
        cdef Py_ssize_t copies, c, start, end, mark
        b.n = 0
        _put(b, b'{"model":', 9)
        _put_bytes(b, <bytes>self.models_json[self.model[j]])
        if kind == self.embedding:
            _put(b, b',"input":[', 10)
            mark = b.n
            self._prompt(b, j)
            end = b.n
            copies = max(self.batch_size[j], 1)
            for c in range(1, copies):
                _reserve(b, end - mark + 1)
                b.data[b.n] = 44                        # ','
                memcpy(b.data + b.n + 1, b.data + mark, end - mark)
                b.n += end - mark + 1
            _put(b, b"]", 1)
        else:
            if kind == self.chat and self.messages is not None and self.message_valid[j]:
                _put(b, b',"messages":', 12)
                start, end = self.message_offsets[j], self.message_offsets[j + 1]
                if end > start:
                    _put(b, <const char*>&self.message_data[start], end - start)
            elif kind == self.chat:
                _put(b, b',"messages":[{"role":"user","content":', 38)
                self._prompt(b, j)
                _put(b, b"}]", 2)
            else:
                _put(b, b',"prompt":', 10)
                self._prompt(b, j)
            if self.output_tokens[j] >= 0:
                _put(b, b',"max_tokens":', 14)
                _put_int(b, self.output_tokens[j])
            _put_bytes(b, _STREAM_ON if self.stream else _STREAM_OFF)
        if self.vllm:
            _put(b, b',"priority":', 12)
            _put_int(b, self.vllm_priority[self.priority[j]])
        _put(b, b"}", 1)
        return 0

    cpdef bytes body_of(self, Py_ssize_t j):
        """Row ``j``'s JSON body alone."""
        self._body(j)
        return PyBytes_FromStringAndSize(self.body.data, self.body.n)

    cpdef bytes render(self, Py_ssize_t j):
        """Row ``j``'s whole request: head, ``Content-Length``, blank line, body."""
        cdef Buf* h = &self.head
        cdef char* deadline
        cdef double slo
        cdef bytes out
        cdef char* p
        self._body(j)
        h.n = 0
        _put_bytes(h, <bytes>self.heads[self.kind[j] * self.n_priorities + self.priority[j]])
        if self.sagellm:
            _put(h, b"X-Request-ID: cpbench-", 22)
            _put_int(h, self.rows[j])
            _put(h, b"\r\nX-SLO-Deadline-Ms: ", 21)
            slo = self.slo_e2e_ms[j]
            if self.deadline_text is None or \
                    (<int64_t*>&slo)[0] != (<int64_t*>&self.deadline_value)[0]:
                # As Python's b"%g" % slo writes it; the same bits, the same text (-0.0, NaN).
                deadline = PyOS_double_to_string(slo, b'g', 6, 0, NULL)
                try:
                    self.deadline_text = deadline[:strlen(deadline)]
                finally:
                    PyMem_Free(deadline)
                self.deadline_value = slo
            _put_bytes(h, self.deadline_text)
            _put(h, b"\r\n", 2)
        _put(h, b"Content-Length: ", 16)
        _put_int(h, self.body.n)
        _put(h, b"\r\n\r\n", 4)
        out = PyBytes_FromStringAndSize(NULL, h.n + self.body.n)
        p = PyBytes_AS_STRING(out)
        memcpy(p, h.data, h.n)
        memcpy(p + h.n, self.body.data, self.body.n)
        return out


cdef const unsigned char[::1] _bytes_view(data):
    # A prompt column's data: bytes or a read-only mmap; an empty one has nothing to view.
    if len(data) == 0:
        return b"\0"
    return memoryview(data).cast("B")

# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""SLO counters per request class and per-slice time series, ingested from result columns.

``SloCounters`` keeps, per class (kind x priority), the requests, completed, errors, TTFT met,
end-to-end met and both (every deadline) met; attainment and goodput follow from them.
``Timeslices`` keeps per-slice (1 s by default) counts -- scheduled, sent, completed, errors,
output tokens, in flight, SLO met -- and a sparse 2-digit histogram per slice of TTFT,
end-to-end latency and dispatch lag, so a report can draw percentiles over time.

Both take whole NumPy columns of the results table (``add_arrays``), both merge exactly
across workers (``merge``), and both travel as checksummed bytes (``encode``/``decode``).
Columns are checked here once; the row loop runs without the GIL.

Time attribution (each documented where it is kept): a request is *scheduled* in the slice of
its ``intended_ns``, *sent* in that of ``sent_ns``, *completed* / *errors* / *output tokens* /
*SLO met* in that of ``done_ns`` (an error without ``done_ns``: of ``sent_ns``, else of
``intended_ns``); it is *in flight* at the end of every slice from its send until it ended.
Latencies are from the intended time and go to the slice of ``intended_ns`` -- the latency of
the requests that arrived then -- with dispatch lag ``sent_ns - intended_ns`` beside them.
"""
from __future__ import annotations

import json
import math
import struct
import zlib

import numpy as np

cimport numpy as cnp
from libc.math cimport INFINITY
from libc.stdint cimport int64_t, uint8_t, uint16_t
from cpbench._core.hist cimport Histogram

cnp.import_array()

from cpbench.vocab import KINDS, PRIORITIES
FIELDS = ("requests", "completed", "errors", "ttft_met", "e2e_met", "slo_met")
COUNTER_NAMES = ("scheduled", "sent", "completed", "errors", "output_tokens", "slo_met",
                 "ended")
METRICS = ("ttft", "e2e", "lag")
# A longer series doubles its slice length (Timeslices.coarsen): each slice holds sparse
# histograms (5.6 kB a 1 s slice at 500 req/s), so memory would otherwise grow with the run's
# length (10 MB per 30 minutes); 1,024 slices is 17 minutes of 1 s slices, and any run still
# charts with 512 to 1,024 points (a chart is about 1,000 pixels wide).
MAX_SLICES = 1024

_SLO_MAGIC = b"CPBS"
_TS_MAGIC = b"CPBT"
_VERSION = 1
_CRC = struct.Struct("<I")


def _bool_column(name, values, n):
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"column {name!r} has shape {arr.shape}; expected ({n},)")
    return np.ascontiguousarray(arr, dtype=np.uint8)


def _int_column(name, values, n):
    arr = np.asarray(values)
    if arr.shape != (n,):
        raise ValueError(f"column {name!r} has shape {arr.shape}; expected ({n},)")
    if arr.dtype.kind not in "iub":
        raise ValueError(f"column {name!r} must hold integers; got dtype {arr.dtype}")
    return np.ascontiguousarray(arr, dtype=np.int64)


def _seal(magic, header, payload):
    head = json.dumps(header, sort_keys=True).encode()
    body = magic + struct.pack("<BI", _VERSION, len(head)) + head + zlib.compress(payload, 6)
    return body + _CRC.pack(zlib.crc32(body))


def _unseal(blob, magic, what):
    blob = bytes(blob)
    if len(blob) < 13:
        raise ValueError(f"{what} blob is truncated: {len(blob)} bytes")
    if blob[:4] != magic:
        raise ValueError(f"not a cpbench {what} blob: starts with {blob[:4]!r}, expected "
                         f"{magic!r}")
    body, (crc,) = blob[:len(blob) - 4], _CRC.unpack(blob[len(blob) - 4:])
    if zlib.crc32(body) != crc:
        raise ValueError(f"{what} blob is corrupt or truncated: CRC32 mismatch")
    version, head_len = struct.unpack("<BI", body[4:9])
    if version != _VERSION:
        raise ValueError(f"{what} blob has version {version}; this cpbench reads {_VERSION}")
    try:
        header = json.loads(body[9:9 + head_len])
        payload = zlib.decompress(body[9 + head_len:])
    except (ValueError, zlib.error) as exc:
        raise ValueError(f"{what} blob is corrupt: {exc}") from None
    return header, payload


# --- SLO counters -------------------------------------------------------------------------------

cdef void _count_classes(int64_t[:, :, ::1] out, const int64_t[::1] kind,
                         const int64_t[::1] prio, const uint8_t[::1] completed,
                         const uint8_t[::1] errored, const uint8_t[::1] ttft_met,
                         const uint8_t[::1] e2e_met, const uint8_t[::1] slo_met) noexcept nogil:
    cdef Py_ssize_t i
    cdef int64_t k, p
    cdef bint ok
    for i in range(kind.shape[0]):
        k = kind[i]
        p = prio[i]
        ok = completed[i] != 0
        out[k, p, 0] += 1
        out[k, p, 1] += ok
        out[k, p, 2] += errored[i] != 0
        # Deadlines count only for completed requests: a failure meets none.
        out[k, p, 3] += ok and ttft_met[i] != 0
        out[k, p, 4] += ok and e2e_met[i] != 0
        out[k, p, 5] += ok and slo_met[i] != 0


cdef class SloCounters:
    """Request, completion, error and deadline counts per class (kind x priority)."""

    cdef readonly tuple kinds
    cdef readonly tuple priorities
    cdef object _counts   # int64 (kinds, priorities, len(FIELDS))

    def __init__(self, kinds=KINDS, priorities=PRIORITIES):
        self.kinds = tuple(str(k) for k in kinds)
        self.priorities = tuple(str(p) for p in priorities)
        if len(set(self.kinds)) != len(self.kinds) or len(set(self.priorities)) != len(
                self.priorities) or not self.kinds or not self.priorities:
            raise ValueError(f"kinds and priorities must be non-empty and distinct; got "
                             f"{self.kinds} and {self.priorities}")
        self._counts = np.zeros((len(self.kinds), len(self.priorities), len(FIELDS)), np.int64)

    def add_arrays(self, kind_codes, priority_codes, completed, errored, ttft_met, e2e_met,
                   slo_met):
        """Count many requests at once.

        ``kind_codes`` / ``priority_codes`` index ``kinds`` / ``priorities``; the other five are
        booleans per request (deadline flags of a request that did not complete are ignored).
        """
        n = np.asarray(kind_codes).shape[0] if np.ndim(kind_codes) == 1 else -1
        kind = _int_column("kind_codes", kind_codes, n)
        prio = _int_column("priority_codes", priority_codes, n)
        if n and (kind.min() < 0 or kind.max() >= len(self.kinds)):
            raise ValueError(f"kind_codes must be in [0, {len(self.kinds)}); got "
                             f"[{kind.min()}, {kind.max()}]")
        if n and (prio.min() < 0 or prio.max() >= len(self.priorities)):
            raise ValueError(f"priority_codes must be in [0, {len(self.priorities)}); got "
                             f"[{prio.min()}, {prio.max()}]")
        cols = [_bool_column(name, col, n) for name, col in (
            ("completed", completed), ("errored", errored), ("ttft_met", ttft_met),
            ("e2e_met", e2e_met), ("slo_met", slo_met))]
        _count_classes(self._counts, kind, prio, cols[0], cols[1], cols[2], cols[3], cols[4])

    def _code(self, kind, priority):
        try:
            k = None if kind is None else self.kinds.index(kind)
            p = None if priority is None else self.priorities.index(priority)
        except ValueError:
            raise ValueError(f"unknown class ({kind!r}, {priority!r}); known kinds "
                             f"{self.kinds}, priorities {self.priorities}") from None
        return k, p

    def add(self, kind, priority, *, completed, errored, ttft_met, e2e_met, slo_met):
        """Count one request, by label (``kind`` in ``kinds``, ``priority`` in ``priorities``)."""
        k, p = self._code(kind, priority)
        self.add_arrays([k], [p], [completed], [errored], [ttft_met], [e2e_met], [slo_met])

    def counts(self, kind=None, priority=None):
        """Counts of one class, one kind or priority (the other None), or all (both None)."""
        k, p = self._code(kind, priority)
        c = self._counts
        if k is not None:
            c = c[k:k + 1]
        if p is not None:
            c = c[:, p:p + 1]
        total = c.sum(axis=(0, 1))
        return {name: int(v) for name, v in zip(FIELDS, total)}

    def attainment(self, kind=None, priority=None):
        """Share (0..1) of requests that completed meeting every deadline; nan when none."""
        c = self.counts(kind, priority)
        return c["slo_met"] / c["requests"] if c["requests"] else math.nan

    def goodput_rps(self, double window_s, kind=None, priority=None):
        """Completed requests per second that met every deadline of their class."""
        if not window_s > 0:
            raise ValueError(f"window_s must be > 0; got {window_s}")
        return self.counts(kind, priority)["slo_met"] / window_s

    def as_array(self):
        """A copy of the counts, int64 of shape (kinds, priorities, len(FIELDS))."""
        return self._counts.copy()

    def widened(self, kinds, priorities):
        """A copy over more classes: ``kinds`` and ``priorities`` start with this one's, in
        order, and may add labels (seen first in a later batch of results), counted zero."""
        out = SloCounters(kinds, priorities)
        if (out.kinds[:len(self.kinds)], out.priorities[:len(self.priorities)]) != (
                self.kinds, self.priorities):
            raise ValueError(f"widened classes must start with {self.kinds} x "
                             f"{self.priorities}; got {out.kinds} x {out.priorities}")
        out._counts[:len(self.kinds), :len(self.priorities)] = self._counts
        return out

    def merge(self, SloCounters other not None):
        """Add ``other``'s counts (same kinds and priorities, in order). Returns self."""
        if (other.kinds, other.priorities) != (self.kinds, self.priorities):
            raise ValueError(f"cannot merge SLO counters over different classes: "
                             f"{self.kinds} x {self.priorities} vs {other.kinds} x "
                             f"{other.priorities}")
        self._counts += other._counts
        return self

    def __eq__(self, other):
        if not isinstance(other, SloCounters):
            return NotImplemented
        return ((self.kinds, self.priorities) == (other.kinds, other.priorities)
                and bool(np.array_equal(self._counts, (<SloCounters>other)._counts)))

    __hash__ = None

    def encode(self):
        """Versioned, checksummed bytes; ``SloCounters.decode`` reverses them exactly."""
        return _seal(_SLO_MAGIC, {"kinds": list(self.kinds), "priorities": list(self.priorities)},
                     self._counts.astype("<i8").tobytes())

    @staticmethod
    def decode(blob):
        """Rebuild from ``encode()`` bytes; ValueError on corrupt or truncated input."""
        header, payload = _unseal(blob, _SLO_MAGIC, "SLO counters")
        try:
            out = SloCounters(header["kinds"], header["priorities"])
            out._counts[...] = np.frombuffer(payload, "<i8").reshape(out._counts.shape)
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"SLO counters blob is corrupt: {exc}") from None
        return out


# --- timeslices -------------------------------------------------------------------------------

cdef inline int64_t _slice_of(int64_t t_ns, int64_t slice_ns) noexcept nogil:
    return t_ns // slice_ns


cdef inline int64_t _key(Histogram layout, int64_t s, int64_t v) noexcept nogil:
    # Early sends (v < 0) count as zero lag; past highest_ns goes to the overflow slot.
    if v < 0:
        v = 0
    if v > layout.highest_ns:
        return s * (layout.counts_len + 1) + layout.counts_len
    return s * (layout.counts_len + 1) + layout.index_of(v)


cdef void _ingest(Histogram layout, int64_t slice_ns, int64_t[:, ::1] counters,
                  const int64_t[::1] intended, const int64_t[::1] sent,
                  const int64_t[::1] first_token, const int64_t[::1] done,
                  const int64_t[::1] out_tokens, const uint8_t[::1] completed,
                  const uint8_t[::1] errored, const uint8_t[::1] slo_met,
                  int64_t[::1] ttft_keys, int64_t[::1] e2e_keys, int64_t[::1] lag_keys,
                  int64_t *n_keys) noexcept nogil:
    # counters rows follow COUNTER_NAMES: scheduled, sent, completed, errors, output_tokens,
    # slo_met, ended. Key arrays receive composite keys slice * (counts_len + 1) + bucket.
    cdef Py_ssize_t i
    cdef int64_t s, end, nt = 0, ne = 0, nl = 0
    for i in range(intended.shape[0]):
        s = _slice_of(intended[i], slice_ns)
        counters[0, s] += 1
        if sent[i] >= 0:
            counters[1, _slice_of(sent[i], slice_ns)] += 1
            lag_keys[nl] = _key(layout, s, sent[i] - intended[i])
            nl += 1
        end = done[i]
        if completed[i] and end >= 0:
            counters[2, _slice_of(end, slice_ns)] += 1
            counters[4, _slice_of(end, slice_ns)] += out_tokens[i]
            if slo_met[i]:
                counters[5, _slice_of(end, slice_ns)] += 1
            e2e_keys[ne] = _key(layout, s, end - intended[i])
            ne += 1
            if first_token[i] >= 0:
                ttft_keys[nt] = _key(layout, s, first_token[i] - intended[i])
                nt += 1
        elif errored[i]:
            if end < 0:
                end = sent[i] if sent[i] >= 0 else intended[i]
            counters[3, _slice_of(end, slice_ns)] += 1
        if end >= 0 and sent[i] >= 0:
            counters[6, _slice_of(end, slice_ns)] += 1
    n_keys[0] = nt
    n_keys[1] = ne
    n_keys[2] = nl


cdef void _bucket_values(Histogram layout, const int64_t[::1] idx, double[::1] out) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(idx.shape[0]):
        if idx[i] >= layout.counts_len:
            out[i] = INFINITY
        else:
            out[i] = <double>(layout.lowest_at(idx[i]) + (layout.width_at(idx[i]) >> 1))


cdef class Timeslices:
    """Per-slice counters and sparse per-slice histograms of TTFT, end-to-end and lag.

    Parameters
    ----------
    slice_ns : int
        Slice length (ns), 1 s by default; slice i covers [i * slice_ns, (i + 1) * slice_ns)
        of the run clock.
    digits : int
        Significant digits of the per-slice histograms, 2 (default, 0.4% bound) or 3.
    highest_ns : int
        Largest latency held per slice; larger ones go to an overflow slot that percentiles
        report as ``inf``.

    Past ``MAX_SLICES`` slices the series doubles its slice length (:meth:`coarsen`) as
    often as needed, so ``slice_ns`` is the length in force now, and memory stays bounded
    however long the run.
    """

    cdef readonly int64_t slice_ns
    cdef Histogram _layout
    cdef object _counters             # int64 (len(COUNTER_NAMES), n_slices)
    cdef dict _hists                  # metric -> (indptr int64, bucket uint16, count uint32)

    def __init__(self, int64_t slice_ns=1_000_000_000, int digits=2,
                 int64_t highest_ns=3_600_000_000_000):
        if slice_ns <= 0:
            raise ValueError(f"slice_ns must be > 0; got {slice_ns}")
        if digits not in (2, 3):
            raise ValueError(f"per-slice histograms take 2 or 3 digits; got {digits}")
        self.slice_ns = slice_ns
        # lowest_ns=0: zero lag is a real value; the layout only maps values to buckets.
        self._layout = Histogram(0, highest_ns, digits)
        self._counters = np.zeros((len(COUNTER_NAMES), 0), np.int64)
        self._hists = {m: (np.zeros(1, np.int64), np.zeros(0, np.uint16), np.zeros(0, np.uint32))
                       for m in METRICS}

    @property
    def digits(self):
        return self._layout.digits

    @property
    def highest_ns(self):
        return self._layout.highest_ns

    @property
    def n_slices(self):
        """Number of slices from 0 to the last one holding anything."""
        return self._counters.shape[1]

    cdef void _grow(self, Py_ssize_t n):
        if n > self._counters.shape[1]:
            self._counters = np.pad(self._counters, ((0, 0), (0, n - self._counters.shape[1])))

    def add_arrays(self, intended_ns, sent_ns, first_token_ns, done_ns, output_tokens,
                   completed, errored, slo_met):
        """Ingest many requests: equal-length columns, a negative time meaning null.

        Times are int64 ns on the run clock; ``intended_ns`` must be >= 0. Booleans say whether
        a request completed, failed, and met every deadline of its class.
        """
        n = np.asarray(intended_ns).shape[0] if np.ndim(intended_ns) == 1 else -1
        intended = _int_column("intended_ns", intended_ns, n)
        cols = [_int_column(name, c, n) for name, c in (
            ("sent_ns", sent_ns), ("first_token_ns", first_token_ns), ("done_ns", done_ns),
            ("output_tokens", output_tokens))]
        flags = [_bool_column(name, c, n) for name, c in (
            ("completed", completed), ("errored", errored), ("slo_met", slo_met))]
        if n == 0:
            return
        if intended.min() < 0:
            raise ValueError(f"intended_ns must be >= 0 (run clock); got {intended.min()} at "
                             f"row {int(np.argmin(intended))}")
        last = max(int(intended.max()), int(cols[0].max()), int(cols[2].max()))
        while last // self.slice_ns + 1 > MAX_SLICES:
            self.coarsen()
        self._grow(last // self.slice_ns + 1)
        keys = np.empty((3, n), np.int64)
        cdef int64_t n_keys[3]
        _ingest(self._layout, self.slice_ns, self._counters, intended, cols[0], cols[1],
                cols[2], cols[3], flags[0], flags[1], flags[2], keys[0], keys[1], keys[2],
                n_keys)
        for j, metric in enumerate(METRICS):
            uniq, cnt = np.unique(keys[j, :n_keys[j]], return_counts=True)
            self._add_sparse(metric, uniq, cnt)

    cdef void _add_sparse(self, str metric, object keys, object counts):
        """Fold sorted unique composite keys with counts into one metric's CSR store.

        Only the slices from the first one the keys touch are rebuilt: results come nearly
        in time order, so folding in a batch costs about what the batch touches, not the
        whole run (rebuilding the whole store each time made a long run quadratic).
        """
        stride = self._layout.counts_len + 1
        n = self.n_slices
        indptr, bucket, count = self._hists[metric]
        if indptr.size < n + 1:
            # (Never a negative index here: under wraparound=False, Cython hands it to the
            # type's sq_item as it is, and NumPy 2.5 arrays take that path.)
            indptr = np.concatenate([indptr, np.full(n + 1 - indptr.size, indptr[indptr.size - 1])])
        first = int(keys[0] // stride) if keys.size else n
        head = int(indptr[first])
        old_keys = (np.repeat(np.arange(first, n, dtype=np.int64), np.diff(indptr[first:]))
                    * stride + bucket[head:])
        old_counts = count[head:].astype(np.int64)
        if old_keys.size:
            # Both sorted and unique: merge by position, no sort.
            pos = np.searchsorted(old_keys, keys)
            found = pos < old_keys.size
            found[found] = old_keys[pos[found]] == keys[found]
            old_counts[pos[found]] += counts[found]
            fresh = ~found
            keys = np.insert(old_keys, pos[fresh], keys[fresh])
            counts = np.insert(old_counts, pos[fresh], counts[fresh])
        tail = head + np.cumsum(np.bincount(keys // stride - first, minlength=n - first))
        self._hists[metric] = (
            np.concatenate([indptr[:first + 1], tail]).astype(np.int64),
            np.concatenate([bucket[:head], (keys % stride).astype(np.uint16)]),
            np.concatenate([count[:head], np.asarray(counts).astype(np.uint32)]))

    cdef tuple _composite(self, str metric):
        indptr, bucket, count = self._hists[metric]
        slices = np.repeat(np.arange(indptr.size - 1, dtype=np.int64), np.diff(indptr))
        return slices * (self._layout.counts_len + 1) + bucket, count.astype(np.int64)

    def coarsen(self):
        """Double the slice length in place: slices 2i and 2i + 1 become slice i (counters add,
        histograms merge). The result equals what a series built with twice the slice length
        from the same requests holds. Returns self."""
        n = self.n_slices
        m = (n + 1) // 2
        padded = np.pad(self._counters, ((0, 0), (0, 2 * m - n)))
        self._counters = padded.reshape(padded.shape[0], m, 2).sum(axis=2)
        stride = self._layout.counts_len + 1
        for metric in METRICS:
            keys, counts = self._composite(metric)
            keys = (keys // stride // 2) * stride + keys % stride
            uniq, inverse = np.unique(keys, return_inverse=True)
            summed = np.zeros(uniq.size, np.int64)
            np.add.at(summed, inverse, counts)
            indptr = np.concatenate([[0], np.cumsum(np.bincount(uniq // stride, minlength=m))])
            self._hists[metric] = (indptr.astype(np.int64), (uniq % stride).astype(np.uint16),
                                   summed.astype(np.uint32))
        self.slice_ns *= 2
        return self

    def counters(self):
        """Per-slice series: ``scheduled``, ``sent``, ``completed``, ``errors``,
        ``output_tokens``, ``slo_met`` and ``in_flight`` (at each slice's end), int64 arrays."""
        out = {name: self._counters[i].copy() for i, name in enumerate(COUNTER_NAMES)
               if name != "ended"}
        out["in_flight"] = np.cumsum(self._counters[1]) - np.cumsum(self._counters[6])
        return out

    def slice_counts(self, metric):
        """Values per slice held by one metric's histograms (``ttft``, ``e2e``, ``lag``)."""
        indptr, _, count = self._hists[self._metric(metric)]
        cum = np.concatenate([[0], np.cumsum(count, dtype=np.int64)])
        out = cum[indptr[1:]] - cum[indptr[:indptr.size - 1]]
        return np.pad(out, (0, self.n_slices - out.size))

    def percentile_series(self, metric, double p):
        """Per-slice value (ns, float) at percent ``p`` in [0, 100] of one metric.

        Nearest rank at the bucket midpoint (within ``1 / (2 * 128)`` at 2 digits); nan for
        an empty slice, inf where the rank falls in the overflow above ``highest_ns``.
        """
        if not 0 <= p <= 100:
            raise ValueError(f"percentile must be a percent in [0, 100]; got {p}")
        indptr, bucket, count = self._hists[self._metric(metric)]
        out = np.full(self.n_slices, np.nan)
        if count.size == 0:
            return out
        cum = np.cumsum(count, dtype=np.int64)
        cum0 = np.concatenate([[0], cum])
        starts = indptr[:indptr.size - 1]
        before, totals = cum0[starts], cum0[indptr[1:]] - cum0[starts]
        has = np.nonzero(totals)[0]
        ranks = np.maximum(np.ceil(p / 100.0 * totals[has] * (1.0 - 1e-12)), 1).astype(np.int64)
        pos = np.searchsorted(cum, before[has] + ranks, side="left")
        idx = np.ascontiguousarray(bucket[pos], dtype=np.int64)
        values = np.empty(idx.size)
        _bucket_values(self._layout, idx, values)
        out[has] = values
        return out

    def _metric(self, metric):
        if metric not in METRICS:
            raise ValueError(f"metric must be one of {', '.join(METRICS)}; got {metric!r}")
        return metric

    @property
    def nbytes(self):
        """Memory held by counters and sparse histograms, bytes."""
        return int(self._counters.nbytes + sum(a.nbytes for h in self._hists.values()
                                               for a in h))

    def merge(self, Timeslices other not None):
        """Add ``other``'s slices (same slice_ns and layout) into this one. Returns self."""
        if (other.slice_ns, other.digits, other.highest_ns) != (
                self.slice_ns, self.digits, self.highest_ns):
            raise ValueError(
                "cannot merge timeslices with different (slice_ns, digits, highest_ns): "
                f"{(self.slice_ns, self.digits, self.highest_ns)} vs "
                f"{(other.slice_ns, other.digits, other.highest_ns)}")
        self._grow(other.n_slices)
        self._counters[:, :other.n_slices] += other._counters
        for metric in METRICS:
            keys, counts = other._composite(metric)
            self._add_sparse(metric, keys, counts)
        return self

    def __eq__(self, other):
        if not isinstance(other, Timeslices):
            return NotImplemented
        cdef Timeslices o = other
        if (o.slice_ns, o.digits, o.highest_ns) != (self.slice_ns, self.digits, self.highest_ns):
            return False
        if not np.array_equal(self._counters, o._counters):
            return False
        return all(np.array_equal(a, b) for m in METRICS
                   for a, b in zip(self._hists[m], o._hists[m]))

    __hash__ = None

    def encode(self):
        """Versioned, checksummed bytes; ``Timeslices.decode`` reverses them exactly."""
        parts = [self._counters.astype("<i8").tobytes()]
        sizes = {}
        for m in METRICS:
            indptr, bucket, count = self._hists[m]
            sizes[m] = int(bucket.size)
            parts += [indptr.astype("<i8").tobytes(), bucket.astype("<u2").tobytes(),
                      count.astype("<u4").tobytes()]
        header = {"slice_ns": self.slice_ns, "digits": self.digits,
                  "highest_ns": self.highest_ns, "n_slices": self.n_slices, "entries": sizes}
        return _seal(_TS_MAGIC, header, b"".join(parts))

    @staticmethod
    def decode(blob):
        """Rebuild from ``encode()`` bytes; ValueError on corrupt or truncated input."""
        header, payload = _unseal(blob, _TS_MAGIC, "timeslices")
        try:
            out = Timeslices(header["slice_ns"], header["digits"], header["highest_ns"])
            n = int(header["n_slices"])
            view = memoryview(payload)
            pos = 8 * len(COUNTER_NAMES) * n
            out._counters = np.frombuffer(view[:pos], "<i8").reshape(
                len(COUNTER_NAMES), n).astype(np.int64)
            for m in METRICS:
                k = int(header["entries"][m])
                indptr = np.frombuffer(view[pos:pos + 8 * (n + 1)], "<i8").astype(np.int64)
                pos += 8 * (n + 1)
                bucket = np.frombuffer(view[pos:pos + 2 * k], "<u2").astype(np.uint16)
                pos += 2 * k
                count = np.frombuffer(view[pos:pos + 4 * k], "<u4").astype(np.uint32)
                pos += 4 * k
                if (indptr.size != n + 1 or indptr[n] != k or count.size != k
                        or np.any(np.diff(indptr) < 0)):
                    raise ValueError(f"{m} histograms do not match their sizes")
                out._hists[m] = (indptr, bucket, count)
            if pos != len(payload):
                raise ValueError(f"{len(payload) - pos} bytes left over")
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"timeslices blob is corrupt: {exc}") from None
        return out

"""One request's result row as a worker packs it, and the names its codes stand for.

The packing itself is compiled (:class:`cpbench._core.conn.RowBuffer`, re-exported here): a
connection writes each finished request's values straight into flat C buffers, and
``take_rows`` hands them over as ``(n, ints, floats, details)``. The dispatcher process imports
this and not :mod:`cpbench.results`, so it never loads pyarrow (about 40 MB of resident memory
per worker). The parent turns packed rows into Arrow record batches with
:func:`cpbench.results.rows_to_batch`.
"""
from __future__ import annotations

from cpbench._core.conn import N_FLOAT_FIELDS, N_INT_FIELDS, RowBuffer
from cpbench.vocab import ERROR_CLASSES

ERROR_CODE = {name: i for i, name in enumerate(ERROR_CLASSES)}

# The fields of one request in the order RowBuffer.append takes them (and the compiled
# Recorder writes them): these integers, then the two float deadlines; error_detail travels
# apart.
ROW_INT_FIELDS = (
    "row", "kind", "priority", "model", "intended_ns", "sent_ns", "first_byte_ns",
    "first_token_ns", "done_ns", "input_tokens", "output_tokens", "batch_size", "status",
    "error_class", "itl_mean_ns", "itl_max_ns", "warmup",
)
ROW_FLOAT_FIELDS = ("slo_ttft_ms", "slo_e2e_ms")
ROW_FIELDS = ROW_INT_FIELDS + ROW_FLOAT_FIELDS
if (len(ROW_INT_FIELDS), len(ROW_FLOAT_FIELDS)) != (N_INT_FIELDS, N_FLOAT_FIELDS):
    raise ImportError("cpbench._core.conn packs a different row: rebuild the extension")
__all__ = ["ERROR_CODE", "ROW_INT_FIELDS", "ROW_FLOAT_FIELDS", "ROW_FIELDS", "RowBuffer"]

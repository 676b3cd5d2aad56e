"""One request's result row as a worker packs it, and the names its codes stand for.

The dispatcher process imports this and not :mod:`cpbench.results`, so it never loads pyarrow
(about 40 MB of resident memory per worker). The parent turns packed rows into Arrow record
batches with :func:`cpbench.results.rows_to_batch`.
"""
from __future__ import annotations

import array

from cpbench.vocab import ERROR_CLASSES

ERROR_CODE = {name: i for i, name in enumerate(ERROR_CLASSES)}

# The fields of one request in the order RowBuffer.append takes them: these integers, then
# the two float deadlines; error_detail travels apart.
ROW_INT_FIELDS = (
    "row", "kind", "priority", "model", "intended_ns", "sent_ns", "first_byte_ns",
    "first_token_ns", "done_ns", "input_tokens", "output_tokens", "batch_size", "status",
    "error_class", "itl_mean_ns", "itl_max_ns", "warmup",
)
ROW_FLOAT_FIELDS = ("slo_ttft_ms", "slo_e2e_ms")
ROW_FIELDS = ROW_INT_FIELDS + ROW_FLOAT_FIELDS
_N_INT = len(ROW_INT_FIELDS)


class RowBuffer:
    """Per-request values of one worker, packed row by row into two flat typed arrays.

    The dispatcher process only packs: appending a request is one ``array.extend`` of its
    integers and one of its two deadlines, and :meth:`take_rows` hands the raw buffers over
    (tens of microseconds), so the sending loop never stalls on Arrow work. The parent turns
    them into a record batch with :func:`cpbench.results.rows_to_batch`.
    """

    def __init__(self) -> None:
        self._clear()

    def _clear(self) -> None:
        self.ints = array.array("q")
        self.floats = array.array("d")
        self.details: dict[int, str] = {}
        self.n = 0

    def __len__(self) -> int:
        return self.n

    def append(self, values: tuple, detail: str | None = None) -> None:
        """Record one request: ``values`` in ROW_FIELDS order (integers, then deadlines).

        Absent times and ITLs are -1; a success has ``error_class`` -1, a failure its index
        in ERROR_CLASSES. ``warmup`` is 0 or 1.
        """
        if detail is not None:
            self.details[self.n] = detail
        self.ints.extend(values[:_N_INT])
        self.floats.extend(values[_N_INT:])
        self.n += 1

    def take_rows(self) -> tuple[int, bytes, bytes, dict[int, str]] | None:
        """The buffered rows as ``(n, ints, floats, details)`` (None when empty), cleared."""
        if self.n == 0:
            return None
        packed = (self.n, self.ints.tobytes(), self.floats.tobytes(), self.details)
        self._clear()
        return packed

"""The result schema (docs/formats.md, ``results.arrow``) and the recorder that writes it.

A worker packs each finished request's values into the flat typed arrays of a
:class:`RowBuffer`, so no per-request Python object outlives the request; a few times a second
it hands the raw buffers to the parent, which turns them into an Arrow record batch
(:func:`rows_to_batch`, SLO flags computed there, vectorised) and appends it to
``results.arrow`` through its one :class:`ResultsWriter` as it arrives, so the file is valid up
to the last batch after an interruption.

Dictionary columns use fixed dictionaries (every worker builds the same ones from the trace):
the Arrow IPC *file* format cannot replace a dictionary between batches.
"""
from __future__ import annotations

import array
import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from cpbench.errors import OutputError

KIND_VALUES = ("chat", "completion", "embedding")
PRIORITY_VALUES = ("HIGH", "NORMAL", "LOW")
ERROR_CLASSES = ("connect", "timeout", "http_4xx", "http_5xx", "stream_broken", "bad_payload")
ERROR_CODE = {name: i for i, name in enumerate(ERROR_CLASSES)}

# Deadlines applied where the trace's slo_*_ms is null: (ttft_ms, e2e_ms) per kind. The e2e
# figures are the ones `record synth` writes and the embedded control plane schedules by
# (LLM 5 s, embedding 0.5 s), so a trace without deadlines is judged as a synthesized one.
DEFAULT_SLO_MS = {
    "chat": (1_000.0, 5_000.0),
    "completion": (1_000.0, 5_000.0),
    "embedding": (500.0, 500.0),
}

# The per-request tuple the dispatcher appends (RowBuffer.append): these integer fields,
# then the two float deadlines; error_detail travels apart.
ROW_INT_FIELDS = (
    "row", "kind", "priority", "model", "intended_ns", "sent_ns", "first_byte_ns",
    "first_token_ns", "done_ns", "input_tokens", "output_tokens", "batch_size", "status",
    "error_class", "itl_mean_ns", "itl_max_ns", "warmup",
)
ROW_FLOAT_FIELDS = ("slo_ttft_ms", "slo_e2e_ms")
ROW_FIELDS = ROW_INT_FIELDS + ROW_FLOAT_FIELDS
_N_INT = len(ROW_INT_FIELDS)
_COL = {name: i for i, name in enumerate(ROW_INT_FIELDS)}


def _dict_type() -> pa.DataType:
    return pa.dictionary(pa.int32(), pa.string())


def result_schema(run: dict | None = None) -> pa.Schema:
    """The ``results.arrow`` schema; ``run`` (credential-free) goes into ``cpbench.run``."""
    fields = [
        pa.field("row", pa.int64(), nullable=False),
        pa.field("kind", _dict_type(), nullable=False),
        pa.field("priority", _dict_type(), nullable=False),
        pa.field("model", _dict_type(), nullable=False),
        pa.field("worker", pa.int16(), nullable=False),
        pa.field("intended_ns", pa.int64(), nullable=False),
        pa.field("sent_ns", pa.int64(), nullable=False),
        pa.field("first_byte_ns", pa.int64()),
        pa.field("first_token_ns", pa.int64()),
        pa.field("done_ns", pa.int64()),
        pa.field("input_tokens", pa.int32(), nullable=False),
        pa.field("output_tokens", pa.int32(), nullable=False),
        pa.field("batch_size", pa.int16(), nullable=False),
        pa.field("status", pa.int16(), nullable=False),
        pa.field("error_class", _dict_type()),
        pa.field("error_detail", pa.string()),
        pa.field("itl_mean_ns", pa.int64()),
        pa.field("itl_max_ns", pa.int64()),
        pa.field("slo_ttft_ms", pa.float32(), nullable=False),
        pa.field("slo_e2e_ms", pa.float32(), nullable=False),
        pa.field("slo_ttft_met", pa.bool_(), nullable=False),
        pa.field("slo_e2e_met", pa.bool_(), nullable=False),
        pa.field("slo_met", pa.bool_(), nullable=False),
        pa.field("warmup", pa.bool_(), nullable=False),
    ]
    meta = {b"cpbench.run": json.dumps(run or {}, sort_keys=True).encode()}
    return pa.schema(fields, metadata=meta)


def _nullable(values: np.ndarray) -> pa.Array:
    # -1 is the "did not happen" sentinel of the row buffers.
    return pa.array(values, mask=values < 0)


class RowBuffer:
    """Per-request values of one worker, packed row by row into two flat typed arrays.

    The dispatcher process only packs: appending a request is one ``array.extend`` of its
    integers and one of its two deadlines, and :meth:`take_rows` hands the raw buffers over
    (tens of microseconds), so the sending loop never stalls on Arrow work. The parent turns
    them into a record batch with :func:`rows_to_batch`.
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


def rows_to_batch(packed: tuple[int, bytes, bytes, dict[int, str]], models: list[str],
                  worker: int) -> pa.RecordBatch:
    """One worker's packed rows (:meth:`RowBuffer.take_rows`) as a ``results.arrow`` batch.

    ``models`` is every model of the trace in dictionary-code order; SLO flags are computed
    here, vectorised.
    """
    n, ints, floats, details = packed
    iv = np.frombuffer(ints, dtype=np.int64).reshape(n, _N_INT)
    fv = np.frombuffer(floats, dtype=np.float64).reshape(n, 2)

    def col(name: str) -> np.ndarray:
        return np.ascontiguousarray(iv[:, _COL[name]])

    def dict_col(name: str, values: tuple[str, ...] | list[str]) -> pa.DictionaryArray:
        codes = col(name).astype(np.int32)
        return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0),
                                              pa.array(list(values), pa.string()))

    intended, first, done = col("intended_ns"), col("first_token_ns"), col("done_ns")
    failed = col("error_class") >= 0
    ttft_slo, e2e_slo = fv[:, 0], fv[:, 1]
    # Deadlines count from the intended time: client lag is the user's wait too.
    ttft_met = ~failed & (first >= 0) & ((first - intended) <= ttft_slo * 1e6)
    e2e_met = ~failed & (done >= 0) & ((done - intended) <= e2e_slo * 1e6)
    arrays = [
        pa.array(col("row")),
        dict_col("kind", KIND_VALUES),
        dict_col("priority", PRIORITY_VALUES),
        dict_col("model", models),
        pa.array(np.full(n, worker, np.int16)),
        pa.array(intended),
        pa.array(col("sent_ns")),
        _nullable(col("first_byte_ns")),
        _nullable(first),
        _nullable(done),
        pa.array(col("input_tokens").astype(np.int32)),
        pa.array(col("output_tokens").astype(np.int32)),
        pa.array(col("batch_size").astype(np.int16)),
        pa.array(col("status").astype(np.int16)),
        dict_col("error_class", ERROR_CLASSES),
        pa.array([details.get(i) for i in range(n)] if details else [None] * n, pa.string()),
        _nullable(col("itl_mean_ns")),
        _nullable(col("itl_max_ns")),
        pa.array(ttft_slo.astype(np.float32)),
        pa.array(e2e_slo.astype(np.float32)),
        pa.array(ttft_met),
        pa.array(e2e_met),
        pa.array(ttft_met & e2e_met),
        pa.array(col("warmup") != 0),
    ]
    return pa.RecordBatch.from_arrays(arrays, schema=result_schema())


class ResultsWriter:
    """Appends record batches to ``results.arrow`` (Arrow IPC file) as they arrive."""

    def __init__(self, path: Path, run: dict) -> None:
        self.path = Path(path)
        self.schema = result_schema(run)
        self.rows = 0
        try:
            self._sink = pa.OSFile(str(self.path), "wb")
            self._writer = pa.ipc.new_file(self._sink, self.schema)
        except OSError as exc:
            raise OutputError(f"cannot write {self.path}: {exc.strerror or exc}; "
                              "choose another -o directory") from exc

    def write(self, batch: pa.RecordBatch) -> None:
        """Append one batch (its schema metadata is replaced by the run's).

        Raises
        ------
        OutputError
            The batch cannot be written (full disk); the batches before it stay readable.
        """
        batch = pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)
        try:
            self._writer.write_batch(batch)
        except OSError as exc:
            raise self._error(exc) from None
        self.rows += batch.num_rows

    def close(self) -> None:
        """Write the file footer; the file is complete after this. Raises OutputError."""
        try:
            self._writer.close()
            self._sink.close()
        except OSError as exc:
            raise self._error(exc) from None

    def abandon(self) -> None:
        """Close after a failed write, keeping the batches written so far (no footer)."""
        for closer in (self._writer.close, self._sink.close):
            try:
                closer()
            except OSError:
                pass

    def _error(self, exc: OSError) -> OutputError:
        reason = os.strerror(exc.errno) if exc.errno else str(exc)
        return OutputError(f"cannot write {self.path}: {reason}; the batches written so far "
                           "are kept; free space or choose another -o directory")


def read_results(path: Path) -> pa.Table:
    """Read a ``results.arrow`` file into one table."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def empty_results(run: dict | None = None) -> pa.Table:
    """A zero-row results table with the full schema."""
    return result_schema(run).empty_table()

"""The result schema (docs/formats.md, ``results.arrow``) and the recorder that writes it.

A worker packs each finished request's values into the flat typed arrays of a
:class:`cpbench.replaying.rows.RowBuffer`, so no per-request Python object outlives the request; a few
times a second it hands the raw buffers to the parent, which turns them into an Arrow batch
(:func:`rows_to_batch`, SLO flags computed there, vectorised) and appends it to
``results.arrow`` through its one :class:`ResultsWriter` as it arrives, so the file is valid up
to the last batch after an interruption.

Dictionary columns use fixed dictionaries (the same for every batch of a run): the Arrow IPC
*file* format cannot replace a dictionary between batches.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pyarrow as pa

from cpbench.errors import OutputError
from cpbench.replaying.rows import ROW_INT_FIELDS
from cpbench.vocab import ERROR_CLASSES, KINDS as KIND_VALUES, PRIORITIES as PRIORITY_VALUES

# The row vocabulary and packing live in cpbench.replaying.rows (the worker imports no pyarrow).
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


def column_numpy(table: pa.Table, name: str, null, dtype) -> np.ndarray:
    """Column ``name`` of ``table`` as one NumPy array of ``dtype``, nulls read as ``null``.

    Filled chunk by chunk: a whole-column ``fill_null`` or concatenation would make Arrow
    temporaries as large as the column (8 MB per 10^6 int64 values) that its allocator keeps.
    """
    column = table.column(name)
    out = np.empty(len(column), dtype)
    pos = 0
    for chunk in column.chunks:
        if chunk.null_count:
            chunk = chunk.fill_null(null)
        out[pos:pos + len(chunk)] = chunk.to_numpy(zero_copy_only=False)
        pos += len(chunk)
    return out


def label_codes(column: pa.ChunkedArray,
                canonical: tuple[str, ...]) -> tuple[np.ndarray, tuple[str, ...]]:
    """Integer codes of a string/dictionary column and the labels they index.

    Labels are the canonical ones first, then any other value seen (null reads "unknown");
    only the small dictionaries are walked in Python, never the rows.
    """
    index = {label: i for i, label in enumerate(canonical)}
    codes = np.empty(len(column), np.int64)
    pos = 0
    for chunk in column.chunks:
        if not pa.types.is_dictionary(chunk.type):
            chunk = chunk.cast(pa.string()).dictionary_encode()
        values = ["unknown" if v is None else str(v) for v in chunk.dictionary.to_pylist()]
        remap = np.array([index.setdefault(v, len(index)) for v in values + ["unknown"]],
                         dtype=np.int64)
        idx = chunk.indices
        if idx.null_count:
            idx = idx.fill_null(len(values))
        codes[pos:pos + len(chunk)] = remap[idx.to_numpy(zero_copy_only=False)]
        pos += len(chunk)
    return codes, tuple(index)


def read_results(path: Path) -> pa.Table:
    """Read a ``results.arrow`` file into one table."""
    with pa.memory_map(str(path), "r") as source:
        return pa.ipc.open_file(source).read_all()


def empty_results(run: dict | None = None) -> pa.Table:
    """A zero-row results table with the full schema."""
    return result_schema(run).empty_table()

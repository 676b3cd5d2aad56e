"""The result schema (docs/formats.md, ``results.arrow``) and the recorder that writes it.

A worker appends each finished request's values to the typed columns of a :class:`RowBuffer`;
a few times a second the buffer becomes an Arrow record batch (SLO flags computed there,
vectorised), so no per-request Python object outlives the request. The parent
process owns one :class:`ResultsWriter` that appends each batch to ``results.arrow`` as it
arrives, so the file is valid up to the last batch after an interruption.

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

# Field order of the tuple the dispatcher appends per request (see RowBuffer.append).
ROW_FIELDS = (
    "row", "kind", "priority", "model", "intended_ns", "sent_ns", "first_byte_ns",
    "first_token_ns", "done_ns", "input_tokens", "output_tokens", "batch_size", "status",
    "error_class", "error_detail", "itl_mean_ns", "itl_max_ns", "slo_ttft_ms", "slo_e2e_ms",
    "warmup",
)


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
    """Per-request values of one worker, kept column by column, turned into record batches.

    Appending one request costs a score of ``array.append`` calls and no new object that
    outlives the batch; a batch converts the columns with NumPy without a per-row loop, so a
    flush costs well under a millisecond and never stalls the dispatcher for long.

    Parameters
    ----------
    models : sequence of str
        Every model of the trace, in the order the dictionary codes refer to.
    worker : int
        Index of the worker process, stored in every row.
    """

    _INT64 = ("row", "intended_ns", "sent_ns", "first_byte_ns", "first_token_ns", "done_ns",
              "itl_mean_ns", "itl_max_ns")
    _INT32 = ("kind", "priority", "model", "input_tokens", "output_tokens", "batch_size",
              "status", "error_class", "warmup")
    _FLOAT = ("slo_ttft_ms", "slo_e2e_ms")

    def __init__(self, models: list[str], worker: int) -> None:
        self.worker = worker
        self._kinds = pa.array(KIND_VALUES, pa.string())
        self._priorities = pa.array(PRIORITY_VALUES, pa.string())
        self._models = pa.array(list(models), pa.string())
        self._errors = pa.array(ERROR_CLASSES, pa.string())
        self.schema = result_schema()
        self._clear()

    def _clear(self) -> None:
        self.cols = {name: array.array("q") for name in self._INT64}
        self.cols.update({name: array.array("i") for name in self._INT32})
        self.cols.update({name: array.array("d") for name in self._FLOAT})
        self.details: dict[int, str] = {}
        # Bound appends in ROW_FIELDS order (error_detail handled apart): the hot path.
        self.appends = tuple(self.cols[f].append for f in ROW_FIELDS if f != "error_detail")

    def __len__(self) -> int:
        return len(self.cols["row"])

    def append(self, values: tuple, detail: str | None = None) -> None:
        """Record one request: ``values`` in ROW_FIELDS order without ``error_detail``.

        Absent times and ITLs are -1; a success has ``error_class`` -1, a failure its index
        in ERROR_CLASSES. ``warmup`` is 0 or 1.
        """
        if detail is not None:
            self.details[len(self.cols["row"])] = detail
        for add, v in zip(self.appends, values):
            add(v)

    def take_batch(self) -> pa.RecordBatch | None:
        """The buffered rows as one record batch (None when empty); the buffer is cleared."""
        n = len(self)
        if n == 0:
            return None
        c = {k: np.frombuffer(v, dtype=v.typecode == "d" and np.float64
                              or (np.int64 if v.typecode == "q" else np.int32))
             for k, v in self.cols.items()}
        details = [self.details.get(i) for i in range(n)] if self.details else [None] * n
        intended = c["intended_ns"]
        failed = c["error_class"] >= 0
        first, done = c["first_token_ns"], c["done_ns"]
        ttft_slo, e2e_slo = c["slo_ttft_ms"], c["slo_e2e_ms"]
        # Deadlines count from the intended time: client lag is the user's wait too.
        ttft_met = ~failed & (first >= 0) & ((first - intended) <= ttft_slo * 1e6)
        e2e_met = ~failed & (done >= 0) & ((done - intended) <= e2e_slo * 1e6)

        def dict_col(codes: np.ndarray, values: pa.Array) -> pa.DictionaryArray:
            return pa.DictionaryArray.from_arrays(pa.array(codes, mask=codes < 0), values)

        arrays = [
            pa.array(c["row"]),
            dict_col(c["kind"], self._kinds),
            dict_col(c["priority"], self._priorities),
            dict_col(c["model"], self._models),
            pa.array(np.full(n, self.worker, np.int16)),
            pa.array(intended),
            pa.array(c["sent_ns"]),
            _nullable(c["first_byte_ns"]),
            _nullable(first),
            _nullable(done),
            pa.array(c["input_tokens"]),
            pa.array(c["output_tokens"]),
            pa.array(c["batch_size"].astype(np.int16)),
            pa.array(c["status"].astype(np.int16)),
            dict_col(c["error_class"], self._errors),
            pa.array(details, pa.string()),
            _nullable(c["itl_mean_ns"]),
            _nullable(c["itl_max_ns"]),
            pa.array(ttft_slo.astype(np.float32)),
            pa.array(e2e_slo.astype(np.float32)),
            pa.array(ttft_met),
            pa.array(e2e_met),
            pa.array(ttft_met & e2e_met),
            pa.array(c["warmup"] != 0),
        ]
        batch = pa.RecordBatch.from_arrays(arrays, schema=self.schema)
        self._clear()
        return batch


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

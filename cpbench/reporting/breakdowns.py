"""What the report takes from results.arrow, folded one record batch at a time.

summary.json holds the run's statistics; the report also shows what it does not: the models
and error details seen, completions per kind over time, and embedding latency per batch size.
:class:`Breakdowns` folds each batch of results (:func:`cpbench.resultdir.iter_arrow_batches`)
into counts and histograms of fixed size and keeps no row, so the report of a 10^6-request run
never holds its columns. :mod:`cpbench.reporting.load` hands the results on in ``RunData``.
"""
from __future__ import annotations

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench._core.hist import Histogram
from cpbench.errors import ConfigError
from cpbench.results import column_numpy, label_codes

NS_PER_MS = 1_000_000
MAX_ERROR_DETAILS = 10
# What the report takes from results.arrow: only what summary.json does not hold.
RESULT_COLUMNS = ("kind", "model", "error_detail", "sent_ns", "done_ns", "batch_size",
                  "error_class", "warmup")
REQUIRED = ("kind", "sent_ns", "done_ns")


def _values(table: pa.Table, name: str, fill) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    return column_numpy(table, name, fill, table.column(name).type.to_pandas_dtype())


def _count_values(counts: dict[str, int], table: pa.Table, name: str) -> None:
    """Add the (non-null) values of a string column to ``counts``."""
    if name not in table.column_names:
        return
    for pair in pc.value_counts(table.column(name)).to_pylist():
        if pair["values"] is not None:
            value = str(pair["values"])
            counts[value] = counts.get(value, 0) + int(pair["counts"])


def most_frequent(counts: dict[str, int]) -> list[tuple[str, int]]:
    """(value, count), most frequent first, ties by value."""
    return sorted(counts.items(), key=lambda vc: (-vc[1], vc[0]))


class Breakdowns:
    """Models, error details, completions per kind per slice and embedding latency per batch
    size of a run's results, folded batch by batch (:meth:`add`).

    Parameters
    ----------
    slice_s : float
        The summary's timeslice length; completions are counted per slice of ``done_ns``.
    n_slices : int
        The summary's number of timeslices; completions after the last are left out, as the
        summary's series end there.
    """

    def __init__(self, slice_s: float, n_slices: int) -> None:
        self.slice_s, self.n_slices = slice_s, n_slices
        self._slice_ns = int(slice_s * 1e9)
        self.models: dict[str, int] = {}
        self.error_details: dict[str, int] = {}
        self.live_rows = 0
        self._labels: tuple[str, ...] = ()
        self._kind_rows = np.zeros(0, np.int64)          # live rows per kind code
        self._completed: dict[int, np.ndarray] = {}      # kind code -> completions per slice
        self._embedding_e2e: dict[int, Histogram] = {}   # batch size -> e2e from sent (ns)

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one batch of results (it has the REQUIRED columns, any of the others)."""
        table = pa.Table.from_batches([batch])
        _count_values(self.models, table, "model")
        _count_values(self.error_details, table, "error_detail")
        warmup = _values(table, "warmup", False)
        live = ~warmup.astype(bool) if warmup is not None else np.ones(table.num_rows, bool)
        codes, self._labels = label_codes(table.column("kind"), self._labels)
        codes = codes[live]
        self.live_rows += int(codes.size)
        self._kind_rows = np.pad(self._kind_rows, (0, len(self._labels) - self._kind_rows.size))
        self._kind_rows += np.bincount(codes, minlength=len(self._labels))
        # Missing times read as -1 (as the stats core reads them), never as the run's start.
        sent, done = (_values(table, name, -1)[live] for name in ("sent_ns", "done_ns"))
        # Completed, as summary.py defines it: no error class and a done time.
        ok = done >= 0
        if "error_class" in table.column_names:
            ok &= table.column("error_class").is_null().to_numpy(zero_copy_only=False)[live]
        for code in np.unique(codes[ok]):
            slices = done[ok & (codes == code)] // self._slice_ns
            counts = np.bincount(slices, minlength=self.n_slices)[:self.n_slices]
            self._completed[int(code)] = self._completed.get(int(code), 0) + counts
        sizes = _values(table, "batch_size", 0)
        if sizes is not None and "embedding" in self._labels:
            emb = ok & (codes == self._labels.index("embedding"))
            self._add_embedding(sizes[live][emb], done[emb] - sent[emb])

    def _add_embedding(self, sizes: np.ndarray, e2e_ns: np.ndarray) -> None:
        for size in np.unique(sizes):
            hist = self._embedding_e2e.setdefault(int(size), Histogram())
            try:
                hist.record_array(e2e_ns[sizes == size])
            except ValueError as exc:
                raise ConfigError(f"results.arrow gives an embedding request done before it "
                                  f"was sent ({exc}); its times are not on one clock") from None

    def kind_series(self) -> dict[str, np.ndarray]:
        """Completions per second per slice of each kind with live rows (when more than one)."""
        present = [code for code in range(len(self._labels)) if self._kind_rows[code]]
        if len(present) < 2:
            return {}
        zeros = np.zeros(self.n_slices, np.int64)
        return {str(self._labels[code]): self._completed.get(code, zeros) / self.slice_s
                for code in present}

    def batch_table(self) -> list[dict]:
        """Embedding batch efficiency: per batch size, latency per input and inputs per
        second (mean exact, p99 within the histogram's stated bound)."""
        rows = []
        for size, hist in sorted(self._embedding_e2e.items()):
            mean_ms = hist.mean / NS_PER_MS
            rows.append({"batch_size": size, "requests": int(hist.total_count),
                         "e2e_mean_ms": mean_ms,
                         "e2e_p99_ms": hist.value_at_percentile(99.0) / NS_PER_MS,
                         "per_input_ms": mean_ms / max(size, 1),
                         "inputs_per_s_per_stream": 1000.0 * size / mean_ms if mean_ms else 0.0})
        return rows


__all__ = ["MAX_ERROR_DETAILS", "REQUIRED", "RESULT_COLUMNS", "Breakdowns", "most_frequent"]

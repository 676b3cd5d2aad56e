"""Sample buffers and the ``monitor.arrow`` file.

Every sampler (GPU, Prometheus scrape, client CPU) appends ``(t_ns, source, metric, value)``
rows to its own :class:`SampleBuffer`; :class:`cpbench.monitor.MonitorSet` concatenates them
into one long-format Arrow table and writes it beside ``results.arrow`` (see docs/formats.md).
"""
from __future__ import annotations

import json
import os
import threading
from array import array

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc

from cpbench.atomic import atomic_path
from cpbench.errors import OutputError

MONITOR_SCHEMA = pa.schema(
    [
        pa.field("t_ns", pa.int64(), nullable=False),
        pa.field("source", pa.string(), nullable=False),
        pa.field("metric", pa.string(), nullable=False),
        pa.field("value", pa.float64(), nullable=False),
    ]
)

# 2 million rows at 20 bytes each is 40 MB per sampler: hours of GPU samples, and a hard stop
# for a metrics selection that matches far more series than the user meant.
DEFAULT_MAX_ROWS = 2_000_000


class SampleBuffer:
    """Thread-safe, bounded, columnar buffer of monitor samples.

    Rows live in typed ``array`` columns with (source, metric) pairs interned to a small
    integer, so a sample costs 20 bytes and no Python object. Rows beyond ``max_rows`` are
    counted in :attr:`dropped_rows`, never silently lost.

    Parameters
    ----------
    max_rows : int
        Rows kept at most; later rows are counted as dropped.
    """

    def __init__(self, max_rows: int = DEFAULT_MAX_ROWS) -> None:
        self.max_rows = max_rows
        self.dropped_rows = 0
        self._lock = threading.Lock()
        self._t_ns = array("q")
        self._series_id = array("i")
        self._value = array("d")
        self._series: list[tuple[str, str]] = []
        self._ids: dict[tuple[str, str], int] = {}

    def __len__(self) -> int:
        return len(self._t_ns)

    def append(self, t_ns: int, source: str, metric: str, value: float) -> None:
        """Add one sample taken at ``t_ns`` (run clock) of ``metric`` from ``source``."""
        self.extend(t_ns, source, [(metric, value)])

    def extend(self, t_ns: int, source: str, samples: list[tuple[str, float]]) -> None:
        """Add several ``(metric, value)`` samples taken together at ``t_ns`` from ``source``."""
        with self._lock:
            room = self.max_rows - len(self._t_ns)
            if room < len(samples):
                self.dropped_rows += len(samples) - max(room, 0)
                samples = samples[: max(room, 0)]
            for metric, value in samples:
                key = (source, metric)
                sid = self._ids.get(key)
                if sid is None:
                    sid = self._ids[key] = len(self._series)
                    self._series.append(key)
                self._t_ns.append(t_ns)
                self._series_id.append(sid)
                self._value.append(float(value))

    def series_count(self) -> int:
        """Number of distinct (source, metric) series seen."""
        with self._lock:
            return len(self._series)

    def to_table(self) -> pa.Table:
        """The rows so far as a table with :data:`MONITOR_SCHEMA`."""
        with self._lock:
            t_ns = pa.array(self._t_ns, type=pa.int64())
            ids = pa.array(self._series_id, type=pa.int32())
            value = pa.array(self._value, type=pa.float64())
            sources = pa.array([s for s, _ in self._series], type=pa.string())
            metrics = pa.array([m for _, m in self._series], type=pa.string())
        return pa.Table.from_arrays(
            [t_ns, sources.take(ids), metrics.take(ids), value], schema=MONITOR_SCHEMA
        )


def concat_sorted(tables: list[pa.Table]) -> pa.Table:
    """Concatenate monitor tables and sort them by ``t_ns`` (stable, so sources keep order)."""
    if not tables:
        return MONITOR_SCHEMA.empty_table()
    table = pa.concat_tables(tables)
    if table.num_rows == 0:
        return table
    return table.take(pc.sort_indices(table, [("t_ns", "ascending")]))


def write_monitor(table: pa.Table, path: str | os.PathLike, *, status: dict | None = None) -> None:
    """Write ``table`` as ``monitor.arrow`` (Arrow IPC file), atomically by rename.

    Parameters
    ----------
    table : pyarrow.Table
        Long-format samples with :data:`MONITOR_SCHEMA`.
    path : str or os.PathLike
        Destination file.
    status : dict, optional
        The monitor status (what was available, scrape failures), stored as JSON in the
        schema metadata key ``cpbench.monitor`` so the file explains its own gaps.

    Raises
    ------
    OutputError
        The file cannot be written.
    """
    path = os.fspath(path)
    meta = {b"cpbench.monitor.version": b"1"}
    if status is not None:
        meta[b"cpbench.monitor"] = json.dumps(status, sort_keys=True).encode()
    table = table.cast(MONITOR_SCHEMA).replace_schema_metadata(meta)
    try:
        with atomic_path(path) as tmp, pa.OSFile(tmp, "wb") as sink, \
                ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    except OSError as exc:
        raise OutputError(f"cannot write monitor file {path!r}: {exc}; check the directory "
                          "exists and is writable") from exc


def read_monitor(path: str | os.PathLike) -> tuple[pa.Table, dict | None]:
    """Read a ``monitor.arrow`` file: the samples and the stored status (or ``None``).

    Raises
    ------
    OutputError
        The file is missing or not an Arrow IPC file with the monitor columns.
    """
    path = os.fspath(path)
    try:
        with pa.memory_map(path) as source:
            table = ipc.open_file(source).read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise OutputError(f"cannot read monitor file {path!r}: {exc}") from exc
    missing = [f.name for f in MONITOR_SCHEMA if f.name not in table.column_names]
    if missing:
        raise OutputError(f"monitor file {path!r} lacks column(s) {', '.join(missing)}; "
                          "it was not written by cpbench's monitor")
    meta = table.schema.metadata or {}
    raw = meta.get(b"cpbench.monitor")
    return table, (json.loads(raw) if raw else None)

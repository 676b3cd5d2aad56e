"""The trace: cpbench's Arrow format for "what to send, and when", and its reader and writer.

A trace is one row per request, sorted by ``arrival_ns`` (schema: docs/formats.md). This
module owns the schema, reading (Arrow IPC file, IPC stream, Parquet), validation, writing
(Arrow IPC file with provenance metadata) and the shape summary ``cpbench info`` prints. It
hands the replay stage a validated, normalised ``pyarrow.Table``; it imports nothing of
cpbench above ``errors``.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import warnings
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.ipc as ipc
import pyarrow.parquet as pq

from cpbench import blocks as prefix_blocks
from cpbench.atomic import atomic_path
from cpbench.errors import TraceError
from cpbench.vocab import KINDS, PRIORITIES

TRACE_VERSION = "1"

_DICT = pa.dictionary(pa.int32(), pa.string())
SCHEMA = pa.schema([
    ("arrival_ns", pa.int64()),
    ("kind", _DICT),
    ("model", _DICT),
    ("input_tokens", pa.int32()),
    ("output_tokens", pa.int32()),
    ("batch_size", pa.int16()),
    ("priority", _DICT),
    ("slo_ttft_ms", pa.float32()),
    ("slo_e2e_ms", pa.float32()),
    ("prompt", pa.string()),
    ("session", pa.string()),
    ("prefix_blocks", pa.list_(pa.int64())),
])
REQUIRED_COLUMNS: tuple[str, ...] = (
    "arrival_ns", "kind", "model", "input_tokens", "output_tokens", "batch_size", "priority")
# Filled with nulls when absent: null means "the run's default" / "build from the corpus".
OPTIONAL_COLUMNS: tuple[str, ...] = ("slo_ttft_ms", "slo_e2e_ms", "prompt", "session",
                                     "prefix_blocks")

# Per-row provenance, kept only where the writer records it (a capture says where each
# input_tokens came from), so every other trace stays byte-identical: column -> allowed values.
PROVENANCE_COLUMNS: dict[str, tuple[str, ...]] = {
    "input_tokens_source": ("usage", "words", "token_ids")}

# Bounds beyond which a value is a unit mistake or a corrupt file, not a workload.
MAX_TOKENS = 10_000_000
MAX_BATCH = 100_000
MAX_ROWS = 100_000_000
MAX_SLO_MS = 86_400_000.0
# A file whose columns would decode to more than this is refused before allocating it.
MAX_DECODED_BYTES = 8 << 30

_META_PREFIX = "cpbench."
_META_KEYS = ("generator", "params", "seed", "source", "block_tokens")

_INT_COLUMNS = {"arrival_ns", "input_tokens", "output_tokens", "batch_size"}
_STR_COLUMNS = {"kind", "model", "priority", "prompt", "session"}
_FLOAT_COLUMNS = {"slo_ttft_ms", "slo_e2e_ms"}


# --- reading ---------------------------------------------------------------------------------

def read_trace(path: str | os.PathLike[str]) -> pa.Table:
    """Read, validate and normalise a trace.

    Parameters
    ----------
    path
        An Arrow IPC file, an Arrow IPC stream or a Parquet file (detected from its bytes).

    Returns
    -------
    pyarrow.Table
        One chunk per column, columns in the order of ``SCHEMA`` with exactly its types:
        ``kind``, ``model`` and ``priority`` stay dictionary<int32, string> (one dictionary per
        column); missing optional columns are all-null; a null ``priority`` becomes ``NORMAL``
        and a null LLM ``batch_size`` becomes 1. Extra columns are dropped after one warning.
        Schema metadata is kept.

    Raises
    ------
    TraceError
        One line naming the file, the column/row and the offending value.
    """
    source = os.fspath(path)
    table = _load(source)
    problems = validate_table(table, source=source)
    if problems:
        more = f" (+{len(problems) - 1} more; run `cpbench validate {source}`)" \
            if len(problems) > 1 else ""
        raise TraceError(problems[0] + more)
    extra = extra_columns(table)
    if extra:
        warnings.warn(f"{source}: ignoring extra columns {', '.join(extra)}", stacklevel=2)
    return normalize(table)


def _load(source: str) -> pa.Table:
    """Read any of the three container formats; every pyarrow failure becomes a TraceError."""
    try:
        size = os.path.getsize(source)
        with open(source, "rb") as fh:
            head = fh.read(8)
    except OSError as exc:
        raise TraceError(f"{source}: cannot open trace: {exc.strerror or exc}") from None
    if size == 0:
        raise TraceError(f"{source}: file is empty; expected an Arrow IPC or Parquet trace")
    try:
        if head.startswith(b"ARROW1"):
            with pa.memory_map(source) as mm:
                reader = ipc.open_file(mm)
                table = reader.read_all()
        elif head.startswith(b"PAR1"):
            meta = pq.read_metadata(source)
            _check_parquet_size(source, meta)
            table = pq.read_table(source)
        elif head[:4] == b"\xff\xff\xff\xff":
            with pa.memory_map(source) as mm:
                table = ipc.open_stream(mm).read_all()
        else:
            raise TraceError(f"{source}: not an Arrow IPC file, IPC stream or Parquet file "
                             f"(starts with {head[:8]!r}); write traces with cpbench record")
        if table.num_rows > MAX_ROWS:
            raise TraceError(f"{source}: {table.num_rows} rows is more than the {MAX_ROWS} "
                             "a trace may hold; split it")
        # Full validation catches bad offsets, short buffers and invalid UTF-8 before any
        # kernel touches them.
        _validate_buffers(source, table)
    except TraceError:
        raise
    except (pa.ArrowInvalid, pa.ArrowException, OSError, MemoryError, ValueError,
            IndexError, OverflowError) as exc:
        raise TraceError(f"{source}: unreadable trace (truncated or corrupt?): "
                         f"{_one_line(exc)}") from None
    return table


def _validate_buffers(source: str, table: pa.Table) -> None:
    """Full validation (offsets, buffer sizes, UTF-8) per column, so the error names one."""
    for name, column in zip(table.column_names, table.columns):
        for chunk_index, chunk in enumerate(column.chunks):
            try:
                chunk.validate(full=True)
            except pa.ArrowInvalid as exc:
                row = _bad_utf8_row(chunk) if "utf" in str(exc).lower() else None
                base = sum(len(c) for c in column.chunks[:chunk_index])
                where = f" at row {base + row}" if row is not None else ""
                raise TraceError(f"{source}: column '{name}' is corrupt{where}: "
                                 f"{_one_line(exc)}") from None


def _bad_utf8_row(chunk: pa.Array) -> int | None:
    typ = chunk.type.value_type if pa.types.is_dictionary(chunk.type) else chunk.type
    if not (pa.types.is_string(typ) or pa.types.is_large_string(typ)):
        return None
    values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
    raw = values.view(pa.binary() if pa.types.is_string(typ) else pa.large_binary())
    for i, item in enumerate(raw.to_pylist()):
        if item is not None:
            try:
                item.decode("utf-8")
            except UnicodeDecodeError:
                return i
    return None


def _check_parquet_size(source: str, meta: pq.FileMetaData) -> None:
    if meta.num_rows > MAX_ROWS:
        raise TraceError(f"{source}: Parquet footer declares {meta.num_rows} rows, more than "
                         f"the {MAX_ROWS} a trace may hold")
    total = sum(meta.row_group(i).total_byte_size for i in range(meta.num_row_groups))
    if total > MAX_DECODED_BYTES:
        raise TraceError(f"{source}: Parquet footer declares {total} decoded bytes "
                         f"(> {MAX_DECODED_BYTES}); refusing to allocate it")


def _one_line(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    return text[:300] if text else type(exc).__name__


# --- validation ------------------------------------------------------------------------------

def extra_columns(table: pa.Table) -> list[str]:
    """Columns the schema does not know (accepted, ignored)."""
    known = set(SCHEMA.names) | set(PROVENANCE_COLUMNS)
    return [name for name in table.column_names if name not in known]


def validate_table(table: pa.Table, *, source: str = "<table>",
                   block_tokens: int | None = None) -> list[str]:
    """Every problem a replay would trip on, one line each (empty list: the trace is good).

    Checks column presence and types, nested types, and per-row values: sorted, non-negative
    ``arrival_ns``; known ``kind`` and ``priority``; LLM rows with ``output_tokens``; embedding
    rows with ``batch_size`` >= 1; absurd lengths or batch sizes; deadlines > 0;
    ``prefix_blocks`` (:func:`cpbench.blocks.row_problems`) against the block size in the
    schema metadata, or ``block_tokens`` when given (a table about to be written).
    """
    problems: list[str] = []
    for field in table.schema:
        if field.name == "prefix_blocks":
            continue                    # the one list column: _type_problem checks it
        if pa.types.is_nested(field.type) or pa.types.is_union(field.type):
            problems.append(f"{source}: column '{field.name}' has nested type {field.type}; "
                            "traces hold flat columns only")
    missing = [c for c in REQUIRED_COLUMNS if c not in table.column_names]
    if missing:
        problems.append(f"{source}: missing required column(s) {', '.join(missing)}; "
                        f"a trace needs {', '.join(REQUIRED_COLUMNS)}")
    for name in SCHEMA.names:
        if name in table.column_names:
            msg = _type_problem(name, table.schema.field(name).type)
            if msg:
                problems.append(f"{source}: {msg}")
    if problems:
        return problems
    if table.num_rows == 0:
        return [f"{source}: trace has no rows"]
    # Dictionary columns stay encoded: decoding kind, model and priority of a 10^6-row trace
    # held three columns of strings at once (tens of MB at the replay parent's peak).
    cols = {name: _combined(table.column(name)) for name in table.column_names
            if name in SCHEMA.names}
    problems.extend(f"{source}: {p}" for p in _row_problems(cols))
    if "prefix_blocks" in cols and not problems:
        raw = (table.schema.metadata or {}).get(prefix_blocks.META_KEY)
        size = prefix_blocks.block_tokens_of(table.schema.metadata)
        if block_tokens is not None:
            size, raw = int(block_tokens), str(block_tokens).encode()
        prompt = cols.get("prompt")
        given = (~prompt.is_null().to_numpy(zero_copy_only=False) if prompt is not None
                 else np.zeros(table.num_rows, bool))
        problems.extend(f"{source}: {p}" for p in prefix_blocks.row_problems(
            cols["prefix_blocks"], _ints(cols["input_tokens"])[0],
            ~_equals(cols["kind"], "embedding"),
            given, size, raw))
    for name, allowed in PROVENANCE_COLUMNS.items():
        if name in table.column_names:
            col = _combined(table.column(name))
            bad = _not_in(col, allowed) & ~_nulls(col) if not pa.types.is_null(col.type) \
                else np.zeros(len(col), bool)
            if bad.any():
                i = _first(bad)
                problems.append(f"{source}: column '{name}' has unknown value "
                                f"{col[i].as_py()!r} at row {i}; expected one of "
                                f"{', '.join(allowed)} (or null)")
    return problems


def _type_problem(name: str, typ: pa.DataType) -> str | None:
    if name == "prefix_blocks":
        return None if prefix_blocks.is_block_list(typ) else (
            f"column 'prefix_blocks' has type {typ}, expected list<int64> (block ids)")
    if pa.types.is_dictionary(typ):
        typ = typ.value_type
    if name in _INT_COLUMNS:
        ok = pa.types.is_integer(typ) or pa.types.is_null(typ)
        want = "an integer"
    elif name in _STR_COLUMNS:
        ok = pa.types.is_string(typ) or pa.types.is_large_string(typ) or pa.types.is_null(typ)
        want = "UTF-8 string"
    else:
        ok = pa.types.is_floating(typ) or pa.types.is_integer(typ) or pa.types.is_null(typ)
        want = "float"
    if ok:
        return None
    hint = "; store nanoseconds as int64" if name == "arrival_ns" else ""
    return f"column '{name}' has type {typ}, expected {want}{hint}"


def _combined(column: pa.ChunkedArray) -> pa.Array:
    return column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)


def _per_row(array: pa.Array, on_values) -> np.ndarray:
    """``on_values(strings) -> bool array`` for each row of a string or dictionary array; a
    null row gives False. On a dictionary array it runs once per entry, not once per row."""
    if pa.types.is_dictionary(array.type):
        per_entry = on_values(array.dictionary.cast(pa.string()))
        codes = pc.fill_null(array.indices, 0).to_numpy(zero_copy_only=False)
        out = per_entry[codes] if len(per_entry) else np.zeros(len(array), bool)
        return out & ~_nulls(array)
    return on_values(array.cast(pa.string())) & ~_nulls(array)


def _equals(array: pa.Array, value: str) -> np.ndarray:
    return _per_row(array, lambda v: pc.fill_null(pc.equal(v, value), False).to_numpy(
        zero_copy_only=False))


def _plain(column: pa.ChunkedArray) -> pa.Array:
    array = column.combine_chunks() if column.num_chunks != 1 else column.chunk(0)
    if pa.types.is_dictionary(array.type):
        array = array.dictionary_decode()
    return array


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def _row_problems(cols: dict[str, pa.Array]) -> list[str]:
    out: list[str] = []
    arrival = cols["arrival_ns"]
    if arrival.null_count:
        out.append(f"column 'arrival_ns' is null at row {_first(_nulls(arrival))}")
    else:
        t = arrival.to_numpy(zero_copy_only=False).astype(np.int64, copy=False)
        if t.size and t.min() < 0:
            i = _first(t < 0)
            out.append(f"column 'arrival_ns' is negative at row {i} ({t[i]}); "
                       "arrivals are offsets from the trace start")
        down = np.flatnonzero(np.diff(t) < 0)
        if down.size:
            i = int(down[0]) + 1
            out.append(f"column 'arrival_ns' is not sorted at row {i} ({t[i]} < {t[i - 1]}); "
                       "sort the trace by arrival_ns")
    kind = cols["kind"]
    bad = _not_in(kind, KINDS)
    if bad.any():
        i = _first(bad)
        out.append(f"column 'kind' has unknown value {kind[i].as_py()!r} at row {i}; "
                   f"expected one of {', '.join(KINDS)}")
        return out
    is_llm = ~_equals(kind, "embedding")
    out.extend(_check_strings(cols))
    out.extend(_check_ints(cols, is_llm))
    for name in ("slo_ttft_ms", "slo_e2e_ms"):
        if name in cols:
            v = cols[name].to_numpy(zero_copy_only=False).astype(np.float64)
            bad = ~np.isnan(v) & ((v <= 0) | (v > MAX_SLO_MS) | ~np.isfinite(v))
            if bad.any():
                i = _first(bad)
                out.append(f"column '{name}' has {v[i]} at row {i}; deadlines are > 0 and "
                           f"<= {MAX_SLO_MS:.0f} ms (null = the run's default)")
    return out


def _not_in(array: pa.Array, allowed: tuple[str, ...]) -> np.ndarray:
    if pa.types.is_null(array.type):
        return np.ones(len(array), dtype=bool)
    return ~_per_row(array, lambda v: pc.fill_null(
        pc.is_in(v, value_set=pa.array(allowed, pa.string())), False).to_numpy(
            zero_copy_only=False))


def _nulls(array: pa.Array) -> np.ndarray:
    return array.is_null().to_numpy(zero_copy_only=False)


def _check_strings(cols: dict[str, pa.Array]) -> list[str]:
    out: list[str] = []
    model = cols["model"]
    if model.null_count:
        out.append(f"column 'model' is null at row {_first(_nulls(model))}; "
                   "every request names a model")
    prio = cols["priority"]
    bad = _not_in(prio, PRIORITIES) & ~_nulls(prio)
    if bad.any():
        i = _first(bad)
        out.append(f"column 'priority' has unknown value {prio[i].as_py()!r} at row {i}; "
                   f"expected one of {', '.join(PRIORITIES)}")
    return out


def _ints(array: pa.Array) -> tuple[np.ndarray, np.ndarray]:
    nulls = _nulls(array)
    values = pc.fill_null(array, 0).to_numpy(zero_copy_only=False).astype(np.int64) \
        if not pa.types.is_null(array.type) else np.zeros(len(array), np.int64)
    return values, nulls


def _check_ints(cols: dict[str, pa.Array], is_llm: np.ndarray) -> list[str]:
    out: list[str] = []
    tin, tin_null = _ints(cols["input_tokens"])
    bad = tin_null | (tin < 0) | (tin > MAX_TOKENS)
    if bad.any():
        i = _first(bad)
        shown = "null" if tin_null[i] else tin[i]
        out.append(f"column 'input_tokens' has {shown} at row {i}; expected 0..{MAX_TOKENS}")
    tout, tout_null = _ints(cols["output_tokens"])
    bad = is_llm & (tout_null | (tout < 1) | (tout > MAX_TOKENS))
    if bad.any():
        i = _first(bad)
        shown = "null" if tout_null[i] else tout[i]
        out.append(f"column 'output_tokens' has {shown} at row {i} (an LLM request); "
                   f"LLM rows need max_tokens in 1..{MAX_TOKENS}")
    batch, batch_null = _ints(cols["batch_size"])
    bad = ~is_llm & (batch_null | (batch < 1) | (batch > MAX_BATCH))
    if bad.any():
        i = _first(bad)
        shown = "null" if batch_null[i] else batch[i]
        out.append(f"column 'batch_size' has {shown} at row {i} (an embedding request); "
                   f"expected 1..{MAX_BATCH} input texts")
    bad = is_llm & ~batch_null & (batch != 1)
    if bad.any():
        i = _first(bad)
        out.append(f"column 'batch_size' has {batch[i]} at row {i} (an LLM request); "
                   "LLM rows have batch_size 1")
    return out


# --- normalisation and writing -----------------------------------------------------------------

def normalize(table: pa.Table) -> pa.Table:
    """Cast a *valid* table to exactly ``SCHEMA`` (see ``read_trace``), keeping its metadata."""
    n = table.num_rows
    arrays = []
    kinds = None
    for field in SCHEMA:
        if field.name in table.column_names:
            array = _plain(table.column(field.name))
        else:
            array = pa.nulls(n, field.type if not pa.types.is_dictionary(field.type)
                             else pa.string())
        if field.name == "kind":
            kinds = array
        if field.name == "priority":
            array = pc.fill_null(array.cast(pa.string()), "NORMAL")
        if field.name == "batch_size":
            array = pc.if_else(pc.and_(pc.is_null(array), pc.not_equal(kinds, "embedding")),
                               pa.scalar(1, array.type if not pa.types.is_null(array.type)
                                         else pa.int16()), array)
        if pa.types.is_dictionary(field.type):
            array = pc.dictionary_encode(array.cast(pa.string())).cast(field.type)
        else:
            array = array.cast(field.type)
        arrays.append(array)
    schema = SCHEMA
    for name in PROVENANCE_COLUMNS:
        if name in table.column_names:
            arrays.append(pc.dictionary_encode(_plain(table.column(name)).cast(pa.string()))
                          .cast(_DICT))
            schema = schema.append(pa.field(name, _DICT))
    return pa.Table.from_arrays(arrays, schema=schema.with_metadata(table.schema.metadata))


def write_trace(table: pa.Table, path: str | os.PathLike[str], *,
                metadata: Mapping[str, Any]) -> None:
    """Validate, normalise and write ``table`` as an Arrow IPC file, atomically (by rename).

    Parameters
    ----------
    metadata
        Provenance: ``generator`` (str), ``params`` (JSON-able dict), ``seed`` (int or None),
        ``source`` (str); and ``block_tokens`` (int), the size of a ``prefix_blocks`` block,
        for traces that have them. Stored under ``cpbench.*`` keys with ``cpbench.trace.version``.
        Nothing time- or host-dependent is added, so the same table and metadata give the same
        bytes.
    """
    target = os.fspath(path)
    problems = validate_table(table, source=target, block_tokens=metadata.get("block_tokens"))
    if problems:
        raise TraceError(problems[0])
    unknown = set(metadata) - set(_META_KEYS)
    if unknown:
        raise TraceError(f"unknown trace metadata key(s) {sorted(unknown)}; "
                         f"use {', '.join(_META_KEYS)}")
    meta = {f"{_META_PREFIX}trace.version": TRACE_VERSION}
    for key in _META_KEYS:
        value = metadata.get(key)
        if key == "params":
            meta[_META_PREFIX + key] = json.dumps(value or {}, sort_keys=True)
        elif key == "block_tokens":
            if value is not None:       # only traces with prefix blocks carry a block size
                meta[_META_PREFIX + key] = str(int(value))
        else:
            meta[_META_PREFIX + key] = "" if value is None else str(value)
    out = normalize(table.select([c for c in table.column_names
                                  if c in SCHEMA.names or c in PROVENANCE_COLUMNS]))
    if out.column("prefix_blocks").null_count == out.num_rows:
        # A trace without prefix blocks is written as before the column existed: same bytes.
        out = out.drop_columns(["prefix_blocks"])
    out = out.replace_schema_metadata(meta)
    try:
        with atomic_path(target) as tmp, pa.OSFile(tmp, "wb") as sink, \
                ipc.new_file(sink, out.schema) as writer:
            writer.write_table(out)
    except OSError as exc:
        from cpbench.errors import OutputError
        raise OutputError(f"cannot write trace {target}: {exc.strerror or exc}") from None


def trace_metadata(table: pa.Table) -> dict[str, Any]:
    """Provenance stored in a trace: ``version``, ``generator``, ``params`` (dict), ``seed``,
    ``source``; keys absent from the file are absent here."""
    raw = table.schema.metadata or {}
    out: dict[str, Any] = {}
    for key, value in raw.items():
        k = key.decode("utf-8", "replace")
        if not k.startswith(_META_PREFIX):
            continue
        k = k[len(_META_PREFIX):]
        text = value.decode("utf-8", "replace")
        if k == "trace.version":
            out["version"] = text
        elif k == "params":
            try:
                out["params"] = json.loads(text)
            except ValueError:
                out["params"] = text
        elif k == "seed":
            out["seed"] = int(text) if text.lstrip("-").isdigit() else (text or None)
        elif k == "block_tokens":
            out["block_tokens"] = int(text) if text.isdigit() else text
        else:
            out[k] = text
    return out


def sha256_file(path: str | os.PathLike[str]) -> str:
    """Hex SHA-256 of a file's bytes (how runs name the exact trace they replayed)."""
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


# --- shape summary (cpbench info) ----------------------------------------------------------------

def describe(table: pa.Table, *, percents: tuple[float, ...] = (50.0, 90.0, 99.0)) -> dict:
    """The shape of a normalised trace: counts, rates, burstiness, mix and length percentiles.

    Burstiness is the coefficient of variation of inter-arrival gaps (1 for Poisson); rates
    use 1-second bins from the first arrival.
    """
    t = table.column("arrival_ns").to_numpy().astype(np.int64)
    n = len(t)
    span_s = (t[-1] - t[0]) / 1e9 if n > 1 else 0.0
    gaps = np.diff(t).astype(np.float64)
    cv = float(gaps.std() / gaps.mean()) if gaps.size and gaps.mean() > 0 else math.nan
    counts = np.bincount(((t - t[0]) // 1_000_000_000).astype(np.int64)) if n else np.zeros(0)
    kinds = np.asarray(table.column("kind").to_pylist(), dtype=object)
    info: dict[str, Any] = {
        "requests": n,
        "duration_s": span_s,
        "mean_rps": (n - 1) / span_s if span_s > 0 else math.nan,
        "peak_1s_rps": int(counts.max()) if counts.size else 0,
        "idle_1s_bins_percent": 100.0 * float((counts == 0).mean()) if counts.size else 0.0,
        "gap_cv": cv,
        "by_kind": _mix(kinds),
        "by_priority": _mix(np.asarray(table.column("priority").to_pylist(), dtype=object)),
        "models": _mix(np.asarray(table.column("model").to_pylist(), dtype=object)),
    }
    lengths = {}
    tin = table.column("input_tokens").to_numpy(zero_copy_only=False)
    tout = pc.fill_null(table.column("output_tokens"), 0).to_numpy()
    batch = pc.fill_null(table.column("batch_size"), 1).to_numpy()
    llm, emb = kinds != "embedding", kinds == "embedding"
    for label, values in (("llm_input_tokens", tin[llm]), ("llm_output_tokens", tout[llm]),
                          ("embedding_tokens_per_text", tin[emb]),
                          ("embedding_batch_size", batch[emb])):
        if values.size:
            stats = {f"p{p:g}": float(np.percentile(values, p)) for p in percents}
            stats.update(mean=float(values.mean()), max=float(values.max()))
            lengths[label] = stats
    info["lengths"] = lengths
    info["metadata"] = trace_metadata(table)
    column = table.column("prefix_blocks") if "prefix_blocks" in table.column_names else None
    size = prefix_blocks.block_tokens_of(table.schema.metadata)
    if column is not None and size and column.null_count < n:
        info["prefix"] = prefix_blocks.reuse(column.to_pylist(), np.where(llm, tin, 0), size)
    return info


def _mix(values: np.ndarray) -> dict[str, int]:
    names, counts = np.unique(values.astype(str), return_counts=True)
    return {str(k): int(c) for k, c in zip(names, counts)}


def check_file(path: str | os.PathLike[str]) -> tuple[list[str], list[str]]:
    """What ``cpbench validate`` prints: (problems, notes), never raising for a bad file."""
    source = os.fspath(path)
    try:
        table = _load(source)
    except TraceError as exc:
        return [str(exc)], []
    extra = extra_columns(table)
    notes = [f"{source}: extra columns {', '.join(extra)} are ignored"] if extra else []
    return validate_table(table, source=source), notes


def format_description(source: str, info: Mapping[str, Any]) -> str:
    """``describe``'s dict as the text ``cpbench info`` prints."""
    lines = [
        f"trace        {source}",
        f"requests     {info['requests']}",
        f"duration     {info['duration_s']:.3f} s",
        f"rate         mean {info['mean_rps']:.3f} req/s, peak {info['peak_1s_rps']} req/s "
        f"(1-s bins), {info['idle_1s_bins_percent']:.1f}% of seconds idle",
        f"burstiness   gap CV {info['gap_cv']:.3f} (Poisson = 1)",
        "kinds        " + _fmt_mix(info["by_kind"], info["requests"]),
        "priorities   " + _fmt_mix(info["by_priority"], info["requests"]),
        "models       " + _fmt_mix(info["models"], info["requests"]),
    ]
    for label, stats in info["lengths"].items():
        cells = ", ".join(f"{k} {v:g}" if k != "mean" else f"mean {v:.1f}"
                          for k, v in stats.items())
        lines.append(f"{label:<27}{cells}")
    prefix = info.get("prefix")
    if prefix:
        lines.append(
            f"prefix reuse {prefix['reuse_percent']:.1f}% of prompt tokens in blocks seen "
            f"before ({prefix['reused_tokens']} of {prefix['prompt_tokens']}; "
            f"{prefix['block_tokens']} tokens per block)")
        lines.append(f"prefix blocks {prefix['distinct_blocks']} distinct of "
                     f"{prefix['blocks']} in {prefix['requests_with_blocks']} requests")
        lines.append("top blocks   " + ", ".join(
            f"{b}: {c} ({pct:.1f}%)" for b, c, pct in prefix["top_blocks"]))
    meta = info.get("metadata") or {}
    if meta:
        lines.append(f"generator    {meta.get('generator', '')} (seed {meta.get('seed')}, "
                     f"source {meta.get('source', '')}, format v{meta.get('version', '?')})")
    return "\n".join(lines)


def _fmt_mix(mix: Mapping[str, int], total: int) -> str:
    return ", ".join(f"{k} {v} ({100.0 * v / max(total, 1):.1f}%)" for k, v in mix.items())

"""Read result directories into what the report draws: a ``RunData`` per run.

Owns the reading side of docs/formats.md: ``summary.json`` (required), ``results.arrow`` and
the optional ``monitor.arrow``. Hands on aggregates only — per-timeslice series, latency
distributions as quantile functions, small group-by tables — so a 10^6-request run never puts
raw points into the report. Distributions come from the summary's histograms when the stats core
wrote them and from the result columns otherwise; each says which.
"""
from __future__ import annotations

import base64
import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench.errors import ConfigError
from cpbench.results import column_numpy, label_codes

NS_PER_MS = 1_000_000
# Percent grid of the quantile functions: dense in the body, then 99, 99.9 ... 99.999.
PERCENT_GRID = np.unique(np.concatenate([np.linspace(0.0, 99.0, 199),
                                          100.0 * (1.0 - np.logspace(-2, -5, 121))]))
LADDER_PERCENTS = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99)
# Latency metrics the report shows, in display order, with the result columns they derive from.
LATENCY_METRICS = ("ttft_from_sent", "ttft_from_intended", "e2e_from_sent",
                   "e2e_from_intended", "itl", "dispatch_lag")
MAX_MONITOR_POINTS = 2000
# The stats core's percentile definition, so exact values and histogram values agree.
NEAREST_RANK = "inverted_cdf"
MAX_ERROR_DETAILS = 10
RESULT_COLUMNS = ("kind", "model", "error_detail", "intended_ns", "sent_ns", "first_token_ns",
                  "done_ns", "output_tokens", "batch_size", "error_class", "itl_mean_ns",
                  "slo_met", "warmup")


@dataclass
class Distribution:
    """A latency distribution as a quantile function: ``values_ms[i]`` at ``percents[i]``."""

    percents: np.ndarray
    values_ms: np.ndarray
    count: int
    source: str  # "histogram" (exact to the core's bound) or "results" (exact)

    def at(self, percent: float) -> float:
        return float(np.interp(percent, self.percents, self.values_ms))


@dataclass
class RunData:
    """Everything the report needs from one result directory."""

    path: Path
    summary: dict
    label: str = ""
    series: dict[str, np.ndarray] = field(default_factory=dict)
    distributions: dict[str, Distribution] = field(default_factory=dict)
    kind_series: dict[str, np.ndarray] = field(default_factory=dict)
    batch_table: list[dict] = field(default_factory=list)
    monitor: dict[tuple[str, str], tuple[np.ndarray, np.ndarray]] = field(default_factory=dict)
    models: list[tuple[str, int]] = field(default_factory=list)
    error_details: list[tuple[str, int]] = field(default_factory=list)
    trace_info: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)

    @property
    def run(self) -> dict:
        return self.summary.get("run") or {}

    @property
    def kinds(self) -> list[str]:
        return [k.get("kind", "?") for k in self.summary.get("by_kind") or []]


def attainment_pct(entry: dict | None) -> float | None:
    """SLO attainment of a summary block as a percent (summary.json stores a share in [0, 1])."""
    share = (entry or {}).get("attainment")
    return 100.0 * float(share) if isinstance(share, (int, float)) else None


def _read_arrow(path: Path, columns: tuple[str, ...] | None = None) -> pa.Table:
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            names = reader.schema.names
            table = reader.read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; pass a directory written by "
                          "`cpbench replay -o DIR`") from exc
    if columns is not None:
        table = table.select([c for c in columns if c in names])
    return table


def _column(table: pa.Table, name: str, fill=0) -> np.ndarray | None:
    if name not in table.column_names:
        return None
    col = table.column(name)
    if (pa.types.is_integer(col.type) or pa.types.is_floating(col.type)
            or pa.types.is_boolean(col.type)) and fill is not None:
        # Results columns of 10^6 rows: no whole-column Arrow temporaries.
        return column_numpy(table, name, fill, col.type.to_pandas_dtype())
    if pa.types.is_dictionary(col.type):
        col = col.cast(col.type.value_type)
    if col.null_count and fill is not None:
        col = col.fill_null(fill)
    return np.asarray(col.to_numpy(zero_copy_only=False))


def _histogram_distributions(encoded: dict) -> dict[str, Distribution]:
    """Decode the summary's base64 histograms, if the stats core is importable."""
    try:
        from cpbench._core.hist import Histogram
    except ImportError:
        return {}
    out = {}
    for name, blob in encoded.items():
        try:
            hist = Histogram.decode(base64.b64decode(blob))
        except (ValueError, TypeError):
            continue  # a damaged histogram falls back to the result columns
        count = int(hist.total_count)
        if count == 0:
            continue
        values = np.asarray(hist.percentiles(PERCENT_GRID), dtype=float)
        out[name] = Distribution(PERCENT_GRID, values / NS_PER_MS, count, "histogram")
    return out


def _result_latencies(cols: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    ok = cols["ok"]
    values = {"dispatch_lag": cols["sent_ns"] - cols["intended_ns"]}
    if cols.get("first_token_ns") is not None:
        values["ttft_from_sent"] = (cols["first_token_ns"] - cols["sent_ns"])[ok]
        values["ttft_from_intended"] = (cols["first_token_ns"] - cols["intended_ns"])[ok]
    if cols.get("done_ns") is not None:
        values["e2e_from_sent"] = (cols["done_ns"] - cols["sent_ns"])[ok]
        values["e2e_from_intended"] = (cols["done_ns"] - cols["intended_ns"])[ok]
    if cols.get("itl_mean_ns") is not None:
        # Per-request mean gaps: the stream's every gap is only in the histogram.
        itl = cols["itl_mean_ns"][ok & (cols["itl_mean_ns"] > 0)]
        values["itl"] = itl
    return values


def _slice_percentiles(slices: np.ndarray, values: np.ndarray, n: int) -> np.ndarray:
    """(p50, p99) in ms of ``values`` per slice index; NaN for an empty slice."""
    order = np.argsort(slices, kind="stable")
    bounds = np.searchsorted(slices[order], np.arange(n + 1))
    ordered = values[order]
    out = np.full((n, 2), np.nan)
    for i in range(n):
        if bounds[i + 1] > bounds[i]:
            out[i] = np.percentile(ordered[bounds[i]:bounds[i + 1]], [50, 99],
                                   method=NEAREST_RANK) / NS_PER_MS
    return out


def _derive_series(cols: dict[str, np.ndarray], slice_s: float) -> dict[str, np.ndarray]:
    """Per-timeslice series from the result columns, for summaries without timeslices."""
    slice_ns = int(slice_s * 1e9)
    end_ns = int(max(cols["done_ns"].max(initial=0), cols["sent_ns"].max(initial=0)))
    n = end_ns // slice_ns + 1

    def per_slice(ns: np.ndarray, weights: np.ndarray | None = None) -> np.ndarray:
        return np.bincount(ns // slice_ns, weights=weights, minlength=n)[:n].astype(float)

    ok = cols["ok"]
    series = {"t_s": np.arange(n) * slice_s, "scheduled": per_slice(cols["intended_ns"]),
              "sent": per_slice(cols["sent_ns"]), "completed": per_slice(cols["done_ns"][ok]),
              "errors": per_slice(cols["done_ns"][~ok]),
              "output_tokens": per_slice(cols["done_ns"], cols["output_tokens"]),
              "slo_met": per_slice(cols["done_ns"][cols["slo_met"]])}
    # As the stats core does: a latency belongs to the slice its request was scheduled in.
    intended_slice = cols["intended_ns"] // slice_ns
    latencies = {"ttft": (ok, cols["first_token_ns"] - cols["intended_ns"]),
                 "e2e": (ok, cols["done_ns"] - cols["intended_ns"]),
                 "lag": (np.ones_like(ok), cols["sent_ns"] - cols["intended_ns"])}
    for name, (mask, values) in latencies.items():
        p = _slice_percentiles(intended_slice[mask], values[mask], n)
        series[f"{name}_p50_ms"], series[f"{name}_p99_ms"] = p[:, 0], p[:, 1]
    return series


def _summary_series(timeslices: dict) -> dict[str, np.ndarray]:
    series = {}
    for key, values in timeslices.items():
        if isinstance(values, list):
            series[key] = np.array([np.nan if v is None else v for v in values], dtype=float)
    return series


def _batch_table(cols: dict[str, np.ndarray]) -> list[dict]:
    """Embedding batch efficiency: per batch size, latency per input and inputs per second."""
    emb = cols["ok"] & (cols["kind"] == cols["kind_labels"].get("embedding", -1))
    if not emb.any() or cols.get("batch_size") is None:
        return []
    sizes = cols["batch_size"][emb]
    e2e_ms = (cols["done_ns"][emb] - cols["sent_ns"][emb]) / NS_PER_MS
    rows = []
    for size in np.unique(sizes):
        lat = e2e_ms[sizes == size]
        mean_ms = float(lat.mean())
        rows.append({"batch_size": int(size), "requests": int(lat.size),
                     "e2e_mean_ms": mean_ms,
                     "e2e_p99_ms": float(np.percentile(lat, 99, method=NEAREST_RANK)),
                     "per_input_ms": mean_ms / max(int(size), 1),
                     "inputs_per_s_per_stream": 1000.0 * int(size) / mean_ms if mean_ms else 0.0})
    return rows


def _kind_series(cols: dict[str, np.ndarray], slice_s: float, n: int) -> dict[str, np.ndarray]:
    slice_ns = int(slice_s * 1e9)
    out = {}
    for kind, code in cols["kind_labels"].items():
        sel = cols["ok"] & (cols["kind"] == code)
        out[str(kind)] = np.bincount(cols["done_ns"][sel] // slice_ns, minlength=n)[:n] / slice_s
    return out


def _read_monitor(path: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    table = _read_arrow(path)
    missing = {"t_ns", "source", "metric", "value"} - set(table.column_names)
    if missing:
        raise ConfigError(f"{path} lacks column(s) {sorted(missing)}; monitor.arrow is long "
                          "format: t_ns, source, metric, value")
    t_s = _column(table, "t_ns") / 1e9
    value = _column(table, "value", fill=np.nan).astype(float)
    key = np.char.add(np.char.add(_column(table, "source", "").astype(str), "\x1f"),
                      _column(table, "metric", "").astype(str))
    out = {}
    for k in np.unique(key):
        sel = key == k
        ts, vs = t_s[sel], value[sel]
        order = np.argsort(ts, kind="stable")
        ts, vs = ts[order], vs[order]
        if ts.size > MAX_MONITOR_POINTS:  # bin means keep the shape, bound the points
            edges = np.linspace(ts[0], ts[-1], MAX_MONITOR_POINTS + 1)
            idx = np.clip(np.searchsorted(edges, ts, side="right") - 1, 0, MAX_MONITOR_POINTS - 1)
            counts = np.bincount(idx, minlength=MAX_MONITOR_POINTS)
            sums = np.bincount(idx, weights=np.nan_to_num(vs), minlength=MAX_MONITOR_POINTS)
            keep = counts > 0
            ts, vs = (edges[:-1] + edges[1:])[keep] / 2, sums[keep] / counts[keep]
        source, metric = str(k).split("\x1f", 1)
        out[(source, metric)] = (ts, vs)
    return out


def _trace_info(run: dict, result_dir: Path) -> dict[str, str]:
    """Generator and seed of the replayed trace, so the report names how to reproduce it.

    From the run block when it has them, else from the trace file's metadata — only when the
    file is still the one replayed (same SHA-256), never from a trace regenerated since.
    """
    info = {k: str(run[k]) for k in ("generator", "seed") if run.get(k) is not None}
    trace = run.get("trace")
    if info or not isinstance(trace, str):
        return info
    for path in (Path(trace), result_dir.parent / trace, result_dir / trace):
        if not path.is_file():
            continue
        if run.get("trace_sha256"):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for block in iter(lambda: f.read(1 << 20), b""):
                    digest.update(block)
            if digest.hexdigest() != run["trace_sha256"]:
                return {}
        try:
            with pa.memory_map(str(path)) as source:
                meta = pa.ipc.open_file(source).schema.metadata or {}
        except (OSError, pa.ArrowInvalid):
            return {}
        return {k: meta[f"cpbench.{k}".encode()].decode("utf-8", "replace")
                for k in ("generator", "seed") if f"cpbench.{k}".encode() in meta}
    return {}


def load_run(path: Path) -> RunData:
    """Read one result directory; raises ``ConfigError`` naming what is missing."""
    path = Path(path)
    if path.is_file() and (path.parent / "summary.json").is_file():
        path = path.parent  # summary.json, results.arrow ...: the run they belong to
    summary_path = path / "summary.json"
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a result directory; pass the directory "
                          "written by `cpbench replay -o DIR`")
    if not summary_path.is_file():
        raise ConfigError(f"{path} is not a result directory (no summary.json); pass a "
                          "directory written by `cpbench replay -o DIR`")
    try:
        summary = json.loads(summary_path.read_text())
    except (OSError, ValueError) as exc:
        raise ConfigError(f"cannot read {summary_path}: {exc}") from exc
    if not isinstance(summary, dict):
        raise ConfigError(f"{summary_path} is not a JSON object; rerun the replay to rewrite it")
    data = RunData(path=path, summary=summary)
    data.trace_info = _trace_info(data.run, path)
    timeslices = summary.get("timeslices") or {}
    slice_s = float(timeslices.get("slice_s") or 1.0)
    if timeslices.get("t_s"):
        data.series = _summary_series(timeslices)
    data.distributions = _histogram_distributions(summary.get("histograms") or {})
    results_path = path / "results.arrow"
    if results_path.is_file():
        _add_results(data, _read_arrow(results_path, RESULT_COLUMNS), slice_s)
    else:
        data.notes.append("results.arrow is missing: breakdowns from the summary only.")
    if (path / "monitor.arrow").is_file():
        data.monitor = _read_monitor(path / "monitor.arrow")
    return data


def _codes(column: pa.ChunkedArray, live: np.ndarray) -> tuple[np.ndarray, dict[str, int]]:
    """Integer codes of a string column and {label: code} of the labels present in ``live``.

    Strings of a 10^6-row column are slow to compare and sort in NumPy; small codes are not.
    """
    codes, labels = label_codes(column, ())
    codes = codes if live.all() else codes[live]
    present = np.flatnonzero(np.bincount(codes, minlength=len(labels)))
    return codes, {str(labels[i]): int(i) for i in present}


def _value_counts(table: pa.Table, name: str) -> list[tuple[str, int]]:
    """(value, count) of a string column, most frequent first, nulls left out."""
    if name not in table.column_names:
        return []
    counts = pc.value_counts(table.column(name).combine_chunks())
    pairs = [(str(v), int(c)) for v, c in zip(counts.field("values").to_pylist(),
                                               counts.field("counts").to_pylist()) if v is not None]
    return sorted(pairs, key=lambda vc: (-vc[1], vc[0]))


def _add_result_distributions(data: RunData, cols: dict[str, np.ndarray]) -> None:
    """Exact distributions from the result columns for what the histograms did not give."""
    for name, values in _result_latencies(cols).items():
        if name not in data.distributions and values.size:
            data.distributions[name] = Distribution(
                PERCENT_GRID, np.percentile(values, PERCENT_GRID, method=NEAREST_RANK) / NS_PER_MS,
                int(values.size), "results")


def _add_results(data: RunData, table: pa.Table, slice_s: float) -> None:
    required = {"kind", "intended_ns", "sent_ns", "done_ns"}
    if missing := required - set(table.column_names):
        data.notes.append(f"results.arrow lacks {sorted(missing)}: breakdowns left out.")
        return
    data.models = _value_counts(table, "model")
    data.error_details = _value_counts(table, "error_detail")[:MAX_ERROR_DETAILS]
    warmup = _column(table, "warmup", False)
    live = ~warmup.astype(bool) if warmup is not None else np.ones(table.num_rows, bool)
    if not live.any():
        data.notes.append("results.arrow holds no request past warm-up: nothing to chart.")
        return
    everything = bool(live.all())

    def keep(values: np.ndarray) -> np.ndarray:
        return values if everything else values[live]    # no copy of 10^6 rows for nothing

    # Missing times read as -1 (as the stats core reads them), never as the run's first instant.
    cols = {name: keep(_column(table, name, -1 if name.endswith("_ns") else 0))
            for name in RESULT_COLUMNS if name in table.column_names
            and name not in ("kind", "error_class", "warmup", "slo_met", "model", "error_detail")}
    cols["kind"], cols["kind_labels"] = _codes(table.column("kind"), live)
    # A failure with no done time ended when it was sent, as the stats core counts it.
    cols["done_ns"] = np.where(cols["done_ns"] < 0, cols["sent_ns"], cols["done_ns"])
    errors = table.column("error_class") if "error_class" in table.column_names else None
    cols["ok"] = (keep(np.asarray(errors.is_null().to_numpy(zero_copy_only=False)))
                  if errors is not None else np.ones(int(live.sum()), bool))
    slo = _column(table, "slo_met", False)
    cols["slo_met"] = keep(slo).astype(bool) if slo is not None else cols["ok"]
    cols.setdefault("output_tokens", np.zeros(int(live.sum()), np.int64))
    first = cols.get("first_token_ns", cols["done_ns"])
    cols["first_token_ns"] = np.where(first < 0, cols["done_ns"], first)
    if not data.series:
        data.series = _derive_series(cols, slice_s)
        data.notes.append("summary.json has no timeslices: series derived from results.arrow.")
    if not set(LATENCY_METRICS) <= set(data.distributions):
        _add_result_distributions(data, cols)
    if len(cols["kind_labels"]) > 1:
        data.kind_series = _kind_series(cols, slice_s, len(data.series.get("t_s", [])))
    data.batch_table = _batch_table(cols)


def llm_share(run: RunData) -> float | None:
    """The LLM share of requests: ``run.options.llm_ratio`` when given, else from the counts."""
    ratio = (run.run.get("options") or {}).get("llm_ratio")
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        return float(ratio)
    counts = {k.get("kind"): int(k.get("requests") or 0) for k in run.summary.get("by_kind") or []}
    total = sum(counts.values())
    if not total:
        return None
    return round((counts.get("chat", 0) + counts.get("completion", 0)) / total, 2)


def run_facts(run: RunData) -> dict[str, str]:
    """Policy, offered rate and asked LLM share of a run as display strings (unknown: left out)."""
    opts = run.run.get("options") or {}
    facts = {}
    if run.run.get("policy"):
        facts["policy"] = str(run.run["policy"])
    rate = opts.get("rate", opts.get("rate_rps"))
    if isinstance(rate, (int, float)) and not isinstance(rate, bool):
        facts["rate"] = f"{rate:g} rps"
    elif isinstance(opts.get("rate_scale"), (int, float)) and opts["rate_scale"] != 1:
        facts["rate"] = f"rate ×{opts['rate_scale']:g}"
    ratio = opts.get("llm_ratio")  # as asked; a measured share would split seeds apart
    if isinstance(ratio, (int, float)) and not isinstance(ratio, bool):
        facts["llm_ratio"] = f"llm {ratio:g}"
    return facts


def report_title(runs: list[RunData]) -> str:
    """The default title of a report, the same in its HTML and its Markdown."""
    if len(runs) == 1:
        return f"cpbench report: {runs[0].run.get('policy') or runs[0].path.name}"
    return f"cpbench comparison of {len(runs)} runs"


def run_labels(runs: list[RunData]) -> list[str]:
    """Short, unique labels from the facts that differ between runs, else the directory names."""
    all_facts = [run_facts(r) for r in runs]
    keys = [k for k in ("policy", "rate", "llm_ratio")
            if len({f.get(k) for f in all_facts}) > 1]
    labels = [" · ".join(f[k] for k in keys if k in f) for f in all_facts]
    if len(runs) == 1 or len(set(labels)) < len(labels) or not all(labels):
        labels = [r.path.name or str(r.path) for r in runs]
    if len(set(labels)) < len(labels):
        labels = [f"{i + 1}: {lab}" for i, lab in enumerate(labels)]
    return labels

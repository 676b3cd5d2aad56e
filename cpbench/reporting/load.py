"""Read result directories into what the report draws: a ``RunData`` per run.

The files come through :func:`cpbench.resultdir.read_result_dir`: ``summary.json`` (required),
``results.arrow`` and the optional ``monitor.arrow``. Hands on aggregates only — per-timeslice
series, latency distributions as quantile functions, small group-by tables — so a 10^6-request
run never puts raw points into the report.

The report reads what the run wrote and derives no statistic the summary defines: the facts of
the run (trace hash, generator and seed) from ``summary.run``, the latency distributions from
the summary's histograms, the series over time from its timeslices. A summary without them
(written by an older cpbench) gets a note, not a second definition computed here. What the
summary does not hold — models, error details, embedding batch sizes, completions per kind
over time — comes from the result columns, read one record batch at a time
(:mod:`cpbench.reporting.breakdowns`).
"""
from __future__ import annotations

import base64
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa

from cpbench._core.hist import Histogram
from cpbench.errors import ConfigError
from cpbench.reporting.breakdowns import (MAX_ERROR_DETAILS, REQUIRED, RESULT_COLUMNS,
                                          Breakdowns, most_frequent)
from cpbench.resultdir import iter_arrow_batches, read_arrow, read_result_dir
from cpbench.results import column_numpy

NS_PER_MS = 1_000_000
# Percent grid of the quantile functions: dense in the body, then 99, 99.9 ... 99.999.
PERCENT_GRID = np.unique(np.concatenate([np.linspace(0.0, 99.0, 199),
                                          100.0 * (1.0 - np.logspace(-2, -5, 121))]))
LADDER_PERCENTS = (50.0, 75.0, 90.0, 95.0, 99.0, 99.9, 99.99)
# Latency metrics the report shows, in display order, with the result columns they derive from.
LATENCY_METRICS = ("ttft_from_sent", "ttft_from_intended", "e2e_from_sent",
                   "e2e_from_intended", "itl", "dispatch_lag")
MAX_MONITOR_POINTS = 2000


@dataclass
class Distribution:
    """A latency distribution as a quantile function: ``values_ms[i]`` at ``percents[i]``."""

    percents: np.ndarray
    values_ms: np.ndarray
    count: int
    source: str  # "histogram": the summary's, exact to the core's stated bound

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


def _histogram_distributions(encoded: dict, notes: list[str]) -> dict[str, Distribution]:
    """Decode the summary's base64 histograms; a damaged one is named in ``notes``."""
    out = {}
    for name, blob in encoded.items():
        try:
            hist = Histogram.decode(base64.b64decode(blob))
        except (ValueError, TypeError):
            notes.append(f"summary.json's {name} histogram is damaged: its chart is left out.")
            continue
        count = int(hist.total_count)
        if count == 0:
            continue
        values = np.asarray(hist.percentiles(PERCENT_GRID), dtype=float)
        out[name] = Distribution(PERCENT_GRID, values / NS_PER_MS, count, "histogram")
    return out


def _summary_series(timeslices: dict) -> dict[str, np.ndarray]:
    series = {}
    for key, values in timeslices.items():
        if isinstance(values, list):
            series[key] = np.array([np.nan if v is None else v for v in values], dtype=float)
    return series


def _read_monitor(path: Path) -> dict[tuple[str, str], tuple[np.ndarray, np.ndarray]]:
    table = read_arrow(path)
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


def _trace_info(run: dict) -> dict[str, str]:
    """Generator and seed of the replayed trace as the run recorded them, so the report names
    how to reproduce it."""
    return {key: str(run[f"trace_{key}"]) for key in ("generator", "seed")
            if run.get(f"trace_{key}") not in (None, "")}


def load_run(path: Path) -> RunData:
    """Read one result directory; raises ``ConfigError`` naming what is missing."""
    found = read_result_dir(path, read_results=False)
    summary = found.summary
    data = RunData(path=found.path, summary=summary)
    data.trace_info = _trace_info(data.run)
    timeslices = summary.get("timeslices") or {}
    slice_s = float(timeslices.get("slice_s") or 1.0)
    if timeslices.get("t_s"):
        data.series = _summary_series(timeslices)
    else:
        data.notes.append("summary.json has no timeslices (an older cpbench wrote it): the "
                          "charts over time are left out.")
    data.distributions = _histogram_distributions(summary.get("histograms") or {}, data.notes)
    absent = [m for m in LATENCY_METRICS if m not in data.distributions
              and ((summary.get("latency_ms") or {}).get(m) or {}).get("count", 1)]
    if absent:
        data.notes.append(f"summary.json has no histogram of {', '.join(absent)}: "
                          "those distributions are left out.")
    if found.results_path is not None:
        _add_results(data, iter_arrow_batches(found.results_path, RESULT_COLUMNS), slice_s)
    else:
        data.notes.append("results.arrow is missing: breakdowns from the summary only.")
    if found.monitor_path is not None:
        data.monitor = _read_monitor(found.monitor_path)
    return data


def _add_results(data: RunData, batches: Iterator[pa.RecordBatch], slice_s: float) -> None:
    breakdowns = Breakdowns(slice_s, len(data.series.get("t_s", [])))
    for batch in batches:
        if missing := set(REQUIRED) - set(batch.schema.names):
            data.notes.append(f"results.arrow lacks {sorted(missing)}: breakdowns left out.")
            return
        breakdowns.add(batch)
    data.models = most_frequent(breakdowns.models)
    data.error_details = most_frequent(breakdowns.error_details)[:MAX_ERROR_DETAILS]
    if breakdowns.live_rows == 0:
        data.notes.append("results.arrow holds no request past warm-up: nothing to chart.")
        return
    data.kind_series = breakdowns.kind_series()
    data.batch_table = breakdowns.batch_table()


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

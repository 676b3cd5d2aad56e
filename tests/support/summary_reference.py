"""The whole-table summary as cpbench computed it before it went batch by batch (eeb82d6).

The oracle of ``tests/test_summary_stream.py``: :func:`summarize_whole_table` and
:func:`dispatch_lag_of_workers` read every result column at once into NumPy, as
``cpbench.summary`` did up to that commit, so the batch-by-batch summary is held to the very
numbers the whole-table one gave. Kept as it was; only the imports changed (the display
helpers it shares with the package are imported from there).
"""
from __future__ import annotations

import base64
import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench import __version__
from cpbench._core.hist import Histogram
from cpbench._core.slo import KINDS, PRIORITIES, SloCounters, Timeslices
from cpbench.errors import ConfigError
from cpbench.results import column_numpy, label_codes
from cpbench.summary import (LATENCIES, PERCENTILES, REQUIRED_COLUMNS, histogram_stats_ms,
                             percent_key)

NS_PER_MS = 1e6


def _ms(value_ns: float) -> float | None:
    return float(value_ns) / NS_PER_MS if math.isfinite(value_ns) else None


def _histogram(values: np.ndarray, what: str, lowest_ns: int = 1_000) -> Histogram:
    hist = Histogram(lowest_ns=lowest_ns)
    try:
        hist.record_array(values)
    except ValueError as exc:
        raise ConfigError(f"results table gives a negative {what} ({exc}); its times are "
                          "not on one monotonic clock") from None
    return hist


def _int_col(table: pa.Table, name: str, null: int = -1) -> np.ndarray:
    return column_numpy(table, name, null, np.int64)


def _bool_col(table: pa.Table, name: str) -> np.ndarray:
    return column_numpy(table, name, False, bool)


def _columns(results: pa.Table) -> dict[str, Any]:
    missing = [c for c in REQUIRED_COLUMNS if c not in results.column_names]
    if missing:
        raise ConfigError(f"results table lacks column(s) {', '.join(missing)}; "
                          "it must follow docs/formats.md (results.arrow)")
    warm = _bool_col(results, "warmup")
    # Warm-up rows are dropped from the NumPy columns, one at a time; the Arrow table (about
    # 110 MB for 10^6 rows, memory-mapped) is never copied whole.
    keep = ~warm if warm.any() else None

    def live(values: np.ndarray) -> np.ndarray:
        return values if keep is None else values[keep]

    c: dict[str, Any] = {"n_warmup": int(warm.sum())}
    for name in ("intended_ns", "sent_ns", "first_token_ns", "done_ns"):
        c[name] = live(_int_col(results, name))   # -1: null, as _core.slo expects
    c["output_tokens"] = live(_int_col(results, "output_tokens", null=0))
    for name in ("slo_ttft_met", "slo_e2e_met", "slo_met"):
        c[name] = live(_bool_col(results, name))
    errors = results.column("error_class")
    c["error_class"] = errors if keep is None else errors.filter(pa.array(keep))
    c["errored"] = pc.is_valid(c["error_class"]).to_numpy(zero_copy_only=False)
    c["completed"] = ~c["errored"] & (c["done_ns"] >= 0)
    c["kind"], c["kinds"] = label_codes(results.column("kind"), KINDS)
    c["priority"], c["priorities"] = label_codes(results.column("priority"), PRIORITIES)
    c["kind"], c["priority"] = live(c["kind"]), live(c["priority"])
    return c


def _latencies(c: dict[str, Any]) -> dict[str, np.ndarray]:
    """Latency arrays (ns) and the row masks they come from."""
    ok, first = c["completed"], c["first_token_ns"]
    has_first = ok & (first >= 0)
    return {
        "ttft_mask": has_first, "e2e_mask": ok,
        "ttft_from_sent": (first - c["sent_ns"])[has_first],
        "ttft_from_intended": (first - c["intended_ns"])[has_first],
        "e2e_from_sent": (c["done_ns"] - c["sent_ns"])[ok],
        "e2e_from_intended": (c["done_ns"] - c["intended_ns"])[ok],
    }


def _window_s(c: dict[str, Any]) -> float:
    if c["intended_ns"].size == 0:
        return 0.0
    end = max(int(c["done_ns"].max()), int(c["sent_ns"].max()))
    return max(end - int(c["intended_ns"].min()), 0) / 1e9


def _span_rate(times_ns: np.ndarray) -> float:
    """``(n - 1) / (last - first)``: the mean rate of a sequence of instants, as
    ``cpbench info`` reports a trace's (the tail after the last one is not part of it)."""
    if times_ns.size < 2:
        return 0.0
    span_ns = int(times_ns.max()) - int(times_ns.min())
    return (times_ns.size - 1) / (span_ns / 1e9) if span_ns > 0 else 0.0


def _scheduled_rps(c: dict[str, Any], run: Mapping[str, Any]) -> float:
    """The offered rate of the whole schedule, as planned: a run cut short still offered it.

    From the run's record of its schedule (count and span, warm-up included) where present,
    else from the intended times of the rows at hand.
    """
    schedule = run.get("schedule") or {}
    count, span_s = schedule.get("requests"), schedule.get("span_s")
    if isinstance(count, int) and isinstance(span_s, (int, float)) and span_s > 0:
        return (count - 1) / span_s
    return _span_rate(c["intended_ns"])


def _per_rate(count: float, window_s: float) -> float:
    return float(count) / window_s if window_s > 0 else 0.0


def _class_entry(counts: dict[str, int], window_s: float, lat: dict[str, np.ndarray],
                 c: dict[str, Any], mask: np.ndarray, percentiles: Sequence[float]) -> dict:
    entry: dict[str, Any] = dict(counts)
    entry["attainment"] = counts["slo_met"] / counts["requests"] if counts["requests"] else None
    entry["goodput_rps"] = _per_rate(counts["slo_met"], window_s)
    ttft = _histogram(lat["ttft_from_intended"][mask[lat["ttft_mask"]]], "TTFT")
    e2e = _histogram(lat["e2e_from_intended"][mask[lat["e2e_mask"]]], "end-to-end latency")
    entry["latency_ms"] = {"ttft_from_intended": histogram_stats_ms(ttft, percentiles),
                           "e2e_from_intended": histogram_stats_ms(e2e, percentiles)}
    return entry


def _by_class(c: dict[str, Any], lat: dict[str, np.ndarray], window_s: float,
              percentiles: Sequence[float]) -> tuple[list[dict], list[dict], SloCounters]:
    slo = SloCounters(c["kinds"], c["priorities"])
    slo.add_arrays(c["kind"], c["priority"], c["completed"], c["errored"], c["slo_ttft_met"],
                   c["slo_e2e_met"], c["slo_met"])
    by_class, by_kind = [], []
    for k, kind in enumerate(slo.kinds):
        kind_mask = c["kind"] == k
        counts = slo.counts(kind)
        if counts["requests"] == 0:
            continue
        by_kind.append({"kind": kind, **_class_entry(counts, window_s, lat, c, kind_mask,
                                                     percentiles)})
        for p, priority in enumerate(slo.priorities):
            counts = slo.counts(kind, priority)
            if counts["requests"]:
                mask = kind_mask & (c["priority"] == p)
                by_class.append({"kind": kind, "priority": priority,
                                 **_class_entry(counts, window_s, lat, c, mask, percentiles)})
    return by_class, by_kind, slo


def _timeslices(c: dict[str, Any], slice_s: float) -> dict[str, Any]:
    if not (slice_s > 0 and math.isfinite(slice_s)):
        raise ConfigError(f"slice_s must be a positive number of seconds; got {slice_s!r}")
    ts = Timeslices(slice_ns=max(1, round(slice_s * 1e9)))
    try:
        ts.add_arrays(c["intended_ns"], c["sent_ns"], c["first_token_ns"], c["done_ns"],
                      c["output_tokens"], c["completed"], c["errored"],
                      c["slo_met"] & c["completed"])
    except ValueError as exc:
        raise ConfigError(f"results table cannot be sliced in time: {exc}") from None
    counters = ts.counters()
    slice_s = ts.slice_ns / 1e9         # the length in force: a long series doubles it
    out: dict[str, Any] = {"slice_s": slice_s,
                           "t_s": [i * slice_s for i in range(ts.n_slices)]}
    for name in ("scheduled", "sent", "completed", "errors", "output_tokens", "in_flight",
                 "slo_met"):
        out[name] = [int(v) for v in counters[name]]
    for key, metric, p in (("ttft_p50_ms", "ttft", 50), ("ttft_p99_ms", "ttft", 99),
                           ("e2e_p50_ms", "e2e", 50), ("e2e_p99_ms", "e2e", 99),
                           ("lag_p99_ms", "lag", 99)):
        out[key] = [_ms(v) for v in ts.percentile_series(metric, p)]
    return out


def summarize_whole_table(results: pa.Table, *, itl_hist: Histogram | None = None, run: dict,
              slice_s: float = 1.0,
              percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    """Summarize a results table into the summary.json shape (without ``"monitor"``).

    Parameters
    ----------
    results : pyarrow.Table
        Rows of results.arrow (docs/formats.md); extra columns are ignored.
    itl_hist : Histogram, optional
        Inter-token gaps recorded while streaming (they are not per-row data); without it
        ``latency_ms.itl`` has count 0 and null statistics.
    run : dict
        The ``"run"`` block, copied as given.
    slice_s : float
        Timeslice length in seconds.
    percentiles : sequence of float
        Percents in [0, 100] reported for every latency.

    Raises
    ------
    ConfigError
        A required column is missing, or the times are inconsistent (negative latency).
    """
    percentiles = tuple(float(p) for p in percentiles)
    if not all(0 <= p <= 100 for p in percentiles):
        raise ConfigError(f"percentiles must be percents in [0, 100]; got {list(percentiles)}")
    c = _columns(results)
    lat = _latencies(c)
    window_s = _window_s(c)
    n = int(c["intended_ns"].size)
    n_sent = int((c["sent_ns"] >= 0).sum())
    # Results hold only requests that were sent; an interrupted run knows from its plan how
    # many the trace scheduled (run["scheduled"], warm-up included), so none vanish unseen.
    n_scheduled = n
    if run.get("scheduled") is not None:
        n_scheduled = max(int(run["scheduled"]) - c["n_warmup"], n)
    n_completed = int(c["completed"].sum())
    by_error = {str(d["values"]): int(d["counts"]) for d in
                pc.value_counts(c["error_class"].drop_null().cast(pa.string())).to_pylist()}
    # Requests the client itself cut off (Ctrl-C, --max-error-ratio) are no server fault.
    n_interrupted = by_error.get("interrupted", 0)
    n_errors = int(c["errored"].sum()) - n_interrupted
    sent = c["sent_ns"] >= 0
    lag = _histogram(np.maximum(c["sent_ns"][sent] - c["intended_ns"][sent], 0),
                     "dispatch lag", lowest_ns=0)
    hists = {name: _histogram(lat[name], name.replace("_", " ")) for name in LATENCIES}
    latency_ms = {name: histogram_stats_ms(h, percentiles) for name, h in hists.items()}
    latency_ms["itl"] = histogram_stats_ms(itl_hist if itl_hist is not None else Histogram(),
                                           percentiles)
    lag_stats = histogram_stats_ms(lag, percentiles)
    by_class, by_kind, slo = _by_class(c, lat, window_s, percentiles)
    total = slo.counts()
    encoded = {**hists, "dispatch_lag": lag}
    if itl_hist is not None:
        encoded["itl"] = itl_hist
    return {
        "cpbench_version": __version__,
        "run": dict(run),
        "requests": {"scheduled": n_scheduled, "sent": n_sent, "not_sent": n_scheduled - n_sent,
                     "completed": n_completed, "errors": n_errors,
                     "interrupted": n_interrupted, "warmup": c["n_warmup"],
                     "by_error_class": by_error},
        "rates": {"scheduled_rps": _scheduled_rps(c, run),
                  "achieved_rps": _span_rate(c["sent_ns"][c["sent_ns"] >= 0]),
                  "completed_rps": _per_rate(n_completed, window_s),
                  "output_tps": _per_rate(int(c["output_tokens"][c["completed"]].sum()),
                                          window_s)},
        "dispatch_lag_ms": {**{k: v for k, v in lag_stats.items() if k.startswith("p")},
                            "max": lag_stats["max"], "mean": lag_stats["mean"],
                            "overflow": lag_stats["overflow"]},
        "latency_ms": latency_ms,
        "slo": {"attainment": total["slo_met"] / n if n else None,
                "goodput_rps": _per_rate(total["slo_met"], window_s)},
        "by_class": by_class,
        "by_kind": by_kind,
        "timeslices": _timeslices(c, slice_s),
        "histograms": {name: base64.b64encode(h.encode()).decode("ascii")
                       for name, h in encoded.items()},
    }


def dispatch_lag_of_workers(results: pa.Table, workers: Sequence[int],
                            percentiles: Sequence[float] = (50.0, 99.0)) -> dict[str, Any]:
    """Dispatch lag (ms) of the sent, non-warm-up rows of some workers (a Ray node's)."""
    mine = np.isin(_int_col(results, "worker"), np.asarray(workers, dtype=np.int64))
    mine &= ~_bool_col(results, "warmup") & (_int_col(results, "sent_ns") >= 0)
    lag = _int_col(results, "sent_ns")[mine] - _int_col(results, "intended_ns")[mine]
    stats = histogram_stats_ms(_histogram(np.maximum(lag, 0), "dispatch lag", lowest_ns=0),
                               percentiles)
    return {k: stats[k] for k in ("count", *map(percent_key, percentiles), "max")}

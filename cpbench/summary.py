"""summary.json: result rows (docs/formats.md) turned into counts, rates and percentiles.

:class:`RunningSummary` folds record batches of results one at a time, as a run hands them
over, into state of fixed size in the compiled core (``_core.hist`` histograms,
``_core.slo`` SLO counters and timeslices): no per-row Python, and no row kept, so the
parent's memory does not grow with the run. ``summarize`` does the same for a table already
read. Both give the summary.json shape of docs/formats.md except ``"monitor"``, which the
caller adds. ``write_summary`` writes it atomically; ``load_summary`` reads it back.

Definitions (what a reader of the numbers needs):

- Rows with ``warmup`` true count under ``requests.warmup`` and nowhere else.
- *completed*: no ``error_class`` and a ``done_ns``; *errors*: an ``error_class``.
- Latencies are kept from the intended time and from the sent time (wrk2's pair): TTFT is
  ``first_token_ns`` minus either, over completed requests with a first token; end-to-end is
  ``done_ns`` minus either, over completed requests. Dispatch lag is ``sent_ns - intended_ns``
  over every sent request; a request sent early counts as zero lag.
- Rates divide by the measurement window: from the first intended time to the last
  ``done_ns`` (or ``sent_ns``) of the non-warmup rows. ``goodput_rps`` counts completed
  requests that met every deadline of their class; ``attainment`` is that count over all
  requests of the class, a share in [0, 1] (null with no requests).
- Percentiles are nearest-rank within the histogram's stated relative error (4.9e-4 at 3
  digits; timeslices: 3.9e-3 at 2 digits). Milliseconds only here, for display; an empty
  statistic is null. Samples outside a histogram's range (below 1 us, above 1 h) are never
  dropped: each latency block says how many as ``underflow``/``overflow``.
"""
from __future__ import annotations

import base64
import json
import math
import os
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

from cpbench import __version__
from cpbench._core.hist import Histogram
from cpbench._core.slo import KINDS, PRIORITIES, SloCounters, Timeslices
from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.results import column_numpy, label_codes

PERCENTILES = (50, 90, 95, 99, 99.9)
NS_PER_MS = 1e6
REQUIRED_COLUMNS = ("kind", "priority", "intended_ns", "sent_ns", "first_token_ns", "done_ns",
                    "output_tokens", "error_class", "slo_ttft_met", "slo_e2e_met", "slo_met",
                    "warmup")
LATENCIES = ("ttft_from_sent", "ttft_from_intended", "e2e_from_sent", "e2e_from_intended")


def percent_key(p: float) -> str:
    """JSON key of a percent: 50 -> "p50", 99.9 -> "p99.9"."""
    p = float(p)
    return "p" + (str(int(p)) if p.is_integer() else repr(p))


def _ms(value_ns: float) -> float | None:
    return float(value_ns) / NS_PER_MS if math.isfinite(value_ns) else None


def histogram_stats_ms(hist: Histogram, percentiles: Sequence[float]) -> dict[str, Any]:
    """``{"count", "underflow", "overflow", "mean", "min", "max", "p..."}`` of a histogram in
    milliseconds; ``underflow``/``overflow`` count the samples below/above its range (they are
    in ``count``, ``min``, ``max`` and ``mean`` but their percentiles are only bounds)."""
    out: dict[str, Any] = {"count": hist.total_count, "underflow": hist.underflow_count,
                           "overflow": hist.overflow_count}
    if hist.total_count == 0:
        out.update({"mean": None, "min": None, "max": None})
        out.update({percent_key(p): None for p in percentiles})
        return out
    out.update({"mean": _ms(hist.mean), "min": _ms(hist.min), "max": _ms(hist.max)})
    for p, v in zip(percentiles, hist.percentiles(percentiles)):
        out[percent_key(p)] = _ms(v)
    return out


def _record(hist: Histogram, values: np.ndarray, what: str) -> None:
    try:
        hist.record_array(values)
    except ValueError as exc:
        raise ConfigError(f"results table gives a negative {what} ({exc}); its times are "
                          "not on one monotonic clock") from None


def _int_col(table: pa.Table, name: str, null: int = -1) -> np.ndarray:
    return column_numpy(table, name, null, np.int64)


def _bool_col(table: pa.Table, name: str) -> np.ndarray:
    return column_numpy(table, name, False, bool)


def check_columns(names: Sequence[str]) -> None:
    """ConfigError naming the REQUIRED_COLUMNS a results table (or batch) lacks."""
    missing = [c for c in REQUIRED_COLUMNS if c not in names]
    if missing:
        raise ConfigError(f"results table lacks column(s) {', '.join(missing)}; "
                          "it must follow docs/formats.md (results.arrow)")


def _columns(results: pa.Table, kinds: tuple[str, ...] = KINDS,
             priorities: tuple[str, ...] = PRIORITIES) -> dict[str, Any]:
    """The non-warm-up rows' columns as NumPy; kind and priority as codes into ``kinds`` and
    ``priorities`` (returned), which grow by any label first seen here."""
    check_columns(results.column_names)
    warm = _bool_col(results, "warmup")
    keep = ~warm if warm.any() else None     # warm-up rows are dropped one column at a time

    def live(values: np.ndarray) -> np.ndarray:
        return values if keep is None else values[keep]

    c: dict[str, Any] = {"n_warmup": int(warm.sum()), "keep": keep}
    for name in ("intended_ns", "sent_ns", "first_token_ns", "done_ns"):
        c[name] = live(_int_col(results, name))   # -1: null, as _core.slo expects
    c["output_tokens"] = live(_int_col(results, "output_tokens", null=0))
    for name in ("slo_ttft_met", "slo_e2e_met", "slo_met"):
        c[name] = live(_bool_col(results, name))
    errors = results.column("error_class")
    c["error_class"] = errors if keep is None else errors.filter(pa.array(keep))
    c["errored"] = pc.is_valid(c["error_class"]).to_numpy(zero_copy_only=False)
    c["completed"] = ~c["errored"] & (c["done_ns"] >= 0)
    c["kind"], c["kinds"] = label_codes(results.column("kind"), kinds)
    c["priority"], c["priorities"] = label_codes(results.column("priority"), priorities)
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


def request_latencies_ns(results: pa.Table) -> dict[str, np.ndarray]:
    """Each non-warm-up row's latencies (float64 ns, NaN where it has none), in table order.

    The same definitions, row for row, as the histograms of :func:`summarize` (the module
    docstring): the experiment statistics pair runs request by request with these, so a
    latency means one thing in summary.json, the report and comparison.json.
    """
    c = _columns(results)
    lat = _latencies(c)
    out = {}
    for name in LATENCIES:
        mask = lat["ttft_mask" if name.startswith("ttft") else "e2e_mask"]
        values = np.full(mask.size, np.nan)
        values[mask] = lat[name]
        out[name] = values
    return out


def _span_rate(count: int, first_ns: int, last_ns: int) -> float:
    """``(n - 1) / (last - first)``: the mean rate of ``count`` instants from ``first_ns`` to
    ``last_ns``, as ``cpbench info`` reports a trace's (the tail after the last one is not
    part of it)."""
    if count < 2:
        return 0.0
    span_ns = last_ns - first_ns
    return (count - 1) / (span_ns / 1e9) if span_ns > 0 else 0.0


def _per_rate(count: float, window_s: float) -> float:
    return float(count) / window_s if window_s > 0 else 0.0


def _class_entry(counts: dict[str, int], window_s: float, ttft: Histogram, e2e: Histogram,
                 percentiles: Sequence[float]) -> dict:
    entry: dict[str, Any] = dict(counts)
    entry["attainment"] = counts["slo_met"] / counts["requests"] if counts["requests"] else None
    entry["goodput_rps"] = _per_rate(counts["slo_met"], window_s)
    entry["latency_ms"] = {"ttft_from_intended": histogram_stats_ms(ttft, percentiles),
                           "e2e_from_intended": histogram_stats_ms(e2e, percentiles)}
    return entry


def _merged(hists: Sequence[Histogram], lowest_ns: int = 1_000) -> Histogram:
    # Merging is exact (counts and 128-bit sums add), so a merge is the histogram of the union.
    out = Histogram(lowest_ns=lowest_ns)
    for hist in hists:
        out.merge(hist)
    return out


class _Extent:
    """Count, first and last of a stream of instants (ns), folded batch by batch."""

    def __init__(self) -> None:
        self.count, self.first_ns, self.last_ns = 0, 0, 0

    def add(self, times_ns: np.ndarray) -> None:
        if times_ns.size == 0:
            return
        first, last = int(times_ns.min()), int(times_ns.max())
        self.first_ns = first if self.count == 0 else min(self.first_ns, first)
        self.last_ns = last if self.count == 0 else max(self.last_ns, last)
        self.count += int(times_ns.size)


class RunningSummary:
    """summary.json folded from record batches of results as they arrive.

    Each batch (:meth:`add`) goes once into running state of fixed size -- counts, the
    latency and lag histograms, per-class histograms and SLO counters, the timeslices -- and
    is not kept: a run of any length is summarized without its rows in memory. Every
    statistic is exact under folding (histogram merges and sums are exact), so the result is
    the same however the rows are split into batches.

    Parameters
    ----------
    slice_s : float
        Timeslice length in seconds; a run longer than ``MAX_SLICES`` (1,024) of them doubles it
        as often as needed (``summary.json`` says the length it got, ``timeslices.slice_s``).
    percentiles : sequence of float
        Percents in [0, 100] reported for every latency.

    Raises
    ------
    ConfigError
        ``percentiles`` or ``slice_s`` out of range.
    """

    def __init__(self, *, slice_s: float = 1.0,
                 percentiles: Sequence[float] = PERCENTILES) -> None:
        self.percentiles = tuple(float(p) for p in percentiles)
        if not all(0 <= p <= 100 for p in self.percentiles):
            raise ConfigError(f"percentiles must be percents in [0, 100]; got "
                              f"{list(self.percentiles)}")
        if not (slice_s > 0 and math.isfinite(slice_s)):
            raise ConfigError(f"slice_s must be a positive number of seconds; got {slice_s!r}")
        self._timeslices = Timeslices(slice_ns=max(1, round(slice_s * 1e9)))
        self._slo = SloCounters(KINDS, PRIORITIES)
        self._latency = {name: Histogram(lowest_ns=1_000) for name in LATENCIES}
        self._lag = Histogram(lowest_ns=0)
        self._lag_by_worker: dict[int, Histogram] = {}
        # (kind code, priority code) -> (TTFT, end-to-end) from the intended time
        self._by_class: dict[tuple[int, int], tuple[Histogram, Histogram]] = {}
        self._by_error: dict[str, int] = {}    # in order of first appearance
        self._intended, self._sent = _Extent(), _Extent()
        self._end_ns = -1
        self._n_warmup = self._n_completed = self._n_errored = self._output_tokens = 0
        self._failure: ConfigError | None = None

    def add(self, batch: pa.RecordBatch) -> None:
        """Fold one record batch of results (docs/formats.md; extra columns are ignored).

        A batch that cannot be summarized (a required column missing, a negative latency)
        is not raised here, in the middle of a run, but kept: :meth:`finish` raises it, and
        no later batch is folded.
        """
        if self._failure is not None:
            return
        try:
            self._fold(pa.Table.from_batches([batch]))
        except ConfigError as exc:
            self._failure = exc

    def _fold(self, table: pa.Table) -> None:
        c = _columns(table, self._slo.kinds, self._slo.priorities)
        if (c["kinds"], c["priorities"]) != (self._slo.kinds, self._slo.priorities):
            self._slo = self._slo.widened(c["kinds"], c["priorities"])
        self._n_warmup += c["n_warmup"]
        if c["intended_ns"].size == 0:
            return
        sent = c["sent_ns"] >= 0
        self._intended.add(c["intended_ns"])
        self._sent.add(c["sent_ns"][sent])
        self._end_ns = max(self._end_ns, int(c["done_ns"].max()), int(c["sent_ns"].max()))
        self._n_completed += int(c["completed"].sum())
        self._n_errored += int(c["errored"].sum())
        self._output_tokens += int(c["output_tokens"][c["completed"]].sum())
        for d in pc.value_counts(c["error_class"].drop_null().cast(pa.string())).to_pylist():
            self._by_error[str(d["values"])] = self._by_error.get(str(d["values"]), 0) + \
                int(d["counts"])
        self._fold_lag(c, sent, table)
        lat = _latencies(c)
        for name, hist in self._latency.items():
            _record(hist, lat[name], name.replace("_", " "))
        self._slo.add_arrays(c["kind"], c["priority"], c["completed"], c["errored"],
                             c["slo_ttft_met"], c["slo_e2e_met"], c["slo_met"])
        self._fold_classes(c, lat)
        try:
            self._timeslices.add_arrays(c["intended_ns"], c["sent_ns"], c["first_token_ns"],
                                        c["done_ns"], c["output_tokens"], c["completed"],
                                        c["errored"], c["slo_met"] & c["completed"])
        except ValueError as exc:
            raise ConfigError(f"results table cannot be sliced in time: {exc}") from None

    def _fold_lag(self, c: dict[str, Any], sent: np.ndarray, table: pa.Table) -> None:
        lag = np.maximum(c["sent_ns"][sent] - c["intended_ns"][sent], 0)
        _record(self._lag, lag, "dispatch lag")
        if "worker" not in table.column_names:
            return
        worker = _int_col(table, "worker")
        worker = (worker if c["keep"] is None else worker[c["keep"]])[sent]
        for w in np.unique(worker):
            hist = self._lag_by_worker.setdefault(int(w), Histogram(lowest_ns=0))
            _record(hist, lag[worker == w], "dispatch lag")

    def _fold_classes(self, c: dict[str, Any], lat: dict[str, np.ndarray]) -> None:
        n_priorities = len(self._slo.priorities)
        code = c["kind"] * n_priorities + c["priority"]
        ttft_code, e2e_code = code[lat["ttft_mask"]], code[lat["e2e_mask"]]
        for cls in np.unique(e2e_code):      # a request with a first token also completed
            k, p = divmod(int(cls), n_priorities)
            ttft, e2e = self._by_class.setdefault(
                (k, p), (Histogram(lowest_ns=1_000), Histogram(lowest_ns=1_000)))
            _record(ttft, lat["ttft_from_intended"][ttft_code == cls], "TTFT")
            _record(e2e, lat["e2e_from_intended"][e2e_code == cls], "end-to-end latency")

    def dispatch_lag_of_workers(self, workers: Sequence[int],
                                percentiles: Sequence[float] = (50.0, 99.0)) -> dict[str, Any]:
        """Dispatch lag (ms) of the sent, non-warm-up rows of some workers (a Ray node's)."""
        lag = _merged([self._lag_by_worker[w] for w in workers if w in self._lag_by_worker],
                      lowest_ns=0)
        stats = histogram_stats_ms(lag, percentiles)
        return {k: stats[k] for k in ("count", *map(percent_key, percentiles), "max")}

    def _window_s(self) -> float:
        if self._intended.count == 0:
            return 0.0
        return max(self._end_ns - self._intended.first_ns, 0) / 1e9

    def _scheduled_rps(self, run: Mapping[str, Any]) -> float:
        """The offered rate of the whole schedule, as planned: a run cut short still offered
        it. From the run's record of its schedule (count and span, warm-up included) where
        present, else from the intended times of the rows at hand."""
        schedule = run.get("schedule") or {}
        count, span_s = schedule.get("requests"), schedule.get("span_s")
        if isinstance(count, int) and isinstance(span_s, (int, float)) and span_s > 0:
            return (count - 1) / span_s
        return _span_rate(self._intended.count, self._intended.first_ns,
                          self._intended.last_ns)

    def _classes(self, window_s: float) -> tuple[list[dict], list[dict]]:
        slo, by_class, by_kind = self._slo, [], []
        empty = (Histogram(lowest_ns=1_000), Histogram(lowest_ns=1_000))
        for k, kind in enumerate(slo.kinds):
            counts = slo.counts(kind)
            if counts["requests"] == 0:
                continue
            hists = [self._by_class.get((k, p), empty) for p in range(len(slo.priorities))]
            by_kind.append({"kind": kind, **_class_entry(
                counts, window_s, _merged([h[0] for h in hists]), _merged([h[1] for h in hists]),
                self.percentiles)})
            for p, priority in enumerate(slo.priorities):
                counts = slo.counts(kind, priority)
                if counts["requests"]:
                    by_class.append({"kind": kind, "priority": priority, **_class_entry(
                        counts, window_s, *hists[p], self.percentiles)})
        return by_class, by_kind

    def _timeslice_series(self) -> dict[str, Any]:
        # The length in force: a series past MAX_SLICES slices has doubled it (coarsen).
        ts = self._timeslices
        slice_s = ts.slice_ns / 1e9
        counters = ts.counters()
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

    def finish(self, *, run: dict, itl_hist: Histogram | None = None) -> dict[str, Any]:
        """The summary.json shape (without ``"monitor"``) of every batch added so far.

        Parameters
        ----------
        run : dict
            The ``"run"`` block, copied as given.
        itl_hist : Histogram, optional
            Inter-token gaps recorded while streaming (they are not per-row data); without it
            ``latency_ms.itl`` has count 0 and null statistics.

        Raises
        ------
        ConfigError
            A batch lacked a required column or gave inconsistent times (negative latency).
        """
        if self._failure is not None:
            raise self._failure
        n, n_sent, percentiles = self._intended.count, self._sent.count, self.percentiles
        window_s = self._window_s()
        # Results hold only requests that were sent; an interrupted run knows from its plan
        # how many the trace scheduled (run["scheduled"], warm-up included), so none vanish.
        n_scheduled = n
        if run.get("scheduled") is not None:
            n_scheduled = max(int(run["scheduled"]) - self._n_warmup, n)
        # Requests the client itself cut off (Ctrl-C, --max-error-ratio) are no server fault.
        n_interrupted = self._by_error.get("interrupted", 0)
        latency_ms = {name: histogram_stats_ms(h, percentiles)
                      for name, h in self._latency.items()}
        latency_ms["itl"] = histogram_stats_ms(itl_hist if itl_hist is not None
                                               else Histogram(), percentiles)
        lag_stats = histogram_stats_ms(self._lag, percentiles)
        by_class, by_kind = self._classes(window_s)
        total = self._slo.counts()
        encoded = {**self._latency, "dispatch_lag": self._lag}
        if itl_hist is not None:
            encoded["itl"] = itl_hist
        return {
            "cpbench_version": __version__,
            "run": dict(run),
            "requests": {"scheduled": n_scheduled, "sent": n_sent,
                         "not_sent": n_scheduled - n_sent, "completed": self._n_completed,
                         "errors": self._n_errored - n_interrupted,
                         "interrupted": n_interrupted, "warmup": self._n_warmup,
                         "by_error_class": dict(self._by_error)},
            "rates": {"scheduled_rps": self._scheduled_rps(run),
                      "achieved_rps": _span_rate(n_sent, self._sent.first_ns,
                                                 self._sent.last_ns),
                      "completed_rps": _per_rate(self._n_completed, window_s),
                      "output_tps": _per_rate(self._output_tokens, window_s)},
            "dispatch_lag_ms": {**{k: v for k, v in lag_stats.items() if k.startswith("p")},
                                "max": lag_stats["max"], "mean": lag_stats["mean"],
                                "overflow": lag_stats["overflow"]},
            "latency_ms": latency_ms,
            "slo": {"attainment": total["slo_met"] / n if n else None,
                    "goodput_rps": _per_rate(total["slo_met"], window_s)},
            "by_class": by_class,
            "by_kind": by_kind,
            "timeslices": self._timeslice_series(),
            "histograms": {name: base64.b64encode(h.encode()).decode("ascii")
                           for name, h in encoded.items()},
        }


def summarize(results: pa.Table, *, itl_hist: Histogram | None = None, run: dict,
              slice_s: float = 1.0,
              percentiles: Sequence[float] = PERCENTILES) -> dict[str, Any]:
    """Summarize a results table into the summary.json shape (without ``"monitor"``): its
    record batches folded one by one through :class:`RunningSummary` (``slice_s``,
    ``percentiles``), then :meth:`RunningSummary.finish` (``run``, ``itl_hist``).

    Raises
    ------
    ConfigError
        A setting is out of range, a required column is missing, or the times are
        inconsistent (negative latency).
    """
    running = RunningSummary(slice_s=slice_s, percentiles=percentiles)
    check_columns(results.column_names)
    for batch in results.to_batches():
        running.add(batch)
    return running.finish(run=run, itl_hist=itl_hist)


def add_monitor(summary: dict[str, Any], monitor: pa.Table, status: dict[str, Any]) -> None:
    """Add what the run's monitors saw: ``"monitor"`` (their status); where the targets
    expose vLLM's prefix-cache counters, ``prefix_hit_ratio`` and ``prefix_cache``
    (:func:`cpbench.monitor.prefix.prefix_cache_summary`); where they expose vLLM's request
    and token counters per engine, ``engines`` (:func:`cpbench.monitor.engines.balance_from_monitor`:
    requests, tokens and prefix hits per engine and how evenly they were spread)."""
    from cpbench.monitor.engines import balance_from_monitor
    from cpbench.monitor.prefix import prefix_cache_summary
    summary["monitor"] = status
    summary.update(prefix_cache_summary(monitor))
    if (engines := balance_from_monitor(monitor)) is not None:
        summary["engines"] = engines


def decode_histogram(summary: dict[str, Any], name: str) -> Histogram:
    """The histogram ``name`` of a summary (e.g. ``"e2e_from_intended"``), decoded."""
    return Histogram.decode(base64.b64decode(summary["histograms"][name]))


def write_summary(summary: dict[str, Any], path: str | os.PathLike) -> None:
    """Write ``summary`` as JSON atomically (temporary file in the same folder, then rename)."""
    path = os.fspath(path)
    text = json.dumps(summary, indent=2, allow_nan=False) + "\n"
    try:
        atomic_write(path, text)
    except OSError as exc:
        raise OutputError(f"cannot write summary {path}: {exc.strerror or exc}; check that "
                          "the folder exists, is writable and has space") from None


def load_summary(path: str | os.PathLike) -> dict[str, Any]:
    """Read a summary.json written by ``write_summary``; ConfigError when it is not one."""
    path = os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            summary = json.load(f)
    except OSError as exc:
        raise ConfigError(f"cannot read summary {path}: {exc.strerror or exc}") from None
    except ValueError as exc:
        raise ConfigError(f"summary {path} is not valid JSON ({exc}); rewrite it with "
                          "cpbench report or replay") from None
    if not isinstance(summary, dict) or "cpbench_version" not in summary:
        raise ConfigError(f"{path} is not a cpbench summary: no 'cpbench_version' key")
    return summary


__all__ = ["LATENCIES", "PERCENTILES", "REQUIRED_COLUMNS", "RunningSummary", "add_monitor",
           "check_columns", "decode_histogram", "histogram_stats_ms", "load_summary",
           "percent_key", "request_latencies_ns", "summarize", "write_summary"]

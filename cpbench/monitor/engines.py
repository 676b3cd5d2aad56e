"""What each engine behind a router served over a run, from the engines' own counters.

A router's balance and a fleet's prefix-cache benefit are facts the engines count: vLLM (and
``cpbench sim``, under vLLM's names) exposes per engine ``vllm:request_success_total``,
``vllm:prompt_tokens_total``, ``vllm:generation_tokens_total`` and the prefix-cache counters
``vllm:prefix_cache_queries_total`` / ``vllm:prefix_cache_hits_total`` (tokens). The change of
each counter between the first and the last scrape of a run, per scraped ``/metrics`` (one
engine server each), is what that engine did during the run. This module turns a run's
monitor table (or two direct scrapes) into those per-engine figures and the fleet totals; it
hands ``summary.json`` its ``"engines"`` entry and the report its balance chart.
"""
from __future__ import annotations

import urllib.parse
import urllib.request
from collections.abc import Iterable, Mapping

import numpy as np
import pyarrow as pa

from cpbench.monitor.prefix import _increase as counter_increase  # resets as Prometheus does
from cpbench.monitor.prometheus import SeriesSelector, metrics_url, parse_selected

# Figure name -> counter (summed over its label sets: model, engine index, finish reason).
ENGINE_COUNTERS: dict[str, str] = {
    "requests": "vllm:request_success_total",
    "prompt_tokens": "vllm:prompt_tokens_total",
    "generation_tokens": "vllm:generation_tokens_total",
    "prefix_queried_tokens": "vllm:prefix_cache_queries_total",
    "prefix_hit_tokens": "vllm:prefix_cache_hits_total",
}
_BY_COUNTER = {v: k for k, v in ENGINE_COUNTERS.items()}


def _base(metric: str) -> str:
    return metric.partition("{")[0]


def engine_label(source: str) -> str:
    """``host:port`` of a scraped ``/metrics`` URL: short enough for a table or a legend."""
    parts = urllib.parse.urlsplit(source)
    return parts.netloc or source


def totals(samples: Iterable[tuple[str, float]]) -> dict[str, float]:
    """{figure: value} of one scrape, each counter summed over its label sets."""
    out: dict[str, float] = {}
    for metric, value in samples:
        name = _BY_COUNTER.get(_base(metric))
        if name is not None and np.isfinite(value):
            out[name] = out.get(name, 0.0) + float(value)
    return out


def delta(before: Mapping[str, float], after: Mapping[str, float]) -> dict[str, float]:
    """Counter change between two scrapes (a counter that went down restarted: its value)."""
    return {name: counter_increase(np.array([before.get(name, 0.0), end]))
            for name, end in after.items()}


def balance(per_engine: Mapping[str, Mapping[str, float]]) -> dict | None:
    """The ``summary.json`` ``"engines"`` entry from each engine's counter changes.

    Returns None when no source carried an engine counter (no fleet was scraped).
    """
    rows = []
    # An engine that served nothing has no labelled counter yet: it served 0, not unknown.
    seen = {name for figures in per_engine.values() for name in figures}
    for source, figures in sorted(per_engine.items()):
        if not figures and not seen:
            continue
        row = {"engine": engine_label(source),
               **{k: int(round(figures.get(k, 0.0))) for k in ENGINE_COUNTERS if k in seen}}
        queried = row.get("prefix_queried_tokens")
        row["prefix_hit_ratio"] = row.get("prefix_hit_tokens", 0) / queried if queried else None
        rows.append(row)
    if not rows:
        return None
    requests = [r["requests"] for r in rows if "requests" in r]
    queried = sum(r.get("prefix_queried_tokens", 0) for r in rows)
    hits = sum(r.get("prefix_hit_tokens", 0) for r in rows)
    return {
        "per_engine": rows,
        "requests_max": max(requests) if requests else None,
        "requests_min": min(requests) if requests else None,
        # Δhits / Δqueries summed over engines: the share of prompt tokens the fleet had cached.
        "fleet_prefix_hit_ratio": hits / queried if queried else None,
    }


def balance_from_monitor(table: pa.Table) -> dict | None:
    """:func:`balance` of a run's monitor table (first and last scrape of each source)."""
    if table.num_rows == 0:
        return None
    metric = table.column("metric").to_pylist()
    keep = [i for i, m in enumerate(metric) if _base(m) in _BY_COUNTER]
    if not keep:
        return None
    # A labelled counter appears with its first increment (prometheus_client, vLLM's
    # finish reasons): one missing from its source's first scrape started the run at 0.
    first_scrape: dict[str, int] = {}
    for t, src in zip(table.column("t_ns").to_numpy(), table.column("source").to_pylist()):
        if t < first_scrape.get(src, t + 1):
            first_scrape[src] = t
    sub = table.take(pa.array(keep, pa.int64()))
    t_ns = sub.column("t_ns").to_numpy()
    sources = sub.column("source").to_pylist()
    names = sub.column("metric").to_pylist()
    values = sub.column("value").to_numpy(zero_copy_only=False)
    series: dict[tuple[str, str], list[tuple[int, float]]] = {}
    for t, src, name, value in zip(t_ns, sources, names, values):
        series.setdefault((src, name), []).append((int(t), float(value)))
    per_engine: dict[str, dict[str, float]] = {}
    for (src, name), points in series.items():
        points.sort()
        v = np.array([p[1] for p in points])
        if points[0][0] > first_scrape[src]:
            v = np.concatenate(([0.0], v))
        figure = _BY_COUNTER[_base(name)]
        figures = per_engine.setdefault(src, {})
        figures[figure] = figures.get(figure, 0.0) + counter_increase(v)
    return balance(per_engine)


def scrape_totals(url: str, timeout_s: float = 5.0) -> dict[str, float]:
    """One direct scrape of ``url`` (``/metrics`` appended to a bare host) as figures.

    For tools and tests that bracket a run with two scrapes; raises ``OSError`` when the
    page cannot be read.
    """
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with opener.open(metrics_url(url), timeout=timeout_s) as resp:
        text = resp.read().decode("utf-8", errors="replace")
    return totals(parse_selected(text, SeriesSelector(tuple(ENGINE_COUNTERS.values()))))

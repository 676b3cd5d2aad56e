"""The engines behind a router, in the report: balance, prefix hits over time.

Reads what a run already holds: ``summary.json``'s ``"engines"`` entry (requests, tokens and
prefix hits per engine, from the engines' own counters: ``cpbench.monitor.engines``) and the
scraped series in ``monitor.arrow``. Hands ``html.py`` sections for a run (``fleet_sections``),
a balance chart across runs (``fleet_comparison_section``) and the per-engine table
(``engine_table``). Charts of the raw scraped series (running and waiting
per engine, the router's own counters) stay with the generic server-metrics section.
"""
from __future__ import annotations

import math

import numpy as np
from bokeh.models import ColumnDataSource, FactorRange, HoverTool
from bokeh.palettes import Category10_10

from cpbench.reporting.charts import Section, finish_legend, new_figure, time_figure
from cpbench.reporting.load import RunData
from cpbench.reporting.tables import Table

_HITS = "vllm:prefix_cache_hits_total"
_QUERIES = "vllm:prefix_cache_queries_total"
BALANCE_FIGURES = (("requests", "requests"), ("prompt_tokens", "prompt tokens"),
                   ("generation_tokens", "output tokens"))


def _engines(run: RunData) -> list[dict]:
    return list((run.summary.get("engines") or {}).get("per_engine") or [])


def _counter_sum(run: RunData, source: str, name: str) -> tuple[np.ndarray, np.ndarray] | None:
    """One source's counter summed over its label sets, on the union of its scrape times."""
    parts = [(ts, vs) for (src, metric), (ts, vs) in run.monitor.items()
             if src == source and metric.partition("{")[0] == name]
    if not parts:
        return None
    t = np.unique(np.concatenate([ts for ts, _ in parts]))
    total = np.zeros(t.size)
    for ts, vs in parts:  # a series missing at a time holds its last value (0 before it)
        idx = np.searchsorted(ts, t, side="right") - 1
        total += np.where(idx >= 0, vs[np.clip(idx, 0, None)], 0.0)
    return t, total


def hit_ratio_figure(run: RunData, x_range):
    """Prefix hit ratio (Δhits / Δqueries between scrapes) per engine over time."""
    sources = sorted({src for src, metric in run.monitor if metric.partition("{")[0] == _HITS})
    fig = time_figure("Prefix-cache hit ratio per engine (between scrapes)", "hit ratio",
                      x_range)
    renderers = []
    for i, source in enumerate(sources):
        hits, queries = _counter_sum(run, source, _HITS), _counter_sum(run, source, _QUERIES)
        if hits is None or queries is None or hits[0].size < 2:
            continue
        t = np.union1d(hits[0], queries[0])
        h = np.interp(t, *hits)
        q = np.interp(t, *queries)
        dq = np.diff(q)
        ratio = np.where(dq > 0, np.diff(h) / np.where(dq > 0, dq, 1.0), np.nan)
        label = source.split("//")[-1].removesuffix("/metrics")
        src = ColumnDataSource({"x": t[1:], "y": ratio})
        renderers.append(fig.line("x", "y", source=src, color=Category10_10[i % 10],
                                  line_width=2, legend_label=label, name=label))
    if not renderers:
        return None
    fig.add_tools(HoverTool(renderers=renderers, mode="vline", tooltips=[
        ("engine", "$name"), ("t", "@x{0,0.0} s"), ("hit ratio", "@y{0.000}")]))
    return finish_legend(fig)


def balance_figure(rows: list[dict], labels: list[str] | None = None,
                   colors: list[str] | None = None):
    """Bars of requests per engine (``rows``: one list per run when ``labels`` are given)."""
    runs = [rows] if labels is None else rows
    labels = labels or [""]
    factors, values, fill = [], [], []
    for run_rows, label, color in zip(runs, labels, colors or [Category10_10[0]] * len(runs)):
        for row in run_rows:
            factors.append((label, row["engine"]) if label else row["engine"])
            values.append(float(row.get("requests", 0)))
            fill.append(color)
    if not factors:
        return None
    x_range = FactorRange(*factors)
    fig = new_figure("Requests per engine (from the engines' counters)", y_label="requests",
                     x_range=x_range)
    src = ColumnDataSource({"x": factors, "y": values, "color": fill})
    bars = fig.vbar(x="x", top="y", width=0.8, source=src, fill_color="color",
                    line_color="color")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[("engine", "@x"),
                                                        ("requests", "@y{0,0}")]))
    fig.xaxis.major_label_orientation = 0.8
    fig.xgrid.grid_line_color = None
    return fig


def fleet_sections(run: RunData, x_range) -> list[Section]:
    """The one-run section on the engines behind the target, when it scraped any."""
    rows = _engines(run)
    if not rows and not any(m.partition("{")[0] == _HITS for _, m in run.monitor):
        return []
    sec = Section("Engines behind the target")
    ratio = (run.summary.get("engines") or {}).get("fleet_prefix_hit_ratio")
    if ratio is not None:
        sec.notes.append(f"Fleet prefix hit ratio over the run: {ratio:.3f} (Δhits / Δqueries "
                         f"summed over engines).")
    if (fig := balance_figure(rows)) is not None:
        sec.figures.append(fig)
    if (fig := hit_ratio_figure(run, x_range)) is not None:
        sec.figures.append(fig)
    return [sec]


def fleet_comparison_section(runs: list[RunData], labels: list[str],
                             colors: list[str]) -> Section | None:
    """Requests per engine side by side, one colour per run (a router's balance)."""
    per_run = [_engines(r) for r in runs]
    if not any(per_run):
        return None
    sec = Section("Balance across engines")
    ratios = [(lab, (r.summary.get("engines") or {}).get("fleet_prefix_hit_ratio"))
              for r, lab in zip(runs, labels)]
    known = [f"{lab}: {v:.3f}" for lab, v in ratios if v is not None]
    if known:
        sec.notes.append("Fleet prefix hit ratio: " + "; ".join(known) + ".")
    if (fig := balance_figure(per_run, labels, colors)) is not None:
        sec.figures.append(fig)
    return sec


def _fmt(value: float | None, digits: int = 1) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:,.{digits}f}"


def engine_table(runs: list[RunData], labels: list[str]) -> Table | None:
    """Requests and tokens per engine per run, with the run's fleet prefix hit ratio."""
    rows = []
    for run, label in zip(runs, labels):
        for row in _engines(run):
            rows.append([label, row["engine"],
                         *(_fmt(row.get(key), 0) for key, _ in BALANCE_FIGURES),
                         _fmt(row.get("prefix_hit_ratio"), 3)])
    if not rows:
        return None
    return Table("Requests and tokens per engine", ["run", "engine",
                 *(title for _, title in BALANCE_FIGURES), "prefix hit ratio"], rows,
                 note="changes of each engine's own counters (vLLM names) over the run.")

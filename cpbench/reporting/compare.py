"""Bokeh figures comparing several runs (policies, rates, LLM shares), one colour per run.

Takes the runs and their labels, hands ``html.py`` the same ``Section`` list as a single-run
report. A run keeps its colour in every figure, so a reader can follow one policy across the
page; facts a run lacks (no rate, no LLM share) leave out only the figure that needs them.
"""
from __future__ import annotations

import numpy as np
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool
from bokeh.palettes import Category10_10, Category20_20, Turbo256

from cpbench.reporting.charts import (Section, attainment_figure, finish_legend,
                                   new_figure, time_figure)
from cpbench.reporting.fleet import fleet_comparison_section
from cpbench.vocab import PRIORITIES
from cpbench.reporting.load import LADDER_PERCENTS, RunData, attainment_pct, llm_share



def run_colors(n: int) -> list[str]:
    """Distinct colours for ``n`` runs (a sweep can have more runs than Category10 has)."""
    if n <= 10:
        return list(Category10_10[:n])
    if n <= 20:
        return list(Category20_20[:n])
    return [Turbo256[int(i * 255 / (n - 1))] for i in range(n)]


def _option(run: RunData, *names: str):
    opts = run.run.get("options") or {}
    for name in names:
        if isinstance(opts.get(name), (int, float)) and not isinstance(opts.get(name), bool):
            return float(opts[name])
    return None


def throughput_section(runs: list[RunData], labels: list[str], colors: list[str]) -> Section:
    sec = Section("Throughput per run")
    factors = [(lab, m) for lab in labels for m in ("scheduled", "achieved", "completed")]
    values = [float((r.summary.get("rates") or {}).get(f"{m}_rps") or 0.0)
              for r in runs for m in ("scheduled", "achieved", "completed")]
    fig = new_figure("Requests per second per run", y_label="requests/s",
                     x_range=FactorRange(*factors))
    src = ColumnDataSource({"x": factors, "rps": values,
                            "color": [c for c in colors for _ in range(3)],
                            "alpha": [0.35, 1.0, 0.7] * len(runs)})
    bars = fig.vbar(x="x", top="rps", width=0.8, source=src, fill_color="color",
                    line_color="color", fill_alpha="alpha")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[("run, rate", "@x"),
                                                        ("req/s", "@rps{0,0.0}")]))
    fig.xaxis.major_label_orientation = 0.8
    fig.xgrid.grid_line_color = None
    sec.figures.append(fig)
    x_range = DataRange1d()
    over = time_figure("Completed requests per second over time", "requests/s", x_range)
    slice_of = [float((r.summary.get("timeslices") or {}).get("slice_s") or 1.0) for r in runs]
    renderers = []
    for run, label, color, slice_s in zip(runs, labels, colors, slice_of):
        if "t_s" in run.series and "completed" in run.series:
            src = ColumnDataSource({"x": run.series["t_s"], "y": run.series["completed"] / slice_s})
            renderers.append(over.line("x", "y", source=src, color=color, line_width=2,
                                       legend_label=label, name=label))
    if renderers:
        over.add_tools(HoverTool(renderers=renderers, mode="vline", tooltips=[
            ("run", "$name"), ("t", "@x{0,0.0} s"), ("req/s", "@y{0,0.0}")]))
        sec.figures.append(finish_legend(over))
    sec.figures += _rate_figures(runs, labels, colors)
    return sec


# Runs of one trace at one rate differ in their measured scheduled rate by timer noise
# (16.40675 vs 16.40705 req/s); rates this close are one offered rate.
SAME_RATE_REL = 0.01


def offered_rates_differ(offered: list[float | None]) -> bool:
    """True when the runs were offered different rates (a sweep, an experiment's probes)."""
    rates = sorted(o for o in offered if o is not None and o > 0)
    return len(rates) >= 2 and rates[-1] > rates[0] * (1.0 + SAME_RATE_REL)


def _rate_figures(runs: list[RunData], labels: list[str], colors: list[str]) -> list:
    """Achieved and goodput vs offered rate, one line per policy, when rates differ."""
    offered = [_option(r, "rate", "rate_rps") for r in runs]
    offered = [o if o is not None else (r.summary.get("rates") or {}).get("scheduled_rps")
               for o, r in zip(offered, runs)]
    if not offered_rates_differ(offered):
        return []
    # From zero on both axes: a trend drawn on a 0.0003 req/s wide axis is noise.
    fig = new_figure("Throughput vs offered rate", x_label="offered rate (req/s)",
                     y_label="requests/s", x_range=DataRange1d(start=0),
                     y_range=DataRange1d(start=0))
    by_policy: dict[str, list[int]] = {}
    for i, run in enumerate(runs):
        if offered[i] is not None:
            by_policy.setdefault(str(run.run.get("policy") or "run"), []).append(i)
    points = []
    for j, (policy, idx) in enumerate(sorted(by_policy.items())):
        idx.sort(key=lambda i: offered[i])
        for key, dash in (("achieved_rps", "solid"), ("goodput_rps", "dashed")):
            section = "slo" if key == "goodput_rps" else "rates"
            ys = [float((runs[i].summary.get(section) or {}).get(key) or 0.0) for i in idx]
            xs = [offered[i] for i in idx]
            # One legend entry per line style; the hover names each run's point.
            fig.line(xs, ys, color="#888", line_dash=dash, line_width=1.5,
                     legend_label=key.split("_")[0])
            points.append(fig.scatter(x="x", y="y", size=9, color="color", source=ColumnDataSource(
                {"x": xs, "y": ys, "color": [colors[i] for i in idx],
                 "run": [labels[i] for i in idx]}), marker="circle" if j % 2 == 0 else "square"))
    fig.add_tools(HoverTool(renderers=points, tooltips=[("run", "@run"), ("offered", "@x{0,0.0}"),
                                                        ("req/s", "@y{0,0.0}")]))
    return [finish_legend(fig)]


def latency_section(runs: list[RunData], labels: list[str], colors: list[str]) -> Section:
    sec = Section("Latency percentiles side by side",
                  notes=["Solid: from intended (what users waited); dashed: from sent."])
    ladder = [f"p{p:g}" for p in LADDER_PERCENTS]
    for metric, title in (("ttft", "Time to first token"), ("e2e", "End-to-end latency")):
        fig = new_figure(f"{title} percentiles", x_label="percentile",
                         y_label="latency (ms, log)", x_range=ladder, y_axis_type="log")
        renderers = []
        for run, label, color in zip(runs, labels, colors):
            for side, dash in (("intended", "solid"), ("sent", "dashed")):
                dist = run.distributions.get(f"{metric}_from_{side}")
                if dist is None:
                    continue
                src = ColumnDataSource({"p": ladder, "ms": [dist.at(p) for p in LADDER_PERCENTS],
                                        "side": [side] * len(ladder)})
                renderers.append(fig.line("p", "ms", source=src, color=color, line_dash=dash,
                                          line_width=2, legend_label=label, name=label))
        if renderers:
            fig.add_tools(HoverTool(renderers=renderers, tooltips=[
                ("run", "$name"), ("from", "@side"), ("percentile", "@p"),
                ("latency", "@ms{0,0.000} ms")]))
            sec.figures.append(finish_legend(fig))
    cdf = new_figure("TTFT CDF (from intended)", x_label="latency (ms, log scale)",
                     y_label="requests at or below (%)", x_axis_type="log")
    lines = []
    for run, label, color in zip(runs, labels, colors):
        if (dist := run.distributions.get("ttft_from_intended")) is not None:
            lines.append(cdf.line(dist.values_ms, dist.percents, color=color, line_width=2,
                                  legend_label=label, name=label))
    if lines:
        cdf.add_tools(HoverTool(renderers=lines, tooltips=[("run", "$name"), ("ms", "@x{0,0.000}"),
                                                           ("percentile", "@y{0.000}")]))
        sec.figures.append(finish_legend(cdf))
    return sec


def _priority_attainment(run: RunData) -> dict[str, tuple[float, int, int]]:
    """Attainment per priority over all kinds, from the per-class counts."""
    sums: dict[str, list[int]] = {}
    for c in run.summary.get("by_class") or []:
        met, req = sums.setdefault(str(c.get("priority", "?")), [0, 0]), int(c.get("requests", 0))
        met[0] += int(c.get("slo_met", 0))
        met[1] += req
    return {p: (100.0 * m / r if r else 0.0, m, r) for p, (m, r) in sums.items()}


def slo_section(runs: list[RunData], labels: list[str], colors: list[str]) -> Section:
    sec = Section("SLO attainment by policy and priority")
    overall = [((lab, "all"), attainment_pct(r.summary.get("slo")) or 0.0,
                0, 0) for r, lab in zip(runs, labels)]
    rows, row_colors = [], []
    for (factor, pct, _, _), run, color in zip(overall, runs, colors):
        per = _priority_attainment(run)
        total = sum(v[2] for v in per.values())
        rows.append((factor, pct, sum(v[1] for v in per.values()), total))
        row_colors.append(color)
        for prio in [p for p in PRIORITIES if p in per] + sorted(set(per) - set(PRIORITIES)):
            rows.append(((factor[0], prio), *per[prio]))
            row_colors.append(color)
    sec.figures.append(attainment_figure("SLO attainment per run and priority", rows, row_colors))
    kind_rows, kind_colors = [], []
    for run, label, color in zip(runs, labels, colors):
        for k in run.summary.get("by_kind") or []:
            kind_rows.append(((label, str(k.get("kind", "?"))), attainment_pct(k) or 0.0,
                              int(k.get("slo_met", 0)), int(k.get("requests", 0))))
            kind_colors.append(color)
    if kind_rows:
        sec.figures.append(attainment_figure("SLO attainment per run and kind", kind_rows,
                                             kind_colors))
    return sec


def ratio_section(runs: list[RunData], labels: list[str], colors: list[str]) -> Section | None:
    """How the LLM share of the traffic moves attainment and tail latency, per kind."""
    ratios = [llm_share(r) for r in runs]
    # Shares measured from counts wobble with the seed; only tenths apart is a ratio sweep.
    if len({round(x, 1) for x in ratios if x is not None}) < 2:
        return None
    sec = Section("LLM-ratio impact")
    att = new_figure("SLO attainment vs LLM share", x_label="LLM share of requests",
                     y_label="SLO attainment (%)", y_range=(0, 105))
    tail = new_figure("TTFT p99 vs LLM share (from intended)", x_label="LLM share of requests",
                      y_label="ms")
    idx = sorted((i for i, x in enumerate(ratios) if x is not None), key=lambda i: ratios[i])
    kinds = sorted({k.get("kind") for r in runs for k in r.summary.get("by_kind") or []} - {None})
    for j, kind in enumerate(kinds):
        pts = [(ratios[i], k) for i in idx for k in runs[i].summary.get("by_kind") or []
               if k.get("kind") == kind]
        xs = [x for x, _ in pts]
        dash = "solid" if j == 0 else "dashed"
        att.line(xs, [attainment_pct(k) or np.nan for _, k in pts], color="#666",
                 line_dash=dash, legend_label=str(kind))
        tail.line(xs, [float(((k.get("latency_ms") or {}).get("ttft_from_intended") or {})
                             .get("p99") or np.nan) for _, k in pts], color="#666",
                  line_dash=dash, legend_label=str(kind))
    src = ColumnDataSource({"x": [ratios[i] for i in idx], "run": [labels[i] for i in idx],
                            "color": [colors[i] for i in idx],
                            "att": [attainment_pct(runs[i].summary.get("slo")) or np.nan
                                    for i in idx]})
    dots = att.scatter("x", "att", source=src, color="color", size=10, legend_label="all kinds")
    att.add_tools(HoverTool(renderers=[dots], tooltips=[("run", "@run"), ("LLM share", "@x"),
                                                        ("attainment", "@att{0.00} %")]))
    tail.add_tools(HoverTool(tooltips=[("LLM share", "@x"), ("TTFT p99", "@y{0,0.0} ms")]))
    sec.figures += [finish_legend(att), finish_legend(tail)]
    return sec


def comparison_sections(runs: list[RunData], labels: list[str]) -> list[Section]:
    """Every chart section of a several-run report."""
    colors = run_colors(len(runs))
    sections = [throughput_section(runs, labels, colors), latency_section(runs, labels, colors),
                slo_section(runs, labels, colors)]
    if (ratio := ratio_section(runs, labels, colors)) is not None:
        sections.append(ratio)
    if (fleet := fleet_comparison_section(runs, labels, colors)) is not None:
        sections.append(fleet)
    return [s for s in sections if s.figures or s.notes]

"""Bokeh figures of one run, grouped into report sections.

Takes a ``RunData`` (aggregates only: timeslice series, quantile functions, small tables) and
hands ``html.py`` a list of ``Section``s, each a title, its figures and plain notes. Time plots
share one x range so zooming one zooms all; every figure has a hover tool and legends that hide
a series on click. Strings from traces or servers only reach Bokeh as data, which Bokeh
serialises as escaped JSON and draws on a canvas, never as HTML.
"""
from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from bokeh.models import ColumnDataSource, DataRange1d, FactorRange, HoverTool, Model
from bokeh.palettes import Category10_10
from bokeh.plotting import figure

from cpbench.reporting.load import LADDER_PERCENTS, Distribution, RunData, attainment_pct

PLOT_HEIGHT = 330
LEGEND_ROW_CHARS = 95  # about what one legend row holds at half the page width
LEGEND_LINE_PX = 20
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
SENT_COLOR, INTENDED_COLOR = Category10_10[0], Category10_10[1]
LATENCY_TITLES = {"ttft": "Time to first token", "e2e": "End-to-end latency",
                  "itl": "Inter-token latency", "dispatch_lag": "Dispatch lag"}


@dataclass
class Section:
    """One block of the report: a heading, its figures in order, and plain-text notes."""

    title: str
    figures: list[Model] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


def new_figure(title: str, *, x_label: str = "", y_label: str = "", x_range=None,
               x_axis_type: str = "auto", y_axis_type: str = "auto", **kwargs) -> figure:
    """A figure in the report's style (stretches to the page width)."""
    opts = {"x_range": x_range} if x_range is not None else {}
    fig = figure(title=title, height=PLOT_HEIGHT, sizing_mode="stretch_width", tools=TOOLS,
                 x_axis_type=x_axis_type, y_axis_type=y_axis_type, **opts, **kwargs)
    fig.xaxis.axis_label, fig.yaxis.axis_label = x_label, y_label
    fig.toolbar.logo = None
    return fig


def finish_legend(fig: figure) -> figure:
    """Click a legend entry to hide its series; the legend sits below the plot area."""
    if fig.legend:
        legend = fig.legend[0]
        legend.click_policy = "hide"
        # Below the plot: never hides data. One row while it fits the plot's width, else one
        # entry per line (long Prometheus label sets would run off the page).
        width_chars = sum(len(str(getattr(item.label, "value", "") or "")) + 6
                          for item in legend.items)
        legend.orientation = "horizontal" if width_chars <= LEGEND_ROW_CHARS else "vertical"
        if legend.orientation == "vertical":  # the legend's lines come on top of the plot area
            fig.height = PLOT_HEIGHT + LEGEND_LINE_PX * (len(legend.items) - 1)
        legend.location = "center"
        legend.label_text_font_size = "11px"
        legend.spacing = 12
        fig.add_layout(legend, "below")
    return fig


def lone_points(y: np.ndarray) -> np.ndarray:
    """Mask of the finite values whose neighbours on both sides are missing (NaN or none)."""
    finite = np.isfinite(y)
    before = np.concatenate(([False], finite[:-1]))
    after = np.concatenate((finite[1:], [False]))
    return finite & ~before & ~after


def add_lines(fig: figure, x: np.ndarray, series: list[tuple[str, np.ndarray, str]],
              value_format: str = "{0,0.00}", unit: str = "") -> figure:
    """Lines of ``(label, y, colour)`` over a shared ``x`` with a vertical-line hover."""
    renderers = []
    x = np.asarray(x, float)
    for label, y, color in series:
        y = np.asarray(y, float)
        src = ColumnDataSource({"x": x, "y": y})
        renderers.append(fig.line("x", "y", source=src, legend_label=label, color=color,
                                  line_width=2, name=label))
        # A line needs two neighbours: a slice with data between empty ones (a burst every
        # 20 s) would draw nothing. Those values get a marker of their own.
        lone = lone_points(y)
        if lone.any():
            renderers.append(fig.scatter(x[lone], y[lone], legend_label=label, color=color,
                                         size=6, name=label))
    fig.add_tools(HoverTool(renderers=renderers, mode="vline", tooltips=[
        ("series", "$name"), ("x", "@x{0,0.0}"), ("value", f"@y{value_format} {unit}".strip())]))
    return finish_legend(fig)


def time_figure(title: str, y_label: str, x_range) -> figure:
    return new_figure(title, x_label="time since run start (s)", y_label=y_label,
                      x_range=x_range)


def histogram_edges(dists: list[Distribution], n_bins: int = 60) -> np.ndarray:
    """Log-spaced bin edges (ms) covering every distribution's p0.1..max."""
    lo = min(max(d.at(0.1), 1e-3) for d in dists)
    hi = max(d.values_ms[-1] for d in dists)
    hi = max(hi, lo * 1.01)
    return np.logspace(np.log10(lo), np.log10(hi), n_bins + 1)


def bin_counts(dist: Distribution, edges: np.ndarray) -> np.ndarray:
    """Requests per bin, read off the quantile function (inverse by interpolation)."""
    cdf_pct = np.interp(edges, dist.values_ms, dist.percents, left=0.0, right=100.0)
    return np.diff(cdf_pct) / 100.0 * dist.count


def distribution_figures(run: RunData, metric: str) -> list[figure]:
    """Histogram and CDF of one latency, from-sent beside from-intended where both exist."""
    pairs = [(f"{metric}_from_sent", "from sent", SENT_COLOR),
             (f"{metric}_from_intended", "from intended (scheduled)", INTENDED_COLOR)]
    if metric in run.distributions:
        if metric == "itl":
            label = ("per-request mean gap" if run.distributions[metric].source == "results"
                     else "every gap")
        else:
            label = "every request"
        pairs = [(metric, label, SENT_COLOR)]
    present = [(run.distributions[k], label, color) for k, label, color in pairs
               if k in run.distributions]
    if not present:
        return []
    name = LATENCY_TITLES[metric]
    edges = histogram_edges([d for d, _, _ in present])
    hist = new_figure(f"{name}: distribution", x_label="latency (ms, log scale)",
                      y_label="requests per bin", x_axis_type="log")
    cdf = new_figure(f"{name}: CDF", x_label="latency (ms, log scale)",
                     y_label="requests at or below (%)", x_axis_type="log")
    quads, lines = [], []
    for dist, label, color in present:
        src = ColumnDataSource({"left": edges[:-1], "right": edges[1:],
                                "count": bin_counts(dist, edges)})
        quads.append(hist.quad(left="left", right="right", top="count", bottom=0, source=src,
                               fill_color=color, fill_alpha=0.45, line_color=color,
                               legend_label=label, name=label))
        csrc = ColumnDataSource({"ms": dist.values_ms, "pct": dist.percents})
        lines.append(cdf.line("ms", "pct", source=csrc, color=color, line_width=2,
                              legend_label=label, name=label))
    hist.add_tools(HoverTool(renderers=quads, tooltips=[
        ("series", "$name"), ("bin (ms)", "@left{0,0.000} – @right{0,0.000}"),
        ("requests", "@count{0,0}")]))
    cdf.add_tools(HoverTool(renderers=lines, mode="vline", tooltips=[
        ("series", "$name"), ("latency", "@ms{0,0.000} ms"), ("percentile", "@pct{0.000}")]))
    return [finish_legend(hist), finish_legend(cdf)]


def ladder_figure(run: RunData) -> figure | None:
    """Latency at p50 … p99.99 for every metric, from sent and from intended."""
    labels = [f"p{p:g}" for p in LADDER_PERCENTS]
    fig = new_figure("Percentile ladder", x_label="percentile", y_label="latency (ms, log)",
                     x_range=labels, y_axis_type="log")
    renderers = []
    present = [k for k in LADDER_ORDER if k in run.distributions]
    for i, key in enumerate(present):
        dist = run.distributions[key]
        src = ColumnDataSource({"p": labels, "ms": [dist.at(p) for p in LADDER_PERCENTS]})
        color = Category10_10[i % 10]
        label = key.replace("_", " ")
        renderers.append(fig.line("p", "ms", source=src, color=color, line_width=2,
                                  legend_label=label, name=label))
        fig.scatter("p", "ms", source=src, color=color, size=6, legend_label=label)
    if not renderers:
        return None
    fig.add_tools(HoverTool(renderers=renderers, tooltips=[
        ("series", "$name"), ("percentile", "@p"), ("latency", "@ms{0,0.000} ms")]))
    return finish_legend(fig)


LADDER_ORDER = ("ttft_from_sent", "ttft_from_intended", "e2e_from_sent", "e2e_from_intended",
                "itl", "dispatch_lag")


def attainment_figure(title: str, rows: list[tuple[tuple[str, ...], float, int, int]],
                      colors: list[str]) -> figure:
    """Bars of SLO attainment (%) per (nested) factor: ``(factor, percent, met, requests)``."""
    factors = [r[0] for r in rows]
    fig = new_figure(title, y_label="SLO attainment (%)", x_range=FactorRange(*factors),
                     y_range=(0, 105))
    src = ColumnDataSource({"x": factors, "pct": [r[1] for r in rows],
                            "met": [r[2] for r in rows], "requests": [r[3] for r in rows],
                            "color": colors})
    bars = fig.vbar(x="x", top="pct", width=0.8, source=src, fill_color="color",
                    line_color="color")
    fig.add_tools(HoverTool(renderers=[bars], tooltips=[
        ("class", "@x"), ("attainment", "@pct{0.00} %"), ("met / requests", "@met / @requests")]))
    fig.xaxis.major_label_orientation = 0.6
    fig.xgrid.grid_line_color = None
    return fig


def _rate(run: RunData, key: str) -> np.ndarray:
    slice_s = float((run.summary.get("timeslices") or {}).get("slice_s") or 1.0)
    return run.series.get(key, np.zeros(len(run.series.get("t_s", [])))) / slice_s


def throughput_section(run: RunData, x_range) -> Section:
    sec = Section("Throughput")
    t = run.series.get("t_s")
    if t is None or not len(t):
        sec.notes.append("No timeslices in this run: throughput over time is not available.")
        return sec
    fig = time_figure("Requests per second: achieved vs scheduled", "requests/s", x_range)
    add_lines(fig, t, [("scheduled", _rate(run, "scheduled"), Category10_10[7]),
                       ("sent (achieved)", _rate(run, "sent"), Category10_10[0]),
                       ("completed", _rate(run, "completed"), Category10_10[2]),
                       ("errors", _rate(run, "errors"), Category10_10[3])], unit="req/s")
    tok = time_figure("Output tokens per second", "tokens/s", x_range)
    add_lines(tok, t, [("output tokens/s", _rate(run, "output_tokens"), Category10_10[4])],
              unit="tok/s")
    sec.figures += [fig, tok]
    if "in_flight" in run.series:
        fl = time_figure("Requests in flight", "requests", x_range)
        add_lines(fl, t, [("in flight", run.series["in_flight"], Category10_10[5])])
        sec.figures.append(fl)
    return sec


def latency_sections(run: RunData, x_range) -> list[Section]:
    sec = Section("Latency distributions",
                  notes=["From sent = service time seen after the request left the client; "
                         "from intended = what a user waited since the trace's scheduled time, "
                         "client lag included."])
    for metric in ("ttft", "e2e", "itl"):
        sec.figures += distribution_figures(run, metric)
    if (ladder := ladder_figure(run)) is not None:
        sec.figures.append(ladder)
    sources = {d.source for d in run.distributions.values()}
    if "results" in sources:
        sec.notes.append("Some distributions are computed from results.arrow (exact); the ITL "
                         "one then shows each request's mean gap, not every gap.")
    over = Section("Latency over time")
    t = run.series.get("t_s")
    for metric in ("ttft", "e2e"):
        keys = (f"{metric}_p50_ms", f"{metric}_p99_ms")
        if t is not None and all(k in run.series for k in keys):
            # Both the stats core and load.py put a latency in its request's scheduled slice.
            fig = time_figure(f"{LATENCY_TITLES[metric]} p50 / p99 by scheduled time "
                              "(from intended)", "ms", x_range)
            add_lines(fig, t, [("p50", run.series[keys[0]], Category10_10[0]),
                               ("p99", run.series[keys[1]], Category10_10[3])], unit="ms")
            over.figures.append(fig)
    return [sec, over]


def slo_section(run: RunData, x_range) -> Section:
    sec = Section("SLO attainment")
    by_class = run.summary.get("by_class") or []
    by_kind = run.summary.get("by_kind") or []
    rows = [((str(c.get("kind", "?")), "all"), attainment_pct(c) or 0.0,
             int(c.get("slo_met", 0)), int(c.get("requests", 0))) for c in by_kind]
    rows += [((str(c.get("kind", "?")), str(c.get("priority", "?"))),
              attainment_pct(c) or 0.0, int(c.get("slo_met", 0)),
              int(c.get("requests", 0))) for c in by_class]
    rows.sort(key=lambda r: (r[0][0], r[0][1] != "all"))
    if rows:
        colors = [Category10_10[7] if r[0][1] == "all" else PRIORITY_COLORS.get(r[0][1], "#777")
                  for r in rows]
        sec.figures.append(attainment_figure("SLO attainment per kind and priority", rows,
                                             colors))
    t = run.series.get("t_s")
    if t is not None and "slo_met" in run.series:
        fig = time_figure("Goodput over time (completed within every deadline)", "requests/s",
                          x_range)
        add_lines(fig, t, [("completed", _rate(run, "completed"), Category10_10[2]),
                           ("goodput", _rate(run, "slo_met"), Category10_10[1])], unit="req/s")
        sec.figures.append(fig)
    return sec


PRIORITY_COLORS = {"HIGH": Category10_10[3], "NORMAL": Category10_10[0], "LOW": Category10_10[2]}


def hybrid_section(run: RunData, x_range) -> Section | None:
    if len(run.kind_series) < 2 and not run.batch_table:
        return None
    sec = Section("Hybrid breakdown")
    t = run.series.get("t_s")
    if len(run.kind_series) >= 2 and t is not None:
        fig = time_figure("Completed requests per second, per type", "requests/s", x_range)
        add_lines(fig, t, [(kind, values, Category10_10[i % 10])
                           for i, (kind, values) in enumerate(sorted(run.kind_series.items()))],
                  unit="req/s")
        sec.figures.append(fig)
    if run.batch_table:
        sizes = [str(r["batch_size"]) for r in run.batch_table]
        fig = new_figure("Embedding batch efficiency: latency per input", x_range=sizes,
                         x_label="inputs per request (batch size)",
                         y_label="mean e2e per input (ms)")
        columns = {k: [r[k] for r in run.batch_table] for k in run.batch_table[0]}
        src = ColumnDataSource({"size": sizes, **columns})
        bars = fig.vbar(x="size", top="per_input_ms", width=0.7, source=src,
                        color=Category10_10[9])
        fig.add_tools(HoverTool(renderers=[bars], tooltips=[
            ("batch size", "@size"), ("requests", "@requests"),
            ("mean e2e", "@e2e_mean_ms{0,0.000} ms"), ("per input", "@per_input_ms{0,0.000} ms"),
            ("inputs/s per stream", "@inputs_per_s_per_stream{0,0.0}")]))
        sec.figures.append(fig)
    return sec


def _monitor_plot_key(group: str, source: str, metric: str) -> tuple[str, str, float]:
    """(plot title, line label, scale) of one monitor series.

    Percent series of a GPU or of the client share one plot, bytes one memory plot (in GiB,
    which reads better than 4.5e+10); a Prometheus series with labels joins the plot of its
    metric name, one line per label set.
    """
    base, _, labels = metric.partition("{")
    labels = "{" + labels if labels else ""
    if base.endswith("_bytes"):
        return "memory (GiB)", f"{source} {base}", 2.0 ** 30
    if group in ("gpu", "client") and base.endswith("_pct"):
        title = "utilisation (%)" if group == "gpu" else "CPU (%)"
        return title, (f"{source} {base}" if group == "gpu" else base), 1.0
    label = " ".join(x for x in (source if group != "client" else "", labels) if x)
    return base, label or source or base, 1.0


def monitor_sections(run: RunData, x_range) -> list[Section]:
    gpu = Section("GPU")
    server = Section("Server metrics")
    client = Section("Client host")
    monitor = run.summary.get("monitor") or {}
    gpu_info = monitor.get("gpu") or {}
    # An unavailable GPU monitor (every CPU-only host) is said once, in the run facts.
    for scrape in monitor.get("prometheus") or []:
        if isinstance(scrape, dict) and scrape.get("failures"):
            server.notes.append(f"{scrape.get('url', '?')}: {scrape['failures']} of "
                                f"{scrape.get('scrapes', '?')} scrapes failed; last error: "
                                f"{scrape.get('last_error') or 'not recorded'}.")
    plots: dict[tuple[str, str], list[tuple[str, float, np.ndarray, np.ndarray]]] = {}
    servers = sorted({src for src, _ in run.monitor
                      if src != "client" and not src.startswith("gpu")})
    if len(servers) == 1:  # one scrape target: name it once, not in every legend entry
        server.notes.append(f"Scraped from {servers[0]}.")
    for (source, metric), (ts, vs) in sorted(run.monitor.items()):
        group = "gpu" if source.startswith("gpu") else "client" if source == "client" else "server"
        title, label, scale = _monitor_plot_key(group, "" if servers == [source] else source,
                                                metric)
        plots.setdefault((group, title), []).append((label, scale, ts, vs))
    target = {"gpu": gpu, "server": server, "client": client}
    for (group, title), lines in plots.items():
        fig = time_figure(title, title, x_range)
        renderers = []
        for i, (label, scale, ts, vs) in enumerate(lines):
            src = ColumnDataSource({"x": ts, "y": vs / scale})
            renderers.append(fig.line("x", "y", source=src, color=Category10_10[i % 10],
                                      line_width=2, legend_label=label, name=label))
        fig.add_tools(HoverTool(renderers=renderers, mode="vline", tooltips=[
            ("series", "$name"), ("t", "@x{0,0.0} s"), ("value", "@y{0,0.00}")]))
        target[group].figures.append(finish_legend(fig))
    if not run.monitor and gpu_info.get("available") is not False:
        server.notes.append("This run recorded no monitor.arrow (no GPU or server metrics).")
    return [s for s in (gpu, server, client) if s.figures or s.notes]


def lag_section(run: RunData, x_range) -> Section:
    sec = Section("Dispatch lag (client)")
    sec.notes.append("Dispatch lag = sent − intended: how late the client itself sent requests. "
                     "It is the gap between latency from intended and from sent.")
    t = run.series.get("t_s")
    lines = [(label, run.series[key], color) for key, label, color in
             (("lag_p50_ms", "p50", Category10_10[0]), ("lag_p99_ms", "p99", Category10_10[3]))
             if key in run.series]
    if t is not None and lines:
        fig = time_figure("Dispatch lag per timeslice", "ms", x_range)
        sec.figures.append(add_lines(fig, t, lines, value_format="{0,0.000}", unit="ms"))
    sec.figures += distribution_figures(run, "dispatch_lag")
    return sec


def single_run_sections(run: RunData, more=None) -> list[Section]:
    """Every chart section of a one-run report, time plots sharing one x range; ``more(run,
    x_range)`` adds sections of its own before the dispatch lag (``html`` passes the engines
    behind the target, ``fleet.fleet_sections``, which builds on this module)."""
    if not run.series and not run.distributions:
        return [Section("Charts", notes=["No timeslices, histograms or requests in this run: "
                                         "there is nothing to chart."])]
    x_range = DataRange1d()
    sections = [throughput_section(run, x_range), *latency_sections(run, x_range),
                slo_section(run, x_range)]
    if (hybrid := hybrid_section(run, x_range)) is not None:
        sections.append(hybrid)
    sections += monitor_sections(run, x_range)
    if more is not None:
        sections += more(run, x_range)
    sections.append(lag_section(run, x_range))
    return [s for s in sections if s.figures or s.notes]

"""Tests of cpbench.reporting: loading result dirs, the HTML and Markdown reports, the CLI.

Result directories come from tests/support/result_dirs.py, which writes the files of
docs/formats.md from a seeded synthetic run.
"""
from __future__ import annotations

import json
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pyarrow as pa
import pytest
from bokeh.models import HoverTool

from cpbench.cli import main as cli_main
from cpbench.errors import ConfigError
from cpbench.reporting import write_report
from cpbench.reporting.charts import single_run_sections
from cpbench.reporting.compare import comparison_sections
from cpbench.reporting.load import load_run, run_labels
from cpbench.reporting.markdown import md_escape
from cpbench.reporting.tables import run_facts_rows
from support import replay_for_report
from support.result_dirs import make_result_dir, write_arrow

XSS_MODEL = "<script>alert('model')</script>"
XSS_DETAIL = '"><img src=x onerror=alert(1)>'
XSS_LABEL = "</script><script>alert('label')</script>"


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return make_result_dir(tmp_path_factory.mktemp("run") / "r", n_requests=3000,
                           model_name=XSS_MODEL, error_detail=XSS_DETAIL, error_ratio=0.02,
                           server_label=XSS_LABEL)


@pytest.fixture(scope="module")
def rendered(run_dir, tmp_path_factory) -> tuple[str, str]:
    """The single-run report of ``run_dir``, rendered once: (html, markdown)."""
    out = tmp_path_factory.mktemp("rendered")
    html = write_report([run_dir], out / "report.html", markdown_path=out / "report.md")
    return html.read_text(), (out / "report.md").read_text()


class _Tags(HTMLParser):
    """Collects script and stylesheet tags with their attributes, and the visible text."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []
        self._in_script = False

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        self._in_script = tag == "script"

    def handle_endtag(self, tag):
        self._in_script = False if tag == "script" else self._in_script

    def handle_data(self, data):
        if not self._in_script:
            self.text.append(data)


def _parse(html: str) -> _Tags:
    parser = _Tags()
    parser.feed(html)
    return parser


def test_single_report_is_standalone_and_escapes_every_foreign_string(rendered):
    html, md = rendered
    tags = _parse(html)
    for tag, attrs in tags.tags:
        ref = attrs.get("src") or (attrs.get("href") if tag == "link" else None)
        assert not (tag in ("script", "link", "img", "iframe") and ref), (tag, attrs)
    assert not any(t == "link" and a.get("rel") == "stylesheet" for t, a in tags.tags)
    assert "Bokeh.embed" in html  # BokehJS inlined, its embedding code present
    # The hostile strings appear only escaped: as text in the page, never as markup.
    assert XSS_MODEL not in html and XSS_DETAIL not in html and "<img" not in html
    # A Prometheus label reaches Bokeh only as data: HTML-escaped JSON, drawn on a canvas.
    assert XSS_LABEL not in html and "<script>alert('label')" not in html
    assert "&lt;/script&gt;&lt;script&gt;alert(&#x27;label&#x27;)" in html
    visible = "".join(tags.text)
    assert XSS_MODEL in visible and XSS_DETAIL in visible
    assert sum(1 for t, _ in tags.tags if t == "script") == 3  # resources, bokeh, embed
    assert "<script" not in md and "<img" not in md
    assert md_escape(XSS_MODEL) in md and md_escape(XSS_DETAIL) in md


def test_every_plot_has_hover_toggling_legend_and_time_plots_share_x(run_dir):
    run = load_run(run_dir)
    sections = single_run_sections(run)
    figures = [f for s in sections for f in s.figures]
    assert len(figures) >= 18
    for fig in figures:
        assert any(isinstance(t, HoverTool) for t in fig.tools), fig.title.text
        for legend in fig.legend:
            assert legend.click_policy == "hide"
    time_plots = [f for f in figures if f.xaxis[0].axis_label.startswith("time since")]
    assert len(time_plots) >= 8
    assert len({id(f.x_range) for f in time_plots}) == 1
    titles = {s.title for s in sections}
    assert {"Throughput", "Latency distributions", "Latency over time", "SLO attainment",
            "Hybrid breakdown", "Server metrics", "Client host",
            "Dispatch lag (client)"} <= titles


def test_gpu_unavailable_is_said_once_quietly_in_the_run_facts(run_dir, rendered):
    """Every report from a CPU-only host carried an NVML notice: one fact row now."""
    html, md = rendered
    text = "".join(_parse(html).text)
    fact = "unavailable (NVML could not start: NVML Shared Library Not Found)"
    assert text.count(fact) == 1 and md.count(fact) == 1
    assert "| GPU monitoring | " in md and "GPU monitoring was unavailable" not in text
    gpu = [s for s in single_run_sections(load_run(run_dir)) if s.title == "GPU"]
    assert not gpu or (gpu[0].figures == [] and gpu[0].notes == [])


def test_gpu_and_server_series_become_plots_with_bounded_points(tmp_path):
    d = make_result_dir(tmp_path / "gpu", n_requests=500, gpu=True)
    # A long monitor file: 20,000 samples of one series must be binned, not drawn raw.
    t_ns = np.arange(20_000, dtype=np.int64) * 10_000_000
    write_arrow(pa.table({"t_ns": t_ns, "source": ["gpu0"] * t_ns.size,
                          "metric": ["gpu_util_pct"] * t_ns.size,
                          "value": np.linspace(0, 100, t_ns.size)}), d / "monitor.arrow")
    run = load_run(d)
    ts, vs = run.monitor[("gpu0", "gpu_util_pct")]
    assert 1000 < ts.size <= 2000
    assert vs.min() == pytest.approx(0, abs=0.1) and vs.max() == pytest.approx(100, abs=0.1)
    gpu = [s for s in single_run_sections(run) if s.title == "GPU"][0]
    assert [f.title.text for f in gpu.figures] == ["utilisation (%)"] and not gpu.notes


def test_monitor_series_group_into_readable_plots(tmp_path):
    d = make_result_dir(tmp_path / "mon", n_requests=400, gpu=True)
    summary = json.loads((d / "summary.json").read_text())
    summary["monitor"]["prometheus"][0].update(failures=3, last_error="connection refused")
    (d / "summary.json").write_text(json.dumps(summary))
    sections = {s.title: s for s in single_run_sections(load_run(d))}
    gpu = {f.title.text: [r.name for r in f.renderers] for f in sections["GPU"].figures}
    assert gpu == {"memory (GiB)": ["gpu0 memory_total_bytes", "gpu0 memory_used_bytes",
                                    "gpu1 memory_total_bytes", "gpu1 memory_used_bytes"],
                   "power_w": ["gpu0", "gpu1"],
                   "utilisation (%)": ["gpu0 gpu_util_pct", "gpu1 gpu_util_pct"]}
    memory = sections["GPU"].figures[[*gpu].index("memory (GiB)")]
    total = [r for r in memory.renderers if r.name == "gpu0 memory_total_bytes"][0]
    assert total.data_source.data["y"][0] == pytest.approx(80e9 / 2 ** 30)
    server = {f.title.text: [r.name for r in f.renderers]
              for f in sections["Server metrics"].figures}
    # One scrape target: named once in a note, legends keep only the label sets.
    assert server["cpbench_sim_running_sequences"] == ['{engine="embed/0"}', '{engine="llm/0"}']
    assert "Scraped from http://127.0.0.1:8000/metrics." in sections["Server metrics"].notes
    assert any("3 of 60 scrapes failed; last error: connection refused" in note
               for note in sections["Server metrics"].notes)
    client = {f.title.text: [r.name for r in f.renderers] for f in sections["Client host"].figures}
    assert client == {"CPU (%)": ["cpu_host_pct", "cpu_tree_pct"], "processes": ["client"]}


def test_no_monitor_file_says_so_and_draws_no_monitor_plots(tmp_path):
    d = make_result_dir(tmp_path / "nomon", n_requests=400, monitor=False)
    summary = json.loads((d / "summary.json").read_text())
    del summary["monitor"]
    (d / "summary.json").write_text(json.dumps(summary))
    sections = {s.title: s for s in single_run_sections(load_run(d))}
    assert "GPU" not in sections and "Client host" not in sections
    assert "no monitor.arrow" in sections["Server metrics"].notes[0]


def test_distributions_are_the_summarys_histograms(tmp_path):
    """The report's percentiles are the summary's to the digit: one definition of each."""
    run = load_run(make_result_dir(tmp_path / "h", n_requests=4000, seed=3))
    for name in ("ttft_from_sent", "ttft_from_intended", "e2e_from_intended", "itl",
                 "dispatch_lag"):
        assert run.distributions[name].source == "histogram"
    for name in ("ttft_from_intended", "e2e_from_sent"):
        block = run.summary["latency_ms"][name]
        assert run.distributions[name].count == block["count"]
        for p in ("p50", "p90", "p99"):
            assert run.distributions[name].at(float(p[1:])) == pytest.approx(block[p], rel=1e-9)


def test_a_summary_without_histograms_or_timeslices_gets_notes_not_a_second_definition(
        tmp_path):
    d = make_result_dir(tmp_path / "old", n_requests=2000, seed=5, with_histograms=False)
    summary = json.loads((d / "summary.json").read_text())
    del summary["timeslices"]
    (d / "summary.json").write_text(json.dumps(summary))
    run = load_run(d)
    assert run.distributions == {} and run.series == {}
    assert any("no timeslices" in n for n in run.notes)
    assert any("no histogram of ttft_from_sent" in n for n in run.notes)
    assert run.batch_table                      # what the summary does not hold still shows
    out = write_report([d], tmp_path / "old.html", markdown_path=tmp_path / "old.md")
    assert out.is_file() and (tmp_path / "old.md").is_file()   # the report still renders


def test_batch_efficiency_and_per_kind_series(run_dir):
    run = load_run(run_dir)
    sizes = [r["batch_size"] for r in run.batch_table]
    assert sizes == [1, 4, 8, 16, 32]
    per_input = [r["per_input_ms"] for r in run.batch_table]
    assert per_input == sorted(per_input, reverse=True)  # batching amortises the fixed cost
    assert sorted(run.kind_series) == ["chat", "embedding"]
    completed = sum(k["completed"] for k in run.summary["by_kind"])
    assert sum(v.sum() for v in run.kind_series.values()) == completed


def test_markdown_has_the_same_facts_and_tables(run_dir, rendered):
    html, md = rendered
    summary = json.loads((run_dir / "summary.json").read_text())
    for heading in ("### Latency (ms)", "### Per kind", "### Per kind and priority",
                    "### Embedding batch efficiency", "### Most frequent errors"):
        assert heading in md
    high = [c for c in summary["by_class"] if c["kind"] == "chat" and c["priority"] == "HIGH"][0]
    row = [line for line in md.splitlines() if line.startswith("| chat | HIGH |")][0]
    assert f"{100 * high['attainment']:.2f} %" in row and f"{high['requests']:,}" in row
    assert f"{summary['requests']['errors']:,}" in md
    html_text = "".join(_parse(html).text)
    assert f"{100 * high['attainment']:.2f} %" in html_text


def test_comparison_report_labels_colours_and_ratio_section(tmp_path):
    specs = [("fifo", 50, 0.5), ("priority", 100, 0.7), ("slo_aware", 150, 0.9)]
    dirs = [make_result_dir(tmp_path / p, n_requests=600, seed=i, policy=p, rate_rps=r,
                            llm_ratio=x, monitor=False) for i, (p, r, x) in enumerate(specs)]
    runs = [load_run(d) for d in dirs]
    labels = run_labels(runs)
    assert labels == ["fifo · 50 rps · llm 0.5", "priority · 100 rps · llm 0.7",
                      "slo_aware · 150 rps · llm 0.9"]
    sections = {s.title: s for s in comparison_sections(runs, labels)}
    assert {"Throughput per run", "Latency percentiles side by side",
            "SLO attainment by policy and priority", "LLM-ratio impact"} <= set(sections)
    # One colour per run, the same in the per-run bars and in the latency lines.
    bars = sections["Throughput per run"].figures[0].renderers[0].data_source.data
    bar_colors = {x[0]: c for x, c in zip(bars["x"], bars["color"])}
    ladder = sections["Latency percentiles side by side"].figures[0]
    line_colors = {r.name: r.glyph.line_color for r in ladder.renderers}
    assert bar_colors == line_colors and len(set(bar_colors.values())) == 3
    out = write_report(dirs, tmp_path / "cmp.html", markdown_path=tmp_path / "cmp.md")
    text = "".join(_parse(out.read_text()).text)
    for label in labels:
        assert label in text
    assert "### Runs" in (tmp_path / "cmp.md").read_text()


def test_comparison_without_policy_or_options_falls_back_to_directory_names(tmp_path):
    dirs = []
    for name in ("a", "b"):
        d = make_result_dir(tmp_path / name, n_requests=300, policy=None, options={},
                            monitor=False, seed=len(dirs))
        dirs.append(d)
    runs = [load_run(d) for d in dirs]
    assert run_labels(runs) == ["a", "b"]
    titles = [s.title for s in comparison_sections(runs, ["a", "b"])]
    assert "LLM-ratio impact" not in titles
    assert write_report(dirs, tmp_path / "ab.html").stat().st_size > 100_000


def test_not_a_result_directory_and_a_broken_summary_raise_config_error(tmp_path):
    with pytest.raises(ConfigError, match="no summary.json"):
        write_report([tmp_path], tmp_path / "x.html")
    (tmp_path / "summary.json").write_text("{not json")
    with pytest.raises(ConfigError, match="summary.json is not valid JSON"):
        write_report([tmp_path], tmp_path / "x.html")
    with pytest.raises(ConfigError, match="no result directory"):
        write_report([], tmp_path / "x.html")


def test_cli_default_outputs(tmp_path, monkeypatch):
    single = make_result_dir(tmp_path / "one", n_requests=300, monitor=False)
    other = make_result_dir(tmp_path / "two", n_requests=300, monitor=False, seed=2)
    assert cli_main(["report", str(single)]) == 0
    assert (single / "report.html").is_file()
    monkeypatch.chdir(tmp_path)
    assert cli_main(["report", str(single), str(other), "--markdown", "cmp.md",
                     "--title", "Two runs"]) == 0
    assert (tmp_path / "cpbench-report.html").is_file() and (tmp_path / "cmp.md").is_file()
    assert "<title>Two runs</title>" in (tmp_path / "cpbench-report.html").read_text()
    assert (tmp_path / "cmp.md").read_text().startswith("# Two runs")


def test_cli_bad_directory_is_one_line_and_exit_2(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "cpbench", "report", str(tmp_path / "nope")],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2
    assert proc.stderr.count("\n") == 1 and "not a result directory" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_a_run_with_no_requests_reports_facts_and_says_there_is_nothing_to_chart(tmp_path):
    from support.result_dirs import make_results_table

    d = tmp_path / "empty"
    d.mkdir()
    table = make_results_table(10, rate_rps=10, llm_ratio=0.5, seed=1, model_name="m",
                               error_detail="x", error_ratio=0.0).slice(0, 0)
    write_arrow(table, d / "results.arrow")
    (d / "summary.json").write_text(json.dumps({"cpbench_version": "0.1.0",
                                                "run": {"policy": "fifo", "interrupted": True},
                                                "requests": {"sent": 0}}))
    html = write_report([d], d / "r.html", markdown_path=d / "r.md").read_text()
    assert 'data-cpbench-plots="0"' in html
    text = "".join(_parse(html).text)
    assert "nothing to chart" in text and "interrupted" in text and "sent 0" in text
    assert "| Policy | fifo |" in (d / "r.md").read_text()


@pytest.mark.integration
@pytest.mark.slow
def test_report_of_a_real_replay(tmp_path):
    out = replay_for_report(tmp_path / "replay")
    assert not (out / "report.html").exists()
    proc = subprocess.run([sys.executable, "-m", "cpbench", "report", str(out), "--markdown",
                           str(out / "report.md")], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines() == [str(out / "report.html"), str(out / "report.md")]
    html = (out / "report.html").read_text()
    plots = int(html.split('data-cpbench-plots="')[1].split('"')[0])
    assert plots >= 15
    summary = json.loads((out / "summary.json").read_text())
    text = "".join(_parse(html).text)
    assert f"sent {summary['requests']['sent']:,}" in text
    assert "Client host" in text and "Server metrics" in text
    if not summary["monitor"]["gpu"].get("available"):
        assert "GPU monitoring" in text and "unavailable (" in text
    md = (out / "report.md").read_text()
    assert "### Per kind and priority" in md and "| Policy | fifo |" in md


def test_trace_generator_and_seed_come_from_the_run_not_the_trace_file(tmp_path):
    """summary.run records them; the report never opens or hashes the trace again (here the
    trace path does not even exist any more)."""
    d = make_result_dir(tmp_path / "run", n_requests=300, monitor=False)
    summary = json.loads((d / "summary.json").read_text())
    summary["run"].update(trace=str(tmp_path / "gone.arrow"),
                          trace_generator="cpbench record synth", trace_seed=42)
    (d / "summary.json").write_text(json.dumps(summary))
    facts = dict(run_facts_rows(load_run(d)))
    assert facts["Trace"] == f"{tmp_path / 'gone.arrow'} (generator cpbench record synth, seed 42)"
    summary["run"].update(trace_generator=None, trace_seed=None)
    (d / "summary.json").write_text(json.dumps(summary))
    assert dict(run_facts_rows(load_run(d)))["Trace"] == str(tmp_path / "gone.arrow")

"""Report charts a new user met blank or misleading (issue 22, issue 21's comparison report)."""
from __future__ import annotations

import math

import numpy as np
from bokeh.models import GlyphRenderer, Scatter

from cpbench.reporting.charts import add_lines, lone_points, time_figure
from cpbench.reporting.compare import offered_rates_differ


def test_lone_points_are_the_values_without_neighbours():
    nan = math.nan
    y = np.array([nan, 5.0, nan, nan, 7.0, 8.0, nan, 3.0])
    assert lone_points(y).tolist() == [False, True, False, False, False, False, False, True]
    assert not lone_points(np.array([1.0, 2.0])).any() and not lone_points(np.array([])).any()


def test_latency_over_time_of_a_bursty_run_draws_its_lone_seconds():
    """burst.arrow: one second of data every 20 s; a line alone draws nothing there."""
    t = np.arange(60.0)
    p99 = np.full(60, math.nan)
    p99[[0, 20, 40]] = [900.0, 1200.0, 800.0]
    fig = add_lines(time_figure("E2E", "ms", None), t, [("p99", p99, "#d62728")])
    scatters = [r for r in fig.renderers if isinstance(r, GlyphRenderer)
                and isinstance(r.glyph, Scatter)]
    assert len(scatters) == 1
    assert list(scatters[0].data_source.data["x"]) == [0.0, 20.0, 40.0]


def test_offered_rates_differ_only_beyond_timer_noise():
    assert not offered_rates_differ([16.40675, 16.40705, 16.4069, 16.407])
    assert not offered_rates_differ([16.4, None])
    assert offered_rates_differ([10.0, 20.0, 40.0])


def _run_dir(tmp_path, **run):
    import json
    import sys
    from pathlib import Path
    sys.path.insert(0, str(Path(__file__).parent))
    from support.result_dirs import make_result_dir
    d = make_result_dir(tmp_path / "run")
    summary = json.loads((d / "summary.json").read_text())
    summary["run"].update(run)
    (d / "summary.json").write_text(json.dumps(summary))
    return d


def test_report_header_items(tmp_path):
    """Titles equal in HTML and Markdown; no `policy=None` under Policy; our own `code`
    stays a code span in Markdown (it read as a literal backslash-escaped `cpbench calibrate`)."""
    from cpbench.cli import main
    d = _run_dir(tmp_path, policy="fifo", calibration=None,
                 options={"policy": None, "rate_scale": 2.0, "speed": None})
    assert main(["report", str(d / "summary.json"), "-o", str(tmp_path / "r.html"),
                 "--markdown", str(tmp_path / "r.md")]) == 0
    html = (tmp_path / "r.html").read_text()
    md = (tmp_path / "r.md").read_text()
    title = md.splitlines()[0].removeprefix("# ")
    assert f"<title>{title}</title>" in html and f"<h1>{title}</h1>" in html
    assert "policy=None" not in html and "speed=None" not in html
    assert "rate_scale=2.0" in html
    assert "`cpbench calibrate`" in md and "\\`" not in md


def test_md_escape_keeps_code_spans_and_escapes_the_rest():
    from cpbench.reporting.markdown import md_escape
    assert md_escape("run `cpbench calibrate` now") == "run `cpbench calibrate` now"
    assert md_escape("a_b | `x|y`") == "a\\_b \\| `x\\|y`"
    assert md_escape("<b>`") == "&lt;b&gt;\\`"   # unpaired: everything escaped

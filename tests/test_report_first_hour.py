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

"""Reports of saved runs: standalone Bokeh HTML and a Markdown summary.

``write_report(result_dirs, html_path, markdown_path=..., title=...)`` is the one entry point
(replay calls it at the end of a run; compare and the experiments with several directories).
"""
from __future__ import annotations

from cpbench.reporting.html import write_report

__all__ = ["write_report"]

"""The standalone HTML report: Bokeh figures and tables in one Jinja2 template, one file.

Takes result directories, loads them (``load``), builds sections (``charts`` for one run,
``compare`` for several) and tables (``tables``), and writes one HTML file with Bokeh's
JavaScript inlined, so it opens offline with no request to any other host. Jinja2 autoescapes
every string; only Bokeh's own script, divs and resources are marked safe.
"""
from __future__ import annotations

from pathlib import Path

import jinja2
from bokeh.embed import components
from bokeh.resources import Resources

from cpbench import __version__
from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.reporting.charts import single_run_sections
from cpbench.reporting.compare import comparison_sections
from cpbench.reporting.fleet import engine_table, fleet_sections
from cpbench.reporting.load import RunData, load_run, report_title, run_labels
from cpbench.reporting.markdown import write_markdown
from cpbench.reporting.tables import Table, comparison_table, run_facts_rows, run_tables

# Only the core BokehJS bundle: the report uses no widgets, tables, WebGL or MathJax, and the
# full INLINE set would add 2.6 MB to every report for nothing.
RESOURCES = Resources(mode="inline", components=["bokeh"])


def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.PackageLoader("cpbench.reporting", "templates"),
        autoescape=True, undefined=jinja2.StrictUndefined, trim_blocks=True,
        lstrip_blocks=True)


def render_html(runs: list[RunData], title: str | None = None,
                lead: list[Table] | None = None) -> str:
    """The report of ``runs`` as one HTML document (several runs: a comparison report);
    ``lead`` tables come first (a comparison's paired differences: what the reader came for)."""
    labels = run_labels(runs)
    for run, label in zip(runs, labels):
        run.label = label
    if len(runs) == 1:
        sections = single_run_sections(runs[0], more=fleet_sections)
        tables = run_tables(runs[0])
        subtitle = f"One run from {runs[0].path}"
    else:
        sections = comparison_sections(runs, labels)
        tables = [comparison_table(runs, labels)]
        subtitle = "Runs keep one colour in every chart: " + ", ".join(labels)
    if (engines := engine_table(runs, labels)) is not None:  # a fleet behind the target
        tables.append(engines)
    figures = [fig for s in sections for fig in s.figures]
    script, divs = components(figures) if figures else ("", [])
    it = iter(divs)
    section_ctx = [{"title": s.title, "notes": s.notes, "divs": [next(it) for _ in s.figures]}
                   for s in sections]
    run_ctx = [{"heading": f"Run: {label}" if len(runs) > 1 else "Run", "notes": run.notes,
                "facts": run_facts_rows(run)} for run, label in zip(runs, labels)]
    return _environment().get_template("report.html.j2").render(
        title=title or report_title(runs), subtitle=subtitle, version=__version__,
        resources=RESOURCES.render(), script=script, sections=section_ctx, runs=run_ctx,
        tables=tables, lead=lead or [], plot_count=len(figures))


def _write_atomic(path: Path, text: str) -> None:
    """Write via a temporary file and rename, so a reader never sees half a report."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, text, fsync=False)


def write_report(result_dirs: list[Path], html_path: Path, *, markdown_path: Path | None = None,
                 title: str | None = None, lead: list[Table] | None = None) -> Path:
    """Write the HTML report (and optionally the Markdown one) of one or several result dirs.

    Parameters
    ----------
    result_dirs
        Directories written by ``cpbench replay -o DIR``; one gives a run report, several a
        comparison report.
    html_path
        Where the standalone HTML goes.
    markdown_path
        Where the Markdown summary goes; ``None`` writes none.
    title
        Report title; by default derived from the policy or the number of runs.
    lead
        Tables shown before everything else (``compare`` passes its paired differences).

    Returns
    -------
    Path
        ``html_path``.

    Raises
    ------
    ConfigError
        A directory is not a result directory or a file in it is unreadable.
    OutputError
        The report cannot be written.
    """
    if not result_dirs:
        raise ConfigError("no result directory given; pass at least one `cpbench replay -o` DIR")
    runs = [load_run(Path(d)) for d in result_dirs]
    html = render_html(runs, title, lead)
    try:
        _write_atomic(Path(html_path), html)
        if markdown_path is not None:
            write_markdown(runs, Path(markdown_path), title=title, lead=lead)
    except OSError as exc:
        raise OutputError(f"cannot write the report: {exc}; check the path and free space") from exc
    return Path(html_path)

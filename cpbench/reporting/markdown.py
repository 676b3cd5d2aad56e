"""The Markdown report: the same facts and tables as the HTML one, ready for a pull request.

Takes loaded runs, writes GitHub-flavoured Markdown. Cells are escaped for Markdown tables
(pipes, newlines) and for the HTML that Markdown renderers pass through (``<``, ``>``, ``&``),
so a model name or server error cannot inject markup.
"""
from __future__ import annotations

from pathlib import Path

from cpbench.atomic import atomic_write
from cpbench.calibration import calibration_warnings
from cpbench.reporting.load import RunData, report_title, run_labels
from cpbench.reporting.tables import Table, comparison_table, run_facts_rows, run_tables

_ESCAPES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "|": "\\|", "`": "\\`", "*": "\\*",
            "_": "\\_", "[": "\\[", "]": "\\]", "\r": " ", "\n": " "}


def md_escape(text: str) -> str:
    """Escape one table cell or line of Markdown; a `code span` of our own text stays one.

    Inside a code span Markdown interprets nothing (no markup, no HTML), so only the table's
    ``|`` and line breaks need care there; everywhere else every markup character is escaped.
    """
    parts = str(text).split("`")
    if len(parts) % 2 == 0:  # an unpaired backtick: no code spans, escape it all
        return "".join(_ESCAPES.get(ch, ch) for ch in str(text))
    out = []
    for i, part in enumerate(parts):
        if i % 2:
            out.append("`" + part.replace("|", "\\|").replace("\r", " ").replace("\n", " ")
                       + "`")
        else:
            out.append("".join(_ESCAPES.get(ch, ch) for ch in part))
    return "".join(out)


def md_table(table: Table) -> list[str]:
    lines = [f"### {md_escape(table.title)}", "",
             "| " + " | ".join(md_escape(h) for h in table.headers) + " |",
             "|" + "|".join("---" if i == 0 else "---:" for i in range(len(table.headers))) + "|"]
    lines += ["| " + " | ".join(md_escape(c) for c in row) + " |" for row in table.rows]
    if table.note:
        lines += ["", f"_{md_escape(table.note)}_"]
    return lines + [""]


def render_markdown(runs: list[RunData], title: str | None = None,
                    lead: list[Table] | None = None) -> str:
    """The Markdown report of ``runs`` (several runs: a comparison); ``lead`` tables first."""
    labels = run_labels(runs)
    title = title or report_title(runs)
    lines = [f"# {md_escape(title)}", ""]
    for table in lead or []:
        lines += md_table(table)
    if len(runs) > 1:
        lines += md_table(comparison_table(runs, labels))
    for run, label in zip(runs, labels):
        lines += [f"## Run: {md_escape(label)}" if len(runs) > 1 else "## Run", ""]
        lines += [f"> {md_escape(note)}" for note in run.notes] + ([""] if run.notes else [])
        warnings = calibration_warnings(run.summary)   # client near its calibrated limit
        lines += [f"> **Warning:** {md_escape(w)}" for w in warnings] + ([""] if warnings else [])
        lines += ["| fact | value |", "|---|---|"]
        lines += [f"| {md_escape(k)} | {md_escape(v)} |" for k, v in run_facts_rows(run)]
        lines.append("")
        if len(runs) == 1:
            for table in run_tables(run):
                lines += md_table(table)
    return "\n".join(lines).rstrip() + "\n"


def write_markdown(runs: list[RunData], path: Path, *, title: str | None = None,
                   lead: list[Table] | None = None) -> Path:
    """Write ``render_markdown(runs, title, lead)`` to ``path`` and return it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, render_markdown(runs, title, lead), fsync=False)
    return path

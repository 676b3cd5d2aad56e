"""`cpbench visualize`: `cpbench report` under the name and options sage-cp-bench users know."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cpbench visualize --input results/cmp/fifo --output ./charts      # charts/report.html
  cpbench visualize --input results/fifo results/priority --output policies.html
"""


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "visualize", help="alias of `report` with sage-cp-bench's --input/--output",
        description="The report of `cpbench report`, spelled as sage-cp-bench's `visualize`: "
                    "--input takes result directories (or a file inside one, like its "
                    "summary.json); --output is a directory (gets report.html and report.md) "
                    "or an .html file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--input", nargs="+", type=Path, required=True, metavar="RESULTS",
                   help="result directories written by cpbench (replay, run, compare)")
    p.add_argument("--output", type=Path, default=Path("."), metavar="DIR|FILE.html",
                   help="where the report goes (default: the current directory)")
    p.add_argument("--title", default=None, help="report title")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.reporting import write_report

    if args.output.suffix.lower() == ".html":
        html, markdown = args.output, args.output.with_suffix(".md")
    else:
        html, markdown = args.output / "report.html", args.output / "report.md"
    print(write_report(args.input, html, markdown_path=markdown, title=args.title))
    print(markdown)
    return 0

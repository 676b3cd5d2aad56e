"""`cpbench report`: parse arguments and call ``cpbench.reporting.write_report``."""
from __future__ import annotations

import argparse
from pathlib import Path

EPILOG = """examples:
  cpbench report results/burst                      # writes results/burst/report.html
  cpbench report results/burst -o burst.html --markdown burst.md
  cpbench report results/fifo results/priority results/slo_aware -o policies.html \\
      --title "Policies on the burst trace"
"""


def register(subparsers) -> None:
    parser = subparsers.add_parser(
        "report", help="standalone HTML (and Markdown) report of one or several result dirs",
        description="Write a standalone Bokeh HTML report (one file, works offline) of saved "
                    "results; several directories give a comparison report.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("results", nargs="+", type=Path, metavar="RESULTS_DIR",
                        help="directory written by `cpbench replay -o DIR`")
    parser.add_argument("-o", "--output", type=Path, default=None,
                        help="HTML file to write (default: report.html inside the single result "
                             "directory, or ./cpbench-report.html for several)")
    parser.add_argument("--markdown", type=Path, default=None, metavar="FILE",
                        help="also write a Markdown summary to FILE")
    parser.add_argument("--title", default=None, help="report title")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from cpbench.reporting import write_report  # Bokeh loads only when a report is made

    output = args.output
    if output is None:
        output = (args.results[0] / "report.html" if len(args.results) == 1
                  else Path("cpbench-report.html"))
    path = write_report(args.results, output, markdown_path=args.markdown, title=args.title)
    print(path)
    if args.markdown is not None:
        print(args.markdown)
    return 0

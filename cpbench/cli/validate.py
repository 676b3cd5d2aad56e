"""``cpbench validate TRACE``: every problem, one line each; exit 0 clean, 2 otherwise."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  cpbench validate traces/burst.arrow
  cpbench validate my_trace.parquet && cpbench replay my_trace.parquet
"""


def _validate(args: argparse.Namespace) -> int:
    from cpbench.trace import check_file
    problems, notes = check_file(args.trace)
    for line in notes:
        print(f"note: {line}", file=sys.stderr)
    for line in problems:
        print(line)
    if not problems:
        print(f"{args.trace}: ok")
    return 2 if problems else 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``validate``."""
    p = subparsers.add_parser("validate", help="check a trace against the schema",
                              epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="Arrow IPC file or stream, or Parquet")
    p.set_defaults(func=_validate)

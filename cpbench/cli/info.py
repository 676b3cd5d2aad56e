"""``cpbench info TRACE``: the trace's shape (rate, burstiness, mix, lengths) as text or JSON."""
from __future__ import annotations

import argparse
import json

EPILOG = """examples:
  cpbench info traces/burst.arrow
  cpbench info --json traces/medium.arrow > medium-shape.json
"""


def _info(args: argparse.Namespace) -> int:
    from cpbench.trace import describe, format_description, read_trace
    shape = describe(read_trace(args.trace))
    if args.json:
        print(json.dumps(shape, indent=2, sort_keys=True))
    else:
        print(format_description(args.trace, shape))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``info``."""
    p = subparsers.add_parser("info", help="print a trace's shape", epilog=EPILOG,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("trace", help="Arrow IPC file or stream, or Parquet")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_info)

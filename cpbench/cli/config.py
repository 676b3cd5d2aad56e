"""``cpbench config --example CMD``: print a commented TOML config file for a command."""
from __future__ import annotations

import argparse
import sys

EPILOG = """examples:
  cpbench config --example replay > replay.toml
  cpbench replay traces/burst.arrow --config replay.toml --rate-scale 2
  cpbench config --example compare > compare.toml
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "config", help="print a commented example config file for a command",
        description="Print a commented TOML config file holding every option of COMMAND with "
                    "its default. Pass it back with 'cpbench COMMAND --config FILE'; options "
                    "on the command line override the file.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--example", metavar="COMMAND", required=True,
                        help="the command to write an example for (replay, run, compare, "
                             "experiment, ...)")
    parser.set_defaults(func=_config)


def _config(args: argparse.Namespace) -> int:
    from cpbench.cli import command_parser
    from cpbench.config import example

    sys.stdout.write(example(command_parser(args.example), args.example))
    return 0

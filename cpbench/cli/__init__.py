"""The ``cpbench`` command line: argument parsing only.

Each subcommand lives in its own module under ``cpbench.cli`` with a ``register(subparsers)``
function that adds its parser and sets ``func`` to a thin wrapper calling one entry point
elsewhere in the package. Commands appear here only once they are built.
"""
from __future__ import annotations

import argparse
import importlib
import sys

from cpbench import __version__
from cpbench.errors import ConfigError, CpbenchError

# Module names under cpbench.cli, in the order `cpbench --help` lists them.
COMMANDS: tuple[str, ...] = (
    "record", "validate", "info",            # traces
    "sim", "replay", "report",               # the main job
    "run", "compare", "sweep", "experiment", # experiments over policies and load
    "calibrate", "config", "verify",         # the client host, config files, reproducibility
)

EPILOG = """examples:
  cpbench record synth --pattern poisson --rate 50 --requests 2000 -o my.arrow
  cpbench replay traces/burst.arrow -o results/burst
  cpbench report results/burst -o burst.html
"""


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="cpbench",
        description="Trace-replay benchmark for LLM serving control planes.",
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"cpbench {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"cpbench.cli.{name}").register(subparsers)
    return parser


def command_parser(command: str) -> argparse.ArgumentParser:
    """The parser of ``cpbench COMMAND`` as the CLI builds it (for config examples, the API)."""
    top = build_parser()
    for action in top._actions:
        if isinstance(action, argparse._SubParsersAction):
            if command in action.choices:
                return action.choices[command]
            names = ", ".join(sorted(action.choices))
            raise ConfigError(f"no command '{command}'; commands: {names}")
    raise ConfigError(f"no command '{command}': the CLI has no subcommands")


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        status = args.func(args)
    except CpbenchError as exc:
        print(f"cpbench: error: {exc}", file=sys.stderr)
        return exc.exit_status
    except KeyboardInterrupt:
        print("cpbench: interrupted", file=sys.stderr)
        return 130
    return int(status or 0)

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
    "sim", "replay", "report", "visualize",  # the main job (visualize: report, sage-cp-bench's way)
    "run", "compare", "sweep", "experiment", # experiments over policies and load
    "calibrate", "config", "verify",         # the client host, config files, reproducibility
)

class Parser(argparse.ArgumentParser):
    """argparse with usage errors as one line naming where the help is.

    argparse prints the whole usage block before its message; a user who typed one wrong
    option needs the message and where to look, not 20 lines of usage. Subcommand parsers
    inherit the class (``add_subparsers`` uses the parent's class), so every command says it
    the same way.
    """

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


EPILOG = """examples:
  cpbench record synth --pattern poisson --rate 50 --requests 2000 -o my.arrow
  cpbench replay traces/burst.arrow -o results/burst
  cpbench report results/burst -o burst.html
"""


def build_parser() -> argparse.ArgumentParser:
    parser = Parser(
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


def _parser_of(parser: argparse.ArgumentParser,
               args: argparse.Namespace) -> argparse.ArgumentParser:
    """The (sub)command parser ``args`` came from: ``cpbench record synth``'s, not ``cpbench``'s."""
    while True:
        action = next((a for a in parser._actions
                       if isinstance(a, argparse._SubParsersAction)), None)
        name = getattr(args, action.dest, None) if action is not None else None
        if name is None or name not in action.choices:
            return parser
        parser = action.choices[name]


def main(argv: list[str] | None = None) -> int:
    """Run the CLI; returns the process exit status."""
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    if extra:  # said by the command's own parser, so the hint names its --help
        _parser_of(parser, args).error(f"unrecognized arguments: {' '.join(extra)}")
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

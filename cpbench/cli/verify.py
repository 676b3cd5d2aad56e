"""``cpbench verify A B``: did two runs replay the same workload (trace, seed, options)?"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  cpbench verify results/burst-2026-10 results/burst-2026-11
  cpbench verify results/run-a/manifest.json results/run-b
  cpbench verify results/cmp-october results/cmp-november     # compare dirs, run by run

exit status: 0 same workload, 1 the workload differs (each difference printed), 2 bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check that two result directories used the same workload",
        description="Compare the manifests of two runs: trace SHA-256, seed and the resolved "
                    "options (output locations, the target URL and client worker settings are "
                    "not compared). Directories of runs (run, compare, experiment) are matched "
                    "run by run by relative path.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", help="result directory, its manifest.json, or a "
                                               "directory of runs")
    parser.add_argument("b", metavar="B", help="the same for the other run(s)")
    parser.set_defaults(func=_verify)


def _check_side(text: str) -> None:
    """Bad input is exit 2 with what is wrong, never a "workload differs" about a typo."""
    from pathlib import Path

    from cpbench.errors import ConfigError
    from cpbench.manifest import MANIFEST_NAME

    path = Path(text)
    if not path.exists():
        raise ConfigError(f"{text!r} does not exist; pass a result directory (cpbench replay "
                          f"-o DIR) or its {MANIFEST_NAME}")
    if path.is_file() and path.name != MANIFEST_NAME:
        raise ConfigError(f"{text!r} is a file but not a run's {MANIFEST_NAME}; pass the result "
                          f"directory or its {MANIFEST_NAME}")
    # A run, or a directory of runs up to three levels down (as manifest.verify matches them).
    patterns = (MANIFEST_NAME, f"*/{MANIFEST_NAME}", f"*/*/{MANIFEST_NAME}",
                f"*/*/*/{MANIFEST_NAME}")
    if path.is_dir() and not any(next(path.glob(p), None) for p in patterns):
        raise ConfigError(f"{text!r} holds no {MANIFEST_NAME}; it is not a result directory "
                          f"or a directory of runs")


def _verify(args: argparse.Namespace) -> int:
    from cpbench.manifest import verify

    _check_side(args.a)
    _check_side(args.b)
    differences = verify(args.a, args.b)
    if not differences:
        print(f"same workload: {args.a} and {args.b}")
        return 0
    print(f"workload differs ({len(differences)}):")
    for line in differences:
        print(f"  {line}")
    return 1

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


def _verify(args: argparse.Namespace) -> int:
    from cpbench.manifest import verify

    differences = verify(args.a, args.b)
    if not differences:
        print(f"same workload: {args.a} and {args.b}")
        return 0
    print(f"workload differs ({len(differences)}):")
    for line in differences:
        print(f"  {line}")
    return 1

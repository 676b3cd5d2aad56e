"""``cpbench verify A B``: did two runs replay the same workload (trace, seed, options)?"""
from __future__ import annotations

import argparse

EPILOG = """examples:
  cpbench verify results/burst-2026-10 results/burst-2026-11
  cpbench verify results/run-a/manifest.json results/run-b

exit status: 0 same workload, 1 the workload differs (each difference printed), 2 bad input.
"""


def register(subparsers: argparse._SubParsersAction) -> None:
    parser = subparsers.add_parser(
        "verify", help="check that two result directories used the same workload",
        description="Compare the manifests of two runs: trace SHA-256, seed and the resolved "
                    "options (output locations and the target URL are not compared).",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("a", metavar="A", help="result directory (or its manifest.json)")
    parser.add_argument("b", metavar="B", help="result directory (or its manifest.json)")
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

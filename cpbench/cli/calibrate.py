"""``cpbench calibrate``: the highest rate this client host holds, stored for later reports."""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

EPILOG = """examples:
  cpbench calibrate                             # against a built-in fixed responder
  cpbench calibrate --duration-s 2 --kinds chat -o /tmp/calibration.json
  cpbench calibrate --url http://127.0.0.1:8080 # against a zero-cost server you run (nginx)
  CPBENCH_HOME=/srv/cpbench cpbench calibrate   # stored in /srv/cpbench/calibration.json

Held = dispatch-lag p99 <= 1 ms, <= 1 % shortfall and no errors. Every later `cpbench replay`
carries the stored figures in summary.run.calibration and its report warns when a run offered
>= 80 % of them.
"""


def _calibrate(args: argparse.Namespace) -> int:
    from cpbench.calibrate import calibrate
    from cpbench.calibration import calibration_path, save_calibration

    def log(line: str) -> None:
        if not args.quiet:
            print(line, file=sys.stderr, flush=True)

    result = calibrate(url=args.url, duration_s=args.duration_s,
                       kinds=[k.strip() for k in args.kinds.split(",") if k.strip()],
                       workers=args.workers, start_rps=args.start_rps, max_rps=args.max_rps,
                       max_points=args.max_points, log=log)
    path = save_calibration(result, args.output or calibration_path())
    for kind, entry in result["kinds"].items():
        print(f"{kind:<10} {entry['max_rate_rps']:>10,.0f} req/s held "
              f"({len(entry['points'])} probes)")
    print(f"wrote {path}")
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add ``calibrate``."""
    p = subparsers.add_parser(
        "calibrate", help="measure the highest rate this client host holds, for reports",
        description="Find, for chat and embeddings, the highest Poisson rate cpbench replay "
                    "holds on this host with dispatch-lag p99 <= 1 ms and <= 1 % shortfall "
                    "against a zero-cost target, by doubling then bisecting with short runs.",
        epilog=EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--url", default=None,
                   help="a zero-cost target (default: a fixed responder in its own process)")
    p.add_argument("--duration-s", type=float, default=3.0, help="seconds per probe run")
    p.add_argument("--kinds", default="chat,embedding", help="comma-separated: chat,embedding")
    p.add_argument("--workers", type=int, default=None, help="default: all cores")
    p.add_argument("--start-rps", type=float, default=1000.0, help="first rate probed")
    p.add_argument("--max-rps", type=float, default=200_000.0, help="stop doubling here")
    p.add_argument("--max-points", type=int, default=8, help="probe runs per kind")
    p.add_argument("-o", "--output", type=Path, default=None,
                   help="default: $CPBENCH_HOME/calibration.json or "
                        "~/.cache/cpbench/calibration.json")
    p.add_argument("--quiet", action="store_true", help="no per-probe lines on stderr")
    p.set_defaults(func=_calibrate)

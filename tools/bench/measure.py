"""Run one command and record the CPU time and peak RSS of its whole process tree.

    python tools/bench/measure.py OUT.json -- COMMAND [ARGS...]

A fresh wrapper per command, so ``RUSAGE_CHILDREN`` covers exactly that command and every
descendant its processes waited for (aiperf's services, guidellm's workers, cpbench's
workers). ``peak_rss_mb`` is the largest single process's, as the kernel keeps it.
"""
from __future__ import annotations

import json
import resource
import subprocess
import sys
import time


def main(argv: list[str]) -> int:
    out, sep, cmd = argv[0], argv[1], argv[2:]
    assert sep == "--" and cmd, __doc__
    t0 = time.monotonic()
    status = subprocess.run(cmd).returncode
    wall_s = time.monotonic() - t0
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    with open(out, "w") as f:
        json.dump({"status": status, "wall_s": wall_s, "user_s": ru.ru_utime,
                   "sys_s": ru.ru_stime, "cpu_s": ru.ru_utime + ru.ru_stime,
                   "peak_rss_mb": ru.ru_maxrss / 1024}, f)
    return status


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

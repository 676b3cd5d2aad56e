"""The client host's own CPU use during a run.

:class:`ClientCpuSampler` records, source ``client``, at each tick:

- ``cpu_tree_cores``: CPU the benchmark's process tree (this process, its dispatcher
  workers and their children) used since the last tick, in cores (1.0 = one core busy);
- ``cpu_tree_pct``: the same as a percent of the host's capacity, in [0, 100];
- ``cpu_host_pct``: the whole host's busy percent, from ``/proc/stat``;
- ``cpu_host_max_core_pct``: the busiest single core's percent — a saturated dispatcher
  worker shows here long before the host average moves;
- ``processes``: processes in the tree.

A report reads these beside dispatch lag to tell a slow server from a saturated client.
Without ``/proc`` (macOS) only this process's own times (``os.times``) are available.
"""
from __future__ import annotations

import os
import time

from cpbench.monitor.sampler import PeriodicSampler

_PROC = "/proc"


def _stat_fields(pid: int) -> list[str] | None:
    """Fields of ``/proc/PID/stat`` after the ``(comm)`` field, or None if it is gone."""
    try:
        with open(f"{_PROC}/{pid}/stat", "rb") as f:
            raw = f.read().decode(errors="replace")
    except OSError:
        return None
    # comm may hold spaces and parentheses: split after the last ')'.
    return raw[raw.rfind(")") + 2:].split()


def process_tree(root_pid: int) -> dict[int, list[str]]:
    """``{pid: stat fields}`` of ``root_pid`` and all its descendants, from one /proc scan."""
    stats: dict[int, list[str]] = {}
    children: dict[int, list[int]] = {}
    for entry in os.listdir(_PROC):
        if not entry.isdigit():
            continue
        fields = _stat_fields(int(entry))
        if fields is None:
            continue
        pid = int(entry)
        stats[pid] = fields
        children.setdefault(int(fields[1]), []).append(pid)
    tree: dict[int, list[str]] = {}
    todo = [root_pid]
    while todo:
        pid = todo.pop()
        if pid in stats and pid not in tree:
            tree[pid] = stats[pid]
            todo.extend(children.get(pid, ()))
    return tree


def tree_cpu_ticks(tree: dict[int, list[str]]) -> int:
    """Clock ticks used by the tree: each process's utime+stime plus its reaped children's
    (cutime+cstime), so a worker that exited and was reaped still counts; reaped processes
    are no longer in the tree, so nothing counts twice."""
    # fields 14-17 of /proc/PID/stat: utime, stime, cutime, cstime
    return sum(int(f[11]) + int(f[12]) + int(f[13]) + int(f[14]) for f in tree.values())


def read_proc_stat() -> list[tuple[int, int]]:
    """``(busy, total)`` jiffies for the host (first) and each core, from ``/proc/stat``."""
    out = []
    with open(f"{_PROC}/stat", "rb") as f:
        for line in f:
            if not line.startswith(b"cpu"):
                break
            v = [int(x) for x in line.split()[1:]]
            # user nice system idle iowait irq softirq steal (guest is inside user already)
            idle = v[3] + (v[4] if len(v) > 4 else 0)
            total = sum(v[:8])
            out.append((total - idle, total))
    return out


def _pct(busy: int, total: int) -> float:
    return 100.0 * busy / total if total > 0 else 0.0


class ClientCpuSampler(PeriodicSampler):
    """Sample the CPU use of this process tree and of the host every ``interval_s``.

    Parameters
    ----------
    interval_s : float
        Seconds between samples.
    clock_origin_ns : int
        ``time.monotonic_ns()`` of the run start.
    root_pid : int, optional
        Root of the process tree; this process by default.
    rescan_s : float, optional
        Seconds between full ``/proc`` scans for new processes in the tree; in between,
        only the known members are read. A process found late brings its whole CPU time
        into the sample that finds it; one that ends unseen is counted when reaped.
    """

    def __init__(self, interval_s: float, clock_origin_ns: int,
                 root_pid: int | None = None, rescan_s: float = 2.0) -> None:
        super().__init__("client", interval_s, clock_origin_ns)
        self.root_pid = os.getpid() if root_pid is None else root_pid
        # A full scan reads every process's stat (about 20 µs each, GIL held in between):
        # a few milliseconds on a busy host, too much to spend beside the dispatcher twice a
        # second, while the tree's membership changes only when workers start.
        self.rescan_s = rescan_s
        self._pids: set[int] | None = None
        self._next_scan = 0.0
        self.proc = os.path.exists(f"{_PROC}/stat")
        self.cores = (len(read_proc_stat()) - 1 if self.proc else 0) or os.cpu_count() or 1
        self._hz = os.sysconf("SC_CLK_TCK") if self.proc else 100
        self._last: tuple[int, float, list[tuple[int, int]] | None] | None = None
        self._tree_pct: list[float] = []
        self._host_pct: list[float] = []
        self._max_core_pct = 0.0
        self._cpu_s = 0.0

    def _read(self) -> tuple[float, int, list[tuple[int, int]] | None]:
        """(tree CPU seconds, processes, /proc/stat rows or None)."""
        if not self.proc:
            t = os.times()
            return t.user + t.system + t.children_user + t.children_system, 1, None
        tree = self._tree()
        return tree_cpu_ticks(tree) / self._hz, len(tree), read_proc_stat()

    def _tree(self) -> dict[int, list[str]]:
        now = time.monotonic()
        if self._pids is None or now >= self._next_scan:
            tree = process_tree(self.root_pid)
            self._next_scan = now + self.rescan_s
        else:
            tree = {}
            for pid in self._pids:
                fields = _stat_fields(pid)
                if fields is not None:
                    tree[pid] = fields
            # A reused pid belongs to someone else: its parent is not in our tree.
            tree = {pid: f for pid, f in tree.items()
                    if pid == self.root_pid or int(f[1]) in tree}
        self._pids = set(tree)
        return tree

    def sample(self) -> None:
        t_ns = self.now_ns()
        cpu_s, processes, host = self._read()
        last, self._last = self._last, (t_ns, cpu_s, host)
        if last is None:
            return  # the baseline: rates need two readings
        dt_s = (t_ns - last[0]) / 1e9
        if dt_s <= 0:
            return
        # A process that exited unreaped by the tree takes its ticks with it: clamp at 0.
        used_s = max(0.0, cpu_s - last[1])
        self._cpu_s += used_s
        tree_cores = used_s / dt_s
        tree_pct = min(100.0, 100.0 * tree_cores / self.cores)
        rows = [("cpu_tree_cores", tree_cores), ("cpu_tree_pct", tree_pct),
                ("processes", float(processes))]
        self._tree_pct.append(tree_pct)
        if host is not None and last[2] is not None and len(host) == len(last[2]):
            deltas = [(b - b0, t - t0) for (b, t), (b0, t0) in zip(host, last[2])]
            host_pct = _pct(*deltas[0])
            max_core = max((_pct(*d) for d in deltas[1:]), default=host_pct)
            rows += [("cpu_host_pct", host_pct), ("cpu_host_max_core_pct", max_core)]
            self._host_pct.append(host_pct)
            self._max_core_pct = max(self._max_core_pct, max_core)
        self.buffer.extend(t_ns, "client", rows)

    def status(self) -> dict:
        """The ``summary.json`` ``monitor.client_cpu`` entry (percents of host capacity)."""
        tree, host = self._tree_pct, self._host_pct
        return {
            "cores": self.cores,
            "mean_pct": sum(tree) / len(tree) if tree else None,
            "max_pct": max(tree) if tree else None,
            "cpu_s": self._cpu_s,
            "host_mean_pct": sum(host) / len(host) if host else None,
            "host_max_pct": max(host) if host else None,
            "max_core_pct": self._max_core_pct if host else None,
            "samples": len(tree),
            "source": "/proc" if self.proc else "os.times (this process only; no /proc)",
            "failures": self.failures,
            "last_error": self.last_error,
        }

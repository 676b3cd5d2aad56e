"""``cpbench sweep``: one trace replayed at several rates, and the saturation knee.

A rate point replays the same trace rows with ``rate_scale = rate / trace rate`` (the trace's
time offsets divided, so the mix and lengths stay identical and only the pressure changes) into
``DIR/rate-<rps>``. With ``knee=True`` the fixed list is followed by ``stats.find_knee``: the
highest rate whose SLO attainment stays >= the target, bracketed and bisected, each probe a
real run. Hands on ``DIR/experiment.json``, a comparison report over every rate point and the
answer table.
"""
from __future__ import annotations

import io
import math
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any, TextIO

from cpbench import __version__
from cpbench.errors import ConfigError, TargetError
from cpbench.experiments.compare import (check_policies, control_plane, replay_one,
                                         write_comparison_report, write_json)
from cpbench.experiments.control import PolicyAdmin, Progress, format_table, wait_idle
from cpbench.experiments.stats import KneeResult, find_knee, run_arrays, run_metrics


def synth_trace(path: Path, *, rate_rps: float, requests: int, pattern: str = "poisson",
                mode: str = "hybrid", llm_ratio: float = 0.5, seed: int = 0,
                **synth_options: Any) -> Path:
    """Synthesize a trace into ``path`` (with its parameters as metadata); returns ``path``."""
    from cpbench.record.synth import synth_to_file
    path.parent.mkdir(parents=True, exist_ok=True)
    synth_to_file(str(path), pattern=pattern, rate_rps=rate_rps, requests=requests, mode=mode,
                  llm_ratio=llm_ratio, seed=seed, **synth_options)
    return path


def trace_rate_rps(trace: str | Path) -> tuple[float, int]:
    """The trace's mean arrival rate (requests over the span of arrivals) and its row count."""
    from cpbench.trace import read_trace
    table = read_trace(trace)
    arrival = table.column("arrival_ns").to_numpy()
    n = len(arrival)
    span_ns = int(arrival[-1] - arrival[0]) if n else 0
    if n < 2 or span_ns <= 0:
        raise ConfigError(f"trace {str(trace)!r} has {n} request(s) over {span_ns} ns; a rate "
                          f"sweep needs at least two requests at different times")
    return (n - 1) * 1e9 / span_ns, n


def _point_dir(out: Path, rate_rps: float) -> Path:
    return out / f"rate-{rate_rps:.6g}"


class RatePoints:
    """Measured rate points of one sweep; each rate is replayed at most once."""

    def __init__(self, trace: Path, out: Path, *, url: str, base_rps: float, policy: str | None,
                 drain_s: float, replay_options: dict[str, Any], progress: Progress) -> None:
        self.trace, self.out, self.url, self.base_rps = trace, out, url, base_rps
        self.policy, self.drain_s = policy, drain_s
        self.options, self.progress = replay_options, progress
        self.points: dict[float, dict] = {}

    def attainment(self, rate_rps: float) -> float:
        """SLO attainment percent at ``rate_rps`` (replays once, then remembers)."""
        key = round(float(rate_rps), 9)
        if key not in self.points:
            self.progress.start(f"rate {key:.6g} rps")
            target = _point_dir(self.out, key)
            scale = key / self.base_rps
            result_dir = replay_one(self.trace, target, url=self.url, policy=self.policy,
                                    options={**self.options, "rate_scale": scale})
            wait_idle(self.url, drain_s=self.drain_s)
            metrics = run_metrics(run_arrays(result_dir))
            self.points[key] = {"rate_rps": key, "rate_scale": scale, "dir": str(result_dir),
                                **metrics}
            self.progress.finish()
        return self.points[key]["slo_attainment_pct"]


def active_policy(url: str, policy: str | None, *, switch: bool,
                   policy_path: str) -> str | None:
    """Set ``policy`` (when given), else read the active one where the control plane says."""
    if not switch:
        return policy
    admin = PolicyAdmin(url, policy_path)
    if policy is not None:
        return admin.set(policy)
    try:
        return admin.get()
    except TargetError:
        return None  # no admin API and nothing asked of it: the runs stay unlabelled


def _search_knee(points: RatePoints, *, target_pct: float, rel_tol: float,
                 max_probes: int) -> KneeResult:
    """The knee search, starting from the bracket the fixed rates already give."""
    measured = sorted(points.points.values(), key=lambda p: p["rate_rps"])
    points.progress.total = len(measured) + max_probes
    failing = [p["rate_rps"] for p in measured if p["slo_attainment_pct"] < target_pct]
    passing = [p["rate_rps"] for p in measured if p["slo_attainment_pct"] >= target_pct
               and (not failing or p["rate_rps"] < failing[0])]
    start = passing[-1] if passing else (failing[0] if failing else points.base_rps)
    return find_knee(points.attainment, start_rps=start, target_pct=target_pct,
                     rel_tol=rel_tol, max_probes=max_probes + len(measured),
                     upper_rps=failing[0] if failing and passing else None)


def sweep(trace: str | Path | None, *, rates_rps: Sequence[float], out_dir: str | Path,
          policy: str | None = None, url: str | None = None, knee: bool = False,
          target_pct: float = 95.0, rel_tol: float = 0.05, max_probes: int = 8,
          switch: bool = True, policy_path: str = "/admin/policy", drain_s: float = 1.0,
          sim_config: str | Path | None = None, replay_options: dict[str, Any] | None = None,
          experiment: str = "sweep", quiet: bool = False, stdout: TextIO | None = None,
          synth: dict[str, Any] | None = None) -> dict:
    """Replay ``trace`` at each of ``rates_rps`` (and, with ``knee``, search the knee).

    Parameters
    ----------
    trace
        The trace; its own mean rate is rate scale 1. ``None`` synthesizes one into
        ``DIR/trace.arrow`` at the first rate from ``synth`` (``synth_trace`` arguments).
    rates_rps
        Rates to measure, requests per second.
    out_dir
        Gets ``rate-<rps>/`` per point, ``experiment.json`` and ``report.html``/``.md``.
    policy
        Set once through the admin API before the first run (``None``: leave it).
    knee, target_pct, rel_tol, max_probes
        Search the highest rate with attainment >= ``target_pct`` to a relative width of
        ``rel_tol``, with at most ``max_probes`` runs beyond the fixed list.
    url, switch, policy_path, drain_s, sim_config, replay_options
        As in ``compare``.

    Returns
    -------
    dict
        What ``experiment.json`` holds: ``points`` (per rate: attainment, latency percentiles,
        result dir) and, with ``knee``, ``knee`` (``stats.KneeResult.to_dict``).
    """
    if quiet:
        stdout = io.StringIO()  # --quiet: no progress, no answer table (see the JSON)
    if not rates_rps and not knee:
        raise ConfigError("--rates needs at least one rate, like 10,50,100")
    if not 0.0 < target_pct <= 100.0:
        raise ConfigError(f"--target-pct is a percent in (0, 100]; got {target_pct}")
    if knee and not (0.0 < rel_tol < 1.0 and max_probes >= 1):
        raise ConfigError(f"--rel-tol must be in (0, 1) and --max-probes >= 1; got {rel_tol}, "
                          f"{max_probes}")
    check_policies([policy], url=url, switch=switch)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    if trace is None:
        spec = {"rate_rps": rates_rps[0] if rates_rps else 20.0, "requests": 600, **(synth or {})}
        trace = synth_trace(out / "trace.arrow", **spec)
    trace = Path(trace)
    base_rps, n_rows = trace_rate_rps(trace)
    progress = Progress(len(rates_rps) + (max_probes if knee else 0), quiet=quiet)
    options = dict(replay_options or {})
    if "rate_scale" in options or "speed" in options:
        raise ConfigError("a sweep sets the rate itself; drop --rate-scale/--speed")
    knee_result = None
    with control_plane(url, sim_config=sim_config) as target:
        policy = active_policy(target, policy, switch=switch, policy_path=policy_path)
        points = RatePoints(trace, out, url=target, base_rps=base_rps, policy=policy,
                            drain_s=drain_s, replay_options=options, progress=progress)
        for rate in rates_rps:
            points.attainment(rate)
        if knee:
            knee_result = _search_knee(points, target_pct=target_pct, rel_tol=rel_tol,
                                       max_probes=max_probes)
    ordered = sorted(points.points.values(), key=lambda p: p["rate_rps"])
    result = {
        "cpbench_version": __version__, "experiment": experiment, "trace": str(trace),
        "trace_rate_rps": base_rps, "trace_requests": n_rows, "policy": policy,
        "target": url or "embedded", "target_pct": target_pct, "points": ordered,
        "knee": None if knee_result is None else knee_result.to_dict(),
        "answer": {"knee_rps": None if knee_result is None else knee_result.knee_rps,
                   "policy": policy},
    }
    write_json(out / "experiment.json", result)
    write_comparison_report([Path(p["dir"]) for p in ordered], out,
                            title=f"cpbench {experiment}: {trace.name}"
                                  f"{' under ' + policy if policy else ''}")
    print_sweep(result, stdout)
    return result


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def print_sweep(result: dict, stdout: TextIO | None = None) -> None:
    """Per rate: attainment and p99 latencies; then the knee, when searched."""
    stream = stdout if stdout is not None else sys.stdout
    target = result["target_pct"]
    rows = [[_fmt(p["rate_rps"], 2), _fmt(p["slo_attainment_pct"]),
             _fmt(p["ttft_from_intended_p99_ms"]), _fmt(p["e2e_from_intended_p99_ms"]),
             "yes" if p["slo_attainment_pct"] >= target else "no"]
            for p in result["points"]]
    print(format_table(["rate rps", "SLO attained %", "TTFT p99 ms", "E2E p99 ms",
                        f">= {target:g}%"], rows), file=stream)
    knee = result["knee"]
    if knee is not None:
        if knee["knee_rps"] is None:
            print(f"knee: none — {knee['note']}", file=stream)
        else:
            high = "-" if knee["high_rps"] is None else f"{knee['high_rps']:.2f}"
            print(f"knee: {knee['knee_rps']:.2f} rps (attainment >= {target:g}% up to here; "
                  f"fails at {high} rps{'' if knee['converged'] else '; ' + knee['note']})",
                  file=stream)

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
from cpbench.errors import ClientSaturated, ConfigError, TargetError
from cpbench.experiments import DEFAULT_PROBE_S, KNEE_CRITERIA
from cpbench.experiments.compare import write_comparison_report
from cpbench.experiments.runs import (check_policies, control_plane, output_dir, print_where,
                                      replay_one, synth_trace, write_json)
from cpbench.experiments.control import PolicyAdmin, Progress, format_table, wait_idle
from cpbench.experiments.stats import KneeResult, find_knee, run_arrays, run_metrics
from cpbench.experiments.steady import probe_health
from cpbench.vocab import POLICY_PATH


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


def probe_rate(rate_rps: float) -> float:
    """A rate as it is run and named: three significant digits (``rate-30.8``), so the rate a
    directory names is the rate its trace was scaled to, and bisection midpoints stay readable."""
    return float(f"{float(rate_rps):.3g}")


def _point_dir(out: Path, rate_rps: float) -> Path:
    return out / f"rate-{rate_rps:g}"


class RatePoints:
    """Measured rate points of one sweep; each rate is replayed at most once.

    Each probe sends the trace's rows scheduled in its first ``probe_s`` seconds at the probe's
    rate, and ``steady.probe_health`` judges whether it reached a steady state. ``measure``
    returns the knee criterion's value, or NaN for a probe too short to count as passing (a
    too-short probe that fails still fails: more time would only have queued more).
    """

    def __init__(self, trace: Path, out: Path, *, url: str, base_rps: float, policy: str | None,
                 drain_s: float, replay_options: dict[str, Any], progress: Progress,
                 probe_s: float, criterion: str = "slo", target_pct: float = 95.0) -> None:
        self.trace, self.out, self.url, self.base_rps = trace, out, url, base_rps
        self.policy, self.drain_s = policy, drain_s
        self.options, self.progress = replay_options, progress
        self.probe_s, self.metric = probe_s, KNEE_CRITERIA[criterion]
        self.target_pct = target_pct
        self.points: dict[float, dict] = {}

    def run(self, rate_rps: float) -> dict:
        """The point at ``rate_rps`` (replays once, then remembers)."""
        key = probe_rate(rate_rps)
        if key not in self.points:
            self.progress.start(f"rate {key:g} rps")
            target = _point_dir(self.out, key)
            scale = key / self.base_rps
            saturated = None
            try:
                result_dir = replay_one(self.trace, target, url=self.url, policy=self.policy,
                                        options={**self.options, "rate_scale": scale,
                                                 "duration_s": self.probe_s})
            except ClientSaturated as exc:
                # The client, not the target, could not keep this rate: the probe cannot
                # tell how the target fares, and a higher rate would not either.
                result_dir, saturated = target, str(exc)
            wait_idle(self.url, drain_s=self.drain_s)
            metrics = run_metrics(run_arrays(result_dir))
            health = probe_health(result_dir).to_dict()
            self.points[key] = {"rate_rps": key, "rate_scale": scale, "dir": str(result_dir),
                                **metrics, **health, "client_saturated": saturated}
            self.progress.finish()
        return self.points[key]

    def measure(self, rate_rps: float) -> float:
        """The criterion's value at ``rate_rps``; NaN when the probe passed but was too short,
        or when the client could not send at that rate (``client_saturated``)."""
        point = self.run(rate_rps)
        if point["client_saturated"]:
            return math.nan
        value = point[self.metric]
        value = math.nan if value is None else float(value)
        return math.nan if point["too_short"] and value >= self.target_pct else value


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
    ok = {p["rate_rps"]: points.measure(p["rate_rps"]) >= target_pct for p in measured}
    failing = [r for r, passed in ok.items() if not passed]
    passing = [r for r, passed in ok.items() if passed and (not failing or r < failing[0])]
    start = passing[-1] if passing else (failing[0] if failing else points.base_rps)
    return find_knee(points.measure, start_rps=start, target_pct=target_pct,
                     rel_tol=rel_tol, max_probes=max_probes + len(measured),
                     upper_rps=failing[0] if failing and passing else None,
                     round_rate=probe_rate)


def synth_requests(requests: int, rates_rps: Sequence[float], probe_s: float) -> int:
    """Requests a synthesized sweep workload holds: at least ``requests``, and enough to fill
    ``probe_s`` at four times the highest starting rate (two doublings of the knee search)."""
    return max(int(requests), math.ceil(probe_s * 4.0 * max(rates_rps)))


def sweep(trace: str | Path | None, *, rates_rps: Sequence[float], out_dir: str | Path,
          policy: str | None = None, url: str | None = None, knee: bool = False,
          target_pct: float = 95.0, rel_tol: float = 0.05, max_probes: int = 8,
          knee_by: str = "slo", probe_s: float = DEFAULT_PROBE_S,
          switch: bool = True, policy_path: str = POLICY_PATH, drain_s: float = 1.0,
          sim_config: str | Path | None = None, replay_options: dict[str, Any] | None = None,
          experiment: str = "sweep", quiet: bool = False, stdout: TextIO | None = None,
          synth: dict[str, Any] | None = None) -> dict:
    """Replay ``trace`` at each of ``rates_rps`` (and, with ``knee``, search the knee).

    Parameters
    ----------
    trace
        The trace; its own mean rate is rate scale 1. ``None`` synthesizes one into
        ``DIR/trace.arrow`` at the first rate from ``synth`` (``synth_trace`` arguments), with
        ``synth_requests`` requests so every probe can last ``probe_s``.
    rates_rps
        Rates to measure, requests per second (each run at ``probe_rate(rate)``); empty with
        ``knee``: start at the trace's (or the synthesized workload's) rate.
    out_dir
        Gets ``rate-<rps>/`` per point, ``experiment.json`` and ``report.html``/``.md``.
    policy
        Set once through the admin API before the first run (``None``: leave it).
    knee, target_pct, rel_tol, max_probes, knee_by
        Search the highest rate whose criterion (``knee_by``: ``slo`` attainment or
        ``throughput`` keep-up, ``steady.keep_up_pct``) stays >= ``target_pct``, to a relative
        width of ``rel_tol``, with at most ``max_probes`` runs beyond the fixed list. A probe
        too short to reach a steady state (``steady.probe_health``) never passes.
    probe_s
        Each rate point sends the rows scheduled in its first ``probe_s`` seconds.
    url, switch, policy_path, drain_s, sim_config, replay_options
        As in ``compare``.

    Returns
    -------
    dict
        What ``experiment.json`` holds: ``points`` (per rate: attainment, latency percentiles,
        keep-up, steady-state verdict, result dir) and, with ``knee``, ``knee``
        (``stats.KneeResult.to_dict`` plus ``criterion``).
    """
    answer_stream = stdout if stdout is not None else sys.stdout
    if quiet:
        stdout = io.StringIO()  # --quiet: no progress, no answer table (see the JSON)
    if not rates_rps and not knee:
        raise ConfigError("--rates needs at least one rate, like 10,50,100")
    if not 0.0 < target_pct <= 100.0:
        raise ConfigError(f"--target-pct is a percent in (0, 100]; got {target_pct}")
    if knee and not (0.0 < rel_tol < 1.0 and max_probes >= 1):
        raise ConfigError(f"--rel-tol must be in (0, 1) and --max-probes >= 1; got {rel_tol}, "
                          f"{max_probes}")
    if knee_by not in KNEE_CRITERIA:
        raise ConfigError(f"--knee-by must be one of {', '.join(KNEE_CRITERIA)}; got {knee_by!r}")
    if not (math.isfinite(probe_s) and probe_s > 0):
        raise ConfigError(f"--probe-s must be positive seconds; got {probe_s}")
    options = dict(replay_options or {})
    if "rate_scale" in options or "speed" in options or "duration_s" in options:
        raise ConfigError("a sweep sets each run's rate and length itself; drop --speed and "
                          "--duration (each rate lasts --probe-s)")
    check_policies([policy], url=url, switch=switch)
    out = output_dir(out_dir)
    if trace is None:
        spec = {"rate_rps": 20.0, "requests": 600, **(synth or {})}
        if rates_rps:
            spec["rate_rps"] = rates_rps[0]
        rates_rps = list(rates_rps) or [spec["rate_rps"]]
        spec["requests"] = synth_requests(spec["requests"], rates_rps, probe_s)
        trace = synth_trace(out / "trace.arrow", **spec)
    trace = Path(trace)
    base_rps, n_rows = trace_rate_rps(trace)
    progress = Progress(len(rates_rps) + (max_probes if knee else 0), quiet=quiet)
    knee_result = None
    with control_plane(url, sim_config=sim_config) as target:
        policy = active_policy(target, policy, switch=switch, policy_path=policy_path)
        points = RatePoints(trace, out, url=target, base_rps=base_rps, policy=policy,
                            drain_s=drain_s, replay_options=options, progress=progress,
                            probe_s=probe_s, criterion=knee_by, target_pct=target_pct)
        for rate in rates_rps:
            points.run(rate)
        if knee:
            knee_result = _search_knee(points, target_pct=target_pct, rel_tol=rel_tol,
                                       max_probes=max_probes)
    ordered = sorted(points.points.values(), key=lambda p: p["rate_rps"])
    knee_dict = None
    if knee_result is not None:
        knee_dict = {**knee_result.to_dict(), "criterion": knee_by}
        short = [p for p in ordered if p["too_short"] and not p["client_saturated"]
                 and p[KNEE_CRITERIA[knee_by]] is not None
                 and p[KNEE_CRITERIA[knee_by]] >= target_pct]
        notes = [knee_dict["note"]]
        if short:
            at = ", ".join(f"{p['rate_rps']:g}" for p in short)
            notes.append(f"{len(short)} probe(s) too short to reach a steady state (at {at} "
                         f"rps) counted as not passing; a longer --probe-s tells")
        saturated = [p for p in ordered if p["client_saturated"]]
        if saturated:
            at = ", ".join(f"{p['rate_rps']:g}" for p in saturated)
            notes.append(f"the client could not send at {at} rps and counted it as not "
                         f"passing: the target's knee may be higher; measure with more "
                         f"--workers or Ray nodes")
        knee_dict["note"] = "; ".join(filter(None, notes))
    result = {
        "cpbench_version": __version__, "experiment": experiment, "trace": str(trace),
        "trace_rate_rps": base_rps, "trace_requests": n_rows, "policy": policy,
        "target": url or "embedded", "target_pct": target_pct, "knee_by": knee_by,
        "probe_s": probe_s, "points": ordered, "knee": knee_dict,
        "answer": {"knee_rps": None if knee_result is None else knee_result.knee_rps,
                   "policy": policy},
    }
    write_json(out / "experiment.json", result)
    write_comparison_report([Path(p["dir"]) for p in ordered], out,
                            title=f"cpbench {experiment}: {trace.name}"
                                  f"{' under ' + policy if policy else ''}")
    print_sweep(result, stdout)
    if experiment == "sweep":  # quiet or not, say where the answer is
        print_where(out / "experiment.json", out, answer_stream)
    return result


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def print_sweep(result: dict, stdout: TextIO | None = None) -> None:
    """Per rate: attainment, keep-up, p99 latencies, whether the probe reached a steady state;
    then the knee, when searched."""
    stream = stdout if stdout is not None else sys.stdout
    target = result["target_pct"]
    metric = KNEE_CRITERIA[result.get("knee_by") or "slo"]
    rows = []
    for p in result["points"]:
        value = p.get(metric)
        passed = (value is not None and value >= target and not p.get("too_short")
                  and not p.get("client_saturated"))
        rows.append([_fmt(p["rate_rps"], 2), _fmt(p["slo_attainment_pct"]),
                     _fmt(p.get("keep_up_pct")), _fmt(p["ttft_from_intended_p99_ms"]),
                     _fmt(p["e2e_from_intended_p99_ms"]),
                     "client saturated" if p.get("client_saturated") else
                     "too short" if p.get("too_short") and value is not None
                     and value >= target else ("yes" if passed else "no")])
    what = "SLO" if metric == "slo_attainment_pct" else "keep-up"
    print(format_table(["rate rps", "SLO attained %", "keep-up %", "TTFT p99 ms", "E2E p99 ms",
                        f"{what} >= {target:g}%"], rows), file=stream)
    for p in result["points"]:
        if p.get("client_saturated"):
            print(f"rate {p['rate_rps']:g} rps: {p['client_saturated']}", file=stream)
        elif p.get("too_short"):
            print(f"rate {p['rate_rps']:g} rps: too short for a steady state: {p['too_short']}",
                  file=stream)
    knee = result["knee"]
    if knee is not None:
        if knee["knee_rps"] is None:
            print(f"knee: none — {knee['note']}", file=stream)
        else:
            high = "-" if knee["high_rps"] is None else f"{knee['high_rps']:.2f}"
            note = f"; {knee['note']}" if knee["note"] else ""
            print(f"knee: {knee['knee_rps']:.2f} rps ({what} >= {target:g}% up to here; "
                  f"fails at {high} rps{note})", file=stream)

"""The predefined experiments (``cpbench experiment --name ...``) and ``cpbench run``.

- ``throughput``: per policy, a rate sweep and the saturation knee (``sweep.sweep``); the
  best policy is the one with the highest knee;
- ``latency``: every policy at one fixed load, compared on end-to-end p99 from the intended
  time (``compare.compare``);
- ``slo``: every policy at one load, compared on SLO attainment, with attainment per priority;
- ``mixed_ratio``: the LLM share of a hybrid workload swept (0, 0.25, 0.5, 0.75, 1 by default),
  every policy at each share, on one control plane.

Without a trace, each synthesizes one (``cpbench.record.synth``, seeded) and keeps it in the
output directory. Each hands on ``DIR/experiment.json``, a comparison report and the answer.
``run`` is the one-shot "synthesize and replay" of the seed tool.
"""
from __future__ import annotations

import io
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TextIO

from cpbench import __version__
from cpbench.errors import ConfigError
from cpbench.experiments.compare import analyse, compare, run_policies, write_comparison_report
from cpbench.experiments.control import Progress, format_table
from cpbench.experiments.runs import (check_policies, control_plane, output_dir, print_where,
                                      replay_one, synth_trace, write_json)
from cpbench.experiments.stats import PRIORITIES
from cpbench.experiments.sweep import DEFAULT_PROBE_S, active_policy, sweep, synth_requests
from cpbench.vocab import POLICY_PATH

EXPERIMENTS = ("throughput", "latency", "slo", "mixed_ratio")
DEFAULT_RATIOS = (0.0, 0.25, 0.5, 0.75, 1.0)


def _fmt(v: float | None) -> str:
    return "-" if v is None or v != v else f"{v:.1f}"


def _throughput(trace: Path, out: Path, policies: Sequence[str | None], rates: Sequence[float],
                common: dict, knee_opts: dict, stdout: TextIO | None) -> dict:
    per_policy = {}
    # One control plane for every policy, as in compare: only the policy differs.
    with control_plane(common["url"], sim_config=common["sim_config"]) as target:
        shared = {**common, "url": target, "sim_config": None}
        for policy in policies:
            sub = out / policy if policy else out
            result = sweep(trace, rates_rps=rates, out_dir=sub, policy=policy, knee=True,
                           experiment="throughput", stdout=stdout, **shared, **knee_opts)
            per_policy[policy or result["policy"] or "(as configured)"] = result
    knees = {p: r["answer"]["knee_rps"] for p, r in per_policy.items()}
    found = {p: k for p, k in knees.items() if k is not None}
    best = max(found, key=found.get) if found else None
    return {"policies": per_policy, "answer": {"knee_rps": knees, "best_policy": best,
                                               "best_knee_rps": found.get(best)}}


def _slo_by_priority(result: dict) -> list[list[str]]:
    """Per policy, SLO attainment per priority (kinds pooled, weighted by their requests)."""
    rows = []
    for name, entry in result["stats"]["policies"].items():
        row = [name]
        for prio in PRIORITIES:
            groups = [g for g in entry["groups"]
                      if g["kind"] != "all" and g["priority"] == prio]
            n = sum(g["requests"] for g in groups)
            met = sum(g["metrics"]["slo_attainment_pct"]["mean"] * g["requests"]
                      for g in groups)
            row.append(_fmt(met / n) if n else "-")
        rows.append(row)
    return rows


def _mixed_ratio(out: Path, policies: Sequence[str], ratios: Sequence[float], synth: dict,
                 common: dict, stats_opts: dict, stdout: TextIO | None) -> dict:
    points, all_dirs = [], []
    progress = Progress(len(ratios) * len(policies) * common["repeat"],
                        quiet=common["quiet"])
    with control_plane(common["url"], sim_config=common["sim_config"]) as target:
        for ratio in ratios:
            sub = out / f"ratio-{ratio:g}"
            trace = synth_trace(sub / "trace.arrow", mode="hybrid", llm_ratio=ratio, **synth)
            dirs = run_policies(trace, policies, sub, url=target, repeat=common["repeat"],
                                switch=common["switch"], policy_path=common["policy_path"],
                                drain_s=common["drain_s"],
                                replay_options=common["replay_options"], progress=progress,
                                label=f"LLM ratio {ratio:g}, ")
            all_dirs += [d for ds in dirs.values() for d in ds]
            stats, best = analyse(dirs, baseline=policies[0], **stats_opts)
            write_json(sub / "comparison.json", {"trace": str(trace), "llm_ratio": ratio,
                                                 "stats": stats, "best_policy": best})
            att = {p: e["groups"][0]["metrics"]["slo_attainment_pct"]["mean"]
                   for p, e in stats["policies"].items()}
            points.append({"llm_ratio": ratio, "trace": str(trace), "attainment_pct": att,
                           "best_policy": best,
                           "runs": {p: [str(d) for d in ds] for p, ds in dirs.items()}})
    rows = [[f"{p['llm_ratio']:g}", *(_fmt(p["attainment_pct"][q]) for q in policies),
             p["best_policy"]["policy"] if p["best_policy"]["verdict"] in
             ("better", "only policy") else "none distinguishable"]
            for p in points]
    print(format_table(["LLM ratio", *(f"{q} SLO %" for q in policies), "best policy"], rows),
          file=stdout or sys.stdout)
    write_comparison_report(all_dirs, out, title=f"cpbench mixed_ratio: {', '.join(policies)}")
    return {"points": points, "answer": {"best_policy_by_ratio": {
        f"{p['llm_ratio']:g}": {"policy": p["best_policy"]["policy"],
                                   "verdict": p["best_policy"]["verdict"]} for p in points}}}


def experiment(name: str, *, out_dir: str | Path, trace: str | Path | None = None,
               policies: Sequence[str] | None = None, rates_rps: Sequence[float] = (),
               rate_rps: float = 20.0, requests: int = 600, pattern: str = "poisson",
               mode: str = "hybrid", llm_ratio: float = 0.5,
               ratios: Sequence[float] = DEFAULT_RATIOS, target_pct: float = 95.0,
               seed: int = 0, url: str | None = None, repeat: int = 1, switch: bool = True,
               policy_path: str = POLICY_PATH, drain_s: float = 1.0,
               sim_config: str | Path | None = None, replay_options: dict | None = None,
               confidence: float = 0.95, n_resamples: int = 1000, rel_tol: float = 0.05,
               max_probes: int = 8, knee_by: str = "throughput",
               probe_s: float = DEFAULT_PROBE_S, quiet: bool = False,
               stdout: TextIO | None = None) -> dict:
    """Run one predefined experiment; returns what ``DIR/experiment.json`` holds.

    ``trace`` replaces the synthesized workload (``rate_rps``, ``requests``, ``pattern``,
    ``mode``, ``llm_ratio``, ``seed``); ``mixed_ratio`` always synthesizes one per ratio.
    The throughput experiment probes ``rates_rps`` (default: ``rate_rps`` when synthesized,
    the trace's rate otherwise), then searches the knee by ``knee_by`` (``throughput``: the
    control plane keeps up with ``target_pct`` of the load; ``slo``: attainment), each probe
    lasting ``probe_s``; its synthesized workload is sized for that (``sweep.synth_requests``).
    ``policies`` defaults to the four policies of the embedded control plane (throughput: the
    configured one, no switching). Other parameters as in ``compare`` and ``sweep``.
    """
    answer_stream = stdout if stdout is not None else sys.stdout
    if quiet:
        stdout = io.StringIO()  # --quiet: no progress, no answer table (see the JSON)
    from cpbench.sim.config import POLICY_NAMES
    if name not in EXPERIMENTS:
        raise ConfigError(f"--name must be one of {', '.join(EXPERIMENTS)}; got {name!r}")
    check_policies(list(policies or []), url=url, switch=switch)
    out = output_dir(out_dir)
    synth = {"rate_rps": rate_rps, "requests": requests, "pattern": pattern, "seed": seed}
    if name == "throughput" and trace is None:
        rates_rps = list(rates_rps) or [rate_rps]  # a requested rate is the rate run
        synth["requests"] = synth_requests(requests, rates_rps, probe_s)
    if name != "mixed_ratio":
        trace = Path(trace) if trace is not None else synth_trace(
            out / "trace.arrow", mode=mode, llm_ratio=llm_ratio, **synth)
    common = {"url": url, "switch": switch, "policy_path": policy_path, "drain_s": drain_s,
              "sim_config": sim_config, "quiet": quiet}
    stats_opts = {"confidence": confidence, "n_resamples": n_resamples, "seed": seed}
    if name == "throughput":
        body = _throughput(trace, out, list(policies) if policies else [None], rates_rps,
                           {**common, "replay_options": replay_options},
                           {"target_pct": target_pct, "rel_tol": rel_tol,
                            "max_probes": max_probes, "knee_by": knee_by, "probe_s": probe_s},
                           stdout)
        answer = body["answer"]
        if len(body["policies"]) > 1:
            rows = [[p, _fmt(k)] for p, k in answer["knee_rps"].items()]
            print(format_table(["policy", "knee rps"], rows), file=stdout or sys.stdout)
            print(f"best policy on throughput: {answer['best_policy']}",
                  file=stdout or sys.stdout)
    elif name in ("latency", "slo"):
        metric = "e2e_from_intended_p99_ms" if name == "latency" else "slo_attainment_pct"
        body = compare(trace, policies=list(policies or POLICY_NAMES), out_dir=out,
                       repeat=repeat, replay_options=replay_options, experiment=name,
                       metric=metric, json_name="experiment.json", stdout=stdout,
                       **common, **stats_opts)
        if name == "slo":
            print(format_table(["policy", *(f"{p} SLO %" for p in PRIORITIES)],
                               _slo_by_priority(body)), file=stdout or sys.stdout)
        print_where(out / "experiment.json", out, answer_stream)
        return body
    else:
        body = _mixed_ratio(out, list(policies or POLICY_NAMES), ratios, synth,
                            {**common, "repeat": repeat,
                             "replay_options": dict(replay_options or {})},
                            stats_opts, stdout)
    result = {"cpbench_version": __version__, "experiment": name,
              "trace": None if trace is None else str(trace), **body}
    write_json(out / "experiment.json", result)
    print_where(out / "experiment.json", out, answer_stream)
    return result


def run(*, out_dir: str | Path, policy: str | None, requests: int, rate_rps: float,
        mode: str = "llm", pattern: str = "poisson", llm_ratio: float = 0.5, seed: int = 0,
        url: str | None = None, switch: bool = True, policy_path: str = POLICY_PATH,
        sim_config: str | Path | None = None, replay_options: dict | None = None,
        synth_options: dict | None = None, stdout: TextIO | None = None) -> Path:
    """Synthesize a trace into ``DIR/trace.arrow``, set the policy, replay it into ``DIR/run``.

    Returns the result directory. What it prints is the replay's own summary table (one
    summary, one source: no second table re-derived from the results).
    """
    check_policies([policy], url=url, switch=switch)
    out = output_dir(out_dir)
    trace = synth_trace(out / "trace.arrow", rate_rps=rate_rps, requests=requests,
                        pattern=pattern, mode=mode, llm_ratio=llm_ratio, seed=seed,
                        **(synth_options or {}))
    with control_plane(url, sim_config=sim_config) as target:
        policy = active_policy(target, policy, switch=switch, policy_path=policy_path)
        result_dir = replay_one(trace, out / "run", url=target, policy=policy,
                                options={"quiet": False, **(replay_options or {})})
    return result_dir

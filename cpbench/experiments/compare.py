"""``cpbench compare``: one trace, replayed once per scheduling policy on one control plane.

For each policy (and each ``--repeat``) the policy is switched through the control plane's
admin API and read back, the trace is replayed into ``DIR/<policy>``
(``DIR/<policy>/<policy>-rK`` with repeats), and the control plane drains before the next run.
Repeats are interleaved (a b c a b c, not a a b b c c) so a slow drift of the host hits every
policy alike. Hands on ``DIR/comparison.json`` (the paired statistics of
``stats.paired_comparison``), ``DIR/comparison.md`` (the paired differences per kind and
priority as a table), one comparison report (``DIR/report.html`` + ``report.md`` via
``cpbench.reporting``) and the answer table.
"""
from __future__ import annotations

import io
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, TextIO

from cpbench import __version__
from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.redact import redact_url
from cpbench.experiments.control import PolicyAdmin, Progress, format_table, wait_idle
from cpbench.experiments.runs import (check_policies, control_plane, output_dir, print_where,
                                      replay_one, run_dir, synth_trace, write_json)
from cpbench.experiments.stats import (higher_is_better, metric_label, metric_names,
                                       paired_comparison, run_arrays)
from cpbench.vocab import POLICY_PATH



def run_policies(trace: Path, policies: Sequence[str], out_dir: Path, *, url: str,
                 repeat: int, switch: bool, policy_path: str, drain_s: float,
                 replay_options: dict[str, Any], progress: Progress,
                 label: str = "") -> dict[str, list[Path]]:
    """Replay ``trace`` once per policy and repeat on the control plane at ``url``."""
    admin = PolicyAdmin(url, policy_path) if switch else None
    if admin is not None:
        admin.get()  # a control plane without the switch fails here, before any run
    dirs: dict[str, list[Path]] = {p: [] for p in policies}
    for r in range(repeat):
        for policy in policies:
            rep = f", repeat {r + 1}/{repeat}" if repeat > 1 else ""
            progress.start(f"{label}policy {policy}{rep}")
            if admin is not None:
                admin.set(policy)
            target = run_dir(out_dir, policy, r, repeat)
            dirs[policy].append(replay_one(trace, target, url=url,
                                           policy=policy, options=replay_options))
            wait_idle(url, drain_s=drain_s)
            progress.finish()
    return dirs


def rank(stats: dict, metric: str, *, higher_better: bool) -> list[tuple[str, float]]:
    """Policies by the mean over repeats of one overall metric, best first (NaN last)."""
    out = []
    for name, entry in stats["policies"].items():
        value = entry["groups"][0]["metrics"][metric]["mean"]
        out.append((name, value))
    sign = -1.0 if higher_better else 1.0
    return sorted(out, key=lambda kv: (math.isnan(kv[1]), sign * kv[1]
                                       if not math.isnan(kv[1]) else 0.0))


def best_policy(runs: dict[str, list], stats: dict, metric: str, *, higher_better: bool,
                confidence: float, n_resamples: int, seed: int) -> dict:
    """The best policy on ``metric`` and whether the data tell it from the runner-up."""
    order = rank(stats, metric, higher_better=higher_better)
    best = {"metric": metric, "policy": order[0][0], "value": order[0][1]}
    if len(order) < 2:
        return {**best, "runner_up": None, "verdict": "only policy"}
    second = order[1][0]
    pair = paired_comparison({second: runs[second], best["policy"]: runs[best["policy"]]},
                             baseline=second, confidence=confidence,
                             n_resamples=n_resamples, seed=seed)
    d = next(x for x in pair["differences"] if x["kind"] == "all" and x["metric"] == metric)
    return {**best, "runner_up": second, "diff": d["diff"], "ci_low": d["ci_low"],
            "ci_high": d["ci_high"], "verdict": d["verdict"],
            "distinguishable": d["verdict"] == "better"}


def _fmt(v: float | None, digits: int = 1) -> str:
    return "-" if v is None or not math.isfinite(v) else f"{v:.{digits}f}"


def answer_table(stats: dict) -> str:
    """One row per policy: attainment (± spread), paired difference with CI, p99 latencies."""
    diffs = {(d["policy"], d["metric"]): d for d in stats["differences"]
             if d["kind"] == "all"}
    rows = []
    for name, entry in stats["policies"].items():
        m = entry["groups"][0]["metrics"]
        att = m["slo_attainment_pct"]
        spread = f" ±{att['std']:.1f}" if att["n"] > 1 else ""
        d = diffs.get((name, "slo_attainment_pct"))
        delta = "baseline" if d is None else (
            f"{d['diff']:+.1f} [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}] {d['verdict']}")
        rows.append([name, f"{_fmt(att['mean'])}{spread}", delta,
                     _fmt(m["ttft_from_intended_p99_ms"]["mean"]),
                     _fmt(m["e2e_from_intended_p99_ms"]["mean"])])
    repeats = max(e["repeats"] for e in stats["policies"].values())
    att_head = "SLO attained %" + (f" (±sd, {repeats} runs)" if repeats > 1 else "")
    ci_head = f"vs baseline (pp, {100 * stats['confidence']:g}% CI)"
    return format_table(["policy", att_head, ci_head, "TTFT p99 ms", "E2E p99 ms"], rows)


def analyse(dirs: dict[str, list[Path]], *, baseline: str, confidence: float,
            n_resamples: int, seed: int, metric: str = "slo_attainment_pct",
            higher_better: bool = True) -> tuple[dict, dict]:
    """Paired statistics of the runs and the best policy on ``metric``."""
    runs = {p: [run_arrays(d) for d in ds] for p, ds in dirs.items()}
    stats = paired_comparison(runs, baseline=baseline, confidence=confidence,
                              n_resamples=n_resamples, seed=seed)
    best = best_policy(runs, stats, metric, higher_better=higher_better,
                       confidence=confidence, n_resamples=n_resamples, seed=seed)
    return stats, best


def write_comparison_report(dirs: Sequence[Path], out_dir: Path, title: str,
                            stats: dict | None = None) -> Path:
    """``DIR/report.html`` and ``DIR/report.md`` over every run directory, led by the paired
    differences of ``stats`` (``paired_comparison``) when given."""
    from cpbench.reporting.html import write_report
    lead = None if stats is None else [differences_table(stats)]
    return write_report(list(dirs), out_dir / "report.html",
                        markdown_path=out_dir / "report.md", title=title, lead=lead)


def differences_table(stats: dict):
    """The paired differences over all requests, one row per policy and metric, as a report
    table: what a comparison's reader came for, so the report leads with it."""
    from cpbench.reporting.tables import Table
    rows = [[d["policy"], metric_label(d["metric"]), _fmt(d["baseline"]), _fmt(d["candidate"]),
             f"{d['diff']:+.1f}" if math.isfinite(d["diff"]) else "-",
             f"[{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}]", d["verdict"]]
            for d in stats["differences"] if d["kind"] == "all" and d["priority"] == "all"]
    return Table(
        f"Paired differences vs {stats['baseline']}",
        ["policy", "metric", stats["baseline"], "policy value", "difference",
         f"{100 * stats['confidence']:g}% CI", "verdict"], rows,
        note=f"{stats['paired_rows']} requests paired on the trace row; percentile-bootstrap "
             f"intervals ({stats['n_resamples']} resamples, seed {stats['seed']}). "
             f"Indistinguishable: the interval holds 0. Attainment in percentage points, "
             f"latencies in ms from the intended send time; per kind and priority in "
             f"comparison.md.")


def compare(trace: str | Path | None, *, policies: Sequence[str], out_dir: str | Path,
            url: str | None = None, repeat: int = 1, switch: bool = True,
            policy_path: str = POLICY_PATH, baseline: str | None = None,
            drain_s: float = 1.0, confidence: float = 0.95, n_resamples: int = 1000,
            seed: int = 0, sim_config: str | Path | None = None,
            replay_options: dict[str, Any] | None = None, quiet: bool = False,
            stdout: TextIO | None = None, experiment: str = "compare",
            metric: str = "slo_attainment_pct", json_name: str = "comparison.json",
            targets: Mapping[str, str] | None = None, launch: Sequence[str] | None = None,
            start_timeout_s: float = 60.0, synth: dict[str, Any] | None = None) -> dict:
    """Replay ``trace`` once per policy (and repeat) and compare the policies request by request.

    Parameters
    ----------
    trace
        The trace every policy replays; ``None`` synthesizes one from ``synth``
        (``sweep.synth_trace`` arguments) into ``DIR/trace.arrow``.
    policies
        Policy names, in display order; the first is the baseline unless ``baseline`` says.
    out_dir
        Gets one subdirectory per policy, ``comparison.json``, ``comparison.md`` and
        ``report.html``/``.md``.
    url
        The control plane; ``None`` starts the embedded one (``cpbench sim``).
    repeat
        Runs per policy; the answer then shows each metric's spread across repeats.
    switch, policy_path
        Switch policies through ``POST/GET {url}{policy_path}``; ``switch=False`` replays
        without switching (the runs are then labelled only).
    drain_s
        Pause after each run before the control plane is checked idle.
    confidence, n_resamples, seed
        Bootstrap settings of the paired intervals (seeded: same runs, same intervals).
    sim_config
        JSON config of the embedded control plane (``cpbench sim --config``).
    replay_options
        Passed to ``cpbench.replaying.run.run_replay`` (``speed``, ``workers``, ``timeout_s`` ...).
    targets, launch, start_timeout_s
        Compare deployments instead of policies (``experiments.targets``): {name: base URL}
        and ``NAME=COMMAND with {port}`` lines cpbench starts, waits for (at most
        ``start_timeout_s``) and stops; ``policies`` is then ignored.
    experiment, metric, json_name
        The name recorded in the JSON, the overall metric that picks the best policy
        (``stats.metric_names``; attainment higher is better, latencies lower), and the JSON
        file written into ``out_dir``.

    Returns
    -------
    dict
        What ``comparison.json`` holds.
    """
    answer_stream = stdout if stdout is not None else sys.stdout
    if quiet:
        stdout = io.StringIO()  # --quiet: no progress, no answer table (see the JSON)
    deploying = bool(targets or launch)
    if deploying:  # deployments (experiments.targets) take the place of policies
        from cpbench.experiments.targets import compare_deployments, target_names
        policies = target_names(targets, launch, url=url, policies=policies)
    policies = list(policies)
    if not policies:
        raise ConfigError("--policies needs at least one policy, like fifo,slo_aware")
    if repeat < 1:
        raise ConfigError(f"--repeat must be at least 1; got {repeat}")
    baseline = baseline or policies[0]
    if metric not in metric_names():
        raise ConfigError(f"metric must be one of {', '.join(metric_names())}; got {metric!r}")
    if baseline not in policies:
        raise ConfigError(f"--baseline {baseline!r} is not in --policies {policies}")
    if not deploying:
        check_policies(policies, url=url, switch=switch)
    if trace is None and synth is None:
        raise ConfigError("compare needs a TRACE, or workload options to synthesize one")
    if trace is not None and not Path(trace).is_file():
        raise ConfigError(f"trace {str(trace)!r} does not exist; pass a trace file such as "
                          f"traces/burst.arrow")
    out = output_dir(out_dir)
    if trace is None:
        trace = synth_trace(out / "trace.arrow", **(synth or {}))
    trace = Path(trace)
    progress = Progress(len(policies) * repeat, quiet=quiet)
    deployed: dict[str, dict] = {}
    if deploying:
        deployed, dirs = compare_deployments(trace, targets or {}, launch, out, repeat=repeat,
                                             drain_s=drain_s, start_timeout_s=start_timeout_s,
                                             replay_options=dict(replay_options or {}),
                                             progress=progress)
    else:
        with control_plane(url, sim_config=sim_config) as target:
            dirs = run_policies(trace, policies, out, url=target, repeat=repeat, switch=switch,
                                policy_path=policy_path, drain_s=drain_s,
                                replay_options=dict(replay_options or {}), progress=progress)
    stats, best = analyse(dirs, baseline=baseline, confidence=confidence,
                          n_resamples=n_resamples, seed=seed, metric=metric,
                          higher_better=higher_is_better(metric))
    result = {
        "cpbench_version": __version__, "experiment": experiment, "trace": str(trace),
        "target": url or "embedded", "policies": policies, "baseline": baseline,
        "repeat": repeat, "switched": switch,
        "runs": {p: [str(d) for d in ds] for p, ds in dirs.items()},
        "answer": {"best_policy": best},
        "stats": stats,
    }
    if deploying:  # which deployment each name was; launch commands are redacted
        result["target"] = "deployments"
        result["targets"] = {n: {"url": redact_url(d["url"]), "launch_command": d["command"]}
                             for n, d in deployed.items()}
    write_json(out / json_name, result)
    try:
        atomic_write(out / "comparison.md", differences_markdown(result))
    except OSError as exc:
        raise OutputError(f"cannot write {str(out / 'comparison.md')!r}: {exc.strerror}") from exc
    write_comparison_report([d for ds in dirs.values() for d in ds], out,
                            title=f"cpbench {experiment}: {', '.join(policies)} on {trace.name}",
                            stats=stats)
    print_answer(result, stdout)
    if experiment == "compare":  # quiet or not, say where the answer is
        print_where(out / json_name, out, answer_stream)
    return result


def differences_markdown(result: dict) -> str:
    """The paired differences per kind and priority as Markdown (``DIR/comparison.md``)."""
    stats = result["stats"]
    lines = [f"# Paired comparison: {', '.join(result['policies'])}", "",
             f"Trace `{result['trace']}`; baseline **{stats['baseline']}**; "
             f"{stats['paired_rows']} requests paired on the trace row; "
             f"{100 * stats['confidence']:g}% percentile-bootstrap intervals "
             f"({stats['n_resamples']} resamples, seed {stats['seed']}). A difference is "
             f"*indistinguishable* when its interval holds 0 or, with repeats, when the runs "
             f"of the two policies overlap. Latencies are from the intended send time.", "",
             "```", answer_table(stats), "```", "",
             "| policy | kind | priority | requests | metric | baseline | policy value | "
             "difference | CI | verdict |",
             "|---|---|---|---:|---|---:|---:|---:|---|---|"]
    for d in stats["differences"]:
        lines.append(f"| {d['policy']} | {d['kind']} | {d['priority']} | {d['rows']} | "
                     f"{d['metric']} | {_fmt(d['baseline'])} | {_fmt(d['candidate'])} | "
                     f"{_fmt(d['diff'])} | [{_fmt(d['ci_low'])}, {_fmt(d['ci_high'])}] | "
                     f"{d['verdict']} |")
    return "\n".join(lines) + "\n"


def print_answer(result: dict, stdout: TextIO | None = None) -> None:
    """The answer table and the best-policy line of a comparison: a best policy only where the
    paired interval tells it from the runner-up, else that no policy is distinguishable."""
    stream = stdout if stdout is not None else sys.stdout
    best = result["answer"]["best_policy"]
    print(answer_table(result["stats"]), file=stream)
    what = metric_label(best["metric"])
    unit = "%" if best["metric"] == "slo_attainment_pct" else "ms"
    if not best.get("runner_up"):
        print(f"only policy: {best['policy']} ({what} {_fmt(best['value'])} {unit})",
              file=stream)
        return
    diff_unit = "pp" if unit == "%" else "ms"
    interval = (f"{best['policy']} vs {best['runner_up']}: {best['diff']:+.1f} {diff_unit} "
                f"[{_fmt(best['ci_low'])}, {_fmt(best['ci_high'])}]")
    vs_baseline = [d["verdict"] for d in result["stats"]["differences"]
                   if d["kind"] == "all" and d["priority"] == "all"
                   and d["metric"] == best["metric"]]
    if best["verdict"] == "better":
        print(f"best policy on {what}: {best['policy']} ({_fmt(best['value'])} {unit}); "
              f"{interval}", file=stream)
    elif any(v in ("better", "worse") for v in vs_baseline):
        print(f"best policy on {what}: none alone, {best['policy']} and {best['runner_up']} "
              f"lead; {interval}, {best['verdict']}", file=stream)
    else:
        print(f"no policy is distinguishable on {what}: every difference's interval holds 0 "
              f"(leader {interval})", file=stream)

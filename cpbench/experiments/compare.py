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
import contextlib
import json
import math
import re
import sys
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cpbench import __version__
from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.experiments.control import (PolicyAdmin, Progress, embedded_sim, format_table,
                                         wait_idle)
from cpbench.experiments.stats import (higher_is_better, run_arrays, metric_names,
                                       paired_comparison)

_NAME_RE = re.compile(r"^[A-Za-z0-9_.-]+$")


def parse_list(text: str, *, what: str) -> list[str]:
    """A comma-separated option as a list of unique non-empty names."""
    items = [x.strip() for x in str(text).split(",") if x.strip()]
    if not items:
        raise ConfigError(f"{what} needs at least one name, like fifo,slo_aware; got {text!r}")
    dup = sorted({x for x in items if items.count(x) > 1})
    if dup:
        raise ConfigError(f"{what} lists {dup} more than once; name each once")
    bad = [x for x in items if not _NAME_RE.match(x)]
    if bad:
        raise ConfigError(f"{what} names may hold letters, digits, '_', '.', '-'; got {bad}")
    return items


def parse_floats(text: str, *, what: str, allow_zero: bool = False) -> list[float]:
    """A comma-separated list of positive numbers (or >= 0), e.g. ``--rates 10,50,100``."""
    try:
        values = [float(x) for x in str(text).split(",") if x.strip()]
    except ValueError:
        raise ConfigError(f"{what} must be comma-separated numbers like 10,50,100; "
                          f"got {text!r}") from None
    bad = [v for v in values if not math.isfinite(v) or v < 0 or (v == 0 and not allow_zero)]
    if not values or bad:
        raise ConfigError(f"{what} must be numbers {'>=' if allow_zero else '>'} 0; "
                          f"got {text!r}")
    return values


def check_policies(policies: Sequence[str | None], *, url: str | None, switch: bool) -> None:
    """Before any run: the embedded control plane knows only its own policy names."""
    if url is not None or not switch:
        return
    from cpbench.sim.config import POLICY_NAMES
    bad = [p for p in policies if p is not None and p not in POLICY_NAMES]
    if bad:
        raise ConfigError(f"the embedded control plane knows no policy {bad}; choose from "
                          f"{', '.join(POLICY_NAMES)}")


@contextlib.contextmanager
def control_plane(url: str | None, *, sim_config: str | Path | None = None) -> Iterator[str]:
    """The given URL, or an embedded ``cpbench sim`` for the ``with`` block."""
    if url is None:
        with embedded_sim(config_path=sim_config) as sim_url:
            yield sim_url
    else:
        if sim_config is not None:
            raise ConfigError("--sim-config configures the embedded control plane; drop it or "
                              "drop --url")
        yield url


def replay_one(trace: Path, out_dir: Path, *, url: str, policy: str | None,
               options: dict[str, Any]) -> Path:
    """One replay into ``out_dir`` against an already running control plane."""
    from cpbench.replaying.run import run_replay  # the layer below; imported late to keep startup light
    opts = dict(options)
    opts.setdefault("quiet", True)
    # One comparison report covers every run; a Bokeh report per run would only cost time.
    opts.setdefault("report", False)
    # Against a URL, replay records ``policy`` as the run's label; the switch happened here.
    result_dir = Path(run_replay(str(trace), url=url, output=str(out_dir), policy=policy,
                                 **opts))
    # replay catches SIGINT/SIGTERM to finish its files and returns; a multi-run experiment
    # must stop there too instead of starting the next run.
    try:
        run = json.loads((result_dir / "summary.json").read_text(encoding="utf-8"))["run"]
    except (OSError, ValueError, KeyError):
        run = {}
    if run.get("interrupted") and run.get("stop_reason") in ("SIGINT", "SIGTERM"):
        raise KeyboardInterrupt
    return result_dir


def run_dir(out_dir: Path, policy: str, repeat_index: int, repeats: int) -> Path:
    """``DIR/<policy>``, or ``DIR/<policy>/<policy>-rK`` (K from 1) when repeating: the
    report labels runs by directory name where their facts coincide, so the name says both."""
    base = out_dir / policy
    return base if repeats == 1 else base / f"{policy}-r{repeat_index + 1}"


def write_json(path: Path, data: dict) -> None:
    """Write JSON atomically (temporary file + rename) so a reader never sees half of it."""
    try:
        atomic_write(path, json.dumps(data, indent=2, sort_keys=False,
                                      default=_json_default) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {str(path)!r}: {exc.strerror}; check the path and "
                          f"free space") from exc


def _json_default(value: Any) -> Any:
    if hasattr(value, "item"):
        return value.item()
    return str(value)


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
            "ci_high": d["ci_high"], "verdict": d["verdict"]}


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


def write_comparison_report(dirs: Sequence[Path], out_dir: Path, title: str) -> Path:
    """``DIR/report.html`` and ``DIR/report.md`` over every run directory."""
    from cpbench.reporting.html import write_report
    return write_report(list(dirs), out_dir / "report.html",
                        markdown_path=out_dir / "report.md", title=title)


def compare(trace: str | Path, *, policies: Sequence[str], out_dir: str | Path,
            url: str | None = None, repeat: int = 1, switch: bool = True,
            policy_path: str = "/admin/policy", baseline: str | None = None,
            drain_s: float = 1.0, confidence: float = 0.95, n_resamples: int = 1000,
            seed: int = 0, sim_config: str | Path | None = None,
            replay_options: dict[str, Any] | None = None, quiet: bool = False,
            stdout: TextIO | None = None, experiment: str = "compare",
            metric: str = "slo_attainment_pct", json_name: str = "comparison.json") -> dict:
    """Replay ``trace`` once per policy (and repeat) and compare the policies request by request.

    Parameters
    ----------
    trace
        The trace every policy replays.
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
    experiment, metric, json_name
        The name recorded in the JSON, the overall metric that picks the best policy
        (``stats.metric_names``; attainment higher is better, latencies lower), and the JSON
        file written into ``out_dir``.

    Returns
    -------
    dict
        What ``comparison.json`` holds.
    """
    if quiet:
        stdout = io.StringIO()  # --quiet: no progress, no answer table (see the JSON)
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
    check_policies(policies, url=url, switch=switch)
    trace = Path(trace)
    if not trace.is_file():
        raise ConfigError(f"trace {str(trace)!r} does not exist; pass a trace file such as "
                          f"traces/burst.arrow")
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    progress = Progress(len(policies) * repeat, quiet=quiet)
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
    write_json(out / json_name, result)
    try:
        atomic_write(out / "comparison.md", differences_markdown(result))
    except OSError as exc:
        raise OutputError(f"cannot write {str(out / 'comparison.md')!r}: {exc.strerror}") from exc
    write_comparison_report([d for ds in dirs.values() for d in ds], out,
                            title=f"cpbench {experiment}: {', '.join(policies)} on {trace.name}")
    print_answer(result, stdout)
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
    """The answer table and the best-policy line of a comparison."""
    stream = stdout if stdout is not None else sys.stdout
    best = result["answer"]["best_policy"]
    print(answer_table(result["stats"]), file=stream)
    what = "SLO attainment" if best["metric"] == "slo_attainment_pct" else best["metric"]
    unit = "%" if best["metric"] == "slo_attainment_pct" else "ms"
    line = f"best policy on {what}: {best['policy']} ({_fmt(best['value'])} {unit})"
    if best.get("runner_up"):
        diff_unit = "pp" if unit == "%" else "ms"
        line += (f"; vs {best['runner_up']}: {best['diff']:+.1f} {diff_unit} "
                 f"[{_fmt(best['ci_low'])}, {_fmt(best['ci_high'])}], {best['verdict']}")
    print(line, file=stream)

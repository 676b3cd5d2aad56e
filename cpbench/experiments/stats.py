"""Statistics of multi-run experiments: paired policy differences, repeat spread, the knee.

Owns the arithmetic only — no server, no files beyond reading ``results.arrow``. Hands the
experiment drivers (``compare``, ``sweep``) plain dicts ready for ``comparison.json``:

- :func:`run_arrays` reads one result directory (:mod:`cpbench.resultdir`) into per-request
  NumPy arrays, latencies by the summary's own definitions
  (:func:`cpbench.summary.request_latencies_ns`);
- :func:`paired_comparison` joins several policies' runs of the *same trace* on the trace
  ``row`` and, per kind and priority, bootstraps (``scipy.stats.bootstrap``, seeded) confidence
  intervals of the candidate-minus-baseline difference in SLO attainment and in latency
  percentiles. A difference whose interval contains 0 is marked ``indistinguishable``;
- :func:`repeat_spread` summarises each metric across ``--repeat`` runs of one policy;
- :func:`find_knee` brackets and bisects the rate at which SLO attainment falls below a target.

Percentiles are percents in [0, 100]; attainment is a percent; latencies are milliseconds
(display units — the result columns are nanoseconds).
"""
from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pyarrow as pa
import scipy.stats

from cpbench.errors import ConfigError
from cpbench.resultdir import read_result_dir
from cpbench.summary import REQUIRED_COLUMNS, request_latencies_ns
from cpbench.vocab import KINDS, PRIORITIES

NS_PER_MS = 1_000_000
LATENCY_METRICS = ("ttft_from_intended", "e2e_from_intended")
LATENCY_PERCENTS = (50.0, 99.0)
# Bound on resample elements held at once (batch x rows x samples).
_BOOTSTRAP_ELEMENTS = 20_000_000
# Rows one bootstrap resamples at most; larger groups use the m-out-of-n rescaling below.
MAX_BOOTSTRAP_ROWS = 2_000


@dataclass
class RunArrays:
    """One run's non-warm-up requests, sorted by trace row."""

    path: Path
    row: np.ndarray          # int64
    kind: np.ndarray         # object (str)
    priority: np.ndarray     # object (str)
    slo_met: np.ndarray      # bool
    latency_ms: dict[str, np.ndarray] = field(default_factory=dict)  # NaN = no value (failed)


def run_arrays(result_dir: str | Path) -> RunArrays:
    """One run's ``results.arrow`` as :class:`RunArrays`; ``ConfigError`` when it is missing,
    unreadable or lacks a column.

    Latency is measured from the *intended* send time (what a user waited), by the summary's
    definitions; a failed request has NaN latencies and ``slo_met`` False, exactly as the
    result file says.
    """
    found = read_result_dir(result_dir, need=("results.arrow",),
                            columns=("row", *REQUIRED_COLUMNS))
    table = found.results
    missing = [c for c in ("row", *REQUIRED_COLUMNS) if c not in table.column_names]
    if missing:
        raise ConfigError(f"{found.path / 'results.arrow'} lacks column(s) {missing}; it was "
                          "not written by this version of cpbench replay")
    latency_ns = request_latencies_ns(table)        # non-warm-up rows, in table order
    table = table.filter(pa.array(~table.column("warmup").to_numpy(zero_copy_only=False)))
    order = np.argsort(table.column("row").to_numpy(), kind="stable")
    table = table.take(pa.array(order))
    return RunArrays(
        path=found.path,
        row=table.column("row").to_numpy().astype(np.int64),
        kind=table.column("kind").cast(pa.string()).to_numpy().astype(object),
        priority=table.column("priority").cast(pa.string()).to_numpy().astype(object),
        slo_met=table.column("slo_met").to_numpy(zero_copy_only=False).astype(bool),
        latency_ms={name: latency_ns[name][order] / NS_PER_MS for name in LATENCY_METRICS},
    )


def run_metrics(run: RunArrays, mask: np.ndarray | None = None) -> dict[str, float]:
    """Attainment (percent) and latency percentiles (ms) of one run, or of ``mask``'s rows."""
    m = np.ones(len(run.row), dtype=bool) if mask is None else mask
    out: dict[str, float] = {"requests": int(m.sum())}
    out["slo_attainment_pct"] = float(100.0 * run.slo_met[m].mean()) if m.any() else math.nan
    for metric in LATENCY_METRICS:
        values = run.latency_ms[metric][m]
        values = values[np.isfinite(values)]
        for p in LATENCY_PERCENTS:
            key = f"{metric}_p{p:g}_ms"
            # Nearest rank, as summary.json's percentiles: one definition of "p99".
            out[key] = float(np.percentile(values, p, method="inverted_cdf")) \
                if values.size else math.nan
    return out


def metric_names() -> list[str]:
    """The per-run metric keys, in display order."""
    names = ["slo_attainment_pct"]
    names += [f"{m}_p{p:g}_ms" for m in LATENCY_METRICS for p in LATENCY_PERCENTS]
    return names


def metric_label(metric: str) -> str:
    """A metric key as the answer table and the report name it: ``E2E p99``, ``SLO attainment``."""
    if metric == "slo_attainment_pct":
        return "SLO attainment"
    for name, label in (("ttft_from_intended", "TTFT"), ("e2e_from_intended", "E2E")):
        if metric.startswith(name + "_p") and metric.endswith("_ms"):
            return f"{label} {metric[len(name) + 1:-3]}"
    return metric


def higher_is_better(metric: str) -> bool:
    """Attainment improves upward; every latency improves downward."""
    return metric.startswith("slo_attainment")


def repeat_spread(values: Sequence[float]) -> dict[str, float]:
    """Mean, sample standard deviation, min and max of one metric across repeats."""
    v = np.asarray([x for x in values if x is not None and math.isfinite(x)], dtype=float)
    if v.size == 0:
        return {"n": 0, "mean": math.nan, "std": math.nan, "min": math.nan, "max": math.nan}
    std = float(v.std(ddof=1)) if v.size > 1 else 0.0
    return {"n": int(v.size), "mean": float(v.mean()), "std": std,
            "min": float(v.min()), "max": float(v.max())}


def _batch(n_rows: int, n_samples: int = 1) -> int:
    return max(1, _BOOTSTRAP_ELEMENTS // max(n_rows * n_samples, 1))


def _subsample(n: int, max_rows: int, rng: np.random.Generator) -> tuple[np.ndarray | None, float]:
    """Rows to bootstrap and the width factor sqrt(m / n) (None, 1.0 when all rows fit).

    Bootstrapping 10^5 paired rows costs seconds per interval; an interval of a sqrt(n)-
    consistent statistic (a mean, a percentile of a continuous distribution) narrows as
    1/sqrt(n), so the spread seen on m random rows, scaled by sqrt(m / n) and centred on the
    full-sample estimate, gives the full-sample interval (the m-out-of-n bootstrap).
    """
    if n <= max_rows:
        return None, 1.0
    return np.sort(rng.choice(n, size=max_rows, replace=False)), math.sqrt(max_rows / n)


def _rescale(low: np.ndarray, high: np.ndarray, est_sub: np.ndarray, est_full: np.ndarray,
             factor: float) -> tuple[np.ndarray, np.ndarray]:
    if factor == 1.0:
        return low, high
    return est_full + (low - est_sub) * factor, est_full + (high - est_sub) * factor


def bootstrap_mean_ci(diff: np.ndarray, *, confidence: float, n_resamples: int,
                      rng: np.random.Generator,
                      max_rows: int = MAX_BOOTSTRAP_ROWS) -> tuple[float, float]:
    """Percentile-bootstrap interval of ``mean(diff)``; exact when every difference is equal.

    The percentile method, not scipy's default BCa: BCa's jackknife holds an n x (n-1) array.
    Beyond ``max_rows`` rows, see ``_subsample``.
    """
    if diff.size == 0:
        return (math.nan, math.nan)
    if diff.size == 1 or np.ptp(diff) == 0:
        # scipy warns on a degenerate sample; the interval is the single value.
        return (float(diff[0]), float(diff[0]))
    idx, factor = _subsample(diff.size, max_rows, rng)
    sample = diff if idx is None else diff[idx]
    if np.ptp(sample) == 0:
        sample = diff  # a subsample that happens to be constant says nothing about spread
        factor = 1.0
    res = scipy.stats.bootstrap((sample,), np.mean, n_resamples=n_resamples, vectorized=True,
                                method="percentile", confidence_level=confidence,
                                batch=_batch(sample.size), rng=rng)
    low, high = _rescale(np.asarray(res.confidence_interval.low),
                         np.asarray(res.confidence_interval.high), np.mean(sample),
                         np.mean(diff), factor)
    return (float(low), float(high))


def bootstrap_percentile_diff_ci(base: np.ndarray, cand: np.ndarray, percents: Sequence[float],
                                 *, confidence: float, n_resamples: int,
                                 rng: np.random.Generator,
                                 max_rows: int = MAX_BOOTSTRAP_ROWS) -> list[tuple[float, float]]:
    """Paired bootstrap intervals of ``percentile(cand, p) - percentile(base, p)``.

    ``base`` and ``cand`` are ``(rows,)`` or ``(metrics, rows)``; the result lists one interval
    per metric and percent (metric-major). Rows are resampled together (``paired=True``,
    every metric with the same rows) so the request-to-request variation both policies share
    cancels out of the difference. Beyond ``max_rows`` rows, see ``_subsample``.
    """
    base2, cand2 = np.atleast_2d(base), np.atleast_2d(cand)
    n_metrics, n = base2.shape
    if n < 2:
        return [(math.nan, math.nan)] * (n_metrics * len(percents))
    q = np.asarray(percents, dtype=float)

    def diffs(*samples: np.ndarray, axis: int = -1) -> np.ndarray:
        out = [np.percentile(samples[2 * i + 1], q, axis=axis)
               - np.percentile(samples[2 * i], q, axis=axis) for i in range(n_metrics)]
        return np.concatenate(out, axis=0)

    idx, factor = _subsample(n, max_rows, rng)
    sub_b, sub_c = (base2, cand2) if idx is None else (base2[:, idx], cand2[:, idx])
    data = tuple(x for i in range(n_metrics) for x in (sub_b[i], sub_c[i]))
    res = scipy.stats.bootstrap(data, diffs, paired=True, vectorized=True,
                                n_resamples=n_resamples, method="percentile",
                                confidence_level=confidence,
                                batch=_batch(sub_b.shape[1], 2 * n_metrics), rng=rng)
    full = tuple(x for i in range(n_metrics) for x in (base2[i], cand2[i]))
    low, high = _rescale(np.atleast_1d(res.confidence_interval.low),
                         np.atleast_1d(res.confidence_interval.high), diffs(*data),
                         diffs(*full), factor)
    return [(float(lo), float(hi)) for lo, hi in zip(low, high)]


def min_rows_for_percentile(percent: float) -> int:
    """Rows needed before a percentile is inside the data (p99: 100); fewer give no interval."""
    return max(2, math.ceil(100.0 / max(100.0 - percent, 1e-9)))


def verdict(metric: str, ci: tuple[float, float]) -> str:
    """``better`` / ``worse`` for the candidate, ``indistinguishable`` when the CI holds 0."""
    low, high = ci
    if not (math.isfinite(low) and math.isfinite(high)):
        return "insufficient data"
    if low <= 0.0 <= high:
        return "indistinguishable"
    up = low > 0.0
    return "better" if up == higher_is_better(metric) else "worse"


def _groups(kind: np.ndarray, priority: np.ndarray) -> list[tuple[str, str, np.ndarray]]:
    """(kind, priority, mask) for all rows, each kind, and each kind x priority present."""
    out = [("all", "all", np.ones(len(kind), dtype=bool))]
    for k in KINDS:
        km = kind == k
        if not km.any():
            continue
        out.append((k, "all", km))
        for p in PRIORITIES:
            pm = km & (priority == p)
            if pm.any():
                out.append((k, p, pm))
    return out


def _per_row(runs: Sequence[RunArrays], rows: np.ndarray) -> tuple[np.ndarray, dict]:
    """Per-row SLO-met fraction and mean latency across the repeats of one policy."""
    met = np.zeros(len(rows))
    sums = {m: np.zeros(len(rows)) for m in LATENCY_METRICS}
    counts = {m: np.zeros(len(rows)) for m in LATENCY_METRICS}
    for run in runs:
        idx = np.searchsorted(run.row, rows)
        met += run.slo_met[idx]
        for m in LATENCY_METRICS:
            v = run.latency_ms[m][idx]
            ok = np.isfinite(v)
            sums[m][ok] += v[ok]
            counts[m][ok] += 1
    lat = {m: np.where(counts[m] > 0, sums[m] / np.maximum(counts[m], 1), np.nan)
           for m in LATENCY_METRICS}
    return met / len(runs), lat


def _repeats_overlap(a: Sequence[float], b: Sequence[float]) -> bool | None:
    """Whether the per-repeat values of two policies overlap ([min, max] ranges); None with
    fewer than 2 repeats each. Overlap means run-to-run noise is as large as the difference."""
    a = [x for x in a if math.isfinite(x)]
    b = [x for x in b if math.isfinite(x)]
    if len(a) < 2 or len(b) < 2:
        return None
    return max(min(a), min(b)) <= min(max(a), max(b))


def paired_comparison(runs: dict[str, list[RunArrays]], *, baseline: str,
                      confidence: float = 0.95, n_resamples: int = 1000,
                      seed: int = 0, max_rows: int = MAX_BOOTSTRAP_ROWS) -> dict:
    """Compare every policy with ``baseline`` request by request (joined on the trace ``row``).

    Parameters
    ----------
    runs
        Policy name → its runs of one trace (several with ``--repeat``), in display order.
    baseline
        The policy the others are compared with.
    confidence, n_resamples, seed
        Bootstrap confidence level in (0, 1), resample count, and the seed of the one generator
        every interval draws from (same inputs and seed → same intervals).
    max_rows
        Rows one interval resamples at most; larger groups are subsampled and the interval
        rescaled (m-out-of-n bootstrap, see ``_subsample``).

    Returns
    -------
    dict
        ``paired_rows``, ``unpaired_rows`` (per policy: rows missing from some run),
        ``policies`` (per policy and group: each metric's spread across repeats) and
        ``differences`` (per policy, group and metric: baseline, candidate, difference, CI,
        ``repeats_overlap`` and ``verdict``: better, worse, indistinguishable, insufficient
        data). A difference is ``indistinguishable`` when its interval holds 0 or, with
        repeats, when the two policies' per-repeat values overlap.
    """
    if baseline not in runs:
        raise ConfigError(f"baseline policy {baseline!r} is not among the compared policies "
                          f"{list(runs)}")
    if not 0.0 < confidence < 1.0 or n_resamples < 10 or max_rows < 100:
        raise ConfigError(f"confidence must be in (0, 1), n_resamples >= 10 and max_rows >= "
                          f"100; got {confidence}, {n_resamples}, {max_rows}")
    all_runs = [r for rs in runs.values() for r in rs]
    if not all_runs or any(not rs for rs in runs.values()):
        raise ConfigError("every compared policy needs at least one run")
    rows = all_runs[0].row
    for r in all_runs[1:]:
        rows = np.intersect1d(rows, r.row, assume_unique=True)
    at = np.searchsorted(all_runs[0].row, rows)
    groups = _groups(all_runs[0].kind[at], all_runs[0].priority[at])
    per_row = {name: _per_row(rs, rows) for name, rs in runs.items()}
    policies, run_level = _spreads(runs, groups)
    boot = {"confidence": confidence, "n_resamples": n_resamples,
            "rng": np.random.default_rng(seed), "max_rows": max_rows}
    differences = []
    for name in runs:
        if name == baseline:
            continue
        for k, p, mask in groups:
            rec = {"policy": name, "kind": k, "priority": p, "rows": int(mask.sum())}
            for metric, av, bv, ci in _group_items(per_row[baseline], per_row[name], mask,
                                                   boot):
                overlap = _repeats_overlap([x[metric] for x in run_level[(baseline, k, p)]],
                                           [x[metric] for x in run_level[(name, k, p)]])
                v = verdict(metric, ci)
                if overlap and v in ("better", "worse"):
                    # The rows tell them apart, but the runs' own noise is as large: the row
                    # bootstrap cannot see run-to-run variation, the repeats can.
                    v = "indistinguishable"
                differences.append({**rec, "metric": metric, "baseline": float(av),
                                    "candidate": float(bv), "diff": float(bv - av),
                                    "ci_low": ci[0], "ci_high": ci[1],
                                    "repeats_overlap": overlap, "verdict": v})
    return {
        "baseline": baseline, "confidence": confidence, "n_resamples": n_resamples,
        "seed": seed, "max_rows": max_rows, "paired_rows": int(len(rows)),
        "unpaired_rows": {name: int(sum(len(r.row) - len(rows) for r in rs))
                          for name, rs in runs.items()},
        "policies": policies, "differences": differences,
    }


def _spreads(runs: dict[str, list[RunArrays]], groups: list) -> tuple[dict, dict]:
    """Per policy and group, each metric of each run and its spread across repeats."""
    policies: dict[str, dict] = {}
    run_level: dict[tuple[str, str, str], list[dict]] = {}
    for name, rs in runs.items():
        entry = {"repeats": len(rs), "runs": [str(r.path) for r in rs], "groups": []}
        for k, p, _ in groups:
            per_run = []
            for r in rs:
                m = np.ones(len(r.row), dtype=bool) if k == "all" else (r.kind == k)
                if p != "all":
                    m &= r.priority == p
                per_run.append(run_metrics(r, m))
            run_level[(name, k, p)] = per_run
            entry["groups"].append({
                "kind": k, "priority": p,
                "requests": int(np.mean([x["requests"] for x in per_run])),
                "metrics": {n: repeat_spread([x[n] for x in per_run]) for n in metric_names()}})
        policies[name] = entry
    return policies, run_level


def _group_items(base: tuple, cand: tuple, mask: np.ndarray, boot: dict) -> list[tuple]:
    """(metric, baseline value, candidate value, CI) of one group, from per-row aggregates."""
    base_met, base_lat = base
    met, lat = cand
    d = 100.0 * (met[mask] - base_met[mask])
    items = [("slo_attainment_pct", 100.0 * base_met[mask].mean(), 100.0 * met[mask].mean(),
              bootstrap_mean_ci(d, **boot))]
    # Latency over the rows both policies completed; ttft and e2e share the resamples.
    a = np.stack([base_lat[m][mask] for m in LATENCY_METRICS])
    b = np.stack([lat[m][mask] for m in LATENCY_METRICS])
    ok = np.isfinite(a).all(axis=0) & np.isfinite(b).all(axis=0)
    a, b = a[:, ok], b[:, ok]
    cis = iter(bootstrap_percentile_diff_ci(a, b, LATENCY_PERCENTS, **boot))
    for i, m in enumerate(LATENCY_METRICS):
        for q in LATENCY_PERCENTS:
            ci = next(cis)
            if a.shape[1] < min_rows_for_percentile(q):
                ci = (math.nan, math.nan)  # the percentile lies beyond the data
            av = float(np.percentile(a[i], q)) if a.shape[1] else math.nan
            bv = float(np.percentile(b[i], q)) if a.shape[1] else math.nan
            items.append((f"{m}_p{q:g}_ms", av, bv, ci))
    return items


@dataclass
class KneeResult:
    """Outcome of :func:`find_knee`: ``knee_rps`` is the highest rate seen to meet the target."""

    knee_rps: float | None
    low_rps: float | None     # highest passing rate probed
    high_rps: float | None    # lowest failing rate probed
    converged: bool
    probes: list[dict] = field(default_factory=list)
    note: str = ""

    def to_dict(self) -> dict:
        return {"knee_rps": self.knee_rps, "low_rps": self.low_rps, "high_rps": self.high_rps,
                "converged": self.converged, "probes": self.probes, "note": self.note}


def find_knee(measure: Callable[[float], float], *, start_rps: float, target_pct: float = 95.0,
              rel_tol: float = 0.05, max_probes: int = 12, min_rps: float = 0.0,
              max_rps: float = math.inf, upper_rps: float | None = None,
              round_rate: Callable[[float], float] | None = None) -> KneeResult:
    """The saturation knee: the highest rate whose SLO attainment stays >= ``target_pct``.

    Brackets first — doubling from ``start_rps`` while the target holds, halving while it
    does not — then bisects the bracket until ``high - low <= rel_tol * low``. ``measure(rate)``
    runs the workload at ``rate`` and returns the attainment percent; each rate is measured once.
    Attainment is assumed to fall with rate; a noisy measurement only moves the bracket, it
    never loops. Stops after ``max_probes`` measurements whatever happened (``converged``
    False). ``upper_rps``, a rate already seen failing, caps the doubling so a sweep's fixed
    points serve as the bracket (a caching ``measure`` then costs nothing for it).
    ``round_rate`` maps each rate before it is measured (the rate run is the rate reported);
    a NaN measurement (a probe that cannot tell) counts as not passing.
    """
    if not (start_rps > 0 and 0.0 <= target_pct <= 100.0 and 0 < rel_tol < 1 and max_probes >= 2
            and 0.0 <= min_rps < max_rps):
        raise ConfigError(f"knee search needs start_rps > 0, target_pct in [0, 100], rel_tol in "
                          f"(0, 1), max_probes >= 2 and min_rps < max_rps; got {start_rps}, "
                          f"{target_pct}, {rel_tol}, {max_probes}, {min_rps}, {max_rps}")
    probes: list[dict] = []
    low = high = None

    def probe(rate: float) -> bool:
        value = float(measure(rate))
        ok = value >= target_pct
        probes.append({"rate_rps": rate, "value_pct": value if math.isfinite(value) else None,
                       "passed": ok})
        return ok

    def rounded(rate: float) -> float:
        return rate if round_rate is None else round_rate(rate)

    rate = rounded(min(max(start_rps, min_rps), max_rps))
    while len(probes) < max_probes and (low is None or high is None):
        if probe(rate):
            low = rate
            if rate >= max_rps:
                return KneeResult(low, low, None, False, probes,
                                  f"still >= {target_pct:g}% at max_rps {max_rps:g}")
            rate = min(rate * 2.0, max_rps)
            if upper_rps is not None and upper_rps > low:
                rate = min(rate, upper_rps)
            rate = rounded(rate)
        else:
            high = rate
            if low is None and rate / 2.0 <= min_rps:
                return KneeResult(None, None, high, False, probes,
                                  f"below {target_pct:g}% even at {rate:g} rps")
            rate = rounded(max(rate / 2.0, min_rps)) if low is None else rate
    while len(probes) < max_probes and low is not None and high is not None \
            and high - low > rel_tol * low:
        mid = rounded(0.5 * (low + high))
        if mid in (low, high):
            return KneeResult(low, low, high, True, probes, "")  # rounding cannot split it
        if probe(mid):
            low = mid
        else:
            high = mid
    converged = low is not None and high is not None and high - low <= rel_tol * low
    note = "" if converged else f"stopped after {len(probes)} probes (max_probes)"
    return KneeResult(low, low, high, converged, probes, note)

"""This host's stored calibration, and the check every report makes against it.

``cpbench calibrate`` (:mod:`cpbench.calibrate`) measures the highest rate this client host
replays with bounded lag and stores the figures here (:func:`save_calibration`, JSON at
:func:`calibration_path`). Every replay loads them into ``summary.run.calibration``
(:func:`load_calibration`); the report shows them (:func:`calibration_fact`) and warns
(:func:`calibration_warnings`) when a run's offered rate came within 80 % of the calibrated
rate for its kind mix, or its dispatch-lag p99 exceeded 1 ms. A leaf module: standard library
only, imported by the replay and the report without loading the calibration machinery.
"""
from __future__ import annotations

import json
import os
from pathlib import Path

from cpbench.errors import OutputError

LAG_P99_LIMIT_MS = 1.0
SHORTFALL_LIMIT_PCT = 1.0
NEAR_LIMIT_SHARE = 0.8          # warn when a run offers >= 80 % of the calibrated rate


# -- where the figures live --------------------------------------------------------------

def calibration_path() -> Path:
    """``$CPBENCH_HOME/calibration.json``, else ``~/.cache/cpbench/calibration.json``."""
    home = os.environ.get("CPBENCH_HOME")
    base = Path(home) if home else Path.home() / ".cache" / "cpbench"
    return base / "calibration.json"


def load_calibration(path: str | os.PathLike[str] | None = None) -> dict | None:
    """The stored figures (no probe points) plus ``path``; None when absent or unreadable.

    A replay never fails for a bad calibration file: a corrupt one reads as absent.
    """
    p = Path(path) if path is not None else calibration_path()
    try:
        data = json.loads(p.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(data, dict) or not isinstance(data.get("kinds"), dict):
        return None
    # The figures only: the probe points stay in the file.
    kinds = {k: {n: v for n, v in e.items() if n != "points"}
             for k, e in data["kinds"].items() if isinstance(e, dict)}
    return {**data, "kinds": kinds, "path": str(p)}


def save_calibration(result: dict, path: str | os.PathLike[str] | None = None) -> Path:
    """Write ``result`` as JSON at ``path`` (default :func:`calibration_path`) by rename."""
    from cpbench.atomic import atomic_write
    p = Path(path) if path is not None else calibration_path()
    try:
        p.parent.mkdir(parents=True, exist_ok=True)
        atomic_write(p, json.dumps(result, indent=2) + "\n")
    except OSError as exc:
        raise OutputError(f"cannot write {p}: {exc.strerror or exc}; choose another -o") \
            from None
    return p


# -- the check every report makes --------------------------------------------------------

def calibrated_rate_for_mix(calibration: dict, by_kind: list[dict]) -> float | None:
    """The calibrated rate for a run's kind mix: the request-weighted harmonic mean.

    Each request of kind k costs ``1 / rate_k`` of the client, so a mix of shares ``s_k``
    saturates at ``1 / sum(s_k / rate_k)``. ``completion`` counts as chat (both stream).
    """
    rates = {k: (v or {}).get("max_rate_rps") for k, v in (calibration.get("kinds") or {}).items()}
    counts: dict[str, int] = {}
    for entry in by_kind or []:
        kind = "embedding" if entry.get("kind") == "embedding" else "chat"
        counts[kind] = counts.get(kind, 0) + int(entry.get("requests") or 0)
    total = sum(counts.values())
    if not total:
        return None
    cost = 0.0
    for kind, n in counts.items():
        rate = rates.get(kind)
        if not isinstance(rate, (int, float)) or rate <= 0:
            return None
        cost += n / total / rate
    return 1.0 / cost


def calibration_warnings(summary: dict) -> list[str]:
    """Warnings for a replay summary: offered rate near the calibrated limit, or lag p99 > 1 ms."""
    run = summary.get("run") or {}
    out = []
    cal = run.get("calibration")
    offered = (summary.get("rates") or {}).get("scheduled_rps")
    limit = calibrated_rate_for_mix(cal, summary.get("by_kind")) if cal else None
    if limit and isinstance(offered, (int, float)) and offered >= NEAR_LIMIT_SHARE * limit:
        out.append(f"the offered rate {offered:,.0f} req/s is {100 * offered / limit:.0f} % of "
                   f"this host's calibrated rate for this kind mix ({limit:,.0f} req/s, "
                   f"{cal.get('path')}): the client, not the server, may have been the "
                   "bottleneck")
    lag_p99 = (summary.get("dispatch_lag_ms") or {}).get("p99")
    if isinstance(lag_p99, (int, float)) and lag_p99 > LAG_P99_LIMIT_MS:
        out.append(f"dispatch-lag p99 was {lag_p99:.2f} ms (> {LAG_P99_LIMIT_MS:g} ms): the "
                   "client, not the server, may have been the bottleneck")
    return out


def calibration_fact(summary: dict) -> str:
    """One line for the report's facts: the stored figures, or how to get them."""
    cal = (summary.get("run") or {}).get("calibration")
    if not cal:
        return "none (run `cpbench calibrate` to learn this host's limit)"
    kinds = cal.get("kinds") or {}
    figures = " · ".join(f"{k} {v.get('max_rate_rps', 0):,.0f} req/s"
                         for k, v in kinds.items() if isinstance(v, dict))
    return (f"{figures} (lag p99 <= {LAG_P99_LIMIT_MS:g} ms, <= {SHORTFALL_LIMIT_PCT:g} % "
            f"shortfall; {cal.get('workers', '?')} workers; {cal.get('created_utc', '?')}; "
            f"{cal.get('path')})")

"""What every experiment shares: its option lists, the control plane it runs against, one
replay into its run directory, a synthesized trace, and its JSON output.

``compare``, ``sweep``, ``named`` and ``targets`` build on these; this module imports none of
them, so they do not import each other for their plumbing.
"""
from __future__ import annotations

import contextlib
import json
import math
import re
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any, TextIO

from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError, OutputError
from cpbench.experiments.control import embedded_sim

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


def synth_trace(path: Path, *, rate_rps: float, requests: int, pattern: str = "poisson",
                mode: str = "hybrid", llm_ratio: float = 0.5, seed: int = 0,
                **synth_options: Any) -> Path:
    """Synthesize a trace into ``path`` (with its parameters as metadata); returns ``path``."""
    from cpbench.record.synth import synth_to_file
    path.parent.mkdir(parents=True, exist_ok=True)
    synth_to_file(str(path), pattern=pattern, rate_rps=rate_rps, requests=requests, mode=mode,
                  llm_ratio=llm_ratio, seed=seed, **synth_options)
    return path


def output_dir(path: str | Path) -> Path:
    """Create the output directory ``path`` (and its parents); one clear error when it cannot
    be, e.g. when ``-o`` names an existing file."""
    out = Path(path)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"-o {str(out)!r} is an existing file, not a directory; pass a "
                          f"directory for the results")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create the output directory {str(out)!r}: "
                          f"{exc.strerror}; check the path") from exc
    return out


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


def print_where(json_path: Path, out: Path, stream: TextIO) -> None:
    """The line every multi-run command ends with, ``--quiet`` included: where its files are."""
    print(f"results: {json_path}; report {out / 'report.html'}", file=stream)

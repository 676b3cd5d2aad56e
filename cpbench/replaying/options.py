"""The options of one replay, defined once: name, default, validation, command-line flag, help.

:class:`ReplayOptions` is the single source of truth for a replay's settings. From it come
the ``cpbench replay`` flags (:func:`add_arguments`), hence the keys its TOML config files
accept (``cpbench.config`` validates keys against that parser), the keyword arguments of
``cpbench.replay()`` / ``run_replay`` (:meth:`ReplayOptions.from_kwargs`), and each worker's
dispatcher settings (:meth:`ReplayOptions.dispatch_config`). Adding an option is one field here.
Standard library only, so the CLI can build its parser without loading the replay machinery.
"""
from __future__ import annotations

import argparse
import dataclasses
import math
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpbench.errors import ConfigError
from cpbench.vocab import HINTS, POLICIES

LOOPS = ("uvloop", "asyncio")
MAX_SPIN_US = 1000             # --spin-us: a busy-wait longer than a millisecond is a mistake


def _opt(flag: str, help: str, *, default: Any = None, metavar: str | None = None,
         type: Any = None, choices: tuple | None = None, hidden: bool = False,
         negate: bool = False, append: bool = False, short: str | None = None,
         const: Any = None) -> Any:
    """A dataclass field with its command-line spelling in ``metadata``."""
    meta = {"flag": flag, "help": help, "metavar": metavar, "type": type, "choices": choices,
            "hidden": hidden, "negate": negate, "append": append, "short": short,
            "const": const}
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type_copy(default), metadata=meta)
    return field(default=default, metadata=meta)


def type_copy(value: Any) -> Any:
    return list(value) if isinstance(value, list) else dict(value)


@dataclass
class ReplayOptions:
    """How to replay a trace (everything but the trace itself).

    Every field is a ``cpbench replay`` option; ``--flag`` spellings and help are in the field
    metadata. ``None`` for ``workers`` means all cores.
    """

    url: str | None = _opt(
        "--url", "control plane base URL (default: start `cpbench sim` on loopback); a query "
        "string (?api-version=...) goes with every request, and is redacted where recorded")
    output: Path | None = _opt(
        "--output", "results directory (default: cpbench-results/<trace>-<UTC time>/)",
        short="-o", metavar="DIR", type=Path)
    overwrite: bool = _opt(
        "--overwrite", "replace the contents of an existing, non-empty results directory "
        "(without it such a directory is refused)", default=False)
    max_concurrency: int = _opt(
        "--max-concurrency", "cap in-flight requests (closed loop; the wait shows as dispatch "
        "lag); 0 = open loop (default)", default=0, metavar="N", type=int)
    speed: float = _opt(
        "--speed", "compress the trace's time by X (2 = twice as fast; default 1)",
        default=1.0, metavar="X", type=float)
    rate_scale: float = _opt(
        "--rate-scale", "multiply the arrival rate by X (applies with --speed; default 1)",
        default=1.0, metavar="X", type=float)
    duration_s: float | None = _opt(
        "--duration", "send only requests scheduled in the first S seconds", metavar="S",
        type=float)
    warmup: str | None = _opt(
        "--warmup", "exclude the first seconds (10s) or requests (500) from statistics",
        metavar="10s|N")
    timeout_s: float = _opt(
        "--timeout", "per-request limit in seconds (default 60)", default=60.0, metavar="S",
        type=float)
    workers: int | None = _opt(
        "--workers", "client processes (default: all cores)", metavar="N", type=int)
    ray: str | None = _opt(
        "--ray", "replay from dispatcher actors on every node of a Ray cluster: ADDRESS as for "
        "`ray.init` (default auto: RAY_ADDRESS, a cluster started here with `ray start`, else "
        "a local one); needs pip install \"cpbench[ray]\"; see docs/distributed.md",
        metavar="ADDRESS", const="auto")
    workers_per_node: int | None = _opt(
        "--workers-per-node", "with --ray: dispatcher actors per node (default: its CPUs "
        "minus one)", metavar="N", type=int)
    connections: int | None = _opt(
        "--connections", "keep-alive connections each worker opens before the start (default: "
        "one per request due in its schedule's busiest 50 ms, 32 to 1024; more are opened as "
        "needed)", metavar="N", type=int)
    hints: str = _opt(
        "--hints", "priority/deadline hints: sageLLM headers (default), vLLM body field "
        "`priority`, or none", default="sagellm", choices=HINTS)
    policy: str | None = _opt(
        "--policy", "scheduling policy of the embedded sim (not with --url: switch the policy "
        "on the control plane itself)", metavar="|".join(POLICIES), choices=POLICIES)
    max_error_ratio: float | None = _opt(
        "--max-error-ratio", "stop and exit 3 when more than this fraction of requests fail",
        metavar="R", type=float)
    max_behind_s: float = _opt(
        "--max-behind", "stop when the client stays more than S seconds behind the trace's "
        "schedule for half a second: it cannot send at this rate (add --workers or Ray nodes, "
        "or lower the rate); results so far are kept, exit status 4; 0 = never stop "
        "(default 1)", default=1.0, metavar="S", type=float)
    grace_s: float = _opt(
        "--grace", "seconds in-flight requests get to finish after the run stops (default 5)",
        default=5.0, metavar="S", type=float)
    realtime: int = _opt(
        "--realtime", "run the client workers under SCHED_FIFO at PRIO (default 1) so their "
        "sends do not queue behind other processes on a busy host; needs root or "
        "CAP_SYS_NICE, else a warning and normal priority", default=0, metavar="PRIO",
        type=int, const=1)
    spin_us: int = _opt(
        "--spin-us", "wake each worker this many microseconds before a send is due and "
        "busy-wait the rest, for sends within a few µs of their instant (default 0: sleep until "
        "the instant; a response that arrives during a spin is stamped when it ends); at most "
        f"{MAX_SPIN_US}", default=0, metavar="US", type=int)
    metrics_urls: list[str] = _opt(
        "--metrics-url", "also scrape this Prometheus /metrics URL into monitor.arrow on the "
        "run's clock (repeatable; the embedded sim's is scraped anyway)", default=[],
        metavar="URL", append=True)
    stream: bool = _opt(
        "--no-stream", "send chat and completion requests with \"stream\": false and read one "
        "JSON body each (a router's non-streaming path); their TTFT is then their end-to-end "
        "time, and inter-token gaps are not measured", default=True, negate=True)
    monitor: bool = _opt(
        "--no-monitor", "do not sample client CPU, GPUs or /metrics (no monitor.arrow)",
        default=True, negate=True)
    quiet: bool = _opt("--quiet", "no progress line, no summary table", default=False)
    report: bool = _opt("--no-report", "skip report.html / report.md", default=True,
                        negate=True)
    loop: str = _opt("--loop", "event loop of the workers", default="uvloop", choices=LOOPS,
                     hidden=True)

    def __post_init__(self) -> None:
        self.validate()

    # -- validation ----------------------------------------------------------------------

    def validate(self) -> ReplayOptions:
        """Check every value; a bad one is a ConfigError naming the flag as a user types it."""
        for name in ("speed", "rate_scale", "timeout_s", "grace_s"):
            value = getattr(self, name)
            if not _is_number(value) or not (value > 0 and math.isfinite(value)):
                raise ConfigError(f"{flag_of(name)} must be a positive number; got {value!r}")
        if not _is_number(self.max_behind_s) or not (self.max_behind_s >= 0
                                                     and math.isfinite(self.max_behind_s)):
            raise ConfigError(f"--max-behind must be seconds >= 0 (0: never stop); got "
                              f"{self.max_behind_s!r}")
        if self.duration_s is not None and not (_is_number(self.duration_s)
                                                and self.duration_s > 0):
            raise ConfigError(f"--duration must be positive seconds; got {self.duration_s!r}")
        for name, lowest in (("max_concurrency", 0), ("connections", 1), ("realtime", 0),
                             ("spin_us", 0)):
            value = getattr(self, name)
            if value is None and name == "connections":
                continue                 # sized from each worker's schedule
            if not _is_int(value) or value < lowest:
                raise ConfigError(f"{flag_of(name)} must be an integer >= {lowest}; "
                                  f"got {value!r}")
        if self.workers is not None and (not _is_int(self.workers) or self.workers < 1):
            raise ConfigError(f"--workers must be an integer >= 1 (or left out for one per "
                              f"core); got {self.workers!r}")
        if self.workers_per_node is not None:
            if not _is_int(self.workers_per_node) or self.workers_per_node < 1:
                raise ConfigError(f"--workers-per-node must be an integer >= 1; got "
                                  f"{self.workers_per_node!r}")
            if not self.ray:
                raise ConfigError("--workers-per-node places actors on Ray nodes; add "
                                  "--ray [ADDRESS]")
        if self.ray and self.workers is not None:
            raise ConfigError("--workers counts local processes; with --ray use "
                              "--workers-per-node")
        if self.spin_us > MAX_SPIN_US:
            raise ConfigError(f"--spin-us must be at most {MAX_SPIN_US}; got {self.spin_us}")
        if self.realtime > 99:
            raise ConfigError(f"--realtime priority must be 1-99; got {self.realtime}")
        if self.max_error_ratio is not None and not (
                _is_number(self.max_error_ratio) and 0 <= self.max_error_ratio <= 1):
            raise ConfigError(f"--max-error-ratio must be in [0, 1]; got "
                              f"{self.max_error_ratio!r}")
        # Against a URL the policy is only the run's label (experiments switch it through the
        # control plane's admin API), so only the embedded sim's policy must be one it knows.
        for name in ("hints", "policy", "loop") if self.url is None else ("hints", "loop"):
            choices = _meta(name)["choices"]
            value = getattr(self, name)
            if value is not None and value not in choices:
                raise ConfigError(f"{flag_of(name)} must be one of {', '.join(choices)}; "
                                  f"got {value!r}")
        if self.warmup is not None:
            warmup_split(self.warmup)
        if isinstance(self.metrics_urls, str):
            self.metrics_urls = [self.metrics_urls]
        if self.output is not None:
            self.output = Path(self.output)
        return self

    # -- the other spellings ------------------------------------------------------------

    @classmethod
    def from_kwargs(cls, options: Mapping[str, Any], *, source: str) -> ReplayOptions:
        """From keyword arguments (API, config tables); an unknown name lists the known ones.

        ``None`` means the default; ``duration``/``timeout``/``grace`` are accepted as the flag
        spellings of ``duration_s``/``timeout_s``/``grace_s``, ``no_report``/``no_monitor``
        as the negations they are on the command line, and ``cluster`` as the API's name for
        ``ray`` (a Ray address or ``"auto"``).
        """
        names = {f.name for f in dataclasses.fields(cls)}
        given: dict[str, Any] = {}
        for key, value in options.items():
            name = key.replace("-", "_")
            if name not in names:
                name = _BY_FLAG.get(name, name)
            if name.startswith("no_") and name[3:] in names and _meta(name[3:])["negate"]:
                name, value = name[3:], (None if value is None else not value)
            if name not in names:
                known = ", ".join(sorted(f.name for f in dataclasses.fields(cls)
                                         if not _meta(f.name)["hidden"]))
                raise ConfigError(f"{source}: unknown replay option '{key}'; known: {known}")
            if value is not None:
                given[name] = value
        return cls(**given)

    @classmethod
    def from_namespace(cls, ns: argparse.Namespace) -> ReplayOptions:
        """From the namespace :func:`add_arguments`'s parser produced."""
        return cls(**{f.name: getattr(ns, f.name) for f in dataclasses.fields(cls)
                      if getattr(ns, f.name, None) is not None})

    def to_argv(self) -> list[str]:
        """The ``cpbench replay`` options that reproduce this object (defaults left out)."""
        argv: list[str] = []
        for f in dataclasses.fields(self):
            meta, value = f.metadata, getattr(self, f.name)
            default = f.default if f.default is not dataclasses.MISSING else f.default_factory()
            if value == default or value is None:
                continue
            if meta["negate"] or isinstance(value, bool):
                argv.append(meta["flag"])
            elif meta["append"]:
                for item in value:
                    argv += [meta["flag"], str(item)]
            else:
                argv += [meta["flag"], os.fspath(value) if isinstance(value, Path) else str(value)]
        return argv

    def recorded(self) -> dict[str, Any]:
        """The options as the run records them (summary, manifest): JSON values, no secrets."""
        from cpbench.redact import redact_url

        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("quiet", "report", "output", "overwrite")}
        out["url"] = None if self.url is None else redact_url(self.url)
        out["metrics_urls"] = [redact_url(u) for u in self.metrics_urls]
        out["warmup"] = None if self.warmup is None else str(self.warmup)
        return out

    def dispatch_config(self, max_concurrency: int, bearer: str | None) -> dict[str, Any]:
        """One worker's :class:`cpbench.replaying.dispatch.DispatchOptions` as a JSON dict."""
        return {"hints": self.hints, "timeout_s": float(self.timeout_s),
                "connections": int(self.connections or 0), "grace_s": float(self.grace_s),
                "max_concurrency": int(max_concurrency), "bearer": bearer,
                "stream": bool(self.stream), "spin_ns": int(self.spin_us) * 1000,
                "max_behind_ns": int(self.max_behind_s * 1e9)}


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _meta(name: str) -> Mapping[str, Any]:
    return _FIELDS[name].metadata


def flag_of(name: str) -> str:
    """The command-line spelling of option ``name`` (``rate_scale`` -> ``--rate-scale``)."""
    return _meta(name)["flag"]


def warmup_split(value: str | float | int | None) -> tuple[float, int]:
    """``--warmup``: ``"10s"`` or a float is seconds, ``"500"`` (an integer) is requests."""
    if value is None or value == "":
        return 0.0, 0
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return (float(value), 0) if isinstance(value, float) else (0.0, int(value))
    text = str(value).strip()
    try:
        if text.endswith("s"):
            seconds, requests = float(text[:-1]), 0
        elif text.isdigit():
            seconds, requests = 0.0, int(text)
        else:
            seconds, requests = float(text), 0
    except ValueError:
        seconds = -1.0
    if not (seconds >= 0 and math.isfinite(seconds)):
        raise ConfigError(f"--warmup must be seconds like 10s or a request count like 500; "
                          f"got {value!r}")
    return seconds, requests


_FIELDS = {f.name: f for f in dataclasses.fields(ReplayOptions)}
# --duration -> duration_s and the like: the flag's words as a keyword.
_BY_FLAG = {f.metadata["flag"].lstrip("-").replace("-", "_"): f.name
            for f in dataclasses.fields(ReplayOptions) if not f.metadata["negate"]}
_BY_FLAG["cluster"] = "ray"     # the Python API's word for a Ray address


def add_arguments(parser: argparse.ArgumentParser | argparse._ArgumentGroup, *,
                  only: Sequence[str] | None = None, unset: bool = False) -> None:
    """Add :class:`ReplayOptions` fields (all, or those named in ``only``) as their flags.

    The parser's defaults are the dataclass's (``cpbench config --example replay`` shows
    them); with ``unset`` every default is None instead, so a command that runs many replays
    passes on only what the user set (:func:`given`). A repeatable flag starts from None so
    argparse never appends to a shared list.
    """
    for f in dataclasses.fields(ReplayOptions):
        if only is not None and f.name not in only:
            continue
        meta = f.metadata
        names = [meta["short"], meta["flag"]] if meta["short"] else [meta["flag"]]
        help_text = argparse.SUPPRESS if meta["hidden"] else meta["help"]
        if meta["negate"]:
            parser.add_argument(*names, dest=f.name, action="store_false",
                                default=None if unset else True, help=help_text)
        elif f.default is False:
            parser.add_argument(*names, dest=f.name, action="store_true",
                                default=None if unset else False, help=help_text)
        elif meta["append"]:
            parser.add_argument(*names, dest=f.name, action="append", default=None,
                                metavar=meta["metavar"], help=help_text)
        else:
            kwargs: dict[str, Any] = {"dest": f.name, "help": help_text,
                                      "default": None if unset else f.default,
                                      "metavar": meta["metavar"]}
            if meta["type"] is not None:
                kwargs["type"] = meta["type"]
            if meta["choices"] is not None:
                kwargs["choices"] = meta["choices"]
                kwargs.pop("metavar")
            if meta["const"] is not None:
                kwargs.update(nargs="?", const=meta["const"])
            parser.add_argument(*names, **kwargs)


# The replay options a multi-run command (run, compare, sweep, experiment) passes to each of its
# replays; the rest (target, output, policy, report, Ray) each command sets itself.
PER_RUN_OPTIONS: tuple[str, ...] = (
    "speed", "duration_s", "warmup", "timeout_s", "workers", "connections", "hints",
    "max_error_ratio", "max_behind_s", "grace_s", "realtime", "spin_us", "metrics_urls",
    "monitor", "stream")


def given(ns: argparse.Namespace, names: Sequence[str] = PER_RUN_OPTIONS) -> dict[str, Any]:
    """The options of ``names`` the user set on a parser built with ``unset=True``."""
    return {name: getattr(ns, name) for name in names if getattr(ns, name, None) is not None}

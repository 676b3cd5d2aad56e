"""The public Python API: traces, replays, comparisons and reports from scripts and notebooks.

Each function takes the options of the matching command as keyword arguments, checks them
against that command's own parser (unknown names and wrong types raise ``ConfigError`` just as
a config file key would) and then runs the very function the command line runs, so a call
and the command with the same options produce the same run. What comes back is a thin
object over the files written: ``Run`` (a result directory), ``Trace`` (an Arrow table),
``Comparison`` (a comparison directory).

Nothing here runs at import: the replay machinery (uvloop, the worker processes) is
imported inside the calls.
"""
from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import pyarrow as pa

from cpbench.errors import ConfigError
from cpbench.spawn import python_module_cmd

__all__ = ["Comparison", "Run", "Trace", "compare", "load_trace", "replay", "replay_async",
           "report", "synthesize"]

PathLike = str | os.PathLike[str]


# --- traces -----------------------------------------------------------------------------------

class Trace:
    """A trace: the Arrow table of requests, where it came from and how it was made.

    Attributes
    ----------
    table : pyarrow.Table
        Validated and normalised (schema in docs/formats.md).
    path : pathlib.Path or None
        The file it was read from or saved to; None for a trace only in memory.
    """

    def __init__(self, table: pa.Table, path: PathLike | None = None) -> None:
        self.table = table
        self.path = None if path is None else Path(path)

    @property
    def metadata(self) -> dict[str, Any]:
        """Provenance: ``version``, ``generator``, ``params``, ``seed``, ``source``."""
        from cpbench.trace import trace_metadata

        return trace_metadata(self.table)

    @property
    def seed(self) -> int | None:
        """The seed the trace was generated with (None for imported or captured traces)."""
        seed = self.metadata.get("seed")
        return seed if isinstance(seed, int) else None

    def to_table(self) -> pa.Table:
        """The requests as a ``pyarrow.Table`` (one row per request, sorted by arrival)."""
        return self.table

    def describe(self) -> dict[str, Any]:
        """The shape ``cpbench info`` prints: counts, rates, burstiness, mix, lengths."""
        from cpbench.trace import describe

        return describe(self.table)

    def save(self, path: PathLike) -> Trace:
        """Write the trace as an Arrow IPC file with its provenance; returns ``self``."""
        from cpbench.trace import write_trace

        meta = self.metadata
        write_trace(self.table, path, metadata={k: meta.get(k) for k in
                                                ("generator", "params", "seed", "source",
                                                 "block_tokens")})
        self.path = Path(path)
        return self

    def __len__(self) -> int:
        return self.table.num_rows

    def __repr__(self) -> str:
        where = f" from {self.path}" if self.path else " (in memory)"
        return f"<cpbench.Trace {self.table.num_rows} requests{where}>"


def load_trace(path: PathLike) -> Trace:
    """Read and validate a trace file (Arrow IPC file or stream, or Parquet).

    Raises
    ------
    TraceError
        The file is unreadable or breaks the trace schema (the message names the problem).
    """
    from cpbench.trace import read_trace

    return Trace(read_trace(path), path)


def synthesize(*, seed: int, path: PathLike | None = None, **options: Any) -> Trace:
    """A synthetic trace, from the options of ``cpbench record synth``.

    Parameters
    ----------
    seed
        Required: the same options and seed give the same trace, byte for byte.
    path
        Where to write it; None keeps it in memory (``replay`` then stores it in the run).
    **options
        ``record synth``'s long options with ``_`` for ``-``: ``pattern``, ``rate``,
        ``requests`` or ``duration_s``, ``mode``, ``llm_ratio``, ``chat_share``,
        ``priority_mix`` (a dict or ``"HIGH=0.2,NORMAL=0.6,LOW=0.2"``), ``input_tokens``,
        ``output_tokens``, ``embed_tokens``, ``embed_batch``, ``slo_e2e_ms``,
        ``slo_ttft_ms``, ``embed_slo_ms``, ``llm_model``, ``embed_model``, ``shape``,
        ``burst_rps``, ``burst_s``, ``period_s``, ``end_rps``, ``prefix_groups``,
        ``prefix_tokens``, ``prefix_zipf``, ``turns``, ``block_tokens``.

    Raises
    ------
    ConfigError
        An unknown option, a wrong type or an impossible spec.
    """
    from cpbench.cli import command_parser
    from cpbench.config import namespace_from
    from cpbench.record.synth import synth_to_file

    options = dict(options)
    if isinstance(options.get("priority_mix"), Mapping):
        options["priority_mix"] = ",".join(f"{k}={v}" for k, v in options["priority_mix"].items())
    if "output" in options:
        raise ConfigError("synthesize(): give the file as path=..., not output=...")
    if options.get("requests") is None and options.get("duration_s") is None:
        raise ConfigError("synthesize(): give requests=N or duration_s=S")
    parser = _subcommand(command_parser("record"), "synth")
    ns = namespace_from(parser, {**options, "seed": seed}, source="cpbench.synthesize()",
                        positionals={"output": None})
    kwargs = dict(
        pattern=ns.pattern, rate_rps=ns.rate_rps, requests=ns.requests, duration_s=ns.duration_s,
        mode=ns.mode, llm_ratio=ns.llm_ratio, chat_share=ns.chat_share,
        priority_mix=ns.priority_mix, input_tokens=ns.input_tokens,
        output_tokens=ns.output_tokens, embed_tokens=ns.embed_tokens,
        embed_batch=ns.embed_batch,
        slo_e2e_ms={"llm": ns.slo_e2e_ms, "embedding": ns.embed_slo_ms},
        slo_ttft_ms={"llm": ns.slo_ttft_ms, "embedding": None},
        models={"llm": ns.llm_model, "embedding": ns.embed_model}, seed=ns.seed,
        shape=ns.shape, burst_rps=ns.burst_rps, burst_s=ns.burst_s, period_s=ns.period_s,
        end_rps=ns.end_rps, prefix_groups=ns.prefix_groups, prefix_tokens=ns.prefix_tokens,
        prefix_zipf=ns.prefix_zipf, turns=ns.turns, block_tokens=ns.block_tokens)
    if path is not None:
        synth_to_file(os.fspath(path), **kwargs)
        return load_trace(path)
    # Through a file, so an in-memory trace carries exactly the metadata the CLI writes.
    with tempfile.TemporaryDirectory(prefix="cpbench-synth-") as tmp:
        name = os.path.join(tmp, "trace.arrow")
        synth_to_file(name, **kwargs)
        table = load_trace(name).table
        # Detach from the temporary file: a memory-mapped table would outlive it.
        return Trace(pa.Table.from_batches(table.to_batches(), table.schema))


def _subcommand(parser: argparse.ArgumentParser, name: str) -> argparse.ArgumentParser:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction) and name in action.choices:
            return action.choices[name]
    raise ConfigError(f"no subcommand '{name}' under 'cpbench {parser.prog.split()[-1]}'")


# --- runs -------------------------------------------------------------------------------------

class Run:
    """One replay's result directory: ``summary.json``, ``results.arrow``, ``manifest.json``.

    Attributes
    ----------
    path : pathlib.Path
        The result directory.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        if not (self.path / "summary.json").is_file():
            raise ConfigError(f"{self.path} is not a result directory (no summary.json); "
                              "pass a directory written by cpbench replay -o DIR")
        self._summary: dict[str, Any] | None = None
        self._results: pa.Table | None = None

    @property
    def summary(self) -> dict[str, Any]:
        """``summary.json`` as a plain dict (shape: docs/formats.md)."""
        if self._summary is None:
            self._summary = json.loads((self.path / "summary.json").read_text("utf-8"))
        return self._summary

    @property
    def results(self) -> pa.Table:
        """``results.arrow``: one row per request sent (columns: docs/formats.md)."""
        if self._results is None:
            from cpbench.results import read_results

            self._results = read_results(self.path / "results.arrow")
        return self._results

    @property
    def manifest(self) -> dict[str, Any] | None:
        """``manifest.json`` (versions, host, workload), or None when the run has none."""
        path = self.path / "manifest.json"
        return json.loads(path.read_text("utf-8")) if path.is_file() else None

    def to_pandas(self) -> Any:
        """``results`` as a ``pandas.DataFrame``.

        Raises
        ------
        ImportError
            pandas is not installed (cpbench does not depend on it).
        """
        try:
            import pandas  # noqa: F401
        except ImportError:
            raise ImportError("Run.to_pandas() needs pandas, which cpbench does not install: "
                              "pip install pandas (Run.results is the same data as a "
                              "pyarrow.Table)") from None
        return self.results.to_pandas()

    def __repr__(self) -> str:
        return f"<cpbench.Run {self.path}>"


def _trace_path(trace: Trace | PathLike, out_dir: Path) -> Path:
    """A file for ``trace``: its own, or (in memory) ``OUT_DIR/trace.arrow``."""
    if isinstance(trace, Trace):
        if trace.path is not None:
            return trace.path
        out_dir.mkdir(parents=True, exist_ok=True)
        return trace.save(out_dir / "trace.arrow").path  # type: ignore[return-value]
    return Path(trace)


def _trace_name(trace: Trace | PathLike) -> str:
    if isinstance(trace, Trace):
        return Path(trace.path).stem if trace.path else "trace"
    return Path(trace).stem


def _output_dest(parser: argparse.ArgumentParser) -> str:
    for action in parser._actions:
        if "-o" in action.option_strings or "--output" in action.option_strings:
            return action.dest
    raise ConfigError(f"'cpbench {parser.prog.split()[-1]}' has no --output option")


def _prepare(command: str, trace: Trace | PathLike, options: dict[str, Any],
             source: str) -> tuple[argparse.Namespace, Path]:
    """The command's namespace for ``options`` with the output directory fixed up front."""
    from cpbench.cli import command_parser
    from cpbench.config import namespace_from

    parser = command_parser(command)
    dest = _output_dest(parser)
    out = options.pop("output", None) or options.pop(dest, None)
    if out is None:
        from cpbench.outdir import default_dir
        out = default_dir(_trace_name(trace))
    out = Path(out)
    options.setdefault("quiet", True)  # a library call prints nothing unless asked
    ns = namespace_from(parser, options, source=f"cpbench.{source}()")
    ns.trace = _trace_path(trace, out)
    setattr(ns, dest, out)
    return ns, out


def _replay_options(trace: Trace | PathLike, url: str | None, options: dict[str, Any],
                    source: str) -> tuple[Path, Any]:
    """The trace file and :class:`ReplayOptions` of an API call (``config=`` read first)."""
    from cpbench.outdir import default_dir
    from cpbench.replaying.options import ReplayOptions

    given = dict(options)
    path = given.pop("config", None)
    merged: dict[str, Any] = {}
    if path is not None:
        from cpbench.config import load_file
        merged.update(load_file(path)[0])
        merged.pop("trace", None)
    merged.update({k: v for k, v in given.items() if v is not None})
    merged.setdefault("quiet", True)  # a library call prints nothing unless asked
    if url is not None:
        merged["url"] = url
    opts = ReplayOptions.from_kwargs(merged, source=f"cpbench.{source}()")
    if opts.output is None:
        opts.output = default_dir(_trace_name(trace))
    return _trace_path(trace, opts.output), opts


def replay(trace: Trace | PathLike, url: str | None = None, **options: Any) -> Run:
    """Replay a trace against a control plane and return its run.

    Parameters
    ----------
    trace
        A ``Trace`` or a trace file.
    url
        The control plane's base URL; None starts the embedded one (``cpbench sim``).
    **options
        The fields of :class:`cpbench.replaying.options.ReplayOptions` (the long options of
        ``cpbench replay`` with ``_`` for ``-``): ``output`` (the result directory; default
        ``cpbench-results/<trace>-<UTC time>``), ``overwrite``, ``max_concurrency``,
        ``speed``, ``rate_scale``, ``duration_s``, ``warmup``, ``timeout_s``, ``workers``,
        ``hints``, ``policy``, ``max_error_ratio``, ``metrics_urls``, ``quiet`` (default True
        here), ``report``; ``cluster`` (or ``ray``: a Ray address or ``"auto"``) and
        ``workers_per_node`` (docs/distributed.md); ``config`` reads them from a TOML file
        first.

    Returns
    -------
    Run
        The result directory, with ``summary``, ``results`` and ``to_pandas()``.

    Raises
    ------
    ConfigError
        An unknown option or a bad value. ``TargetError``: the target is unreachable.
        ``ClientSaturated``: the client stayed more than ``max_behind_s`` behind its schedule
        and stopped the run (what it sent is written).

    Notes
    -----
    Called from a thread other than the main one (where signal handlers cannot be set), the
    replay runs as a ``cpbench replay`` subprocess with the same options.
    """
    trace_file, opts = _replay_options(trace, url, options, "replay")
    if threading.current_thread() is threading.main_thread():
        from cpbench.replaying.run import run_replay
        return Run(run_replay(trace_file, opts))
    import subprocess

    proc = subprocess.run(python_module_cmd("cpbench", "replay", os.fspath(trace_file),
                                            *opts.to_argv()), capture_output=True)
    _check_cli("replay", proc.returncode, proc.stdout, proc.stderr)
    return Run(opts.output)


async def replay_async(trace: Trace | PathLike, url: str | None = None, **options: Any) -> Run:
    """``replay`` for a running event loop (a notebook, an async script): same arguments.

    The replay runs as a ``cpbench replay`` subprocess, so the caller's loop keeps running and
    the replay's own loops and worker processes stay out of it.
    """
    trace_file, opts = _replay_options(trace, url, options, "replay_async")
    proc = await asyncio.create_subprocess_exec(
        *python_module_cmd("cpbench", "replay", os.fspath(trace_file), *opts.to_argv()),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE)
    try:
        stdout, stderr = await proc.communicate()
    except asyncio.CancelledError:
        # A cancelled task stops its replay as Ctrl-C would: SIGTERM, the run writes what it
        # has and exits; the caller's cancellation then goes on.
        if proc.returncode is None:
            proc.terminate()
            await asyncio.shield(proc.wait())
        raise
    _check_cli("replay", proc.returncode, stdout, stderr)
    return Run(opts.output)


# --- the CLI as a subprocess (threads, event loops) ----------------------------------------

def _check_cli(command: str, status: int | None, stdout: bytes, stderr: bytes) -> None:
    from cpbench.errors import ClientSaturated, CpbenchError, TargetError

    if status == 0 or (command == "replay" and status == 130):
        return      # 130: stopped by a signal, everything written, as run_replay returns then
    lines = stderr.decode("utf-8", "replace").strip().splitlines()
    message = (lines[-1] if lines else f"exited with status {status}")
    message = message.removeprefix("cpbench: error: ")
    # The CLI's exit statuses: 2 bad input, 1 target trouble, 4 the client fell behind its
    # schedule; anything else is passed on.
    cls: type[CpbenchError] = {1: TargetError, 2: ConfigError, 4: ClientSaturated}.get(
        status or 0, CpbenchError)
    error = cls(f"cpbench {command} exited with status {status}: {message}")
    error.exit_status = status or 1
    raise error


# --- comparisons and reports ----------------------------------------------------------------

class Comparison:
    """A ``cpbench compare`` directory: one run per policy (and repeat), the paired statistics.

    Attributes
    ----------
    path : pathlib.Path
        The comparison directory.
    result : dict
        ``comparison.json``: per-policy statistics and ``answer`` (the best policy).
    runs : dict[str, list[Run]]
        Policy → its runs, in repeat order.
    """

    def __init__(self, path: PathLike) -> None:
        self.path = Path(path)
        try:
            self.result = json.loads((self.path / "comparison.json").read_text("utf-8"))
        except (OSError, ValueError) as exc:
            raise ConfigError(f"{self.path} holds no readable comparison.json: {exc}") from None
        self.runs = {policy: [Run(d) for d in dirs]
                     for policy, dirs in self.result.get("runs", {}).items()}

    @property
    def best_policy(self) -> str | None:
        """The policy with the best SLO attainment."""
        return (self.result.get("answer", {}).get("best_policy") or {}).get("policy")

    @property
    def report_path(self) -> Path:
        """The comparison report (``report.html``)."""
        return self.path / "report.html"

    def __repr__(self) -> str:
        return f"<cpbench.Comparison {', '.join(self.runs)} in {self.path}>"


def compare(trace: Trace | PathLike, policies: Sequence[str] | str, url: str | None = None,
            **options: Any) -> Comparison:
    """Replay one trace once per scheduling policy and compare them request by request.

    Parameters
    ----------
    trace
        A ``Trace`` or a trace file.
    policies
        Policy names (``["fifo", "slo_aware"]`` or ``"fifo,slo_aware"``); the first is the
        baseline unless ``baseline=`` says otherwise.
    url
        The control plane; None starts the embedded one.
    **options
        ``cpbench compare``'s long options with ``_`` for ``-`` (``repeat``, ``output``,
        ``speed``, ...).

    Returns
    -------
    Comparison
    """
    names = policies if isinstance(policies, str) else ",".join(policies)
    ns, out = _prepare("compare", trace, {**options, "url": url, "policies": names}, "compare")
    ns.func(ns)
    return Comparison(out)


def report(runs: Run | PathLike | Sequence[Run | PathLike], path: PathLike, *,
           markdown: bool = True, title: str | None = None) -> Path:
    """Write the standalone HTML report of one run (or the comparison of several).

    Parameters
    ----------
    runs
        ``Run`` objects or result directories.
    path
        The HTML file; with ``markdown`` the Markdown summary goes beside it (``.md``).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    from cpbench.reporting import write_report

    items = [runs] if isinstance(runs, (Run, str, os.PathLike)) else list(runs)
    dirs = [r.path if isinstance(r, Run) else Path(r) for r in items]
    html = Path(path)
    return write_report(dirs, html, markdown_path=html.with_suffix(".md") if markdown else None,
                        title=title)

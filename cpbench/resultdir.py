"""Reading a result directory (docs/formats.md): the one place its files are opened for reading.

:func:`read_result_dir` reads what a run wrote — ``summary.json`` (through
:func:`cpbench.summary.load_summary`), ``results.arrow`` (only the columns asked for, or
left unread) — and says where ``results.arrow`` and ``monitor.arrow`` are;
:func:`read_arrow` reads one Arrow IPC file of it whole, :func:`iter_arrow_batches` one record
batch at a time. All raise ``ConfigError`` with one line naming the file and what to pass
instead. The report
(:mod:`cpbench.reporting.load`) and the experiment statistics (:mod:`cpbench.experiments.stats`)
build their own views on top; neither opens the files itself.
"""
from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pyarrow as pa

from cpbench.errors import ConfigError
from cpbench.summary import load_summary

_HINT = "pass a directory written by `cpbench replay -o DIR`"


@dataclass(frozen=True)
class ResultDir:
    """What one result directory holds, as read: absent files are None."""

    path: Path
    summary: dict | None
    results: pa.Table | None
    results_path: Path | None
    monitor_path: Path | None


def read_arrow(path: str | os.PathLike[str], columns: Sequence[str] | None = None) -> pa.Table:
    """An Arrow IPC file of a result directory, memory-mapped; ``columns`` that exist only."""
    path = Path(path)
    try:
        with pa.memory_map(str(path)) as source:
            reader = pa.ipc.open_file(source)
            names = reader.schema.names
            table = reader.read_all()
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; {_HINT}") from None
    if columns is not None:
        table = table.select([c for c in columns if c in names])
    return table


def iter_arrow_batches(path: str | os.PathLike[str],
                       columns: Sequence[str] | None = None) -> Iterator[pa.RecordBatch]:
    """The record batches of an Arrow IPC file one at a time, with the ``columns`` it has.

    Read, not memory-mapped, and only the columns asked for: a reader of a 10^6-row
    results.arrow holds one batch of a few columns at a time, not the file's 100 MB. A file
    without batches yields one empty batch, so a reader always sees which columns there are.
    """
    path = Path(path)
    try:
        with pa.OSFile(str(path)) as source:
            schema = pa.ipc.open_file(source).schema
            wanted = schema.names if columns is None else [c for c in columns
                                                           if c in schema.names]
            # included_fields=[] would mean every field: no column wanted reads no batch.
            options = pa.ipc.IpcReadOptions(
                included_fields=[schema.get_field_index(c) for c in wanted])
            reader = pa.ipc.open_file(source, options=options)
            if not wanted or reader.num_record_batches == 0:
                yield pa.RecordBatch.from_pylist(
                    [], schema=pa.schema([schema.field(c) for c in wanted]))
                return
            for i in range(reader.num_record_batches):
                yield reader.get_batch(i)
    except (OSError, pa.ArrowInvalid) as exc:
        raise ConfigError(f"cannot read {path}: {exc}; {_HINT}") from None


def read_result_dir(path: str | os.PathLike[str], *, columns: Sequence[str] | None = None,
                    read_results: bool = True,
                    need: Sequence[str] = ("summary.json",)) -> ResultDir:
    """Read the result directory ``path``.

    Parameters
    ----------
    path
        A directory written by ``cpbench replay -o DIR`` (or compare, sweep, experiment), or
        a file in one (its summary.json, results.arrow ...).
    columns
        The ``results.arrow`` columns to read (those the file lacks are left out); None: all.
    read_results
        False: leave ``results.arrow`` unread (``results`` None); ``results_path`` still
        says where it is, for :func:`iter_arrow_batches`.
    need
        The files (``summary.json``, ``results.arrow``) whose absence is an error; the others
        are read when present.

    Raises
    ------
    ConfigError
        A needed file is missing, or a file present is not what cpbench wrote.
    """
    path = Path(path)
    if path.is_file() and (path.parent / "summary.json").is_file():
        path = path.parent  # summary.json, results.arrow ...: the run they belong to
    if path.is_file():
        raise ConfigError(f"{path} is a file, not a result directory; {_HINT}")
    if not path.is_dir():
        raise ConfigError(f"{path} is not a result directory (no such directory); {_HINT}")
    for name in need:
        if not (path / name).is_file():
            raise ConfigError(f"{path} is not a result directory (no {name}); {_HINT}")
    summary_path, results_path = path / "summary.json", path / "results.arrow"
    monitor_path = path / "monitor.arrow"
    return ResultDir(
        path=path,
        summary=load_summary(summary_path) if summary_path.is_file() else None,
        results=(read_arrow(results_path, columns)
                 if read_results and results_path.is_file() else None),
        results_path=results_path if results_path.is_file() else None,
        monitor_path=monitor_path if monitor_path.is_file() else None)


__all__ = ["ResultDir", "iter_arrow_batches", "read_arrow", "read_result_dir"]

"""Output directories: their default names, and claiming one for a run.

Every command that writes a directory (replay, run, compare, sweep, experiment) names its
default here. A replay claims its directory through :func:`claim`; the multi-run commands
check theirs with :func:`prepare` before their first run (each of their runs then claims its
own subdirectory). Either way a path that is a file, or a non-empty directory without
``--overwrite``, is refused with one line; with ``--overwrite`` the old contents are removed
first, so a report never sits beside another run's summary. While a replay writes, an
exclusive lock (``.cpbench.lock``, ``flock``) keeps a second run out of the same directory; a
directory the replay created and left empty (it failed before writing) is removed again.
"""
from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

from cpbench.errors import ConfigError, OutputError

LOCK_NAME = ".cpbench.lock"


def default_dir(name: str) -> Path:
    """``cpbench-results/<name>-<UTC timestamp>`` (microseconds, so two runs never collide)."""
    stamp = datetime.now(timezone.utc).strftime("%Y%m%dT%H%M%S.%fZ")
    return Path("cpbench-results") / f"{name}-{stamp}"


def check_free(path: Path, *, overwrite: bool = False, keep: tuple[str, ...] = ()) -> None:
    """Refuse ``path`` unless it is absent, an empty directory, or ``overwrite`` is given.

    ``keep``: names the run itself put there first (the trace of an in-memory workload),
    which neither count as old results nor are removed by ``overwrite``.
    """
    if path.exists() and not path.is_dir():
        raise ConfigError(f"-o {path} is an existing file; give a directory path")
    ours = {LOCK_NAME, *keep}
    if path.is_dir() and not overwrite and any(p.name not in ours for p in path.iterdir()):
        raise ConfigError(f"-o {path} already holds results; choose a new directory or pass "
                          "--overwrite to replace them")


def prepare(path: str | os.PathLike[str], *, overwrite: bool = False,
            keep: tuple[str, ...] = ()) -> Path:
    """The output directory of a multi-run command, checked and created before its first run:
    refused as :func:`check_free` refuses; with ``overwrite`` emptied (``keep`` stays)."""
    out = Path(path)
    check_free(out, overwrite=overwrite, keep=keep)
    _create(out)
    if overwrite:
        _empty(out, keep)
    return out


def keep_names(trace: str | os.PathLike[str] | None, out: str | os.PathLike[str]) -> tuple[str, ...]:
    """The trace's file name when it lies in ``out`` itself (rerunning on a trace a former
    run synthesized there), so neither the check nor ``--overwrite`` counts or removes it."""
    if trace is None:
        return ()
    trace = Path(trace)
    return (trace.name,) if trace.resolve().parent == Path(out).resolve() else ()


@contextlib.contextmanager
def claim(path: str | os.PathLike[str], *, overwrite: bool = False,
          keep: tuple[str, ...] = ()) -> Iterator[Path]:
    """Create (or, with ``overwrite``, empty) ``path`` and hold its lock for the block.

    Raises
    ------
    ConfigError
        ``path`` is a file, holds results (without ``overwrite``) or is being written by
        another run (exit status 2: choose another -o).
    OutputError
        ``path`` cannot be created.
    """
    out = Path(path)
    check_free(out, overwrite=overwrite, keep=keep)
    created = not out.exists()
    _create(out)
    lock = open(out / LOCK_NAME, "a")
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise ConfigError(f"-o {out} is being written by another cpbench run; choose "
                              "another directory") from None
        if overwrite:
            _empty(out, keep)
        try:
            yield out
        finally:
            os.unlink(out / LOCK_NAME)
    finally:
        lock.close()
        if created and out.is_dir() and not any(out.iterdir()):
            out.rmdir()


def _create(out: Path) -> None:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise OutputError(f"cannot create {out}: {exc.strerror or exc}; choose another -o") \
            from None


def _empty(out: Path, keep: tuple[str, ...]) -> None:
    for entry in out.iterdir():
        if entry.name == LOCK_NAME or entry.name in keep:
            continue
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()

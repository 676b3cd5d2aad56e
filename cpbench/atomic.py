"""Atomic file replacement: readers see the old file or the new one, never half of either.

Every output cpbench writes whole (summary.json, reports, manifests, traces, monitor.arrow,
comparison files, ready files) goes through this module: ``atomic_write`` for bytes or text in
hand, ``atomic_path`` for a writer that wants a path of its own (an Arrow IPC writer). It sits
at the bottom of the layer stack beside ``errors``.
"""
from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, *, fsync: bool = True) -> Iterator[str]:
    """A temporary path beside ``path`` to write; it replaces ``path`` when the block ends.

    The temporary file is in the same folder (so the rename is atomic) and has the usual
    permissions (0666 less the umask), not mkstemp's private 0600, so a report can be served
    or shared like any file the user writes. When the block raises, the temporary file is
    removed and ``path`` is left as it was. ``OSError`` propagates: callers turn it into the
    ``OutputError`` that names their file.

    >>> with atomic_path("out.arrow") as tmp:      # doctest: +SKIP
    ...     with pa.OSFile(tmp, "wb") as sink: ...
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        os.fchmod(fd, 0o666 & ~_umask())
        os.close(fd)
        yield tmp
        if fsync:
            fd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise


def atomic_write(path: str | os.PathLike, data: bytes | str, *, fsync: bool = True) -> None:
    """Write ``data`` (text as UTF-8) to ``path`` through :func:`atomic_path`."""
    payload = data.encode("utf-8") if isinstance(data, str) else data
    with atomic_path(path, fsync=fsync) as tmp, open(tmp, "wb") as f:
        f.write(payload)

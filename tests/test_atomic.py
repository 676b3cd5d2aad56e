"""cpbench.atomic: whole-file replacement with ordinary permissions."""
from __future__ import annotations

import os
import stat

import pytest

from cpbench.atomic import atomic_write


def test_writes_replaces_and_leaves_no_temporary(tmp_path):
    target = tmp_path / "summary.json"
    atomic_write(target, "first")
    atomic_write(target, b"second")
    assert target.read_bytes() == b"second"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["summary.json"]


def test_permissions_follow_the_umask_not_mkstemp(tmp_path):
    old = os.umask(0o022)
    try:
        atomic_write(tmp_path / "report.html", "<html></html>")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "report.html").stat().st_mode) == 0o644


def test_failure_keeps_the_old_file_and_cleans_up(tmp_path, monkeypatch):
    target = tmp_path / "report.md"
    target.write_text("old")

    def broken_replace(src, dst):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(os, "replace", broken_replace)
    with pytest.raises(OSError, match="No space"):
        atomic_write(target, "new")
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["report.md"]


def test_atomic_path_hands_a_writer_its_own_path(tmp_path):
    """An Arrow IPC writer writes to the temporary path; the target appears whole at the end."""
    import pyarrow as pa
    import pyarrow.ipc as ipc

    from cpbench.atomic import atomic_path
    target = tmp_path / "t.arrow"
    table = pa.table({"x": [1, 2, 3]})
    with atomic_path(target) as tmp:
        assert os.path.dirname(tmp) == str(tmp_path) and not target.exists()
        with pa.OSFile(tmp, "wb") as sink, ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    assert ipc.open_file(str(target)).read_all().equals(table)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["t.arrow"]


def test_atomic_path_leaves_the_old_file_when_the_writer_fails(tmp_path):
    from cpbench.atomic import atomic_path
    target = tmp_path / "monitor.arrow"
    target.write_bytes(b"old")
    with pytest.raises(ValueError, match="half way"):
        with atomic_path(target) as tmp:
            with open(tmp, "wb") as f:
                f.write(b"half")
            raise ValueError("half way")
    assert target.read_bytes() == b"old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["monitor.arrow"]


def test_no_hand_rolled_temporary_files_left_in_the_package():
    """Every whole-file write goes through cpbench.atomic (one helper, not seven copies)."""
    import re
    from pathlib import Path

    import cpbench
    pattern = re.compile(r"os\.replace\(|os\.rename\(|\.rename\(|mkstemp\(|NamedTemporaryFile\(|"
                         r"\.replace\(path\)")
    package = Path(cpbench.__file__).parent
    hits = [f"{p.relative_to(package)}:{i}" for p in sorted(package.rglob("*.py"))
            if p.name != "atomic.py"
            for i, line in enumerate(p.read_text().splitlines(), 1) if pattern.search(line)]
    assert hits == []

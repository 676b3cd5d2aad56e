"""Child processes run the cpbench their parent runs, not a source tree in the working dir."""
from __future__ import annotations

import subprocess

import cpbench
from cpbench.spawn import python_module_cmd


def test_child_ignores_a_shadowing_package_in_the_working_directory(tmp_path):
    # A source checkout without built extensions, as after `pip install .` in the repo root.
    fake = tmp_path / "cpbench"
    fake.mkdir()
    (fake / "__init__.py").write_text("raise ImportError('the uncompiled source tree')\n")
    cmd = python_module_cmd("cpbench", "--version")
    out = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == f"cpbench {cpbench.__version__}"
    # Plain `python -m` would have imported the shadow: the case this module exists for.
    plain = subprocess.run([cmd[0], "-m", "cpbench", "--version"], cwd=tmp_path,
                           capture_output=True, text=True, timeout=60)
    assert plain.returncode != 0 and "uncompiled source tree" in plain.stderr


def test_arguments_and_relative_paths_reach_the_module(tmp_path):
    (tmp_path / "note.txt").write_text("x")
    out = subprocess.run(python_module_cmd("cpbench", "validate", "note.txt"), cwd=tmp_path,
                         capture_output=True, text=True, timeout=60)
    # validate found the relative file (and rejected it as not Arrow): cwd is unchanged.
    assert out.returncode == 2 and "note.txt" in out.stderr + out.stdout
    assert "Traceback" not in out.stderr

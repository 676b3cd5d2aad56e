"""No module of cpbench imports a module that imports it back (tools/import_graph.py reads the
source, late imports inside functions included)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "tools"))

import import_graph  # noqa: E402


def test_the_finder_sees_a_cycle_and_a_late_import(tmp_path):
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_graph.cycles(edges) == [["a", "b", "c"]]
    assert import_graph.cycles({"a": {"b"}, "b": set()}) == []


def test_the_package_has_no_import_cycle():
    edges = import_graph.graph()
    assert "cpbench.replaying.run" in edges and "cpbench.vocab" in edges["cpbench.replaying.rows"]
    # A function-level import counts: the replay imports the manifest late.
    assert "cpbench.manifest" in edges["cpbench.replaying.run"]
    assert import_graph.cycles(edges) == []


def test_the_tool_exits_0_and_prints_the_map():
    proc = subprocess.run([sys.executable, str(ROOT / "tools" / "import_graph.py"), "--map"],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout
    assert "cpbench.replaying.child -> " in proc.stdout and " 0 cycles" in proc.stdout


def test_leaf_modules_import_nothing_of_cpbench_above_them():
    """The modules that exist to cut cycles stay leaves: vocabulary, errors, atomic writes,
    redaction, stored calibration, length specs."""
    edges = import_graph.graph()
    leaves = {"cpbench.record.lengths": {"cpbench.errors"},
              "cpbench.vocab": set(), "cpbench.errors": set(), "cpbench.atomic": set(),
              "cpbench.redact": set(), "cpbench.calibration": {"cpbench.errors",
                                                              "cpbench.atomic"}}
    for name, allowed in leaves.items():
        assert edges[name] <= allowed, (name, edges[name] - allowed)

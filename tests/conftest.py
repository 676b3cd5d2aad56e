"""Shared test isolation: no test reads or writes the user's own cpbench state."""
from __future__ import annotations

import pytest


@pytest.fixture(autouse=True, scope="session")
def _private_cpbench_home(tmp_path_factory):
    """Point CPBENCH_HOME at an empty folder so a host's calibration.json (written by
    `cpbench calibrate`) never changes what a replay or report under test says. Subprocesses
    inherit it; tests that need their own home still override it with monkeypatch."""
    mp = pytest.MonkeyPatch()
    mp.setenv("CPBENCH_HOME", str(tmp_path_factory.mktemp("cpbench-home")))
    yield
    mp.undo()

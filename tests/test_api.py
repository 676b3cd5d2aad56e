"""The public Python API: same options as the CLI, same files, and thin objects over them."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

import cpbench
from cpbench import api
from cpbench.errors import ConfigError, TraceError
from cpbench.results import empty_results

REPO = Path(__file__).resolve().parent.parent


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpbench", *args], capture_output=True,
                          text=True, timeout=120, cwd=cwd)


def test_importing_the_api_starts_nothing_heavy():
    code = ("import sys, asyncio, cpbench, cpbench.api\n"
            "bad = [m for m in ('aiohttp', 'uvloop', 'pynvml', 'bokeh', 'cpbench.replay',"
            " 'cpbench.workers') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "policy = asyncio.get_event_loop_policy()\n"
            "assert type(policy).__module__.startswith('asyncio'), policy\n"
            "assert policy._local._loop is None\n"
            "print('clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr


def test_the_package_exports_the_api_lazily():
    if "load_trace" not in getattr(cpbench, "__all__", ()):
        pytest.skip("cpbench/__init__.py does not export the API yet")
    # `replay` and `report` are also submodule names: importing those modules must not hide
    # the functions (the import system sets a submodule as an attribute of its package).
    code = ("import sys, cpbench\n"
            "assert 'cpbench.api' not in sys.modules and 'pyarrow' not in sys.modules\n"
            "import cpbench.replay, cpbench.report\n"
            "from cpbench.replay import run_replay\n"
            "from cpbench import api\n"
            "for name in api.__all__:\n"
            "    assert getattr(cpbench, name) is getattr(api, name), name\n"
            "    assert name in cpbench.__all__ and name in dir(cpbench), name\n"
            "print('lazy')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "lazy", out.stderr


def test_synthesize_matches_record_synth_byte_for_byte(tmp_path):
    cli = _cli("record", "synth", "--mode", "hybrid", "--rate", "20", "--requests", "40",
               "--priority-mix", "HIGH=0.5,NORMAL=0.5,LOW=0", "--seed", "9",
               "-o", str(tmp_path / "cli.arrow"))
    assert cli.returncode == 0, cli.stderr
    trace = api.synthesize(mode="hybrid", rate=20, requests=40, seed=9,
                           priority_mix={"HIGH": 0.5, "NORMAL": 0.5, "LOW": 0})
    assert trace.path is None and len(trace) == 40 and trace.seed == 9
    assert trace.metadata["generator"] == "cpbench record synth"
    trace.save(tmp_path / "api.arrow")
    assert (tmp_path / "api.arrow").read_bytes() == (tmp_path / "cli.arrow").read_bytes()
    on_disk = api.synthesize(mode="hybrid", rate=20, requests=40, seed=9,
                             priority_mix="HIGH=0.5,NORMAL=0.5,LOW=0", path=tmp_path / "p.arrow")
    assert on_disk.path == tmp_path / "p.arrow"
    assert on_disk.to_table().equals(trace.to_table())


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 5, "requests": 5, "rte": 1}, r"synthesize\(\): unknown key 'rte'"),
    ({"rate": "fast", "requests": 5}, r"key 'rate' expects a number"),
    ({"requests": 5}, r"missing required option\(s\) rate"),
    ({"rate": 5}, r"requests=N or duration_s=S"),
    ({"rate": 5, "requests": 5, "mode": "vision"}, r"--mode must be one of"),
])
def test_synthesize_checks_options_like_the_cli(kwargs, match):
    with pytest.raises(ConfigError, match=match):
        api.synthesize(seed=1, **kwargs)


def test_load_trace_and_its_errors(tmp_path):
    trace = api.load_trace(REPO / "traces" / "light.arrow")
    assert len(trace) == trace.to_table().num_rows > 0
    assert trace.seed == trace.metadata["seed"] and trace.describe()["requests"] == len(trace)
    assert "light.arrow" in repr(trace)
    (tmp_path / "junk.arrow").write_bytes(b"not arrow")
    with pytest.raises(TraceError):
        api.load_trace(tmp_path / "junk.arrow")


def _fake_run(path: Path) -> Path:
    path.mkdir(parents=True)
    (path / "summary.json").write_text(json.dumps({"requests": {"sent": 0}}))
    with pa.OSFile(str(path / "results.arrow"), "wb") as sink:
        table = empty_results()
        with pa.ipc.new_file(sink, table.schema) as writer:
            writer.write_table(table)
    return path


def test_run_reads_its_directory(tmp_path, monkeypatch):
    run = api.Run(_fake_run(tmp_path / "r"))
    assert run.summary == {"requests": {"sent": 0}}
    assert run.results.num_rows == 0 and "intended_ns" in run.results.column_names
    assert run.manifest is None and run.path == tmp_path / "r"
    # pandas is not a dependency: without it, to_pandas says what to do.
    monkeypatch.setitem(sys.modules, "pandas", None)
    with pytest.raises(ImportError, match="pip install pandas"):
        run.to_pandas()
    with pytest.raises(ConfigError, match="not a result directory"):
        api.Run(tmp_path)


def test_replay_rejects_unknown_options_before_anything_runs(tmp_path):
    with pytest.raises(ConfigError, match=r"cpbench.replay\(\): unknown key 'sped'"):
        api.replay(REPO / "traces" / "light.arrow", sped=2, output=tmp_path / "x")
    with pytest.raises(ConfigError, match=r"key 'workers' expects an integer"):
        api.replay(REPO / "traces" / "light.arrow", workers="two", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()

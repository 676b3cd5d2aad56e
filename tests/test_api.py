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
from support import run_cli

REPO = Path(__file__).resolve().parent.parent


_cli = run_cli


def test_importing_the_api_starts_nothing_heavy():
    code = ("import sys, asyncio, cpbench, cpbench.api\n"
            "bad = [m for m in ('aiohttp', 'uvloop', 'pynvml', 'bokeh', 'cpbench.replaying.run',"
            " 'cpbench.replaying.pool') if m in sys.modules]\n"
            "assert not bad, bad\n"
            "policy = asyncio.get_event_loop_policy()\n"
            "assert type(policy).__module__.startswith('asyncio'), policy\n"
            "assert policy._local._loop is None\n"
            "print('clean')\n")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         timeout=60)
    assert out.returncode == 0 and out.stdout.strip() == "clean", out.stderr


def test_the_package_exports_the_api_lazily():
    # The modules behind the API (runner, reporting) are named apart from the API functions
    # `replay` and `report`: importing them must not replace the functions on the package.
    code = ("import sys, cpbench\n"
            "assert 'cpbench.api' not in sys.modules and 'pyarrow' not in sys.modules\n"
            "import cpbench.replaying.run, cpbench.reporting\n"
            "from cpbench.replaying.run import run_replay\n"
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


def test_synthesize_with_prefix_blocks_matches_record_synth(tmp_path):
    """The prefix options reach the generator (not accepted and dropped), and a trace with
    blocks saves with its block size."""
    cli = _cli("record", "synth", "--rate", "20", "--requests", "30", "--prefix-groups", "2",
               "--prefix-tokens", "32", "--turns", "2", "--seed", "9",
               "-o", str(tmp_path / "cli.arrow"))
    assert cli.returncode == 0, cli.stderr
    trace = api.synthesize(rate=20, requests=30, prefix_groups=2, prefix_tokens=32, turns=2,
                           seed=9)
    assert trace.metadata["block_tokens"] == 16
    trace.save(tmp_path / "api.arrow")
    assert (tmp_path / "api.arrow").read_bytes() == (tmp_path / "cli.arrow").read_bytes()


@pytest.mark.parametrize("kwargs, match", [
    ({"rate": 5, "requests": 5, "rte": 1}, r"synthesize\(\): unknown key 'rte'"),
    ({"rate": "fast", "requests": 5}, r"key 'rate' expects a number"),
    ({"requests": 5}, r"missing required option\(s\) rate"),
    ({"rate": 5}, r"requests=N or duration_s=S"),
    ({"rate": 5, "requests": 5, "mode": "vision"}, r"key 'mode' must be one of llm, hybrid"),
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
    with pytest.raises(ConfigError, match=r"cpbench.replay\(\): unknown replay option 'sped'; "
                                          r"known: .*speed"):
        api.replay(REPO / "traces" / "light.arrow", sped=2, output=tmp_path / "x")
    with pytest.raises(ConfigError, match=r"--workers must be an integer >= 1"):
        api.replay(REPO / "traces" / "light.arrow", workers="two", output=tmp_path / "x")
    assert not (tmp_path / "x").exists()


# --- against the embedded control plane ------------------------------------------------------

# Fields that depend only on the trace, the options and the sim's deterministic answers
# (never on timing): the API and the CLI must agree on every one of them.
_ROW_COLUMNS = ("row", "kind", "priority", "model", "input_tokens", "output_tokens",
                "batch_size", "status", "error_class", "slo_ttft_ms", "slo_e2e_ms", "warmup")
_REPLAY_ARGS = {"workers": 1, "no_report": True, "timeout": 30.0, "warmup": "3"}


@pytest.fixture(scope="module")
def small_trace(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("trace") / "small.arrow"
    api.synthesize(mode="hybrid", rate=40, requests=40, seed=11, input_tokens="fixed:16",
                   output_tokens="fixed:4", embed_batch="fixed:2", path=path)
    return path


def _deterministic(run_dir: Path) -> dict:
    summary = json.loads((run_dir / "summary.json").read_text())
    requests = summary["requests"]
    run = summary["run"]
    results = api.Run(run_dir).results.sort_by("row")
    return {
        "requests": {k: requests[k] for k in ("scheduled", "sent", "completed", "errors",
                                              "warmup", "by_error_class")},
        "run": {k: run.get(k) for k in ("trace_sha256", "embedded_target", "policy",
                                        "workers", "interrupted", "options")},
        "by_class": sorted((c["kind"], c["priority"], c["requests"], c["completed"],
                            c["errors"]) for c in summary["by_class"]),
        "rows": {c: results.column(c).to_pylist() for c in _ROW_COLUMNS
                 if c in results.column_names},
    }


@pytest.mark.integration
def test_api_and_cli_give_the_same_summary(tmp_path, small_trace):
    # The CLI run takes half its options from a config file, one of them overridden.
    cfg = tmp_path / "replay.toml"
    cfg.write_text('no-report = true\ntimeout = 30.0\nwarmup = "3"\nworkers = 2\n')
    cli = _cli("replay", str(small_trace), "-o", str(tmp_path / "cli"), "--config", str(cfg),
               "--workers", "1", "--quiet")
    assert cli.returncode == 0, cli.stderr
    run = api.replay(api.load_trace(small_trace), output=tmp_path / "api", **_REPLAY_ARGS)
    assert isinstance(run, api.Run) and run.path == tmp_path / "api"
    a, b = _deterministic(tmp_path / "cli"), _deterministic(run.path)
    # Statistics leave out the 3 warm-up requests; results.arrow keeps every row.
    assert a["requests"]["sent"] == 37 and a["requests"]["warmup"] == 3
    assert a["requests"]["completed"] == 37 and a["requests"]["errors"] == 0
    assert a["rows"]["row"] == list(range(40)) and sum(a["rows"]["warmup"]) == 3
    assert a == b
    assert run.summary == json.loads((run.path / "summary.json").read_text())
    assert run.results.num_rows == 40
    from cpbench.manifest import read_manifest, verify
    assert verify(tmp_path / "cli", run.path) == []
    workload = read_manifest(run.path)["workload"]
    assert workload["seed"] == 11 and workload["trace_sha256"] == a["run"]["trace_sha256"]
    assert workload["options"]["timeout_s"] == 30.0 and workload["options"]["workers"] == 1


@pytest.mark.integration
def test_replay_async_and_from_a_thread(tmp_path, small_trace):
    import asyncio
    import threading

    trace = api.synthesize(rate=40, requests=12, seed=5, input_tokens="fixed:8",
                           output_tokens="fixed:2")

    async def main() -> api.Run:
        return await api.replay_async(trace, output=tmp_path / "async", workers=1,
                                      no_report=True)

    run = asyncio.run(main())
    # An in-memory trace is stored in the run, so the run names the exact bytes replayed.
    assert (run.path / "trace.arrow").is_file()
    assert run.summary["requests"]["completed"] == 12 and run.results.num_rows == 12
    box: dict = {}
    thread = threading.Thread(target=lambda: box.setdefault(
        "run", api.replay(small_trace, output=tmp_path / "thread", **_REPLAY_ARGS)))
    thread.start()
    thread.join(120)
    assert _deterministic(box["run"].path)["rows"]["row"] == list(range(40))


@pytest.mark.integration
def test_a_bad_option_value_from_the_replay_itself_is_a_config_error(tmp_path, small_trace):
    with pytest.raises(ConfigError, match="speed"):
        api.replay(small_trace, output=tmp_path / "bad", speed=-1.0, workers=1)


@pytest.mark.integration
def test_compare_and_report(tmp_path, small_trace):
    result = api.compare(small_trace, ["fifo", "priority"], output=tmp_path / "cmp",
                         workers=1, drain_s=0.1, resamples=50)
    assert isinstance(result, api.Comparison) and list(result.runs) == ["fifo", "priority"]
    assert result.best_policy in ("fifo", "priority")
    assert result.report_path.is_file()
    fifo, prio = result.runs["fifo"][0], result.runs["priority"][0]
    assert fifo.summary["run"]["trace_sha256"] == prio.summary["run"]["trace_sha256"]
    assert _deterministic(fifo.path)["rows"]["row"] == list(range(40))
    html = api.report([fifo, prio.path], tmp_path / "both.html", title="two policies")
    assert html == tmp_path / "both.html" and "two policies" in html.read_text()
    assert (tmp_path / "both.md").is_file()
    differs = _cli("verify", str(fifo.path), str(prio.path))
    assert differs.returncode == 1
    assert differs.stdout.splitlines()[1:] == ['  options.policy: "fifo" != "priority"']
    with pytest.raises(ConfigError, match=r"compare\(\): unknown key 'repeats'"):
        api.compare(small_trace, "fifo,priority", repeats=2)


@pytest.mark.integration
def test_replay_async_errors_and_cancellation(tmp_path):
    import asyncio

    with pytest.raises(ConfigError, match=r"status 2: .*missing\.arrow"):
        asyncio.run(api.replay_async(tmp_path / "missing.arrow", output=tmp_path / "m"))
    slow = api.synthesize(rate=2, requests=60, seed=3, input_tokens="fixed:8",
                          output_tokens="fixed:2", path=tmp_path / "slow.arrow")

    async def cancel_after_start() -> None:
        task = asyncio.ensure_future(api.replay_async(slow, output=tmp_path / "c", workers=1,
                                                      no_report=True))
        out = tmp_path / "c" / "results.arrow"
        for _ in range(300):  # until the replay is running (bounded: 30 s)
            if out.exists():
                break
            await asyncio.sleep(0.1)
        await asyncio.sleep(1.0)
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(cancel_after_start())
    # The cancelled replay stopped like an interrupted one: everything written, marked so.
    summary = api.Run(tmp_path / "c").summary
    assert summary["run"]["interrupted"] is True
    assert summary["requests"]["sent"] < 60  # 60 requests at 2/s take 30 s; cut after ~1 s


def test_a_cli_exit_status_becomes_the_error_the_in_process_replay_raises():
    # From a thread or an event loop the replay is a subprocess: its exit status maps back to
    # the class run_replay raises in process, with the CLI's one line.
    from cpbench.errors import ClientSaturated, CpbenchError, TargetError
    line = b"cpbench: error: the client fell more than 1 s behind the schedule\n"
    for status, cls in ((1, TargetError), (2, ConfigError), (4, ClientSaturated),
                        (3, CpbenchError)):
        with pytest.raises(cls) as info:
            api._check_cli("replay", status, b"", line)
        assert info.value.exit_status == status
        assert str(info.value) == (f"cpbench replay exited with status {status}: the client "
                                   f"fell more than 1 s behind the schedule")
    # A replay a signal stopped wrote everything and is marked interrupted: in process
    # run_replay returns it, so the subprocess path returns it too.
    assert api._check_cli("replay", 130, b"", b"") is None

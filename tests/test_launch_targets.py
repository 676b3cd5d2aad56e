"""compare --targets/--launch and per-engine balance, without third-party routers.

The deployments here are `cpbench sim` servers (started by the test or by --launch), so these
run on any machine; tests/test_routers.py puts real routers in front of a fleet.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from cpbench.errors import ConfigError
from cpbench.experiments.launch import parse_launch, parse_launches, redact_argv
from cpbench.experiments.targets import parse_targets
from cpbench.monitor.engines import balance, balance_from_monitor, delta, totals
from support import running_fleet

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tools"))
import routerlab  # noqa: E402  (tools/ is not a package)


def cpbench(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "cpbench", *map(str, args)], cwd=ROOT,
                          capture_output=True, text=True, timeout=timeout)


# --- parsing and redaction --------------------------------------------------------------------

def test_parse_targets_names_urls_and_errors():
    assert parse_targets("rr=http://127.0.0.1:1/,ca=http://h:2") == {
        "rr": "http://127.0.0.1:1", "ca": "http://h:2"}
    assert parse_targets(["a=http://x:1", "b=https://y"]) == {"a": "http://x:1", "b": "https://y"}
    for bad, words in (("rr", "NAME=URL"), ("rr=ftp://x", "NAME=URL"), ("a=http://x,a=http://y",
                       "more than once"), ("b@d=http://x", "letters, digits")):
        with pytest.raises(ConfigError, match=words):
            parse_targets(bad)


def test_parse_launch_needs_a_name_and_the_port_placeholder():
    launch = parse_launch("rr=vllm-router --port {port} --prometheus-port {metrics_port}")
    assert launch.name == "rr" and launch.wants_metrics_port
    assert not parse_launch("x=srv --port {port}").wants_metrics_port
    with pytest.raises(ConfigError, match=r"must contain \{port\}"):
        parse_launch("rr=vllm-router --port 8000")
    with pytest.raises(ConfigError, match="NAME="):
        parse_launch("vllm-router --port {port}")
    with pytest.raises(ConfigError, match="cannot split"):
        parse_launch("rr=srv --port {port} 'unclosed")
    with pytest.raises(ConfigError, match="more than once"):
        parse_launches(["a=x {port}", "a=y {port}"])


def test_redact_argv_hides_secret_options_credentials_and_env_secrets(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-envsecret42")
    shown = redact_argv(["vllm-router", "--api-key", "sk-abc123", "--token=tok-9",
                         "--worker-urls", "http://bob:pw@h:1", "--max-tokens", "64",
                         "--note", "sk-envsecret42", "HF_TOKEN=hf-xyz"])
    for secret in ("sk-abc123", "tok-9", "bob:pw", "sk-envsecret42", "hf-xyz"):
        assert secret not in shown
    assert "--api-key '<redacted>'" in shown and "'--token=<redacted>'" in shown
    assert "--max-tokens 64" in shown  # a name with "token" in a segment only: kept


# --- per-engine balance from counters ---------------------------------------------------------

def test_totals_sum_label_sets_and_delta_treats_a_drop_as_a_restart():
    samples = [('vllm:request_success_total{engine="0",finished_reason="length"}', 3.0),
               ('vllm:request_success_total{engine="0",finished_reason="stop"}', 2.0),
               ('vllm:prompt_tokens_total{engine="0"}', 100.0),
               ('vllm:num_requests_running{engine="0"}', 7.0)]
    assert totals(samples) == {"requests": 5.0, "prompt_tokens": 100.0}
    assert delta({"requests": 5.0}, {"requests": 9.0}) == {"requests": 4.0}
    assert delta({"requests": 50.0}, {"requests": 4.0}) == {"requests": 4.0}


def test_balance_from_monitor_is_last_minus_first_per_engine_and_fleet_ratio():
    rows = [  # t_ns, source, metric, value; engine B served nothing (no success counter yet)
        (0, "http://a:1/metrics", 'vllm:request_success_total{finished_reason="length"}', 10),
        (0, "http://a:1/metrics", "vllm:prefix_cache_queries_total", 1000),
        (0, "http://a:1/metrics", "vllm:prefix_cache_hits_total", 100),
        (0, "http://b:2/metrics", "vllm:prefix_cache_queries_total", 0),
        (0, "http://b:2/metrics", "vllm:prefix_cache_hits_total", 0),
        (0, "http://router:9/metrics", "vllm_router_requests_total", 0),
        (5, "http://a:1/metrics", 'vllm:request_success_total{finished_reason="length"}', 16),
        (9, "http://a:1/metrics", 'vllm:request_success_total{finished_reason="length"}', 22),
        (9, "http://a:1/metrics", "vllm:prefix_cache_queries_total", 1600),
        (9, "http://a:1/metrics", "vllm:prefix_cache_hits_total", 550),
        (9, "http://b:2/metrics", "vllm:prefix_cache_queries_total", 0),
        (9, "http://b:2/metrics", "vllm:prefix_cache_hits_total", 0),
    ]
    table = pa.table({"t_ns": [r[0] for r in rows], "source": [r[1] for r in rows],
                      "metric": [r[2] for r in rows], "value": [float(r[3]) for r in rows]})
    out = balance_from_monitor(table)
    assert out["per_engine"] == [
        {"engine": "a:1", "requests": 12, "prefix_queried_tokens": 600,
         "prefix_hit_tokens": 450, "prefix_hit_ratio": 0.75},
        {"engine": "b:2", "requests": 0, "prefix_queried_tokens": 0, "prefix_hit_tokens": 0,
         "prefix_hit_ratio": None}]
    assert (out["requests_max"], out["requests_min"]) == (12, 0)
    assert out["fleet_prefix_hit_ratio"] == 0.75
    assert balance({}) is None


# --- the CLI against cpbench's own servers ----------------------------------------------------

@pytest.fixture()
def fleet2(tmp_path):
    with running_fleet(tmp_path / "fleet.json", 2) as (_, ready):
        yield ready["urls"]


@pytest.mark.integration
def test_replay_summary_has_requests_and_prefix_hits_per_engine(tmp_path, fleet2):
    from cpbench.replaying.run import run_replay
    trace = routerlab.write_prefix_trace(tmp_path / "p.arrow", groups=2, per_group=6,
                                         prefix_words=64, gap_ms=5)
    out = Path(run_replay(str(trace), url=fleet2[0], output=str(tmp_path / "run"),
                          quiet=True, report=False, workers=1,
                          metrics_urls=[u + "/metrics" for u in fleet2]))
    engines = json.loads((out / "summary.json").read_text())["engines"]
    by_engine = {r["engine"]: r for r in engines["per_engine"]}
    first, second = (u.split("//")[1] for u in fleet2)
    # Every request went to the first engine: the final scrape after the run counts them all.
    assert by_engine[first]["requests"] == 12 and by_engine[second]["requests"] == 0
    assert by_engine[first]["prompt_tokens"] == 12 * (64 + 16)
    assert by_engine[first]["generation_tokens"] == 12 * 8
    # 2 groups x 64 prefix words = 4 blocks of 16 each; every later request hits its group's.
    assert by_engine[first]["prefix_hit_tokens"] == 10 * 64
    assert (engines["requests_max"], engines["requests_min"]) == (12, 0)
    # The report shows the balance and the per-engine table.
    from cpbench.reporting import write_report
    html = write_report([out], tmp_path / "report.html").read_text()
    assert "Engines behind the target" in html and "Requests and tokens per engine" in html
    assert "Prefix-cache hit ratio per engine" in html


@pytest.mark.integration
def test_compare_launch_and_targets_write_runs_stats_report_and_stop_by_pid(tmp_path, fleet2):
    trace = routerlab.write_prefix_trace(tmp_path / "p.arrow", groups=2, per_group=5,
                                         prefix_words=32, gap_ms=5)
    out = tmp_path / "cmp"
    sim = f"{sys.executable} -m cpbench sim --port {{port}} --decode-step-ms 1"
    config = tmp_path / "compare.toml"  # targets from the config file, launch on the line
    config.write_text(f'targets = ["fleet0={fleet2[0]}"]\nrepeat = 2\n')
    proc = cpbench("compare", trace, "--config", config, "--launch",
                   f"own=env CPBENCH_TOKEN=s3cr3t-value {sim}",
                   "--workers", "1", "--drain-s", "0", "-o", out)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((out / "comparison.json").read_text())
    assert result["policies"] == ["fleet0", "own"] and result["repeat"] == 2
    assert set(result["runs"]) == {"fleet0", "own"}
    assert all(len(v) == 2 for v in result["runs"].values())
    assert any(d["policy"] == "own" for d in result["stats"]["differences"])
    launched = result["targets"]["own"]["launch_command"]
    assert "s3cr3t" not in launched and "<redacted>" in launched
    manifest = json.loads((out / "own" / "own-r1" / "manifest.json").read_text())
    assert manifest["deployment"]["name"] == "own"
    assert "s3cr3t" not in json.dumps(manifest)
    assert (out / "report.html").is_file() and (out / "comparison.md").is_file()
    # The launched server was stopped: nothing answers on its port any more.
    port = int(launched.split("--port ")[1].split()[0])
    import socket
    with socket.socket() as s:
        assert s.connect_ex(("127.0.0.1", port)) != 0


@pytest.mark.integration
def test_a_launch_that_never_comes_up_is_one_line_exit_1(tmp_path):
    trace = routerlab.write_prefix_trace(tmp_path / "p.arrow", groups=1, per_group=2)
    proc = cpbench("compare", trace, "--launch",
                   "dead=sh -c 'echo cannot bind {port} with key $2; exit 4' sh --api-key sk-0x42",
                   "-o", tmp_path / "x")
    assert proc.returncode == 1
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "exited with status 4" in lines[0] and "cannot bind" in lines[0]
    assert "sk-0x42" not in proc.stderr  # the log echoes the key; the message does not
    # One that stays up without answering is stopped (its group) after --start-timeout-s.
    pid_file = tmp_path / "pid"
    proc = cpbench("compare", trace, "--start-timeout-s", "1", "--launch",
                   f"mute=sh -c 'echo $$ > {pid_file}; exec sleep 60' {{port}}",
                   "-o", tmp_path / "y")
    assert proc.returncode == 1 and len(proc.stderr.strip().splitlines()) == 1
    assert "did not answer 200" in proc.stderr
    with pytest.raises(ProcessLookupError):
        os.kill(int(pid_file.read_text()), 0)
    proc = cpbench("compare", trace, "--policies", "fifo", "--targets", "a=http://127.0.0.1:1")
    assert proc.returncode == 2 and "one or the other" in proc.stderr
    proc = cpbench("compare", trace)
    assert proc.returncode == 2 and "--targets" in proc.stderr

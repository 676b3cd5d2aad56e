"""Experiments without a replay: the policy switch against fake control planes, progress, CLI
validation. (End-to-end runs against the embedded sim: tests/test_experiments_e2e.py.)"""
from __future__ import annotations

import http.server
import io
import json
import threading
from pathlib import Path

import pytest

from cpbench.cli import main
from cpbench.errors import ConfigError, TargetError
from cpbench.experiments.runs import parse_floats, parse_list
from cpbench.experiments.control import PolicyAdmin, Progress, format_table, wait_idle

BURST = Path(__file__).resolve().parents[1] / "traces" / "burst.arrow"


class _Handler(http.server.BaseHTTPRequestHandler):
    mode = "ok"          # ok | missing | stuck
    policy = "fifo"
    metrics = ""

    def log_message(self, *args):  # keep test output clean
        pass

    def _send(self, status: int, body: bytes, ctype: str = "application/json") -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def do_GET(self):
        cls = type(self)
        if self.path == "/metrics":
            return self._send(200, cls.metrics.encode(), "text/plain")
        if self.path != "/admin/policy" or cls.mode == "missing":
            return self._send(404, b"not found", "text/plain")
        return self._send(200, json.dumps({"policy": cls.policy}).encode())

    def do_POST(self):
        cls = type(self)
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        if self.path != "/admin/policy" or cls.mode == "missing":
            return self._send(404, b"not found", "text/plain")
        if body["policy"] == "nope":
            return self._send(400, b'{"error": "unknown policy"}')
        if cls.mode == "ok":
            cls.policy = body["policy"]
        return self._send(200, json.dumps({"policy": body["policy"]}).encode())


@pytest.fixture
def fake_cp():
    handler = type("H", (_Handler,), {"mode": "ok", "policy": "fifo", "metrics": ""})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield handler, f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()
        thread.join(5)


def test_policy_admin_switches_and_reads_back(fake_cp):
    handler, url = fake_cp
    admin = PolicyAdmin(url)
    assert admin.get() == "fifo"
    assert admin.set("slo_aware") == "slo_aware"
    assert handler.policy == "slo_aware"
    with pytest.raises(TargetError, match="refused policy 'nope'"):
        admin.set("nope")


def test_switch_that_does_not_take_effect_is_an_error(fake_cp):
    handler, url = fake_cp
    handler.mode = "stuck"
    with pytest.raises(TargetError, match="did not take effect.*'slo_aware'.*'fifo'"):
        PolicyAdmin(url).set("slo_aware")


def test_compare_cli_stops_before_any_run_without_policy_endpoint(fake_cp, tmp_path, capsys):
    handler, url = fake_cp
    handler.mode = "missing"
    status = main(["compare", "--policies", "fifo,slo_aware", str(BURST), "--url", url,
                   "-o", str(tmp_path / "out"), "--quiet"])
    err = capsys.readouterr().err
    assert status == 1
    assert err.count("\n") == 1 and "no policy switch" in err and "--no-switch" in err
    assert not (tmp_path / "out" / "fifo").exists()


def test_compare_cli_reports_a_stuck_switch(fake_cp, tmp_path, capsys):
    handler, url = fake_cp
    handler.mode = "stuck"
    status = main(["compare", "--policies", "slo_aware,fifo", str(BURST), "--url", url,
                   "-o", str(tmp_path / "out"), "--quiet"])
    assert status == 1
    assert "did not take effect" in capsys.readouterr().err


def test_unreachable_control_plane_is_one_clear_line():
    with pytest.raises(TargetError, match="cannot reach"):
        PolicyAdmin("http://127.0.0.1:9").get()


def test_wait_idle_polls_the_sim_gauges(fake_cp):
    handler, url = fake_cp
    handler.metrics = "cpbench_sim_queue_depth 0\ncpbench_sim_running_sequences{e=\"a\"} 0\n"
    assert wait_idle(url, drain_s=0.0, timeout_s=1.0) is True
    handler.metrics = "cpbench_sim_queue_depth 3\n"
    assert wait_idle(url, drain_s=0.0, timeout_s=0.3) is False  # busy past the timeout
    handler.metrics = "other_metric 1\n"
    assert wait_idle(url, drain_s=0.0) is False  # not the sim: fixed wait only


def test_progress_counts_runs_and_estimates_time_left():
    out = io.StringIO()
    progress = Progress(3, stream=out)
    progress.start("policy fifo")
    progress.finish()
    progress.start("policy slo_aware")
    lines = out.getvalue().splitlines()
    assert lines[0].startswith("cpbench: run 1 of 3: policy fifo")
    assert "run 2 of 3: policy slo_aware" in lines[1] and "left" in lines[1]
    quiet = io.StringIO()
    Progress(2, stream=quiet, quiet=True).start("x")
    assert quiet.getvalue() == ""


def test_option_parsing_and_table():
    assert parse_list(" fifo, slo_aware ", what="--policies") == ["fifo", "slo_aware"]
    with pytest.raises(ConfigError, match="more than once"):
        parse_list("fifo,fifo", what="--policies")
    with pytest.raises(ConfigError, match="letters"):
        parse_list("fi/fo", what="--policies")
    assert parse_floats("10, 50,100", what="--rates") == [10.0, 50.0, 100.0]
    with pytest.raises(ConfigError, match="numbers"):
        parse_floats("10,x", what="--rates")
    with pytest.raises(ConfigError, match="> 0"):
        parse_floats("10,-1", what="--rates")
    table = format_table(["policy", "SLO %"], [["fifo", "66.8"], ["slo_aware", "90.1"]])
    assert table.splitlines()[2] == "fifo        66.8"
    assert table.splitlines()[3] == "slo_aware   90.1"


@pytest.mark.parametrize("argv,needle", [
    (["compare", "--policies", "fifo,fifo", str(BURST)], "more than once"),
    (["compare", "--policies", "fifo", "missing.arrow"], "does not exist"),
    (["compare", "--policies", "fifo,slo_aware", str(BURST), "--baseline", "x"], "--baseline"),
    (["sweep", str(BURST), "--rates", "10,abc"], "--rates"),
    (["experiment", "--name", "mixed_ratio", "--ratios", "0,2"], "--ratios"),
    (["experiment", "--name", "throughput", "--speed", "2"], "--speed"),
    (["experiment", "--name", "slo", "--policies", "fifo,edf"], "knows no policy ['edf']"),
    (["compare", "--policies", "fifo,lifo", str(BURST)], "knows no policy ['lifo']"),
    (["run", "--policy", "lifo", "--requests", "5", "--rate", "5"], "knows no policy"),
])
def test_cli_bad_input_is_one_line_exit_2(argv, needle, tmp_path, capsys):
    status = main([*argv, "-o", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert status == 2, err
    assert err.count("\n") == 1 and needle in err


@pytest.mark.integration
def test_compare_switches_one_server_and_no_switch_leaves_it(tmp_path, capsys):
    from cpbench.experiments.control import embedded_sim
    trace = tmp_path / "t.arrow"
    assert main(["record", "synth", "--pattern", "uniform", "--rate", "20", "--requests", "20",
                 "--mode", "hybrid", "--output-tokens", "fixed:4", "--seed", "3",
                 "-o", str(trace)]) == 0
    with embedded_sim() as url:
        out = tmp_path / "switched"
        assert main(["compare", "--policies", "fifo,priority", str(trace), "--url", url,
                     "--drain-s", "0", "--resamples", "100", "-o", str(out)]) == 0
        assert PolicyAdmin(url).get() == "priority"  # the last run's policy is still active
        result = json.loads((out / "comparison.json").read_text())
        assert result["switched"] and result["stats"]["paired_rows"] == 20
        labelled = tmp_path / "labelled"
        assert main(["compare", "--policies", "run-a,run-b", str(trace), "--url", url,
                     "--no-switch", "--drain-s", "0", "--resamples", "100", "--quiet",
                     "-o", str(labelled)]) == 0
        assert PolicyAdmin(url).get() == "priority"
        summary = json.loads((labelled / "run-b" / "summary.json").read_text())
        assert summary["run"]["policy"] == "run-b"
    captured = capsys.readouterr()
    # Two runs of one workload: no policy is distinguishable, and --quiet printed no table ...
    assert captured.out.count("on SLO attainment") == 1
    assert "best policy" not in captured.out
    # ... but still said where its results went.
    assert f"results: {labelled / 'comparison.json'}; report {labelled / 'report.html'}" \
        in captured.out
    # The report leads with the paired differences; one trace at one rate draws no
    # "Throughput vs offered rate" (its points would be timer noise).
    md = (labelled / "report.md").read_text()
    assert md.index("Paired differences vs run-a") < md.index("## Run")
    assert "| run-b | SLO attainment |" in md
    html = (labelled / "report.html").read_text()
    assert "Paired differences vs run-a" in html and "Throughput vs offered rate" not in html
    assert captured.err.count("run 1 of 2") == 1


@pytest.mark.integration
def test_sigint_stops_the_whole_comparison(tmp_path):
    import signal
    import subprocess
    import sys
    import time
    out = tmp_path / "out"
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "compare", "--policies",
                             "fifo,slo_aware", str(BURST), "--duration", "20", "-o", str(out)],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.monotonic() + 30
        while not (out / "fifo").exists() and time.monotonic() < deadline:
            time.sleep(0.1)
        time.sleep(1.0)  # inside the first replay
        proc.send_signal(signal.SIGINT)
        _, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == 130, err
    assert "interrupted" in err and "Traceback" not in err
    assert (out / "fifo" / "results.arrow").is_file() and not (out / "slo_aware").exists()


@pytest.mark.integration
def test_sweep_without_trace_synthesizes_one(tmp_path, capsys):
    out = tmp_path / "sweep"
    assert main(["sweep", "--rates", "20", "--requests", "20", "--mode", "llm", "--policy",
                 "priority", "--drain-s", "0", "--probe-s", "1", "-o", str(out)]) == 0
    result = json.loads((out / "experiment.json").read_text())
    assert (out / "trace.arrow").is_file() and result["trace"] == str(out / "trace.arrow")
    assert result["policy"] == "priority" and len(result["points"]) == 1
    point = result["points"][0]
    # The workload is sized for --probe-s at 4x the rate; the probe sends its first second.
    assert result["trace_requests"] == 80 and result["probe_s"] == 1.0
    assert point["rate_rps"] == 20.0 and 5 <= point["requests"] <= 40
    assert point["rate_scale"] == pytest.approx(20.0 / result["trace_rate_rps"])
    assert (out / "rate-20" / "results.arrow").is_file()
    stdout = capsys.readouterr().out
    assert "20.00" in stdout and f"results: {out / 'experiment.json'}" in stdout


def test_config_file_supplies_options_and_the_command_line_wins(tmp_path, capsys):
    cfg = tmp_path / "compare.toml"
    cfg.write_text('policies = "fifo,lifo"\nrepeat = 2\n')
    assert main(["compare", str(BURST), "--config", str(cfg), "-o", str(tmp_path / "o")]) == 2
    assert "knows no policy ['lifo']" in capsys.readouterr().err
    assert main(["compare", str(BURST), "--config", str(cfg), "--policies", "fifo,edf",
                 "-o", str(tmp_path / "o")]) == 2
    assert "knows no policy ['edf']" in capsys.readouterr().err

"""manifest.json: what a rerun needs, nothing secret, and `cpbench verify`."""
from __future__ import annotations

import hashlib
import http.server
import json
import socket
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from cpbench import manifest
from cpbench.errors import ConfigError
from cpbench.redact import redact_url

PLANTED_KEY = "sk-planted-4f9a2c7e1b"
URL_PASSWORD = "hunter2-pw"


class _Models(http.server.BaseHTTPRequestHandler):
    seen_auth: list[str | None] = []

    def do_GET(self):  # noqa: N802 - http.server's naming
        _Models.seen_auth.append(self.headers.get("Authorization"))
        if self.path != "/v1/models":
            self.send_error(404)
            return
        body = json.dumps({"object": "list", "data": [{"id": "sim-llm", "object": "model"}]})
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body.encode())

    def version_string(self):
        return "TestPlane/1.2"

    def log_message(self, *args):
        pass


@pytest.fixture
def server():
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Models)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    _Models.seen_auth = []
    yield f"http://127.0.0.1:{httpd.server_address[1]}"
    httpd.shutdown()
    httpd.server_close()
    thread.join(5)


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _manifest(tmp_path: Path, *, seed: int = 7, options: dict | None = None,
              trace_bytes: bytes = b"trace-bytes", url: str | None = None,
              server_info: dict | None = None) -> dict:
    trace = tmp_path / "t.arrow"
    trace.write_bytes(trace_bytes)
    return manifest.build_manifest(
        options=options if options is not None else {"rate_scale": 1.0, "workers": 2},
        trace_path=trace, seed=seed, target_url=url, server_info=server_info)


def test_manifest_holds_every_field_and_the_servers_answer(tmp_path, server):
    info = manifest.probe_server(server, timeout_s=5)
    assert info == {"status": 200, "server": "TestPlane/1.2", "error": None,
                    "models": {"object": "list",
                               "data": [{"id": "sim-llm", "object": "model"}]}}
    m = _manifest(tmp_path, url=server, server_info=info)
    path = manifest.write_manifest(tmp_path / "run", m)
    data = json.loads(path.read_text())
    assert data["manifest_version"] == 1
    assert data["tool"]["name"] == "cpbench" and data["tool"]["version"]
    assert data["python"]["version"].count(".") == 2
    assert data["libraries"]["pyarrow"] and "aiohttp" in data["libraries"]
    assert data["host"]["cores"] >= 1 and data["host"]["kernel"]
    assert "cpu_model" in data["host"]
    assert data["clock"]["monotonic"]["implementation"]
    assert "clocksource" in data["clock"]
    work = data["workload"]
    assert work["trace_sha256"] == hashlib.sha256(b"trace-bytes").hexdigest()
    assert work["seed"] == 7 and work["options"] == {"rate_scale": 1.0, "workers": 2}
    assert data["target"] == {"url": server, "server": info}
    assert data["started_utc"].endswith("+00:00")


def test_git_revision_is_the_checkouts_head_when_there_is_one():
    info = manifest.tool_info()
    root = Path(manifest.__file__).resolve().parent.parent
    if not (root / ".git").exists():
        assert info["git_revision"] is None
        return
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                          text=True, timeout=10).stdout.strip()
    assert info["git_revision"] == head and isinstance(info["git_dirty"], bool)


def test_probe_of_a_dead_or_odd_server_is_never_fatal(server):
    dead = manifest.probe_server(f"http://127.0.0.1:{_closed_port()}", timeout_s=2)
    assert dead["status"] is None and dead["models"] is None and "no answer" in dead["error"]
    missing = manifest.probe_server(server + "/nothing/v1", timeout_s=2)
    assert missing["status"] == 404 and missing["server"] == "TestPlane/1.2"
    assert manifest.probe_server("not a url", timeout_s=1)["error"]


def test_credentials_and_a_planted_api_key_never_reach_manifest_json(tmp_path, server,
                                                                      monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", PLANTED_KEY)
    host_port = server.split("://", 1)[1]
    url = f"http://admin:{URL_PASSWORD}@{host_port}/?api_key={PLANTED_KEY}&tenant=a"
    info = manifest.probe_server(server, timeout_s=5)
    assert _Models.seen_auth[-1] == f"Bearer {PLANTED_KEY}"  # the probe authenticates...
    options = {"url": url, "api_key": PLANTED_KEY, "max_tokens": 64,
               "header": [f"Authorization: Bearer {PLANTED_KEY}"],
               "note": f"key was {PLANTED_KEY}", "scrape": [f"{url}&token=zz-secret-tok"]}
    m = _manifest(tmp_path, url=url, server_info=info, options=options)
    text = manifest.write_manifest(tmp_path / "run", m).read_text()
    for secret in (PLANTED_KEY, URL_PASSWORD, "admin:", "zz-secret-tok"):
        assert secret not in text  # ...but nothing secret is written
    data = json.loads(text)
    assert data["target"]["url"] == f"http://{host_port}/?api_key=<redacted>&tenant=a"
    assert data["workload"]["options"]["max_tokens"] == 64  # "tokens" is not a secret name
    assert data["workload"]["options"]["api_key"] == "<redacted>"


@pytest.mark.parametrize("url, expected", [
    ("http://u:p@h:8000/v1", "http://h:8000/v1"),
    ("https://h/v1?token=abc&model=x", "https://h/v1?token=<redacted>&model=x"),
    ("http://h/?X-Api-Key=1&access_token=2&max_tokens=3",
     "http://h/?X-Api-Key=<redacted>&access_token=<redacted>&max_tokens=3"),
    ("http://[::1]:9/a", "http://[::1]:9/a"),
    ("", ""),
    (None, None),
])
def test_redact_url(url, expected):
    assert redact_url(url) == expected
    assert redact_url(redact_url(url)) == expected  # idempotent


def test_verify_same_and_different_workloads(tmp_path):
    a = manifest.write_manifest(tmp_path / "a", _manifest(
        tmp_path, options={"rate_scale": 1.0, "output": "a", "url": "http://x"})).parent
    b = manifest.write_manifest(tmp_path / "b", _manifest(
        tmp_path, options={"rate_scale": 1.0, "output": "b", "url": "http://y"})).parent
    assert manifest.verify(a, b) == []  # output location and target are not the workload
    c = manifest.write_manifest(tmp_path / "c", _manifest(
        tmp_path, seed=8, trace_bytes=b"other", options={"rate_scale": 2.0, "warmup": 5})).parent
    diffs = manifest.verify(a, c)
    assert len(diffs) == 4
    assert diffs[0].startswith("trace_sha256: ") and diffs[1] == "seed: 7 != 8"
    assert diffs[2] == "options.rate_scale: 1.0 != 2.0"
    assert diffs[3] == "options.warmup: (absent) != 5"
    assert manifest.verify(a / "manifest.json", b) == []


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "cpbench", *args], capture_output=True,
                          text=True, timeout=60)


def test_cpbench_verify_exit_statuses(tmp_path):
    a = manifest.write_manifest(tmp_path / "a", _manifest(tmp_path)).parent
    b = manifest.write_manifest(tmp_path / "b", _manifest(tmp_path, seed=9)).parent
    same = _cli("verify", str(a), str(a))
    assert same.returncode == 0 and "same workload" in same.stdout
    differs = _cli("verify", str(a), str(b))
    assert differs.returncode == 1 and "seed: 7 != 9" in differs.stdout
    (tmp_path / "junk").mkdir()
    (tmp_path / "junk" / "manifest.json").write_text("{not json")
    for bad in (str(tmp_path / "absent"), str(tmp_path / "junk")):
        out = _cli("verify", str(a), bad)
        assert out.returncode == 2 and out.stderr.startswith("cpbench: error: ")
        assert "Traceback" not in out.stderr and out.stderr.count("\n") == 1


def test_read_manifest_rejects_other_json(tmp_path):
    (tmp_path / "manifest.json").write_text("[1, 2]")
    with pytest.raises(ConfigError, match="not a cpbench manifest"):
        manifest.read_manifest(tmp_path)


def test_record_run_takes_the_seed_from_the_trace_and_probes_the_target(tmp_path, server):
    from cpbench.record.synth import synth_to_file

    trace = tmp_path / "s.arrow"
    synth_to_file(str(trace), rate_rps=5.0, requests=20, seed=42)
    path = manifest.record_run(tmp_path / "out", options={"workers": 1, "func": print},
                               trace_path=trace, target_url=server)
    data = json.loads(path.read_text())
    assert data["workload"]["seed"] == 42 and data["workload"]["options"] == {"workers": 1}
    assert data["workload"]["trace_sha256"] == hashlib.sha256(trace.read_bytes()).hexdigest()
    assert data["target"]["server"]["server"] == "TestPlane/1.2"
    assert manifest.trace_seed(tmp_path / "out" / "manifest.json") is None


def test_verify_matches_the_runs_of_two_run_trees(tmp_path):
    for tree, seed in (("a", 7), ("b", 7), ("c", 8)):
        for policy in ("fifo", "slo_aware"):
            manifest.write_manifest(tmp_path / tree / policy / "repeat-1", _manifest(
                tmp_path, seed=seed, options={"policy": policy, "output": tree}))
    assert manifest.verify(tmp_path / "a", tmp_path / "b") == []
    assert manifest.verify(tmp_path / "a", tmp_path / "c") == [
        "fifo/repeat-1: seed: 7 != 8", "slo_aware/repeat-1: seed: 7 != 8"]
    manifest.write_manifest(tmp_path / "b" / "edf" / "repeat-1", _manifest(tmp_path))
    assert manifest.verify(tmp_path / "a", tmp_path / "b") == ["run edf/repeat-1: only in B"]
    out = _cli("verify", str(tmp_path / "a"), str(tmp_path / "c"))
    assert out.returncode == 1 and "slo_aware/repeat-1: seed: 7 != 8" in out.stdout
    (tmp_path / "empty").mkdir()
    with pytest.raises(ConfigError, match="does not exist"):
        manifest.verify(tmp_path / "a", tmp_path / "empty")


def test_a_trace_hash_the_caller_has_is_recorded_not_computed_again(tmp_path, monkeypatch):
    """A replay hashes its trace once and hands the digest to the manifest, so manifest.json
    and summary.run carry the same value by construction."""
    import cpbench.trace

    def no_hashing(path):
        raise AssertionError("the trace was hashed a second time")
    monkeypatch.setattr(cpbench.trace, "sha256_file", no_hashing)
    built = manifest.build_manifest(options={}, trace_path=tmp_path / "t.arrow", seed=3,
                                    target_url=None, server_info=None,
                                    trace_sha256="ab" * 32)
    assert built["workload"]["trace_sha256"] == "ab" * 32

"""Security: secrets never written, loopback by default, the report escapes what it is fed, and
nothing read from a trace or a server reaches pickle, eval or a shell.

- A planted API key (``OPENAI_API_KEY``) and URL credentials go through ``replay``, ``report``,
  ``record capture`` and the manifest; every file they write, and their console output, is
  searched for the key, the password and its Basic-auth encoding.
- ``cpbench sim`` without ``--host`` and ``record capture --listen :PORT`` listen on 127.0.0.1
  only (read from /proc/net/tcp, so no other interface is needed to prove it).
- ``<script>`` and ``"><img src=x onerror=alert(1)>`` planted in model names, prompts and error
  bodies of a real replay: the HTML never holds them unescaped, and headless Chromium renders
  them as text (no dialog, no injected element) — checked in the live DOM, shadow roots too.
- An AST scan of the package: no pickle/marshal/shelve, eval/exec, os.system/popen,
  ``shell=True`` or ``allow_pickle=True`` anywhere.
"""
from __future__ import annotations

import ast
import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

import cpbench
from support import read_run, run_cli, wait_ready_file, write_trace_for
from support.faulty_server import FaultyServer

KEY = "sk-cpbench-PLANTED-7f3a9c2e5b814d06"
USER, PASSWORD = "alice", "pw-PLANTED-91c0ffee"
SECRETS = [KEY, PASSWORD, base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode()]
XSS_SCRIPT = "<script>alert(1)</script>"
XSS_IMG = '"><img src=x onerror=alert(1)>'
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


def _leaks(*texts: bytes | str) -> list[str]:
    found = []
    for text in texts:
        raw = text.encode() if isinstance(text, str) else text
        found += [s for s in SECRETS if s.encode() in raw]
    return found


def _files_with_secrets(root: Path) -> dict[str, list[str]]:
    return {str(p): hits for p in sorted(root.rglob("*")) if p.is_file()
            if (hits := _leaks(p.read_bytes()))}


def _env(**extra: str) -> dict[str, str]:
    env = dict(os.environ, OPENAI_API_KEY=KEY)
    env.update(extra)
    return env


# -- secrets ------------------------------------------------------------------------------------

@pytest.mark.integration
def test_api_key_and_url_credentials_never_written(tmp_path):
    trace = write_trace_for(tmp_path / "t.arrow", ["ok", "status:500:body"], 40, gap_ms=10)
    out = tmp_path / "out"
    with FaultyServer() as server:
        url = server.url.replace("http://", f"http://{USER}:{PASSWORD}@")
        proc = run_cli("replay", str(trace), "--url", url, "-o", str(out), "--workers", "2",
                       env=_env())
        heads = b"".join(server.heads)
    assert proc.returncode == 0, proc.stderr
    # The key was really used (so not finding it below means something).
    assert f"Authorization: Bearer {KEY}".encode() in heads
    table, summary = read_run(out)
    assert table.num_rows == 40
    assert {"results.arrow", "summary.json", "report.html", "report.md"} <= {
        p.name for p in out.iterdir()}
    assert _files_with_secrets(out) == {}
    assert _leaks(proc.stdout, proc.stderr) == []
    assert summary["run"]["target"] == server.url
    # A report made later, from the saved directory.
    rep = run_cli("report", str(out), "-o", str(tmp_path / "again.html"), env=_env())
    assert rep.returncode == 0, rep.stderr
    assert _leaks((tmp_path / "again.html").read_bytes(), rep.stdout, rep.stderr) == []


@pytest.mark.integration
def test_secret_in_url_query_never_written(tmp_path):
    """``--url 'http://host/?api_key=sk-...'``: the key reaches none of the files a run and a
    later report write, only the redacted marker does."""
    trace = write_trace_for(tmp_path / "t.arrow", ["ok", "status:500:body"], 20, gap_ms=10)
    out = tmp_path / "out"
    with FaultyServer() as server:
        url = f"{server.url}/?api_key={KEY}&region=eu"
        proc = run_cli("replay", str(trace), "--url", url, "-o", str(out), "--workers", "1",
                       env=dict(os.environ))
    assert proc.returncode == 0, proc.stderr
    written = {p.name for p in out.iterdir()}
    assert {"results.arrow", "summary.json", "report.html", "report.md",
            "manifest.json"} <= written
    assert _files_with_secrets(out) == {}
    assert _leaks(proc.stdout, proc.stderr) == []
    _, summary = read_run(out)
    assert summary["run"]["target"] == f"{server.url}/?api_key=<redacted>&region=eu"
    # The query reached the server on every request (a gateway's api-version or key).
    assert len(server.heads) == 20
    assert all(h.split(b" ", 2)[1].endswith(f"?api_key={KEY}&region=eu".encode())
               for h in server.heads)
    rep = run_cli("report", str(out), "-o", str(tmp_path / "again.html"), env=dict(os.environ))
    assert rep.returncode == 0, rep.stderr
    assert _leaks((tmp_path / "again.html").read_bytes(), rep.stdout, rep.stderr) == []


def test_manifest_scrubs_key_and_url_credentials(tmp_path, monkeypatch):
    from cpbench.manifest import record_run

    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"], 4, gap_ms=10)
    url = f"http://{USER}:{PASSWORD}@127.0.0.1:1"          # nothing listens: the probe fails
    path = record_run(tmp_path / "out", options={"url": url, "api_key": KEY,
                                                 "headers": {"Authorization": f"Bearer {KEY}"}},
                      trace_path=trace, target_url=url, probe_timeout_s=0.5)
    text = Path(path).read_text()
    assert _leaks(text) == [], text
    assert "127.0.0.1:1" in text


@pytest.mark.integration
@pytest.mark.parametrize("url_creds,client_key", [
    (True, False), (False, True),
    (True, True),
], ids=["url-credentials", "client-key", "both"])
def test_capture_proxy_never_stores_the_key(tmp_path, url_creds, client_key):
    ready = tmp_path / "ready.json"
    out = tmp_path / "captured.arrow"
    with FaultyServer() as server:
        upstream = server.url.replace("http://", f"http://{USER}:{PASSWORD}@") \
            if url_creds else server.url
        proc = subprocess.Popen(
            [sys.executable, "-m", "cpbench", "record", "capture", "--listen", ":0",
             "--upstream", upstream, "-o", str(out), "--ready-file", str(ready)],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
        try:
            url = wait_ready_file(proc, ready)["url"]
            assert url.startswith("http://127.0.0.1:")       # --listen :PORT means loopback
            assert _listen_addresses(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}
            headers = {"Content-Type": "application/json"}
            if client_key:
                headers.update({"Authorization": f"Bearer {KEY}", "x-api-key": KEY})
            for i in range(3):
                body = {"model": "ok", "max_tokens": 3, "stream": True,
                        "messages": [{"role": "user", "content": f"hello {i}"}]}
                req = urllib.request.Request(url + "/v1/chat/completions",
                                             data=json.dumps(body).encode(), headers=headers)
                with urllib.request.urlopen(req, timeout=10) as resp:
                    assert b"[DONE]" in resp.read()
        finally:
            proc.send_signal(signal.SIGINT)
            stdout, stderr = proc.communicate(timeout=30)
        heads = b"".join(server.heads)
    assert proc.returncode == 0, stderr
    if client_key:                      # forwarded unchanged, so the key was really there
        assert f"Bearer {KEY}".encode() in heads
    assert out.stat().st_size > 0
    assert _files_with_secrets(tmp_path) == {}
    assert _leaks(stdout, stderr) == []
    assert "Traceback" not in stderr


# -- loopback by default --------------------------------------------------------------------------

def _listen_addresses(port: int) -> set[str]:
    """Local addresses with a LISTEN socket on ``port`` (IPv4 and IPv6 tables)."""
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            local, state = line.split()[1], line.split()[3]
            addr, _, hex_port = local.partition(":")
            if state != "0A" or int(hex_port, 16) != port:
                continue
            if len(addr) == 8:
                found.add(".".join(str(b) for b in reversed(bytes.fromhex(addr))))
            else:
                found.add("::" if set(addr) == {"0"} else addr)
    return found


def test_sim_listens_on_loopback_by_default(tmp_path):
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--port", "0",
                             "--ready-file", str(ready)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        url = wait_ready_file(proc, ready)["url"]
        assert url.startswith("http://127.0.0.1:")
        assert _listen_addresses(int(url.rsplit(":", 1)[1])) == {"127.0.0.1"}
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(15)


# -- the report escapes everything it is fed -----------------------------------------------------

PROBE_JS = """
(() => {
  const imgs = [], scripts = [];
  const walk = (root) => root.querySelectorAll('*').forEach((el) => {
    if (el.tagName === 'IMG') imgs.push(el.getAttribute('src'));
    if (el.tagName === 'SCRIPT' && !(el.type || '').includes('json')
        && (el.textContent || '').includes('alert(1)')) scripts.push(el.textContent.slice(0, 80));
    if (el.shadowRoot) walk(el.shadowRoot);
  });
  walk(document);
  return JSON.stringify({imgs, scripts, alerts: window.__cpbench_alerts || 0,
                         text: document.body ? document.body.innerText : ''});
})()
"""


async def _cdp_probe(base_url: str, page: Path) -> dict:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base_url}/json/new?about:blank") as resp:
            target = json.loads(await resp.text())
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            next_id = 0

            async def call(method: str, **params):
                nonlocal next_id
                next_id += 1
                await ws.send_json({"id": next_id, "method": method, "params": params})
                while True:
                    msg = await ws.receive_json(timeout=30)
                    if msg.get("id") == next_id:
                        return msg.get("result", {})

            await call("Page.enable")
            # Any alert() the page manages to run is counted instead of blocking the page.
            await call("Page.addScriptToEvaluateOnNewDocument", source=(
                "window.alert = () => { window.__cpbench_alerts = "
                "(window.__cpbench_alerts || 0) + 1; };"))
            await call("Page.navigate", url=page.as_uri())
            await asyncio.sleep(4.0)                    # BokehJS builds its views
            result = await call("Runtime.evaluate", expression=PROBE_JS, returnByValue=True)
            return json.loads(result["result"]["value"])


def _probe_in_chromium(page: Path, profile: Path) -> dict:
    profile.mkdir()
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "about:blank"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        start_new_session=True)
    try:
        port_file = profile / "DevToolsActivePort"
        deadline = time.monotonic() + 30
        while not (port_file.is_file() and len(port_file.read_text().splitlines()) >= 2):
            assert proc.poll() is None and time.monotonic() < deadline, "chromium did not start"
            time.sleep(0.1)
        port = port_file.read_text().splitlines()[0]
        return asyncio.run(_cdp_probe(f"http://127.0.0.1:{port}", page))
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


@pytest.mark.slow
@pytest.mark.browser
@pytest.mark.integration
@pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                    "(apt-get install -y chromium)")
def test_report_escapes_markup_from_traces_and_servers(tmp_path):
    models = [XSS_SCRIPT, XSS_IMG, "status:500:body:" + XSS_SCRIPT,
              "status:503:body:" + XSS_IMG]
    trace = write_trace_for(tmp_path / "t.arrow", models, 40, gap_ms=10,
                            prompt=f"say {XSS_SCRIPT} and {XSS_IMG}")
    out = tmp_path / "out"
    with FaultyServer() as server:
        proc = run_cli("replay", str(trace), "--url", server.url, "-o", str(out),
                       "--workers", "2")
    assert proc.returncode == 0, proc.stderr
    table, _ = read_run(out)
    details = [d for d in table.column("error_detail").to_pylist() if d]
    assert any(XSS_SCRIPT in d for d in details) and any(XSS_IMG in d for d in details)
    html = (out / "report.html").read_text()
    md = (out / "report.md").read_text()
    for payload in (XSS_SCRIPT, XSS_IMG, "<img src=x"):
        assert payload not in html, payload
        assert payload not in md, payload
    probe = _probe_in_chromium(out / "report.html", tmp_path / "profile")
    assert probe["alerts"] == 0 and probe["scripts"] == []
    assert [src for src in probe["imgs"] if src == "x"] == []
    # Shown, as text: the model names and the server's error bodies.
    assert XSS_SCRIPT in probe["text"] and XSS_IMG in probe["text"]


# -- no pickle, eval or shell on data ------------------------------------------------------------

_BANNED_MODULES = {"pickle", "cPickle", "marshal", "shelve", "dill", "cloudpickle"}
_BANNED_CALLS = {"eval", "exec", "compile", "__import__", "os.system", "os.popen",
                 "os.execl", "os.execlp", "os.spawnl", "pty.spawn", "yaml.load",
                 "subprocess.getoutput", "subprocess.getstatusoutput", "pickle.loads",
                 "pickle.load", "numpy.load", "np.load"}


def _call_name(node: ast.Call) -> str:
    f = node.func
    parts = []
    while isinstance(f, ast.Attribute):
        parts.append(f.attr)
        f = f.value
    if isinstance(f, ast.Name):
        parts.append(f.id)
    return ".".join(reversed(parts))


def test_no_pickle_eval_or_shell_in_the_package():
    root = Path(cpbench.__file__).parent
    problems = []
    sources = sorted(root.rglob("*.py")) + sorted(root.rglob("*.pyx"))
    assert len(sources) > 20
    for path in sources:
        text = path.read_text()
        where = path.relative_to(root.parent)
        if path.suffix == ".pyx":
            # Cython is not Python syntax: a plain text check for the same names.
            problems += [f"{where}: {word}" for word in ("import pickle", "eval(", "exec(",
                                                         "shell=True") if word in text]
            continue
        for node in ast.walk(ast.parse(text, filename=str(path))):
            if isinstance(node, ast.Import):
                problems += [f"{where}:{node.lineno}: import {a.name}" for a in node.names
                             if a.name.split(".")[0] in _BANNED_MODULES]
            elif isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.split(".")[0] in _BANNED_MODULES:
                problems.append(f"{where}:{node.lineno}: from {node.module} import")
            elif isinstance(node, ast.Call):
                name = _call_name(node)
                if name in _BANNED_CALLS:
                    problems.append(f"{where}:{node.lineno}: {name}(...)")
                for kw in node.keywords:
                    if kw.arg in ("shell", "allow_pickle") and not (
                            isinstance(kw.value, ast.Constant) and kw.value.value is False):
                        problems.append(f"{where}:{node.lineno}: {name}({kw.arg}=...)")
    assert problems == []


@pytest.mark.parametrize("url", [f"http://{USER}:{PASSWORD}@127.0.0.1:1",
                                 f"ftp://{USER}:{PASSWORD}@127.0.0.1:21/v1"],
                         ids=["unreachable", "bad-scheme"])
def test_error_messages_never_echo_url_credentials(tmp_path, url):
    trace = write_trace_for(tmp_path / "t.arrow", ["ok"], 4, gap_ms=10)
    proc = run_cli("replay", str(trace), "--url", url, "-o", str(tmp_path / "out"), env=_env())
    assert proc.returncode in (1, 2), proc.stderr
    assert proc.stderr.startswith("cpbench: error: ") and "127.0.0.1" in proc.stderr
    assert _leaks(proc.stdout, proc.stderr) == [] and USER not in proc.stderr
    assert _files_with_secrets(tmp_path) == {}

"""The report in a real browser: headless Chromium opens it, no console error, every plot drawn.

Drives Chromium through the DevTools protocol over a websocket (aiohttp's client, no extra
dependency): collects console errors, uncaught exceptions and any network request to another
host, counts the Bokeh document roots and the canvases inside their shadow DOM, and saves a
screenshot under the test's temporary directory. Needs Debian's ``chromium`` package.
"""
from __future__ import annotations

import asyncio
import base64
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from cpbench.reporting import write_report
from support import replay_for_report
from support.result_dirs import make_result_dir

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = [
    pytest.mark.browser,
    pytest.mark.skipif(CHROMIUM is None, reason="headless Chromium not installed "
                       "(apt-get install -y chromium)"),
]

# Counts canvases inside Bokeh's shadow roots; a plot that failed to render has none.
PROBE_JS = """
(() => {
  const canvases = [];
  const walk = (root) => {
    root.querySelectorAll('*').forEach((el) => {
      if (el.tagName === 'CANVAS') canvases.push(el);
      if (el.shadowRoot) walk(el.shadowRoot);
    });
  };
  walk(document);
  const plots = document.querySelectorAll('.plot > div');
  let drawnPlots = 0;
  plots.forEach((p) => {
    let n = 0;
    const count = (r) => r.querySelectorAll('*').forEach((el) => {
      if (el.tagName === 'CANVAS' && el.width > 0 && el.height > 0) n++;
      if (el.shadowRoot) count(el.shadowRoot);
    });
    count(p);
    if (n > 0) drawnPlots++;
  });
  const docs = (window.Bokeh && Bokeh.documents) || [];
  // Per latency-over-time figure: the points its marker renderers draw (values whose
  // neighbouring slices are empty, which a line alone leaves blank).
  const latencyPoints = {};
  docs.forEach((d) => d.roots().forEach((root) => {
    const title = root.title && root.title.text;
    if (!title || !title.includes('by scheduled time')) return;
    latencyPoints[title] = (root.renderers || []).reduce((n, r) =>
      n + (r.glyph && r.glyph.marker != null ? (r.data_source.data.x || []).length : 0), 0);
  }));
  return JSON.stringify({
    latencyPoints: latencyPoints,
    bokeh: !!window.Bokeh, documents: docs.length,
    roots: docs.reduce((a, d) => a + d.roots().length, 0),
    canvases: canvases.length, plotDivs: plots.length, drawnPlots: drawnPlots,
    expected: Number(document.body.dataset.cpbenchPlots),
  });
})()
"""


class DevTools:
    """A minimal Chrome DevTools Protocol client over one page's websocket."""

    def __init__(self, ws):
        self.ws, self.next_id, self.events = ws, 0, []

    async def call(self, method: str, **params) -> dict:
        self.next_id += 1
        my_id = self.next_id
        await self.ws.send_json({"id": my_id, "method": method, "params": params})
        while True:
            msg = await self.ws.receive_json(timeout=30)
            if msg.get("id") == my_id:
                if "error" in msg:
                    raise RuntimeError(f"{method}: {msg['error']}")
                return msg.get("result", {})
            await self._event(msg)

    async def _event(self, msg: dict) -> None:
        self.events.append(msg)
        if msg.get("method") == "Page.javascriptDialogOpening":
            # A dialog blocks the page's JavaScript: dismiss it (the event is kept as a problem).
            self.next_id += 1
            await self.ws.send_json({"id": self.next_id, "method": "Page.handleJavaScriptDialog",
                                     "params": {"accept": True}})

    async def drain(self, seconds: float) -> None:
        end = time.monotonic() + seconds
        while (left := end - time.monotonic()) > 0:
            try:
                await self._event(await self.ws.receive_json(timeout=left))
            except asyncio.TimeoutError:
                return


def _launch(profile: Path) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [CHROMIUM, "--headless=new", "--no-sandbox", "--disable-gpu", "--no-first-run",
         "--disable-dev-shm-usage", "--remote-debugging-port=0", f"--user-data-dir={profile}",
         "--window-size=1400,2000", "about:blank"],
        stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True)
    port_file = profile / "DevToolsActivePort"
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if port_file.is_file() and len(lines := port_file.read_text().splitlines()) >= 2:
            return proc, f"http://127.0.0.1:{lines[0]}"
        if proc.poll() is not None:
            break
        time.sleep(0.1)
    proc.kill()
    pytest.fail("chromium did not open its DevTools port within 30 s")


async def _open_report(base_url: str, html: Path, screenshot: Path,
                       wait_s: float = 30.0) -> tuple[dict, list]:
    import aiohttp

    async with aiohttp.ClientSession() as session:
        async with session.put(f"{base_url}/json/new?about:blank") as resp:
            target = json.loads(await resp.text())
        async with session.ws_connect(target["webSocketDebuggerUrl"], max_msg_size=0) as ws:
            dt = DevTools(ws)
            for domain in ("Runtime", "Log", "Page", "Network"):
                await dt.call(f"{domain}.enable")
            await dt.call("Emulation.setDeviceMetricsOverride", width=1400, height=2000,
                          deviceScaleFactor=1, mobile=False)
            await dt.call("Page.navigate", url=html.as_uri())
            probe = {}
            for _ in range(int(wait_s / 0.5)):  # BokehJS builds the views asynchronously
                await dt.drain(0.5)
                result = await dt.call("Runtime.evaluate", expression=PROBE_JS,
                                       returnByValue=True)
                probe = json.loads(result["result"].get("value") or "{}")
                if probe.get("drawnPlots", 0) >= probe.get("expected", 1) > 0:
                    break
            await dt.drain(1.0)
            size = (await dt.call("Page.getLayoutMetrics"))["cssContentSize"]
            # The whole page, so a reader of the screenshot sees every section.
            shot = await dt.call("Page.captureScreenshot", format="png",
                                 captureBeyondViewport=True,
                                 clip={"x": 0, "y": 0, "width": size["width"],
                                       "height": size["height"], "scale": 1})
            screenshot.write_bytes(base64.b64decode(shot["data"]))
        async with session.get(f"{base_url}/json/close/{target['id']}"):
            pass
    return probe, dt.events


def _problems(events: list) -> list[str]:
    problems = []
    for ev in events:
        method, params = ev.get("method"), ev.get("params", {})
        if method == "Runtime.consoleAPICalled" and params.get("type") in ("error", "assert"):
            problems.append(f"console.{params['type']}: "
                            f"{[a.get('value', a.get('description')) for a in params['args']]}")
        elif method == "Runtime.exceptionThrown":
            problems.append(f"exception: {params['exceptionDetails']}")
        elif method == "Log.entryAdded" and params["entry"].get("level") == "error":
            problems.append(f"log error: {params['entry'].get('text')}")
        elif method == "Page.javascriptDialogOpening":  # an injected alert() ran
            problems.append(f"dialog: {params.get('message')}")
        elif method == "Network.requestWillBeSent":
            url = params["request"]["url"]
            if not url.startswith(("file:", "data:", "blob:", "about:")):
                problems.append(f"network request to {url}")
    return problems


@pytest.fixture(scope="module")
def chromium(tmp_path_factory):
    """One headless Chromium for the module (each report opens in its own tab): its URL."""
    profile = tmp_path_factory.mktemp("chromium-profile")
    proc, base_url = _launch(profile)
    yield base_url
    os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def _check_in_browser(chromium: str, html: Path, tmp_path: Path, name: str) -> dict:
    probe, events = asyncio.run(_open_report(chromium, html, tmp_path / f"{name}.png"))
    assert _problems(events) == []
    assert (tmp_path / f"{name}.png").stat().st_size > 10_000
    assert probe["bokeh"] and probe["documents"] == 1
    assert probe["expected"] > 0
    assert probe["roots"] == probe["expected"] == probe["plotDivs"]
    assert probe["drawnPlots"] == probe["expected"]
    assert probe["canvases"] >= probe["expected"]
    return probe


@pytest.mark.slow
def test_single_run_report_renders_every_plot_in_chromium(chromium, tmp_path):
    run = make_result_dir(tmp_path / "run", n_requests=2000, model_name="<script>x</script>",
                          error_detail='"><img src=x onerror=alert(1)>', gpu=True,
                          server_label="</script><script>alert(2)</script>")
    html = write_report([run], tmp_path / "report.html")
    probe = _check_in_browser(chromium, html, tmp_path, "single")
    assert probe["roots"] >= 20  # throughput, latency, SLO, hybrid, GPU, server, client, lag


@pytest.mark.slow
def test_comparison_report_renders_every_plot_in_chromium(chromium, tmp_path):
    dirs = [make_result_dir(tmp_path / p, n_requests=800, seed=i, policy=p, rate_rps=rate,
                            llm_ratio=ratio, monitor=False)
            for i, (p, rate, ratio) in enumerate([("fifo", 50, 0.5), ("priority", 100, 0.7),
                                                  ("slo_aware", 150, 0.9)])]
    html = write_report(dirs, tmp_path / "compare.html")
    probe = _check_in_browser(chromium, html, tmp_path, "compare")
    assert probe["roots"] >= 8


@pytest.mark.integration
@pytest.mark.slow
def test_report_of_a_real_replay_renders_in_chromium(chromium, tmp_path):
    out = replay_for_report(tmp_path / "replay")
    html = write_report([out], out / "report.html")
    probe = _check_in_browser(chromium, html, tmp_path, "replay")
    assert probe["roots"] >= 15


@pytest.mark.integration
@pytest.mark.slow
def test_burst_report_latency_over_time_is_not_blank_in_chromium(chromium, tmp_path):
    """The quick start's trace: one busy second every 20 s between empty ones. Its "Latency
    over time" drew no line segment at all; the lone seconds are points now."""
    root = Path(__file__).resolve().parent.parent
    out = tmp_path / "burst"
    proc = subprocess.run([sys.executable, "-m", "cpbench", "replay",
                           str(root / "traces" / "burst.arrow"), "--speed", "2", "--duration",
                           "22", "--quiet", "--no-report", "-o", str(out)],
                          capture_output=True, text=True, timeout=180, cwd=root)
    assert proc.returncode == 0, proc.stderr[-2000:]
    html = write_report([out], out / "report.html")
    probe = _check_in_browser(chromium, html, tmp_path, "burst")
    points = probe["latencyPoints"]
    assert len(points) == 2 and all(n >= 2 for n in points.values()), points


def test_the_harness_sees_console_errors_exceptions_and_remote_requests(chromium, tmp_path):
    page = tmp_path / "broken.html"
    page.write_text('<html><body data-cpbench-plots="1"><div class="plot"><div></div></div>'
                    '<script>console.error("boom"); setTimeout(() => alert("x"), 0);'
                    'undefined_function();</script>'
                    '<img src="http://192.0.2.1/x.png"></body></html>')
    probe, events = asyncio.run(_open_report(chromium, page, tmp_path / "broken.png", 2.0))
    problems = _problems(events)
    assert any("boom" in p for p in problems)
    assert any(p.startswith("exception:") and "undefined_function" in p for p in problems)
    assert any("network request to http://192.0.2.1/x.png" in p for p in problems)
    assert "dialog: x" in problems
    assert probe["drawnPlots"] == 0 and not probe["bokeh"]

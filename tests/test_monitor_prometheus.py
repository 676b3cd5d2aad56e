"""Tests of cpbench.monitor.prometheus: parsing and selection, and scraping real loopback
servers (a small aiohttp server serving Prometheus text, and ``cpbench sim``)."""
from __future__ import annotations

import asyncio
import base64
import concurrent.futures
import json
import subprocess
import sys
import threading
import time
import urllib.request

import pytest
from aiohttp import web

from cpbench.monitor import MonitorSet, read_monitor
from cpbench.monitor.prometheus import (
    DEFAULT_SERIES, PrometheusScraper, SeriesSelector, metrics_url, parse_selected,
    redact_url, select_lines, series_name,
)
from support import wait_until

VLLM_PAGE = """\
# HELP vllm:num_requests_running Number of requests in model execution batches.
# TYPE vllm:num_requests_running gauge
vllm:num_requests_running{{engine="0",model_name="m"}} {running}
# HELP vllm:num_requests_waiting Number of requests waiting to be processed.
# TYPE vllm:num_requests_waiting gauge
vllm:num_requests_waiting{{engine="0",model_name="m"}} {waiting}
# TYPE vllm:kv_cache_usage_perc gauge
vllm:kv_cache_usage_perc{{engine="0",model_name="m"}} 0.25
# TYPE vllm:prompt_tokens counter
vllm:prompt_tokens_total{{engine="0",model_name="m"}} 1234.0
# TYPE vllm:e2e_request_latency_seconds histogram
vllm:e2e_request_latency_seconds_bucket{{le="0.5",model_name="m"}} 3.0
vllm:e2e_request_latency_seconds_bucket{{le="+Inf",model_name="m"}} 7.0
vllm:e2e_request_latency_seconds_count{{model_name="m"}} 7.0
vllm:e2e_request_latency_seconds_sum{{model_name="m"}} 4.5
# TYPE python_gc_objects_collected counter
python_gc_objects_collected_total{{generation="0"}} 99.0
"""


def test_parse_selected_defaults_and_globs():
    page = VLLM_PAGE.format(running=3, waiting=5)
    rows = dict(parse_selected(page, SeriesSelector(DEFAULT_SERIES)))
    assert rows == {
        'vllm:num_requests_running{engine="0",model_name="m"}': 3.0,
        'vllm:num_requests_waiting{engine="0",model_name="m"}': 5.0,
        'vllm:kv_cache_usage_perc{engine="0",model_name="m"}': 0.25,
        # per-engine token counters are selected too: a router's balance (monitor/engines.py)
        'vllm:prompt_tokens_total{engine="0",model_name="m"}': 1234.0,
    }
    rows = dict(parse_selected(page, SeriesSelector(["vllm:e2e_*", "*_total"])))
    assert rows['vllm:e2e_request_latency_seconds_bucket{le="+Inf",model_name="m"}'] == 7.0
    assert rows['vllm:prompt_tokens_total{engine="0",model_name="m"}'] == 1234.0
    assert rows['python_gc_objects_collected_total{generation="0"}'] == 99.0
    assert len(rows) == 6
    assert parse_selected(page, SeriesSelector(["nothing*"])) == []
    # Exact names are exact: a prefix needs its '*'.
    assert parse_selected(page, SeriesSelector(["vllm:num_requests"])) == []


def test_select_lines_drops_comments_and_other_names():
    page = "# HELP a x\n# TYPE a gauge\na 1\nab 2\na{x=\"1\"} 3\nb 4\n\n"
    assert select_lines(page, SeriesSelector(["a"])) == 'a 1\na{x="1"} 3\n'
    # The fast path (a literal prefix) and the full scan (a leading wildcard) agree,
    # on \r\n line ends too, and keep page order.
    crlf = page.replace("\n", "\r\n")
    cases = {("a*",): 'a 1\nab 2\na{x="1"} 3\n',
             ("*",): 'a 1\nab 2\na{x="1"} 3\nb 4\n',
             ("?", "a?"): 'a 1\nab 2\na{x="1"} 3\nb 4\n'}
    for patterns, expected in cases.items():
        selector = SeriesSelector(patterns)
        assert select_lines(page, selector) == expected, patterns
        assert select_lines(crlf, selector) == expected, patterns
    assert SeriesSelector(["vllm:num*", "vllm:*", "sglang:x"]).prefixes == ("sglang:x", "vllm:")
    assert SeriesSelector(["vllm:*", "*_total"]).prefixes is None


def test_parse_rejects_bad_text():
    with pytest.raises(ValueError):
        parse_selected('a{x="1" 3\n', SeriesSelector(["a"]))


def test_series_name_and_urls():
    assert series_name("q", {}) == "q"
    assert series_name("q", {"b": 'say "hi"\\', "a": "1"}) == 'q{a="1",b="say \\"hi\\"\\\\"}'
    assert redact_url("http://u:secret@host:9000/metrics?x=1") == "http://host:9000/metrics?x=1"
    assert redact_url("http://[::1]:8/m") == "http://[::1]:8/m"
    assert redact_url("http://u:p@[::1]:8/m") == "http://[::1]:8/m"
    assert metrics_url("http://h:8000") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/") == "http://h:8000/metrics"
    assert metrics_url("http://h:8000/prom") == "http://h:8000/prom"


class MetricsServer:
    """An aiohttp server on 127.0.0.1 port 0, in its own thread, serving ``VLLM_PAGE``
    with the scrape count as ``running``. ``mode`` switches it to ``ok``, ``hang`` (sleeps
    past any scrape timeout), ``error`` (HTTP 500) or ``garbage`` (unparseable text);
    :meth:`close` stops it, so later scrapes are refused."""

    def __init__(self) -> None:
        self.mode = "ok"
        self.hits = 0
        self.auth: list[str | None] = []
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self._thread.start()
        self.port = asyncio.run_coroutine_threadsafe(self._start(), self.loop).result(10)
        self.url = f"http://127.0.0.1:{self.port}/metrics"

    async def _start(self) -> int:
        app = web.Application()
        app.router.add_get("/metrics", self._metrics)
        self.runner = web.AppRunner(app, shutdown_timeout=0.1)
        await self.runner.setup()
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        await site.start()
        return site._server.sockets[0].getsockname()[1]

    async def _metrics(self, request: web.Request) -> web.StreamResponse:
        self.hits += 1
        self.auth.append(request.headers.get("Authorization"))
        if self.mode == "hang":
            await asyncio.sleep(30)
        if self.mode == "error":
            return web.Response(status=500, text="boom")
        if self.mode == "garbage":
            return web.Response(text='vllm:num_requests_running{engine="0" 1\n')
        return web.Response(text=VLLM_PAGE.format(running=self.hits, waiting=0),
                            content_type="text/plain")

    def close(self) -> None:
        if self.loop.is_running():
            asyncio.run_coroutine_threadsafe(self.runner.cleanup(), self.loop).result(10)
            self.loop.call_soon_threadsafe(self.loop.stop)
            self._thread.join(10)


@pytest.fixture
def server():
    srv = MetricsServer()
    yield srv
    srv.close()




RUNNING = 'vllm:num_requests_running{engine="0",model_name="m"}'


def test_scrape_values_stamps_and_credentials(server):
    url = server.url.replace("127.0.0.1", "alice:s3cret@127.0.0.1")
    origin = time.monotonic_ns()
    scraper = PrometheusScraper(url, 0.02, origin)
    scraper.start()
    assert wait_until(lambda: scraper.samples >= 4)
    assert scraper.stop()
    expected = "Basic " + base64.b64encode(b"alice:s3cret").decode()
    assert set(server.auth) == {expected}
    rows = [r for r in scraper.buffer.to_table().to_pylist() if r["metric"] == RUNNING]
    assert {r["source"] for r in rows} == {server.url}
    # The server counts its hits: the stored values are exactly those hits, in order.
    assert [r["value"] for r in rows] == [float(k) for k in range(1, len(rows) + 1)]
    t_ns = [r["t_ns"] for r in rows]
    assert t_ns == sorted(t_ns) and t_ns[0] >= 0
    status = scraper.status()
    assert status["url"] == server.url and status["failures"] == 0
    assert status["series"] == 4 and status["scrapes"] == len(rows)  # 3 gauges + prompt tokens
    assert "s3cret" not in json.dumps(status)


def test_target_that_stops_answering_mid_run(server, tmp_path):
    monitors = MonitorSet(gpu_interval_s=None, metrics_urls=[server.url],
                          metrics_interval_s=0.05, client_interval_s=0.05,
                          clock_origin_ns=time.monotonic_ns())
    scraper = monitors.scrapers[0]
    scraper.timeout_s = 0.3  # so the hanging phase costs little
    monitors.start()
    assert wait_until(lambda: scraper.samples >= 3)
    for mode in ("hang", "error", "garbage"):
        server.mode = mode
        failures = scraper.failures
        assert wait_until(lambda: scraper.failures >= failures + 2), mode
    assert "HTTP Error 500" not in scraper.last_error  # the last phase was garbage text
    ok_scrapes = scraper.samples
    server.close()  # the target goes away entirely: connection refused from now on
    failures = scraper.failures
    assert wait_until(lambda: scraper.failures >= failures + 2)
    client_samples = monitors.client.samples
    assert wait_until(lambda: monitors.client.samples > client_samples)  # the run goes on
    monitors.stop()
    status = monitors.status()["prometheus"][0]
    assert status["scrapes"] == ok_scrapes >= 3
    assert "refused" in status["last_error"].lower()
    assert status["last_failure_s"] > status["last_success_s"]
    monitors.write(tmp_path / "monitor.arrow")
    table, stored = read_monitor(tmp_path / "monitor.arrow")
    assert stored["prometheus"][0]["failures"] == status["failures"]
    values = [r["value"] for r in table.to_pylist() if r["metric"] == RUNNING]
    assert len(values) == ok_scrapes  # nothing was invented for the failed scrapes


def test_timed_out_scrape_error_text(server):
    server.mode = "hang"
    scraper = PrometheusScraper(server.url, 0.05, time.monotonic_ns(), timeout_s=0.2)
    scraper.start()
    assert wait_until(lambda: scraper.failures >= 1)
    assert scraper.stop()
    assert "timed out" in scraper.last_error.lower()
    assert scraper.samples == 0 and len(scraper.buffer) == 0


# --- against the embedded control plane ---------------------------------------------------

def _chat(url: str) -> int:
    body = json.dumps({"model": "cpbench-llm-7b", "max_tokens": 20,
                       "messages": [{"role": "user", "content": "hello there"}]}).encode()
    request = urllib.request.Request(f"{url}/v1/chat/completions", data=body,
                                     headers={"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=60) as resp:
        resp.read()
        return resp.status


@pytest.mark.integration
def test_scrape_cpbench_sim_under_load(tmp_path):
    # Two sequences at a time, 50 ms per decode step: six 20-token chats keep the engine
    # full and the queue non-empty for about three seconds.
    ready = tmp_path / "ready.json"
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpbench", "sim", "--host", "127.0.0.1", "--port", "0",
         "--ready-file", str(ready), "--max-running-seqs", "2", "--decode-step-ms", "50"],
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        assert wait_until(lambda: ready.exists() or proc.poll() is not None, 30), "sim start"
        assert proc.poll() is None, proc.stderr.read().decode()
        url = json.loads(ready.read_text())["url"]
        monitors = MonitorSet(gpu_interval_s=None, metrics_urls=[url],
                              metrics_interval_s=0.05, client_interval_s=0.05,
                              clock_origin_ns=time.monotonic_ns())
        monitors.start()
        with concurrent.futures.ThreadPoolExecutor(6) as pool:
            statuses = list(pool.map(_chat, [url] * 6))
        monitors.stop()
    finally:
        proc.terminate()
        proc.wait(10)
    assert statuses == [200] * 6
    status = monitors.status()["prometheus"][0]
    assert status["url"] == url + "/metrics" and status["failures"] == 0
    rows = [r for r in monitors.table().to_pylist() if r["source"] == status["url"]]
    # The default selection finds the sim's queue-depth, running, KV-cache and policy series,
    # and the vLLM-named ones every sim LLM engine exposes (not the pre-0.10 gpu_cache name).
    sim_defaults = {s for s in DEFAULT_SERIES if s.startswith("cpbench")
                    or (s.startswith("vllm:") and s != "vllm:gpu_cache_usage_perc")}
    assert sim_defaults and sim_defaults == {r["metric"].split("{")[0] for r in rows}
    policy = {r["metric"] for r in rows if r["metric"].startswith("cpbench_sim_policy{")}
    assert policy == {'cpbench_sim_policy{policy="fifo"}'}

    def peak(prefix: str) -> float:
        return max(r["value"] for r in rows if r["metric"].startswith(prefix))

    llm = '{engine="cpbench-llm-7b/0",model="cpbench-llm-7b"}'
    assert peak("cpbench_sim_running_sequences" + llm) == 2.0  # the engine was full
    assert peak("cpbench_sim_queue_depth") + peak("cpbench_sim_engine_waiting" + llm) >= 1
    assert 0.0 < peak("cpbench_sim_kv_cache_usage_percent") <= 100.0

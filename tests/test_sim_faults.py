"""Injected faults as a client sees them, seeded determinism, and the ``cpbench sim`` CLI.

A small aiohttp client classifies each response with the error classes of the results schema
(docs/formats.md): ``http_4xx``, ``http_5xx``, ``stream_broken``, ``bad_payload``, ``timeout``.
"""
from __future__ import annotations

import asyncio
import json
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import aiohttp
import pytest

from cpbench.sim import FaultConfig, SimConfig, running_sim
from cpbench.sim.config import LLMEngineConfig
from support import wait_ready_file

pytestmark = pytest.mark.integration
MODEL = "cpbench-llm-7b"
ROOT = Path(__file__).resolve().parents[1]


def _config(seed: int = 0, **faults: object) -> SimConfig:
    llm = LLMEngineConfig(decode_base_ns=5_000_000, decode_ns_per_seq=0,
                          decode_ns_per_context_token=0, prefill_ns_per_token=0)
    return SimConfig(llm=[llm], seed=seed, faults=FaultConfig(**faults))


async def _stream(session: aiohttp.ClientSession, url: str, max_tokens: int = 10,
                  timeout_s: float = 10.0) -> dict:
    """One streamed chat request: error class, tokens seen, arrival times of the tokens."""
    body = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}],
            "max_tokens": max_tokens, "stream": True}
    out: dict = {"error_class": None, "status": 0, "tokens": 0, "token_s": [], "done": False}
    t0 = time.monotonic()
    try:
        async with session.post(url + "/v1/chat/completions", json=body,
                                timeout=aiohttp.ClientTimeout(total=timeout_s)) as resp:
            out["status"] = resp.status
            out["retry_after"] = resp.headers.get("Retry-After")
            if resp.status >= 400:
                out["error_class"] = "http_4xx" if resp.status < 500 else "http_5xx"
                out["error"] = (await resp.json())["error"]
                return out
            async for line in resp.content:
                if not line.startswith(b"data: "):
                    continue
                if line.strip() == b"data: [DONE]":
                    out["done"] = True
                    continue
                try:
                    chunk = json.loads(line[6:])
                except ValueError:
                    out["error_class"] = "bad_payload"
                    continue
                if chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                    out["tokens"] += 1
                    out["token_s"].append(time.monotonic() - t0)
    except (aiohttp.ClientPayloadError, aiohttp.ServerDisconnectedError):
        out["error_class"] = "stream_broken"
    except asyncio.TimeoutError:
        out["error_class"] = "timeout"
    if out["error_class"] is None and not out["done"]:
        out["error_class"] = "stream_broken"
    return out


def _with_sim(config: SimConfig, body, use_uvloop: bool = False) -> object:
    async def main():
        async with running_sim(config) as sim, aiohttp.ClientSession() as session:
            return await body(sim, session)
    if use_uvloop:
        import uvloop
        return uvloop.run(main())
    return asyncio.run(main())


def test_error_faults_are_classified_by_status_and_seeded():
    cfg = _config(seed=5, error_percent=100.0)

    async def body(sim, session):
        return [await _stream(session, sim.url) for _ in range(30)]
    results = _with_sim(cfg, body)
    statuses = {r["status"] for r in results}
    assert statuses == {429, 500, 503}
    assert all(r["error_class"] == ("http_4xx" if r["status"] == 429 else "http_5xx")
               for r in results)
    assert all(r["retry_after"] == "1" for r in results if r["status"] == 429)
    assert all("injected fault" in r["error"]["message"] for r in results)

    async def half(sim, session):
        return [(await _stream(session, sim.url, max_tokens=2))["status"] for _ in range(40)]
    first = _with_sim(_config(seed=9, error_percent=50.0, stall_percent=10.0, stall_ms=1.0), half)
    again = _with_sim(_config(seed=9, error_percent=50.0), half)
    other = _with_sim(_config(seed=10, error_percent=50.0), half)
    assert first == again != other   # same seed, same requests fail, other modes or not
    assert 5 < first.count(200) < 35


def test_disconnect_mid_stream_is_stream_broken_and_frees_the_engine():
    cfg = _config(disconnect_percent=100.0, disconnect_after_tokens=3)

    async def body(sim, session):
        results = [await _stream(session, sim.url, max_tokens=10) for _ in range(3)]
        await asyncio.sleep(0.05)
        engine = sim.scheduler.engines[MODEL][0]
        async with session.get(sim.url + "/metrics") as resp:
            text = await resp.text()
        return results, engine.kv_used_tokens, engine.load(), text
    results, kv_used, load, metrics = _with_sim(cfg, body, use_uvloop=True)
    assert [(r["error_class"], r["tokens"]) for r in results] == [("stream_broken", 3)] * 3
    assert kv_used == 0 and load == 0
    assert 'cpbench_sim_faults_total{mode="disconnect"} 3.0' in metrics


@pytest.mark.parametrize("use_uvloop", [False, True])
def test_malformed_chunk_is_bad_payload(use_uvloop):
    async def body(sim, session):
        return await _stream(session, sim.url, max_tokens=10)
    result = _with_sim(_config(malformed_percent=100.0), body, use_uvloop)
    assert result["error_class"] == "bad_payload"
    assert result["tokens"] == 9 and result["done"]


def test_stall_before_first_byte_delays_or_times_out():
    cfg = _config(stall_percent=100.0, stall_ms=400.0)

    async def body(sim, session):
        slow = await _stream(session, sim.url, max_tokens=2)
        cut = await _stream(session, sim.url, max_tokens=2, timeout_s=0.1)
        return slow, cut
    slow, cut = _with_sim(cfg, body)
    assert slow["error_class"] is None and slow["token_s"][0] >= 0.4
    assert cut["error_class"] == "timeout" and cut["tokens"] == 0


def test_slow_pacing_stretches_inter_token_gaps():
    async def body(sim, session):
        return await _stream(session, sim.url, max_tokens=12)
    normal = _with_sim(_config(), body)
    slow = _with_sim(_config(slow_percent=100.0, slow_factor=4), body)
    assert normal["error_class"] is None and slow["error_class"] is None
    assert slow["tokens"] == normal["tokens"] == 12

    def mean_gap(r):
        return (r["token_s"][-1] - r["token_s"][0]) / (len(r["token_s"]) - 1)
    assert mean_gap(slow) > 2.5 * mean_gap(normal)


def _start_cli(tmp_path: Path, *args: str) -> tuple[subprocess.Popen, dict]:
    ready = tmp_path / "sim.json"
    proc = subprocess.Popen([sys.executable, "-m", "cpbench", "sim", "--port", "0",
                             "--ready-file", str(ready), *args], cwd=ROOT,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    return proc, wait_ready_file(proc, ready)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_cli_ready_file_url_and_clean_exit(tmp_path, sig):
    proc, info = _start_cli(tmp_path, "--policy", "priority", "--seed", "3")
    try:
        assert info["pid"] == proc.pid and info["url"].startswith("http://127.0.0.1:")
        with urllib.request.urlopen(info["url"] + "/health", timeout=10) as resp:
            assert json.loads(resp.read()) == {"status": "ok"}
        with urllib.request.urlopen(info["url"] + "/admin/policy", timeout=10) as resp:
            assert json.loads(resp.read())["policy"] == "priority"
        assert list(tmp_path.iterdir()) == [tmp_path / "sim.json"]   # no temp file left
    finally:
        proc.send_signal(sig)
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert out.splitlines()[0] == info["url"]
    assert "Traceback" not in err


def test_cli_bad_input_is_one_line_exit_2(tmp_path):
    for args in (["--config", str(tmp_path / "missing.json")], ["--fault-error-percent", "150"],
                 ["--llm-instances", "0"]):
        proc = subprocess.run([sys.executable, "-m", "cpbench", "sim", "--port", "0", *args],
                              cwd=ROOT, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 2, proc.stderr
        assert proc.stderr.startswith("cpbench: error:") and "Traceback" not in proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1


def test_cli_sigterm_ends_running_streams(tmp_path):
    """A stream that would run for minutes does not hold the shutdown open."""
    import http.client
    from urllib.parse import urlsplit

    proc, info = _start_cli(tmp_path, "--decode-step-ms", "50")
    url = urlsplit(info["url"])
    conn = http.client.HTTPConnection(url.hostname, url.port, timeout=30)
    try:
        conn.request("POST", "/v1/chat/completions", json.dumps(
            {"model": MODEL, "max_tokens": 10000, "stream": True,
             "messages": [{"role": "user", "content": "long"}]}),
            {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200 and resp.readline().startswith(b"data: ")
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        assert proc.returncode == 0, err
        rest = resp.read()   # the stream ends (without [DONE]) instead of hanging
        assert b"[DONE]" not in rest
    finally:
        conn.close()
        if proc.poll() is None:
            proc.kill()

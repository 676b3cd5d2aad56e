"""Engine model of the sim: continuous batching limits, KV reservation, instances and models,
abandoned requests. (Token timing against the step model is measured, not asserted, in
tools/bench_sim_fidelity.py.)"""
from __future__ import annotations

import asyncio

import aiohttp
import pytest

from cpbench.sim import SimConfig, running_sim
from cpbench.sim.config import EmbeddingEngineConfig, LLMEngineConfig

pytestmark = pytest.mark.integration


def _llm(**kw: int) -> LLMEngineConfig:
    base = dict(decode_base_ns=2_000_000, decode_ns_per_seq=0, decode_ns_per_context_token=0,
                prefill_ns_per_token=0)
    return LLMEngineConfig(**{**base, **kw})


async def _chat(session, url, model, max_tokens, **kw):
    body = {"model": model, "messages": [{"role": "user", "content": "a b c d"}],
            "max_tokens": max_tokens, **kw}
    async with session.post(url + "/v1/chat/completions", json=body) as resp:
        return resp.status, await resp.json()


def test_kv_reservation_and_seq_slots_bound_the_batch():
    # 4 slots, but KV for only 2 requests of (4 prompt + 20 output) tokens at a time.
    cfg = SimConfig(llm=[_llm(max_running_seqs=4, kv_cache_tokens=50)], embedding=[])
    peak = {"running": 0, "kv": 0}

    async def main():
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            engine = sim.scheduler.engines["cpbench-llm-7b"][0]

            async def watch():
                while True:
                    peak["running"] = max(peak["running"], engine.load())
                    peak["kv"] = max(peak["kv"], engine.kv_used_tokens)
                    await asyncio.sleep(0.001)
            watcher = asyncio.ensure_future(watch())
            results = await asyncio.gather(*[_chat(session, sim.url, "cpbench-llm-7b", 20)
                                             for _ in range(6)])
            watcher.cancel()
            return results, engine.kv_used_tokens, engine.load()
    results, kv_after, load_after = asyncio.run(main())
    assert all(s == 200 and b["usage"]["completion_tokens"] == 20 for s, b in results)
    assert peak["running"] == 2 and peak["kv"] == 48
    assert kv_after == 0 and load_after == 0


def test_models_and_instances_route_and_balance():
    cfg = SimConfig(llm=[_llm(model="small", instances=2, max_running_seqs=1), _llm(model="big")],
                    embedding=[EmbeddingEngineConfig(model="emb", instances=2, max_batch_inputs=2,
                                                     batch_base_ns=2_000_000)])

    async def main():
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            chats = [_chat(session, sim.url, m, 5) for m in ["small"] * 4 + ["big"] * 2]
            embeds = [session.post(sim.url + "/v1/embeddings",
                                   json={"model": "emb", "input": ["x y", "z"]})
                      for _ in range(4)]
            results = await asyncio.gather(*chats)
            for resp in await asyncio.gather(*embeds):
                assert resp.status == 200
                resp.close()
            engines = sim.scheduler.engines
            return results, {name: [e.steps if hasattr(e, "steps") else e.batches for e in group]
                             for name, group in engines.items()}
    results, work = asyncio.run(main())
    assert [b["model"] for _, b in results] == ["small"] * 4 + ["big"] * 2
    assert all(n > 0 for n in work["small"]) and all(n > 0 for n in work["emb"])
    assert len(work["big"]) == 1 and work["big"][0] > 0


def test_abandoned_non_stream_request_frees_its_engine():
    cfg = SimConfig(llm=[_llm(max_running_seqs=1)], embedding=[])

    async def main():
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            engine = sim.scheduler.engines["cpbench-llm-7b"][0]
            with pytest.raises(asyncio.TimeoutError):
                async with session.post(
                        sim.url + "/v1/chat/completions",
                        json={"model": "cpbench-llm-7b", "max_tokens": 5000,
                              "messages": [{"role": "user", "content": "x"}]},
                        timeout=aiohttp.ClientTimeout(total=0.1)) as resp:
                    await resp.read()
            for _ in range(200):   # the engine notices at its next step
                if engine.load() == 0:
                    break
                await asyncio.sleep(0.01)
            status, body = await _chat(session, sim.url, "cpbench-llm-7b", 3)
            return engine.load(), status, body
    load, status, body = asyncio.run(main())
    assert load == 0 and status == 200 and body["usage"]["completion_tokens"] == 3


def test_stream_headers_leave_with_the_first_token():
    """First byte = first token, as with vLLM: nothing is on the wire during the prefill."""
    import socket

    cfg = SimConfig(llm=[_llm(prefill_ns_per_token=50_000_000)], embedding=[])   # 4 tokens: 200 ms

    async def main():
        async with running_sim(cfg) as sim:
            port = int(sim.url.rsplit(":", 1)[1])
            loop = asyncio.get_running_loop()

            def client():
                body = ('{"model":"cpbench-llm-7b","max_tokens":2,"stream":true,'
                        '"messages":[{"role":"user","content":"a b c d"}]}')
                with socket.create_connection(("127.0.0.1", port), timeout=10) as s:
                    s.sendall((f"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\n"
                               f"Content-Type: application/json\r\nContent-Length: {len(body)}"
                               f"\r\n\r\n{body}").encode())
                    s.settimeout(0.1)
                    early = b""
                    try:
                        early = s.recv(65536)
                    except socket.timeout:
                        pass
                    s.settimeout(10)
                    first = s.recv(65536)
                    return early, first
            return await loop.run_in_executor(None, client)
    early, first = asyncio.run(main())
    assert early == b""
    assert first.startswith(b"HTTP/1.1 200") and b'"content":"the"' in first

"""What the policies do to the engines: priority preemption with recompute, the deadline cap
on admission, hopeless requests counted, and embedding batches on a GPU shared with the LLM
engine. Small engines and hand-made requests, so each rule's arithmetic is pinned exactly."""
from __future__ import annotations

import asyncio
import json

import aiohttp
import pytest

from cpbench.errors import ConfigError
from cpbench.sim import SimConfig, running_sim
from cpbench.sim.config import EmbeddingEngineConfig, LLMEngineConfig, config_from_dict
from cpbench.sim.engines import EmbeddingEngine, LLMEngine

MS = 1_000_000


def _llm(**kw: int) -> LLMEngineConfig:
    base = dict(decode_base_ns=2 * MS, decode_ns_per_seq=0, decode_ns_per_context_token=0,
                prefill_ns_per_token=0)
    return LLMEngineConfig(**{**base, **kw})


class _Req:
    """The attributes the engines read, nothing else."""

    def __init__(self, seq: int, *, rank: int = 1, prompt: int = 10, max_tokens: int = 10,
                 generated: int = 0, deadline_ns: int = 10**12, received_ns: int = 0,
                 n_inputs: int = 1, ttft_deadline_ns: int = 10**12) -> None:
        self.seq, self.rank, self.prompt_tokens, self.max_tokens = seq, rank, prompt, max_tokens
        self.generated, self.deadline_ns, self.received_ns = generated, deadline_ns, received_ns
        self.kv_tokens, self.n_inputs, self.preemptions = prompt + max_tokens, n_inputs, 0
        self.ttft_deadline_ns, self.prefill_left = ttft_deadline_ns, 0
        self.prefix_hashes: list[int] = []
        self.cached_tokens = self.engine_index = 0


def _engine(**kw: int) -> LLMEngine:
    return LLMEngine(_llm(**kw), 0, lambda: None)


def test_preempt_for_evicts_lowest_priority_latest_first_and_only_if_it_fits():
    engine = _engine(max_running_seqs=3, kv_cache_tokens=60)
    low_old, low_new, normal = _Req(1, rank=2, generated=4), _Req(5, rank=2, generated=2), _Req(3)
    for r in (low_old, low_new, normal):
        engine.running.append(r)
        engine.kv_used_tokens += r.kv_tokens
        engine.context_tokens += r.prompt_tokens + r.generated
    # A HIGH request of 20 KV tokens needs one slot and 20 tokens: one victim, the latest LOW.
    assert engine.preempt_for(_Req(9, rank=0)) == [low_new]
    assert engine.running == [low_old, normal] and engine.kv_used_tokens == 40
    assert engine.context_tokens == 14 + 10 and low_new.preemptions == 1
    # Re-admitted, it recomputes its prompt and the 2 tokens it had generated.
    assert engine.prefill_tokens(low_new) == 12
    # A LOW request outranks nobody; a HIGH one that would not fit even then evicts nobody.
    assert engine.preempt_for(_Req(10, rank=2)) == []
    assert engine.preempt_for(_Req(11, rank=0, prompt=100)) == []
    assert engine.preemptions == 1 and len(engine.running) == 2


def test_keeps_deadlines_caps_the_batch_where_the_median_request_would_be_late():
    # Step = 2 ms + 1 ms per sequence; context and prefill cost nothing here.
    engine = _engine(decode_ns_per_seq=MS)
    engine.running.append(_Req(1, max_tokens=10, deadline_ns=45 * MS))   # 10 tokens in 45 ms
    assert engine.keeps_deadlines(_Req(9), 0)                  # 2 seqs: 10 x 4 ms on time
    engine.running.append(_Req(2))                             # no deadline to speak of
    assert engine.keeps_deadlines(_Req(9), 0)                  # 3 seqs: 1 of 2 late, a half
    engine.running.append(_Req(3, max_tokens=10, deadline_ns=45 * MS))
    assert not engine.keeps_deadlines(_Req(9), 0)              # 4 seqs: 2 of 3 late
    # Requests whose deadline has passed are not counted: the batch grows again.
    assert engine.keeps_deadlines(_Req(9), 45 * MS)
    assert _engine().keeps_deadlines(_Req(9), 0)               # an idle engine takes anything


def test_keeps_deadlines_counts_the_prefill_queued_on_the_engine():
    def engine(prefill_ns_per_token: int) -> LLMEngine:
        # Step = 2 ms + 1 ms per sequence; two requests with 10 tokens to go in 50 ms, one
        # of them waiting for the prefill of its 80-token prompt.
        e = _engine(decode_ns_per_seq=MS, prefill_ns_per_token=prefill_ns_per_token)
        e.running.append(_Req(1, max_tokens=10, deadline_ns=50 * MS))
        waiting = _Req(2, prompt=80, max_tokens=10, deadline_ns=50 * MS)
        waiting.prefill_left = 80
        e.prefilling.append(waiting)
        return e
    # 3 seqs make a 5 ms step: 10 x 5 ms = 50 ms, just on time without prefill cost...
    assert engine(0).keeps_deadlines(_Req(9), 0)
    # ... but 80 + 10 prompt tokens at 0.1 ms each add 9 ms: both would be late.
    assert not engine(100_000).keeps_deadlines(_Req(9), 0)
    # The new request's first token comes after 9 ms of prefill and a 2 ms step.
    lone = engine(100_000)
    lone.running[0].deadline_ns = lone.prefilling[0].deadline_ns = 10**12
    assert lone.keeps_deadlines(_Req(9, ttft_deadline_ns=11 * MS), 0)
    assert not lone.keeps_deadlines(_Req(9, ttft_deadline_ns=10 * MS), 0)
    # A request already past its first-token deadline (set aside as late) is not held back
    # by it, or it could only ever run on an idle engine.
    assert lone.keeps_deadlines(_Req(9, ttft_deadline_ns=10 * MS), 20 * MS)


def test_patient_embedding_batches_wait_for_size_or_deadline():
    emb = EmbeddingEngine(EmbeddingEngineConfig(max_batch_inputs=4, batch_base_ns=3 * MS,
                                                ns_per_token=1000), 0, lambda: None)
    emb.colocate_with(_engine())
    emb.admit(_Req(1, n_inputs=1, deadline_ns=500 * MS, received_ns=0))
    emb.patient = True
    assert emb.take_batch(100 * MS, host_busy=True) == ([], 0)       # 20 % of its deadline
    assert emb.take_batch(100 * MS, host_busy=False)[0] != []       # idle GPU: run it now
    emb.admit(_Req(2, n_inputs=1, deadline_ns=500 * MS))
    assert emb.take_batch(124 * MS, host_busy=True) == ([], 0)
    assert len(emb.take_batch(125 * MS, host_busy=True)[0]) == 1    # 25 % used: due
    emb.admit(_Req(3, n_inputs=3, deadline_ns=500 * MS))
    assert emb.take_batch(0, host_busy=True) == ([], 0)             # 3 of 4 inputs
    assert emb.can_admit(_Req(4, n_inputs=2))                        # co-located: takes all
    emb.admit(_Req(4, n_inputs=2, deadline_ns=500 * MS))            # 5 inputs: a full batch
    # Due at once; 5 inputs are 2 batches: 2 x 3 ms + 20 prompt tokens x 1 us.
    batch, gpu_ns = emb.take_batch(0, host_busy=True)
    assert len(batch) == 2 and gpu_ns == 6 * MS + 20_000 and not emb.full
    emb.patient = False
    emb.admit(_Req(5, n_inputs=1, deadline_ns=500 * MS))
    assert len(emb.take_batch(0, host_busy=True)[0]) == 1           # eager: every step


def test_embedding_engine_alone_collects_one_batch_at_a_time():
    emb = EmbeddingEngine(EmbeddingEngineConfig(max_batch_inputs=4), 0, lambda: None)
    emb.admit(_Req(1, n_inputs=3))
    assert not emb.can_admit(_Req(2, n_inputs=2)) and emb.full


async def _chat(session, url, max_tokens, priority, results):
    body = {"model": "cpbench-llm-7b", "max_tokens": max_tokens, "stream": True,
            "messages": [{"role": "user", "content": "a b c d e f g h"}]}
    async with session.post(url + "/v1/chat/completions", json=body,
                            headers={"X-Request-Priority": priority}) as resp:
        text = await resp.text()
    results.append((priority, text.count('"content":"'), asyncio.get_running_loop().time()))


def _preemption_run(policy: str) -> tuple[list, dict, str]:
    # One slot; a LOW request is mid-way when a HIGH one arrives.
    cfg = SimConfig(llm=[_llm(max_running_seqs=1)], embedding=[], policy=policy)

    async def main():
        results: list = []
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            low = asyncio.ensure_future(_chat(session, sim.url, 40, "LOW", results))
            await asyncio.sleep(0.03)
            await _chat(session, sim.url, 5, "HIGH", results)
            await low
            async with session.get(sim.url + "/admin/stats") as resp:
                stats = await resp.json()
            async with session.get(sim.url + "/metrics") as resp:
                metrics = await resp.text()
            engine = sim.scheduler.engines["cpbench-llm-7b"][0]
            assert engine.load() == 0 and engine.kv_used_tokens == 0
            assert engine.context_tokens == 0
            return results, {**stats, "recomputed": engine.recomputed_tokens}, metrics
    return asyncio.run(main())


def test_priority_preempts_and_the_victim_recomputes_then_finishes_whole():
    results, stats, metrics = _preemption_run("priority")
    # HIGH finished first; LOW still streamed every one of its 40 tokens.
    assert [(p, n) for p, n, _ in results] == [("HIGH", 5), ("LOW", 40)]
    assert stats["preempted"] == {"priority": 1}
    # Its recompute covered the 8-word prompt and the tokens it had sent before eviction.
    assert 8 < stats["recomputed"] < 8 + 40
    assert 'cpbench_sim_preemptions_total{policy="priority"} 1.0' in metrics


def test_fifo_never_preempts():
    results, stats, _ = _preemption_run("fifo")
    assert [p for p, _, _ in results] == ["LOW", "HIGH"] and stats["preempted"] == {}


def test_hopeless_requests_are_counted_per_policy_and_kind():
    cfg = SimConfig(llm=[_llm(max_running_seqs=1)], embedding=[], policy="slo_aware")

    async def main():
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            body = {"model": "cpbench-llm-7b", "max_tokens": 50,
                    "messages": [{"role": "user", "content": "x"}]}
            # 50 tokens take 100 ms; 20 ms is hopeless from the start.
            async with session.post(sim.url + "/v1/chat/completions", json=body,
                                    headers={"X-SLO-Deadline-Ms": "20"}) as resp:
                assert resp.status == 200
            async with session.get(sim.url + "/admin/stats") as resp:
                stats = await resp.json()
            async with session.get(sim.url + "/metrics") as resp:
                metrics = await resp.text()
            return stats, metrics
    stats, metrics = asyncio.run(main())
    assert stats["hopeless"] == {"slo_aware": {"chat": 1}}
    assert 'cpbench_sim_hopeless_requests_total{kind="chat",policy="slo_aware"} 1.0' in metrics


@pytest.mark.parametrize("colocate", [True, False])
def test_colocated_embedding_batches_take_time_from_decode_steps(colocate):
    cfg = SimConfig(llm=[_llm()], embedding=[EmbeddingEngineConfig(batch_base_ns=3 * MS,
                                                                    ns_per_token=0)],
                    colocate=colocate)

    async def main():
        async with running_sim(cfg) as sim, aiohttp.ClientSession() as session:
            chat = asyncio.ensure_future(_chat(session, sim.url, 60, "NORMAL", []))
            for _ in range(3):
                await asyncio.sleep(0.01)
                async with session.post(sim.url + "/v1/embeddings",
                                        json={"model": "cpbench-embed-bge", "input": "a b"}) as r:
                    assert r.status == 200
            await chat
            llm = sim.scheduler.engines["cpbench-llm-7b"][0]
            emb = sim.scheduler.engines["cpbench-embed-bge"][0]
            return llm.modelled_ns_total, llm.steps, emb.batches
    modelled_ns, steps, batches = asyncio.run(main())
    assert batches == 3
    # Co-located, each batch's 3 ms is added to a decode step; apart, every step is 2 ms.
    assert modelled_ns == 2 * MS * steps + (3 * 3 * MS if colocate else 0)


def test_config_takes_colocate_and_first_token_deadlines():
    cfg = config_from_dict({"colocate": False, "ttft_deadline_ms": {"chat": 2000}})
    assert cfg.colocate is False and cfg.ttft_deadline_ms["chat"] == 2000.0
    assert cfg.ttft_deadline_ms["embedding"] == 500.0
    with pytest.raises(ConfigError, match="ttft_deadline_ms.chat must be a positive"):
        config_from_dict({"ttft_deadline_ms": {"chat": 0}})
    with pytest.raises(ConfigError, match="colocate must be true or false"):
        config_from_dict({"colocate": "yes"})
    json.dumps(SimConfig().ttft_deadline_ms)

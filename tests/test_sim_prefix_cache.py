"""The sim's automatic prefix cache: exact LRU and hit accounting on hand-built sequences,
and prefill charged only for uncached tokens."""
from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from cpbench.sim.prefix_cache import PrefixCache, block_hashes


def _words(*blocks: str, tail: int = 0) -> list[str]:
    """Words of 4-word blocks named by letters: block 'a' is a0 a1 a2 a3."""
    out = [f"{b}{i}" for b in blocks for i in range(4)]
    return out + [f"t{i}" for i in range(tail)]


def test_hashes_are_chained_and_cover_full_blocks_only():
    ab = block_hashes(_words("a", "b", tail=3), 4)
    cb = block_hashes(_words("c", "b"), 4)
    assert len(ab) == 2                      # the 3-word tail is no block
    assert ab[1] != cb[1]                    # same block 'b', different prefix
    assert block_hashes(_words("a", "b"), 4) == ab
    assert block_hashes(_words("a")[:3], 4) == []


def test_hits_queries_and_lru_evictions_are_exact():
    cache = PrefixCache(capacity_tokens=12, block_tokens=4)     # 3 blocks
    h = lambda *b: block_hashes(_words(*b, tail=1), 4)         # noqa: E731
    assert cache.lookup(h("a", "b"), 9) == 0                     # a, b stored
    assert cache.lookup(h("a", "b"), 9) == 8                     # both hit
    assert cache.lookup(h("a", "c"), 9) == 4                     # a hits, c stored (3 blocks)
    assert (cache.queries_tokens, cache.hits_tokens, cache.evictions_blocks) == (27, 12, 0)
    # LRU order now: b (oldest), a, c. A new prefix d, e evicts b then a.
    assert cache.lookup(h("d", "e"), 9) == 0
    assert cache.evictions_blocks == 2 and len(cache) == 3
    assert cache.lookup(h("a", "b"), 9) == 0                     # gone; evicts c, d
    assert cache.evictions_blocks == 4                           # LRU: e, a, b
    # d misses (evicts e), so e's chained block misses too (evicts a): a miss ends the walk.
    assert cache.lookup(h("d", "e"), 9) == 0
    assert cache.evictions_blocks == 6
    assert cache.lookup(h("a", "b"), 9) == 0                     # a was evicted: b unreachable
    assert (cache.queries_tokens, cache.hits_tokens) == (63, 12)


def test_a_hit_refreshes_recency():
    cache = PrefixCache(capacity_tokens=8, block_tokens=4)      # 2 blocks
    a = block_hashes(_words("a", tail=1), 4)
    b = block_hashes(_words("b", tail=1), 4)
    c = block_hashes(_words("c", tail=1), 4)
    cache.lookup(a, 5)
    cache.lookup(b, 5)
    assert cache.lookup(a, 5) == 4          # a is now the most recent
    cache.lookup(c, 5)                      # evicts b, not a
    assert cache.lookup(a, 5) == 4
    assert cache.lookup(b, 5) == 0
    assert cache.evictions_blocks == 2


def test_a_wholly_cached_prompt_recomputes_its_last_block():
    cache = PrefixCache(capacity_tokens=100, block_tokens=4)
    hashes = block_hashes(_words("a", "b"), 4)          # exactly 8 tokens
    cache.lookup(hashes, 8)
    assert cache.lookup(hashes, 8) == 4                  # (8 - 1) // 4 = 1 block may hit
    assert cache.lookup(block_hashes(_words("a", "b", tail=1), 4), 9) == 8


def test_disabled_cache_misses_and_counts_nothing():
    cache = PrefixCache(capacity_tokens=100, block_tokens=4, enabled=False)
    hashes = block_hashes(_words("a", "b", tail=1), 4)
    assert cache.lookup(hashes, 9) == 0 and cache.lookup(hashes, 9) == 0
    assert (cache.queries_tokens, cache.hits_tokens, len(cache)) == (0, 0, 0)


@given(st.lists(st.lists(st.integers(0, 3), min_size=0, max_size=6), min_size=1, max_size=30))
def test_unbounded_cache_hits_every_block_seen_before(prompts):
    """Without eviction: hits = full-block tokens - (distinct prefix chains) x block size,
    whatever the order (each chain misses exactly once)."""
    block = 2
    cache = PrefixCache(capacity_tokens=10_000, block_tokens=block)
    seen: set[tuple[int, ...]] = set()
    expected = 0
    for p in prompts:
        words = [f"w{x}" for x in p for _ in range(block)] + ["tail"]
        for i in range(len(p)):
            chain = tuple(p[: i + 1])
            if chain in seen:
                expected += block
            seen.add(chain)
        cache.lookup(block_hashes(words, block), len(words))
    assert cache.hits_tokens == expected
    assert cache.evictions_blocks == 0


def test_engine_prefills_only_uncached_tokens():
    import asyncio

    from cpbench.sim.config import LLMEngineConfig
    from cpbench.sim.engines import LLMEngine

    class Req:
        def __init__(self, words):
            self.prompt_tokens = len(words)
            self.max_tokens = 1
            self.kv_tokens = self.prompt_tokens + 1
            self.prefix_hashes = block_hashes(words, 16)
            self.cached_tokens = 0

    async def go():
        engine = LLMEngine(LLMEngineConfig(), 0, lambda: None)
        first = Req(_words("x") * 10 + ["u1"])          # 41 words: 2 full 16-word blocks
        engine.admit(first)
        second = Req(_words("x") * 10 + ["u2"])
        engine.admit(second)
        return first, second

    first, second = asyncio.run(go())
    assert first.prefill_left == 41 and second.cached_tokens == 32
    assert second.prefill_left == 41 - 32

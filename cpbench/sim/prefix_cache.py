"""Automatic prefix caching for a modelled LLM engine, computed from the prompt text itself.

Like vLLM's automatic prefix caching: the prompt is cut into fixed-size blocks of tokens
(whitespace words here, cpbench's tokenizer-free count); each full block is named by a hash
chained over every block before it, so equal hashes mean an equal prefix, not just an equal
block. A request's lookup walks its hashes from the start and stops at the first miss; the
tokens of the blocks it found are not prefilled again. Blocks it did not find are added, so
the next request with the same prefix finds them. The cache is an LRU over blocks holding at
most ``capacity_tokens // block_tokens`` blocks (the engine's KV cache, ``--kv-cache-tokens``).

As in vLLM, a prompt that is entirely cached still computes its last token (the logits of the
first output token need it): a lookup may hit at most ``(prompt_tokens - 1) // block_tokens``
blocks. Counters follow vLLM's ``vllm:prefix_cache_queries`` (prompt tokens looked up) and
``vllm:prefix_cache_hits`` (tokens found cached); evictions are counted in blocks.

This works for any client's text; it hands the engine a number of cached tokens per request
and the metrics its counters.
"""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence

DEFAULT_BLOCK_TOKENS = 16      # vLLM's default --block-size on CUDA


def block_hashes(words: Sequence[str], block_tokens: int) -> list[int]:
    """Chained hashes of the full ``block_tokens``-word blocks of ``words`` (a partial last
    block has none: vLLM only caches full blocks).

    Hash ``i`` depends on blocks ``0..i``, so two prompts share hash ``i`` only when they share
    their first ``(i + 1) * block_tokens`` words. Python's hash of a tuple of strings is enough
    inside one process (the cache never leaves it).
    """
    out: list[int] = []
    parent = 0
    for start in range(0, len(words) - block_tokens + 1, block_tokens):
        parent = hash((parent, tuple(words[start:start + block_tokens])))
        out.append(parent)
    return out


class PrefixCache:
    """An LRU of block hashes with exact hit, query and eviction counters.

    Parameters
    ----------
    capacity_tokens
        KV cache size in tokens; the cache holds ``capacity_tokens // block_tokens`` blocks.
    block_tokens
        Tokens (words) per block.
    enabled
        False (``--no-prefix-cache``): every lookup misses and nothing is stored or counted,
        as vLLM with ``--no-enable-prefix-caching`` exposes no prefix-cache counters.
    """

    __slots__ = ("block_tokens", "capacity_blocks", "enabled", "_lru", "queries_tokens",
                 "hits_tokens", "evictions_blocks", "lookups")

    def __init__(self, capacity_tokens: int, block_tokens: int = DEFAULT_BLOCK_TOKENS,
                 enabled: bool = True) -> None:
        self.block_tokens = int(block_tokens)
        self.capacity_blocks = int(capacity_tokens) // self.block_tokens
        self.enabled = bool(enabled) and self.capacity_blocks > 0
        self._lru: OrderedDict[int, None] = OrderedDict()
        self.queries_tokens = 0
        self.hits_tokens = 0
        self.evictions_blocks = 0
        self.lookups = 0

    def __len__(self) -> int:
        """Blocks held now."""
        return len(self._lru)

    def __contains__(self, block_hash: int) -> bool:
        return block_hash in self._lru

    def lookup(self, hashes: Sequence[int], prompt_tokens: int) -> int:
        """Look a prompt up and cache its blocks; returns the tokens found cached.

        Counts ``prompt_tokens`` queried tokens and the returned hit tokens. Found blocks
        become the most recently used; missing ones are added (evicting the least recently
        used) in prompt order, so the prompt's own earlier blocks are never the ones evicted.
        """
        if not self.enabled:
            return 0
        self.lookups += 1
        self.queries_tokens += prompt_tokens
        lru = self._lru
        limit = min(len(hashes), max(prompt_tokens - 1, 0) // self.block_tokens)
        hit = 0
        while hit < limit and hashes[hit] in lru:
            lru.move_to_end(hashes[hit])
            hit += 1
        # vLLM caches the blocks it computes for this prompt, including a last full block it
        # had to recompute; the chain makes every block after the first miss a miss too.
        for h in hashes[hit:]:
            if h in lru:
                lru.move_to_end(h)
                continue
            if len(lru) >= self.capacity_blocks:
                lru.popitem(last=False)
                self.evictions_blocks += 1
            lru[h] = None
        tokens = hit * self.block_tokens
        self.hits_tokens += tokens
        return tokens

    def usage_blocks(self) -> int:
        """Blocks held (each ``block_tokens`` tokens of KV cache)."""
        return len(self._lru)

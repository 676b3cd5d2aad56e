"""Prefix blocks: the trace's ``prefix_blocks`` column, its block size, its checks and its reuse.

A request's ``prefix_blocks`` is its prompt as a list of block ids, each standing for
``block_tokens`` tokens (the trace's ``cpbench.block_tokens`` schema metadata). Equal ids at
the same position, after equal ids before them, mean equal prompt bytes: the KV blocks a
prefix cache can share. The prompt builder (:mod:`cpbench.prompts`) renders them; this module
checks the column once at the trace boundary (:func:`row_problems`) and measures how much of
the prompt tokens a prefix cache could reuse (:func:`reuse`), the figure ``cpbench info``
prints and the sim's prefix cache reaches when everything fits in it. NumPy and pyarrow only.
"""
from __future__ import annotations

from collections import Counter
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

META_KEY = b"cpbench.block_tokens"
MAX_BLOCK_TOKENS = 1_048_576


def block_tokens_of(metadata: dict[bytes, bytes] | None) -> int | None:
    """The trace's block size from its schema metadata (None when absent or not an integer)."""
    raw = (metadata or {}).get(META_KEY)
    if raw is None:
        return None
    text = raw.decode("utf-8", "replace").strip()
    return int(text) if text.isdigit() else None


def is_block_list(typ: pa.DataType) -> bool:
    """Whether ``typ`` is a valid ``prefix_blocks`` type: a list of integers (or all-null)."""
    if pa.types.is_null(typ):
        return True
    if not (pa.types.is_list(typ) or pa.types.is_large_list(typ)):
        return False
    return pa.types.is_integer(typ.value_type) or pa.types.is_null(typ.value_type)


def row_problems(blocks: pa.Array, input_tokens: np.ndarray, is_llm: np.ndarray,
                 prompt_given: np.ndarray, block_tokens: int | None,
                 block_tokens_raw: bytes | None) -> list[str]:
    """One line per kind of problem in the ``prefix_blocks`` column (first offending row each).

    Rules: the column needs ``cpbench.block_tokens`` metadata (an integer in
    1..MAX_BLOCK_TOKENS); ids are non-null and >= 0; only LLM rows carry blocks; a row has a
    literal ``prompt`` or blocks, not both; the blocks cover at most ``input_tokens`` rounded up
    to a whole block.
    """
    has = ~blocks.is_null().to_numpy(zero_copy_only=False)
    if not has.any():
        return []
    out: list[str] = []
    if block_tokens is None or not 1 <= block_tokens <= MAX_BLOCK_TOKENS:
        shown = "absent" if block_tokens_raw is None else repr(block_tokens_raw.decode(
            "utf-8", "replace"))
        return [f"column 'prefix_blocks' is set (row {_first(has)}) but schema metadata "
                f"'cpbench.block_tokens' is {shown}; store the block size in tokens "
                f"(1..{MAX_BLOCK_TOKENS}) there"]
    lengths = pc.fill_null(pc.list_value_length(blocks), 0).to_numpy(
        zero_copy_only=False).astype(np.int64)
    flat = blocks.flatten()
    row_of = np.repeat(np.arange(len(blocks)), lengths)
    if flat.null_count:
        i = int(row_of[_first(flat.is_null().to_numpy(zero_copy_only=False))])
        out.append(f"column 'prefix_blocks' has a null block id at row {i}; ids are "
                   "integers >= 0")
    ids = pc.fill_null(flat, 0).to_numpy(zero_copy_only=False).astype(np.int64) \
        if len(flat) and not pa.types.is_null(flat.type) else np.zeros(len(flat), np.int64)
    if ids.size and ids.min() < 0:
        k = _first(ids < 0)
        out.append(f"column 'prefix_blocks' has block id {ids[k]} at row {int(row_of[k])}; "
                   "block ids are >= 0")
    bad = has & ~is_llm
    if bad.any():
        out.append(f"column 'prefix_blocks' is set at row {_first(bad)}, an embedding "
                   "request; only chat and completion rows have prompt prefixes")
    bad = has & prompt_given
    if bad.any():
        out.append(f"row {_first(bad)} has both 'prompt' and 'prefix_blocks'; give the "
                   "literal prompt or the blocks to render it from, not both")
    allowed = -(-input_tokens.astype(np.int64) // block_tokens)
    bad = has & (lengths > allowed)
    if bad.any():
        i = _first(bad)
        out.append(f"column 'prefix_blocks' has {lengths[i]} blocks at row {i} "
                   f"({lengths[i] * block_tokens} tokens at {block_tokens} per block) for "
                   f"input_tokens {input_tokens[i]}; blocks cover at most input_tokens "
                   "rounded up to a block")
    return out


def _first(mask: np.ndarray) -> int:
    return int(np.flatnonzero(mask)[0])


def reuse(blocks: list[list[int] | None], input_tokens: np.ndarray, block_tokens: int,
          top: int = 10) -> dict[str, Any]:
    """Prefix reuse of a trace, as an unbounded vLLM-style prefix cache would see it.

    A block at position ``i`` of a request is *seen before* when an earlier request had the
    same ids at positions ``0..i`` and held block ``i`` whole (a block cut short by the end
    of the prompt is not cached). ``reused_tokens`` counts ``block_tokens`` per seen-before
    block among the blocks a cache may hit: full blocks inside the prompt, at most
    ``(input_tokens - 1) // block_tokens`` of them (the last token is always computed).
    ``reuse_percent`` is that over all prompt tokens of ``input_tokens`` (the LLM rows given),
    the hit ratio of a cache large enough to never evict.

    Returns
    -------
    dict
        ``block_tokens``, ``requests_with_blocks``, ``prompt_tokens``, ``reused_tokens``,
        ``reuse_percent``, ``distinct_blocks`` (distinct ids), ``blocks`` (ids in all rows) and
        ``top_blocks``: the ``top`` ids in most requests, as ``[id, requests, percent of
        requests with blocks]``.
    """
    chains: dict[tuple[int, int], int] = {}
    reused = 0
    with_blocks = 0
    popularity: Counter[int] = Counter()
    total_ids = 0
    for ids, n_tokens in zip(blocks, input_tokens.tolist()):
        if not ids:
            continue
        with_blocks += 1
        total_ids += len(ids)
        popularity.update(set(ids))
        limit = max(int(n_tokens) - 1, 0) // block_tokens
        full = int(n_tokens) // block_tokens
        parent = -1
        for pos, block in enumerate(ids[:full]):
            # Only full blocks are cached (a partial last block is recomputed, as in vLLM).
            key = (parent, block)
            chain = chains.get(key)
            if chain is None:
                chain = chains[key] = len(chains)
            elif pos < limit:
                reused += block_tokens
            parent = chain
    prompt_tokens = int(input_tokens.sum())
    return {
        "block_tokens": block_tokens,
        "requests_with_blocks": with_blocks,
        "prompt_tokens": prompt_tokens,
        "reused_tokens": reused,
        "reuse_percent": 100.0 * reused / prompt_tokens if prompt_tokens else 0.0,
        "distinct_blocks": len(popularity),
        "blocks": total_ids,
        "top_blocks": [[int(b), int(c), 100.0 * c / with_blocks]
                       for b, c in popularity.most_common(top)],
    }


class BlockLists:
    """A ``prefix_blocks`` column as ``row -> list of ids`` (None for a null row), read from
    one flat NumPy array on demand: no Python list per row is built for rows never asked
    for (a worker renders only its share of a trace of millions of rows)."""

    def __init__(self, column: pa.ChunkedArray | pa.Array) -> None:
        array = column.combine_chunks() if isinstance(column, pa.ChunkedArray) else column
        self._null = array.is_null().to_numpy(zero_copy_only=False)
        lengths = pc.fill_null(pc.list_value_length(array), 0).to_numpy(
            zero_copy_only=False).astype(np.int64) if not pa.types.is_null(array.type) \
            else np.zeros(len(array), np.int64)
        self._starts = np.concatenate(([0], np.cumsum(lengths)))
        flat = array.flatten() if not pa.types.is_null(array.type) else pa.array([], pa.int64())
        self._values = flat.to_numpy(zero_copy_only=False).astype(np.int64)

    def __len__(self) -> int:
        return len(self._null)

    def __getitem__(self, row: int) -> list[int] | None:
        if self._null[row]:
            return None
        return self._values[self._starts[row]:self._starts[row + 1]].tolist()

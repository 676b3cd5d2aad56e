"""Prompt text of a requested token length, and the token count cpbench uses without a tokenizer.

Without a tokenizer, cpbench counts a *token* as one whitespace-separated word: the trace's
``input_tokens`` asks for that many words, and the embedded control plane counts prompt
tokens the same way. Against a real server its ``usage`` numbers are the truth a replay records.

Prompts are cut from one long, fixed text so building one costs a slice, not a join: the
dispatcher calls ``build_prompt`` once per request on its hot path.

Traces with prefix blocks (``prefix_blocks``, docs/formats.md) are rendered here too, but ahead
of the run, when the plan is built (:func:`render_rows`, with :class:`BlockRenderer`'s bounded
cache of block texts): a block id is always the same words, so shared blocks are shared bytes.
"""
from __future__ import annotations

import functools
from collections.abc import Sequence
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import numpy as np

_VOCABULARY = (
    "the control plane schedules chat and embedding requests across engines while keeping "
    "latency low and throughput high under bursty traffic from many users who expect answers "
    "quickly so each policy decides which queue runs next and how large a batch may grow before "
    "the deadline of the oldest request is at risk of being missed by the serving system"
).split()

# Every word is lower-case ASCII letters, so a built prompt is valid inside a JSON string as it
# is: cpbench.replaying.wire quotes it without escaping (tests/test_endpoints.py holds this).
# Longest prompt built by slicing; longer ones repeat the text (rare: >100k-token prompts).
_MAX_WORDS = 131_072


@functools.lru_cache(maxsize=1)
def _text_and_cuts() -> tuple[str, list[int]]:
    words = [_VOCABULARY[i % len(_VOCABULARY)] for i in range(_MAX_WORDS)]
    text = " ".join(words)
    cuts = [0] * (_MAX_WORDS + 1)   # cuts[n] = end offset of the first n words
    pos = 0
    for n, word in enumerate(words, start=1):
        pos += len(word)
        cuts[n] = pos
        pos += 1
    return text, cuts


@functools.lru_cache(maxsize=1)
def prompt_text_and_cuts() -> tuple[bytes, "np.ndarray"]:
    """The shared text as ASCII bytes and its word ends (int64, ``cuts[n]`` = the end of the
    first ``n`` words), for the compiled renderer (:mod:`cpbench._core.render`), which builds
    the same prompts as :func:`build_prompt` in C."""
    import numpy as np
    text, cuts = _text_and_cuts()
    return text.encode("ascii"), np.array(cuts, dtype=np.int64)


def count_tokens(text: str) -> int:
    """Number of whitespace-separated words in ``text`` (cpbench's tokenizer-free count)."""
    return len(text.split())


def build_prompt(n_tokens: int, tag: int = 0) -> str:
    """A prompt of exactly ``n_tokens`` words (``count_tokens`` agrees).

    ``tag`` (for example the trace row) becomes the first word, so two requests of the same
    length do not share a whole prompt and a prefix cache cannot serve one from the other.
    """
    if n_tokens <= 0:
        return ""
    text, cuts = _text_and_cuts()
    body_words = n_tokens - 1
    if body_words <= _MAX_WORDS:
        body = text[: cuts[body_words]]
    else:
        whole, rest = divmod(body_words, _MAX_WORDS)
        body = " ".join([text] * whole + ([text[: cuts[rest]]] if rest else []))
    return f"r{tag}" if not body else f"r{tag} {body}"


# --- prompt corpora (cpbench/data/prompts/*.jsonl, package data) -------------------------------
# The shipped corpora are original text written for cpbench (no third-party rights): one JSON
# object per line, {"id": ..., "text": ...}. A corpus prompt of n tokens is n whitespace words
# cut from the corpus' texts laid end to end (cycled), starting at the text chosen by ``tag`` —
# the same counting convention and the same O(1) slicing as ``build_prompt``.

CORPORA = {"llm": "llm_prompts.jsonl", "embedding": "embed_texts.jsonl"}


def corpus_path(kind: str) -> str:
    """Path of the shipped corpus for ``llm`` or ``embedding``.

    The corpora are package data beside this module, so an installed wheel has them too (not
    only a checkout).
    """
    import os
    here = os.path.dirname(os.path.abspath(__file__))
    return os.path.join(here, "data", "prompts", CORPORA[kind])


def load_corpus(path: str) -> list[str]:
    """The texts of a JSONL corpus (``{"text": ...}`` per line), in file order."""
    import json

    from cpbench.errors import ConfigError
    texts = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if line.strip():
                    text = json.loads(line)["text"]
                    if not isinstance(text, str) or not text.split():
                        raise ValueError("empty or non-string text")
                    texts.append(text)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        where = f" line {lineno}" if "lineno" in locals() else ""
        raise ConfigError(f"prompt corpus {path}{where}: {exc}; expected one "
                          '{"text": "..."} object per line') from None
    if not texts:
        raise ConfigError(f"prompt corpus {path} has no texts")
    return texts


class CorpusPrompts:
    """Prompts of an exact word count cut from a corpus (``build`` mirrors ``build_prompt``)."""

    def __init__(self, texts: list[str], max_words: int = _MAX_WORDS) -> None:
        words: list[str] = []
        self._starts: list[int] = []       # word index where each text begins (first cycle)
        for text in texts:
            self._starts.append(len(words))
            words.extend(text.split())
        cycle = len(words)
        # One cycle to start in plus max_words to slice: any (start, n) is one slice.
        total = cycle + max_words
        words = [words[i % cycle] for i in range(total)]
        self._text = " ".join(words)
        cuts = [0] * (total + 1)           # cuts[k] = end offset of the first k words
        pos = 0
        for k, word in enumerate(words, start=1):
            pos += len(word)
            cuts[k] = pos
            pos += 1
        self._cuts = cuts
        self._max_words = max_words

    def build(self, n_tokens: int, tag: int = 0) -> str:
        """``n_tokens`` words (``count_tokens`` agrees), starting at text ``tag % len(texts)``;
        longer than ``max_words``: repeated."""
        if n_tokens <= 0:
            return ""
        start = self._starts[tag % len(self._starts)]
        if n_tokens <= self._max_words:
            begin = self._cuts[start] + (1 if start else 0)
            return self._text[begin: self._cuts[start + n_tokens]]
        whole, rest = divmod(n_tokens, self._max_words)
        parts = [self.build(self._max_words, tag)] * whole
        return " ".join(parts + ([self.build(rest, tag)] if rest else []))


# --- prefix blocks (the trace's prefix_blocks column) --------------------------------------------
# A block id renders as a fixed run of block_tokens words drawn from _BLOCK_VOCABULARY by a
# generator seeded with the id (numpy's SeedSequence promise: the same id gives the same words
# on every machine and release), so equal ids are equal bytes and a text-hashing router or a
# real prefix cache sees the sharing; different ids share no run of words beyond chance.

_SYLLABLES = [c + v for c in "bdfgklmnprstvz" for v in "aeiou"]          # 70 syllables
_BLOCK_VOCABULARY = [a + b for a in _SYLLABLES for b in _SYLLABLES]      # 4900 words
# Words of block text kept in a renderer's cache (~6 bytes each): about 12 MB at most.
CACHE_WORDS = 2_000_000


def block_text(block_id: int, block_tokens: int) -> str:
    """The ``block_tokens`` words block ``block_id`` stands for (pure: no cache)."""
    import numpy as np

    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(int(block_id))))
    picks = rng.integers(0, len(_BLOCK_VOCABULARY), int(block_tokens))
    vocab = _BLOCK_VOCABULARY
    return " ".join([vocab[i] for i in picks.tolist()])


def answer_blocks(output_tokens: int, block_tokens: int) -> int:
    """Blocks a multi-turn session's trace gives the previous turn's answer: its
    ``output_tokens`` rounded up to whole blocks (``record synth --turns`` and the message
    split of :meth:`BlockRenderer.messages` agree on this)."""
    return -(-int(output_tokens) // int(block_tokens))


class BlockRenderer:
    """Prompt text from block ids, with a bounded LRU cache of rendered blocks.

    ``text(blocks, n_tokens, tag)`` is the blocks' words (the last one cut if the blocks run
    past ``n_tokens``) followed by a tail of ``build_prompt(n_tokens - covered, tag)`` words
    that starts with the request-unique word ``r{tag}``: exactly ``n_tokens`` words in all.
    """

    def __init__(self, block_tokens: int, cache_words: int = CACHE_WORDS) -> None:
        from collections import OrderedDict

        self.block_tokens = int(block_tokens)
        self._cache: OrderedDict[int, str] = OrderedDict()
        self._max_blocks = max(16, cache_words // self.block_tokens)
        self.rendered = 0              # blocks rendered (cache misses), for tests and tuning

    def block(self, block_id: int) -> str:
        """Block ``block_id``'s words (cached)."""
        cache = self._cache
        text = cache.get(block_id)
        if text is not None:
            cache.move_to_end(block_id)
            return text
        text = block_text(block_id, self.block_tokens)
        self.rendered += 1
        cache[block_id] = text
        if len(cache) > self._max_blocks:
            cache.popitem(last=False)
        return text

    def text(self, blocks: list[int], n_tokens: int, tag: int = 0, start: int = 0) -> str:
        """Words ``start * block_tokens`` .. ``n_tokens`` of the prompt of ``blocks``."""
        size = self.block_tokens
        whole = min(len(blocks), n_tokens // size)
        parts = [self.block(b) for b in blocks[start:whole]]
        covered = whole * size
        if whole < len(blocks) and covered < n_tokens:
            # The last block runs past the prompt: its first words only.
            parts.append(" ".join(self.block(blocks[whole]).split(" ", n_tokens - covered)[
                :n_tokens - covered]))
            covered = n_tokens
        if covered < n_tokens:
            parts.append(build_prompt(n_tokens - covered, tag))
        return " ".join(p for p in parts if p)

    def segments(self, blocks: list[int], n_tokens: int, tag: int,
                 cuts: list[int]) -> list[str]:
        """The prompt cut at block positions ``cuts`` (increasing, inside ``blocks``): the
        texts of blocks ``[0, cuts[0])``, ``[cuts[0], cuts[1])``, ... and the rest."""
        bounds = [0, *cuts]
        out = [" ".join(self.block(b) for b in blocks[lo:hi])
               for lo, hi in zip(bounds, bounds[1:])]
        out.append(self.text(blocks, n_tokens, tag, start=bounds[-1]))
        return out


def session_cuts(blocks: Sequence, input_tokens: list[int], output_tokens: list,
                 sessions: list, block_tokens: int) -> dict[int, list[int]]:
    """Message boundaries (block positions) of every multi-turn row of a trace.

    A row continues its session's previous row when that row's blocks are a prefix of its
    own, that row's prompt is whole blocks, and after them come the previous answer's
    :func:`answer_blocks` and at least one more block (``record synth --turns`` writes
    exactly this). Its messages are then the previous row's, the answer (assistant) and the
    new text (user): cuts = previous cuts + [len(previous blocks), + answer blocks]. Rows that
    do not continue a session are absent (one user message).
    """
    last: dict[str, int] = {}
    out: dict[int, list[int]] = {}
    for r, session in enumerate(sessions):
        if session is None:
            continue
        p = last.get(session)
        last[session] = r
        mine = blocks[r]
        if p is None or mine is None or blocks[p] is None:
            continue
        prev = blocks[p]
        n = len(prev)
        answer = answer_blocks(output_tokens[p] or 0, block_tokens)
        if (input_tokens[p] == n * block_tokens and len(mine) > n + answer
                and mine[:n] == prev):
            out[r] = [*out.get(p, []), n, n + answer]
    return out


def render_rows(rows: list[int], blocks: Sequence, input_tokens: list[int], output_tokens: list,
                sessions: list, chat: list[bool], block_tokens: int,
                renderer: BlockRenderer | None = None) -> tuple[list, list]:
    """Prompt texts and chat message lists (JSON) of trace ``rows`` rendered from their blocks.

    ``blocks`` .. ``chat`` are whole-trace columns (a session's earlier turns may belong to
    another worker's rows). Returns ``(texts, messages)`` aligned with ``rows``: ``texts[i]``
    is the prompt of a row with blocks (None without); ``messages[i]`` the JSON array of a chat
    row that continues a session (user, assistant, user, ...), else None.
    """
    import json

    renderer = renderer or BlockRenderer(block_tokens)
    cuts = session_cuts(blocks, input_tokens, output_tokens, sessions, block_tokens) \
        if any(s is not None for s in sessions) else {}
    texts: list[str | None] = []
    messages: list[str | None] = []
    for r in rows:
        ids = blocks[r]
        if ids is None:
            texts.append(None)
            messages.append(None)
            continue
        texts.append(renderer.text(ids, input_tokens[r], r))
        if r in cuts and chat[r]:
            parts = renderer.segments(ids, input_tokens[r], r, cuts[r])
            messages.append(json.dumps(
                [{"role": "assistant" if i % 2 else "user", "content": part}
                 for i, part in enumerate(parts)], separators=(",", ":")))
        else:
            messages.append(None)
    return texts, messages

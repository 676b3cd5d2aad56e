"""Prompt text of a requested token length, and the token count cpbench uses without a tokenizer.

Without a tokenizer, cpbench counts a *token* as one whitespace-separated word: the trace's
``input_tokens`` asks for that many words, and the embedded control plane counts prompt
tokens the same way. Against a real server its ``usage`` numbers are the truth a replay records.

Prompts are cut from one long, fixed text so building one costs a slice, not a join: the
dispatcher calls ``build_prompt`` once per request on its hot path.
"""
from __future__ import annotations

import functools

_VOCABULARY = (
    "the control plane schedules chat and embedding requests across engines while keeping "
    "latency low and throughput high under bursty traffic from many users who expect answers "
    "quickly so each policy decides which queue runs next and how large a batch may grow before "
    "the deadline of the oldest request is at risk of being missed by the serving system"
).split()

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

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

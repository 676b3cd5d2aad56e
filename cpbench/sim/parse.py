"""Validation of OpenAI request bodies and cpbench's request hints, for the embedded control plane.

Every way a request can be malformed ends here as an ``ApiError`` carrying the HTTP status
and the OpenAI error body: 400 for invalid JSON, missing fields and out-of-range values, 422
for a field of the wrong type, 404 for an unknown model (raised by the server). A malformed
request never reaches the scheduler, so it can never turn into a 500.

Prompt tokens are counted as ``cpbench.prompts.count_tokens`` counts them (whitespace words),
the same rule the trace tools use to build prompts.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Mapping

from cpbench.prompts import count_tokens

PRIORITY_RANK = {"HIGH": 0, "NORMAL": 1, "LOW": 2}


class ApiError(Exception):
    """An error answered to the client as OpenAI-style JSON with ``status``."""

    def __init__(self, status: int, message: str, *, param: str | None = None,
                 code: str | None = None, err_type: str = "invalid_request_error") -> None:
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.err_type = err_type

    def body(self) -> dict[str, Any]:
        """The ``{"error": {...}}`` body."""
        return {"error": {"message": self.message, "type": self.err_type,
                          "param": self.param, "code": self.code}}


@dataclass
class LLMCall:
    """A validated chat or text completion request."""

    model: str
    prompt_tokens: int
    max_tokens: int | None
    stream: bool
    include_usage: bool
    body_priority: int | None
    # The prompt as tokens (whitespace words; token ids as strings): the prefix cache's input.
    words: list[str] = field(default_factory=list)


@dataclass
class EmbeddingCall:
    """A validated embeddings request."""

    model: str
    input_tokens: list[int]
    encoding_format: str
    dimensions: int | None
    body_priority: int | None


def _typed(body: Mapping[str, Any], key: str, types: tuple[type, ...], what: str) -> Any:
    value = body.get(key)
    if value is None:
        return None
    # bool is an int in Python; JSON true is not a valid max_tokens.
    if not isinstance(value, types) or (isinstance(value, bool) and bool not in types):
        raise ApiError(422, f"'{key}' must be {what}; got {type(value).__name__}", param=key)
    return value


def _common(body: Any, kind: str) -> tuple[str, int | None, bool, bool, int | None]:
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise ApiError(400, "'model' is required", param="model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "'model' must be a non-empty string", param="model")
    key = "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    max_tokens = _typed(body, key, (int,), "an integer")
    if max_tokens is not None and max_tokens < 1:
        raise ApiError(400, f"'{key}' must be at least 1; got {max_tokens}", param=key)
    stream = bool(_typed(body, "stream", (bool,), "a boolean"))
    options = _typed(body, "stream_options", (dict,), "an object") or {}
    include_usage = bool(_typed(options, "include_usage", (bool,), "a boolean"))
    n = _typed(body, "n", (int,), "an integer")
    if n is not None and n != 1:
        raise ApiError(400, f"only n=1 is supported; got n={n}", param="n")
    priority = _typed(body, "priority", (int, str), "an integer (vLLM) or HIGH|NORMAL|LOW")
    if isinstance(priority, str):
        if priority.upper() not in PRIORITY_RANK:
            raise ApiError(400, f"'priority' must be HIGH, NORMAL or LOW; got {priority!r}",
                           param="priority")
        priority = PRIORITY_RANK[priority.upper()] - 1
    return model, max_tokens, stream, include_usage, priority


def _content_text(content: Any, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or not isinstance(part.get("text", ""), str):
                raise ApiError(422, f"messages[{index}].content parts must be objects with a "
                               "'text' string", param="messages")
            parts.append(part.get("text", ""))
        return " ".join(parts)
    raise ApiError(422, f"messages[{index}].content must be a string or a list of parts",
                   param="messages")


def parse_chat(body: Any) -> LLMCall:
    """Validate a ``/v1/chat/completions`` body."""
    model, max_tokens, stream, include_usage, priority = _common(body, "chat")
    messages = body.get("messages")
    if messages is None:
        raise ApiError(400, "'messages' is required", param="messages")
    if not isinstance(messages, list):
        raise ApiError(422, "'messages' must be a list of message objects", param="messages")
    if not messages:
        raise ApiError(400, "'messages' must not be empty", param="messages")
    words: list[str] = []
    for i, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise ApiError(422, f"messages[{i}] must be an object with a 'role' string",
                           param="messages")
        # The contents in order, as the engine's prompt: a growing message list is a growing
        # prefix (cpbench's count_tokens rule: whitespace words).
        words.extend(_content_text(message.get("content"), i).split())
    return LLMCall(model, len(words), max_tokens, stream, include_usage, priority, words)


def parse_completion(body: Any) -> LLMCall:
    """Validate a ``/v1/completions`` body (one prompt: a string or a list of token ids)."""
    model, max_tokens, stream, include_usage, priority = _common(body, "completion")
    prompt = body.get("prompt")
    if prompt is None:
        raise ApiError(400, "'prompt' is required", param="prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], (str, list)):
        prompt = prompt[0]
    if isinstance(prompt, str):
        words = prompt.split()
    elif isinstance(prompt, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                          for t in prompt):
        words = [str(t) for t in prompt]
    elif isinstance(prompt, list):
        raise ApiError(400, "only one prompt per request is supported; send a string",
                       param="prompt")
    else:
        raise ApiError(422, "'prompt' must be a string or a list of token ids", param="prompt")
    return LLMCall(model, len(words), max_tokens, stream, include_usage, priority, words)


def parse_embeddings(body: Any, max_input_tokens: int | None = None) -> EmbeddingCall:
    """Validate a ``/v1/embeddings`` body: ``input`` is a string, strings, or token-id lists."""
    if not isinstance(body, dict):
        raise ApiError(400, "request body must be a JSON object")
    model = body.get("model")
    if model is None:
        raise ApiError(400, "'model' is required", param="model")
    if not isinstance(model, str) or not model:
        raise ApiError(422, "'model' must be a non-empty string", param="model")
    raw = body.get("input")
    if raw is None:
        raise ApiError(400, "'input' is required", param="input")
    if isinstance(raw, str) or (isinstance(raw, list) and raw
                                and all(isinstance(t, int) and not isinstance(t, bool)
                                        for t in raw)):
        raw = [raw]
    if not isinstance(raw, list):
        raise ApiError(422, "'input' must be a string, a list of strings or token-id lists",
                       param="input")
    if not raw:
        raise ApiError(400, "'input' must not be empty", param="input")
    tokens = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            n = count_tokens(item)
        elif isinstance(item, list) and all(isinstance(t, int) and not isinstance(t, bool)
                                            for t in item):
            n = len(item)
        else:
            raise ApiError(422, f"input[{i}] must be a string or a list of token ids",
                           param="input")
        if n == 0:
            raise ApiError(400, f"input[{i}] is empty; send at least one token", param="input")
        if max_input_tokens is not None and n > max_input_tokens:
            raise ApiError(400, f"input[{i}] has {n} tokens; this model accepts at most "
                           f"{max_input_tokens}", param="input", code="context_length_exceeded")
        tokens.append(n)
    fmt = body.get("encoding_format") or "float"
    if fmt not in ("float", "base64"):
        raise ApiError(400, f"'encoding_format' must be 'float' or 'base64'; got {fmt!r}",
                       param="encoding_format")
    dimensions = _typed(body, "dimensions", (int,), "an integer")
    if dimensions is not None and dimensions < 1:
        raise ApiError(400, f"'dimensions' must be at least 1; got {dimensions}",
                       param="dimensions")
    priority = _typed(body, "priority", (int,), "an integer (vLLM: lower is more important)")
    return EmbeddingCall(model, tokens, fmt, dimensions, priority)


def parse_hints(headers: Mapping[str, str], body_priority: int | None) -> tuple[int, float | None]:
    """(rank, deadline in ms or None) from ``X-Request-Priority``/``X-SLO-Deadline-Ms`` or vLLM's
    body ``priority`` (lower is more important: < 0 HIGH, 0 NORMAL, > 0 LOW). Headers win."""
    rank = 1
    header = headers.get("X-Request-Priority")
    if header is not None:
        rank_or_none = PRIORITY_RANK.get(header.strip().upper())
        if rank_or_none is None:
            raise ApiError(400, f"X-Request-Priority must be HIGH, NORMAL or LOW; got {header!r}")
        rank = rank_or_none
    elif body_priority is not None:
        rank = 0 if body_priority < 0 else (1 if body_priority == 0 else 2)
    deadline_ms = None
    raw = headers.get("X-SLO-Deadline-Ms")
    if raw is not None:
        try:
            deadline_ms = float(raw)
        except ValueError:
            deadline_ms = -1.0
        if not deadline_ms > 0 or deadline_ms != deadline_ms or deadline_ms == float("inf"):
            raise ApiError(400, f"X-SLO-Deadline-Ms must be a positive number of milliseconds; "
                           f"got {raw!r}")
    return rank, deadline_ms

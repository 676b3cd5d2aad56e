"""OpenAI requests for chat, completions and embeddings: where they go, their bytes, and the
checks of their answers.

:class:`Target` turns the base URL into where requests go; :func:`header_block` renders the
static head of a kind and priority, and :func:`renderer` builds the compiled renderer of a
plan's requests (:mod:`cpbench._core.render`, the one definition of what is sent);
:func:`request_body` renders one body through it. The response side is compiled and re-exported
here: :class:`StreamScan` scans a streamed body one read at a time for content events (token
counts come from the final ``usage`` chunk, ``stream_options.include_usage``, where the server
sends one), :func:`check_completion` and :func:`check_embedding` validate a whole body without
decoding it (:mod:`cpbench._core.sse`, :mod:`cpbench._core.conn`). This module imports nothing
of cpbench above it.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

import numpy as np

from cpbench._core.conn import check_completion, check_embedding
from cpbench._core.render import Renderer
from cpbench._core.sse import StreamScan, int_after
from cpbench.errors import ConfigError
from cpbench.prompts import build_prompt, prompt_text_and_cuts
from cpbench.redact import redact_url
from cpbench.replaying.plan import PromptColumn
from cpbench.vocab import KINDS, PRIORITIES

PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}
# vLLM's `priority`: a lower value is scheduled earlier.
VLLM_PRIORITY = {"HIGH": 0, "NORMAL": 1, "LOW": 2}

__all__ = ["PATHS", "VLLM_PRIORITY", "Target", "header_block", "renderer", "request_body",
           "StreamScan", "int_after", "check_completion", "check_embedding"]

@dataclass(frozen=True)
class Target:
    """Where requests go: host, port, TLS, path prefix, the Host header, and a query string
    every request carries (``?api-version=...`` of an Azure-style gateway; "" for none)."""

    host: str
    port: int
    tls: bool
    base_path: str
    host_header: str
    query: str = ""

    @classmethod
    def from_url(cls, url: str) -> "Target":
        """Parse ``http(s)://host[:port][/prefix][?query]``; credentials in the URL are
        ignored, a query string is appended to every request's path."""
        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise ConfigError(f"--url must look like http://host:port; got {redact_url(url)!r}")
        if parts.fragment:
            # A fragment never reaches a server: one here is a paste error, not an option.
            raise ConfigError(f"--url takes no #fragment; got {redact_url(url)!r}")
        try:
            port = parts.port or (443 if parts.scheme == "https" else 80)
        except ValueError:
            raise ConfigError(f"--url has a port that is not 0-65535; got {redact_url(url)!r}") \
                from None
        base = parts.path.rstrip("/")
        if base.endswith("/v1"):       # users often paste the OpenAI base URL
            base = base[:-3]
        host = parts.hostname if ":" not in parts.hostname else f"[{parts.hostname}]"
        return cls(parts.hostname, port, parts.scheme == "https", base, f"{host}:{port}",
                   f"?{parts.query}" if parts.query else "")


def header_block(kind: str, host: str, *, bearer: str | None, priority: str, hints: str,
                 path_prefix: str = "", query: str = "") -> bytes:
    """The static part of a request's head, the same for every request of a kind and
    priority: request line and headers up to (not including) the per-request ones, which the
    renderer adds (sageLLM's ``X-Request-ID`` and ``X-SLO-Deadline-Ms``, ``Content-Length``)."""
    lines = [f"POST {path_prefix}{PATHS[kind]}{query} HTTP/1.1", f"Host: {host}",
             "Content-Type: application/json", "Accept: */*", "Accept-Encoding: identity"]
    if bearer:
        lines.append(f"Authorization: Bearer {bearer}")
    if hints == "sagellm":
        lines.append(f"X-Request-Priority: {priority}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")


def model_json(model: str) -> bytes:
    """A model name as a JSON string (bytes)."""
    return (f'"{model}"' if model.isalnum() else json.dumps(model)).encode()


def renderer(columns: dict, prompts: PromptColumn | None, messages: PromptColumn | None,
             models: list[str], *, hints: str, stream: bool, target: Target | None = None,
             bearer: str | None = None) -> Renderer:
    """The compiled renderer of a plan's requests: ``columns`` are the plan's (names and dtypes
    of :data:`cpbench.replaying.plan.COLUMNS`), ``prompts`` and ``messages`` its text columns,
    ``models`` its model names. Without ``target`` it renders bodies only
    (:meth:`~cpbench._core.render.Renderer.body_of`)."""
    heads = [b""] * (len(KINDS) * len(PRIORITIES)) if target is None else [
        header_block(kind, target.host_header, bearer=bearer, priority=priority, hints=hints,
                     path_prefix=target.base_path, query=target.query)
        for kind in KINDS for priority in PRIORITIES]
    text, cuts = prompt_text_and_cuts()
    return Renderer(columns, prompts, messages, [model_json(m) for m in models], heads,
                    len(PRIORITIES),
                    np.array([VLLM_PRIORITY.get(p, 1) for p in PRIORITIES], np.int64),
                    hints == "sagellm", hints == "vllm", stream, KINDS.index("embedding"),
                    KINDS.index("chat"), text, cuts, build_prompt)


def request_body(
    kind: str,
    model: str,
    row: int,
    input_tokens: int,
    output_tokens: int | None,
    batch_size: int,
    prompt: str | None,
    priority: str,
    hints: str,
    messages_json: str | None = None,
    *,
    stream: bool = True,
) -> bytes:
    """The JSON body of one request (a one-row :func:`renderer`; a replay keeps one per plan).

    ``prompt`` None means a prompt of ``input_tokens`` words built by
    :func:`cpbench.prompts.build_prompt`, tagged with the trace ``row``. ``messages_json``
    (chat only) is a ready JSON array of messages (a session's turns), sent as it is.
    ``stream`` False asks chat and completions for one JSON body instead of SSE events.
    """
    def one(value, dtype=np.int32):
        return np.array([value], dtype)

    columns = {"kind": one(KINDS.index(kind)), "priority": one(PRIORITIES.index(priority)),
               "rows": one(row, np.int64), "model": one(0),
               "input_tokens": one(input_tokens),
               "output_tokens": one(-1 if output_tokens is None else output_tokens),
               "batch_size": one(batch_size), "slo_e2e_ms": one(0.0, np.float64)}
    texts = {name: None if value is None else PromptColumn.from_texts([value])
             for name, value in (("prompts", prompt), ("messages", messages_json))}
    return renderer(columns, texts["prompts"], texts["messages"], [model], hints=hints,
                    stream=stream).body_of(0)

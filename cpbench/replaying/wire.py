"""OpenAI request bodies for chat, completions and embeddings, and where they go.

:class:`Target` turns the base URL into where requests go; :func:`request_body` and
:func:`header_block` render a request's bytes. The response side is compiled and re-exported
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

from cpbench._core.conn import check_completion, check_embedding
from cpbench._core.sse import StreamScan, int_after
from cpbench.errors import ConfigError
from cpbench.prompts import build_prompt
from cpbench.redact import redact_url

PATHS = {
    "chat": "/v1/chat/completions",
    "completion": "/v1/completions",
    "embedding": "/v1/embeddings",
}
# vLLM's `priority`: a lower value is scheduled earlier.
VLLM_PRIORITY = {"HIGH": 0, "NORMAL": 1, "LOW": 2}

__all__ = ["PATHS", "VLLM_PRIORITY", "Target", "request_body", "header_block", "StreamScan",
           "int_after", "check_completion", "check_embedding"]

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


def _json_str(text: str) -> str:
    # Plain ASCII text without quotes or backslashes is its own JSON string body.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


def _prompt_json(prompt: str | None, input_tokens: int, row: int) -> str:
    # A built prompt is lower-case words of cpbench.prompts' vocabulary: it needs no escaping,
    # and skipping the check saves ~10 µs on a 1,000-token prompt.
    if prompt is None:
        return f'"{build_prompt(input_tokens, row)}"'
    return _json_str(prompt)


def request_body(
    kind: str,
    model_json: str,
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
    """The JSON body of one request, as bytes.

    ``model_json`` is the model name already JSON-quoted (the caller caches it per model).
    ``prompt`` null means a prompt of ``input_tokens`` words built by
    :func:`cpbench.prompts.build_prompt`, tagged with the trace ``row``. ``messages_json``
    (chat only) is a ready JSON array of messages (a session's turns), sent as it is.
    ``stream`` False asks chat and completions for one JSON body instead of SSE events.
    """
    extra = f',"priority":{VLLM_PRIORITY.get(priority, 1)}' if hints == "vllm" else ""
    if kind == "embedding":
        text = _prompt_json(prompt, input_tokens, row)
        inputs = ",".join([text] * max(int(batch_size), 1))
        return f'{{"model":{model_json},"input":[{inputs}]{extra}}}'.encode()
    text = _prompt_json(prompt, input_tokens, row)
    max_tokens = "" if output_tokens is None else f',"max_tokens":{int(output_tokens)}'
    if kind == "chat" and messages_json is not None:
        head = f'{{"model":{model_json},"messages":{messages_json}'
    elif kind == "chat":
        head = f'{{"model":{model_json},"messages":[{{"role":"user","content":{text}}}]'
    else:
        head = f'{{"model":{model_json},"prompt":{text}'
    streaming = ',"stream":true,"stream_options":{"include_usage":true}' if stream \
        else ',"stream":false'
    return (head + max_tokens + streaming + extra + "}").encode()


def header_block(
    kind: str, host: str, *, bearer: str | None, request_id: str | None,
    priority: str, deadline_ms: float | None, hints: str, path_prefix: str = "",
    query: str = "",
) -> bytes:
    """HTTP/1.1 request line and headers up to (not including) ``Content-Length``."""
    lines = [f"POST {path_prefix}{PATHS[kind]}{query} HTTP/1.1", f"Host: {host}",
             "Content-Type: application/json", "Accept: */*", "Accept-Encoding: identity"]
    if bearer:
        lines.append(f"Authorization: Bearer {bearer}")
    if hints == "sagellm":
        if request_id is not None:
            lines.append(f"X-Request-ID: {request_id}")
        lines.append(f"X-Request-Priority: {priority}")
        if deadline_ms is not None:
            lines.append(f"X-SLO-Deadline-Ms: {deadline_ms:g}")
    return ("\r\n".join(lines) + "\r\n").encode("latin-1")

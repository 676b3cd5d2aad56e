"""OpenAI request bodies and response parsing for chat, completions and embeddings.

The dispatcher calls these on its hot path, so they work on ``bytes`` with C-speed
``find``/``count`` instead of ``json.loads`` per chunk: a streamed response is scanned one
read at a time for content events, and token counts come from the final ``usage`` chunk
(``stream_options.include_usage``) where the server sends one. :class:`Target` turns the
base URL into where requests go. This module imports nothing of cpbench above it; it hands the
dispatcher request bytes and a few integers per read.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from urllib.parse import urlsplit

from cpbench._core.sse import scan_events
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

# The usage event's key, with and without the space some servers put after the colon.
_USAGE = (b'"usage":{', b'"usage": {')


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
    # Built prompts are plain ASCII words: quoting them directly skips json.dumps.
    if text.isascii() and text.isprintable() and '"' not in text and "\\" not in text:
        return f'"{text}"'
    return json.dumps(text)


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
        text = _json_str(build_prompt(input_tokens, row) if prompt is None else prompt)
        inputs = ",".join([text] * max(int(batch_size), 1))
        return f'{{"model":{model_json},"input":[{inputs}]{extra}}}'.encode()
    text = _json_str(build_prompt(input_tokens, row) if prompt is None else prompt)
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


def int_after(buf: bytes, key: bytes, start: int = 0, *, last: bool = False) -> int | None:
    """The non-negative integer that follows ``key`` in ``buf`` (spaces allowed), else None;
    with ``last`` the key's last occurrence (a ``usage`` object closes a body, so a search
    from the end skips the vectors or text before it)."""
    i = buf.rfind(key, start) if last else buf.find(key, start)
    if i < 0:
        return None
    i += len(key)
    n = len(buf)
    while i < n and buf[i] == 32:
        i += 1
    j = i
    while j < n and 48 <= buf[j] <= 57:
        j += 1
    return int(buf[i:j]) if j > i else None


class StreamScan:
    """Incremental scan of one SSE body: content events, the usage event, ``[DONE]``.

    One instance lives on each connection and is ``reset`` per request, so a request costs no
    new Python objects. ``feed`` takes the body bytes of one socket read and returns how many
    content events (tokens, as the server chunked them) completed in it.
    """

    __slots__ = ("_tail", "_chat", "usage", "done", "error", "malformed")

    def __init__(self) -> None:
        self._tail = b""
        self._chat = True
        self.usage: bytes | None = None
        self.done = False
        self.error: bytes | None = None
        self.malformed = False

    def reset(self, kind: str) -> None:
        """Prepare for a new response of ``kind`` (``chat`` or ``completion``)."""
        self._tail = b""
        self._chat = kind == "chat"
        self.usage = None
        self.done = False
        self.error = None
        self.malformed = False

    def feed(self, data: bytes) -> int:
        """Scan ``data`` (body bytes); return the number of content events completed in it."""
        if self._tail:
            data = self._tail + data
        # Only whole events are scanned; a partial one waits for the next read. Most reads
        # end on an event boundary, which needs no search.
        if data.endswith(b"\n\n"):
            cut = len(data)
        else:
            cut_lf = data.rfind(b"\n\n")
            cut_crlf = data.rfind(b"\r\n\r\n")
            cut = max(cut_lf + 2 if cut_lf >= 0 else -1, cut_crlf + 4 if cut_crlf >= 0 else -1)
        if cut < 0:
            self._tail = data
            return 0
        seg = data[:cut] if cut < len(data) else data
        self._tail = data[cut:] if cut < len(data) else b""
        # One pass in C for every count (both spellings of each marker: servers mix them).
        tokens, data_lines, objects, ends, done, error_at = scan_events(seg, self._chat)
        for marker in _USAGE:
            i = seg.rfind(marker)
            if i >= 0:
                start = seg.rfind(b"data:", 0, i)
                end = seg.find(b"\n", i)
                self.usage = seg[start + 5 if start >= 0 else 0: end if end >= 0 else len(seg)]
                break
        if done:
            self.done = True
        # Cheap shape check instead of decoding: every data line is a JSON object or [DONE].
        if objects + done != data_lines or objects != ends:
            self.malformed = True
        if error_at >= 0 and self.error is None:
            self.error = seg[error_at: error_at + 200]
        return tokens

    def usage_tokens(self) -> tuple[int | None, int | None]:
        """``(prompt_tokens, completion_tokens)`` from the usage event, None where absent."""
        if self.usage is None:
            return None, None
        return int_after(self.usage, b'"prompt_tokens":'), int_after(
            self.usage, b'"completion_tokens":')


def check_completion(body: bytes | bytearray) -> tuple[str | None, int | None, int | None]:
    """Validate a non-streamed chat or completions body (``"stream": false``) without
    decoding it: a JSON object with ``choices``. Returns ``(problem, prompt_tokens,
    completion_tokens)``; the token counts come from ``usage`` (None where absent)."""
    if not body.startswith(b"{"):
        return f"completion body is not a JSON object: {bytes(body[:60])!r}", None, None
    if b'"choices"' not in body:
        return f"completion body has no choices: {bytes(body[:80])!r}", None, None
    return (None, int_after(body, b'"prompt_tokens":', last=True),
            int_after(body, b'"completion_tokens":', last=True))


def check_embedding(body: bytes | bytearray, batch_size: int) -> tuple[str | None, int | None]:
    """Validate an embeddings response body without decoding its vectors.

    Returns ``(problem, prompt_tokens)``: ``problem`` is None when the body holds one
    ``"embedding"`` per input, else a short description for ``bad_payload``.
    """
    if not body.startswith(b"{"):
        return f"embeddings body is not a JSON object: {bytes(body[:60])!r}", None
    want = max(int(batch_size), 1)
    vectors = body.count(b'"embedding":')
    if vectors != want:         # the spelling with a space is rare: counted only when needed
        vectors += body.count(b'"embedding" :')
    if vectors != want:
        return f"embeddings body has {vectors} vectors for {batch_size} inputs", None
    return None, int_after(body, b'"prompt_tokens":', last=True)

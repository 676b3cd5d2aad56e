"""A recording proxy: forward live OpenAI-style traffic to a control plane, write it as a trace.

Every request is forwarded to ``upstream`` unchanged (headers, body, query) and its response
streamed back unchanged, byte for byte (SSE included; no decompression). For each POST to
``/v1/chat/completions``, ``/v1/completions`` or ``/v1/embeddings`` one row is recorded *when
it arrives* (``time.monotonic_ns()`` at the handler's start): kind, model, input tokens,
``max_tokens``, embedding batch size, priority (``X-Request-Priority`` header, else vLLM's body ``priority``), deadline
(``X-SLO-Deadline-Ms``) and session (``X-Session-ID``). The response's ``usage`` fills what the
body lacks (no ``max_tokens``: the completion tokens the server produced).

Input tokens: the upstream's ``usage.prompt_tokens`` is the truth (its tokenizer; every
vLLM/SGLang server reports it, in a stream when asked with ``stream_options.include_usage``);
without it, the body's count (cpbench's whitespace word count, or the length of a token-id
list). Each row's ``input_tokens_source`` says which: ``usage``, ``words`` or ``token_ids``.

Privacy: no header other than those three is read into the record, prompts are not stored,
and the upstream URL is stored without credentials or query. On SIGINT/SIGTERM the proxy
stops accepting, waits up to ``drain_s`` for requests in flight, and writes the file; a row is
recorded at arrival, so a request cut off by the drain is still in the trace.
"""
from __future__ import annotations

import asyncio
import datetime
import json
import os
import re
import signal
import sys
import time
from typing import Any

import aiohttp
import numpy as np
import pyarrow as pa
from aiohttp import web
from yarl import URL

from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError
from cpbench.prompts import count_tokens
from cpbench.vocab import PRIORITIES as _PRIORITIES

KIND_BY_SUFFIX = (("/v1/chat/completions", "chat"), ("/v1/completions", "completion"),
                  ("/v1/embeddings", "embedding"))
# Hop-by-hop headers (RFC 9110 7.6.1) and those aiohttp recomputes are not forwarded.
_HOP = frozenset(("connection", "keep-alive", "proxy-authenticate", "proxy-authorization",
                  "te", "trailer", "transfer-encoding", "upgrade", "host", "content-length"))
_PROMPT_RE = re.compile(rb'"prompt_tokens"\s*:\s*(\d+)')
_COMPLETION_RE = re.compile(rb'"completion_tokens"\s*:\s*(\d+)')
_TAIL_BYTES = 65_536
# Used for max_tokens only when neither the body nor the response says (a failed request).
FALLBACK_MAX_TOKENS = 16


class Recorder:
    """Rows of the capture in arrival order, as plain lists until the end."""

    def __init__(self) -> None:
        self.arrival_ns: list[int] = []
        self.cols: dict[str, list[Any]] = {k: [] for k in (
            "kind", "model", "input_tokens", "input_tokens_source", "output_tokens",
            "batch_size", "priority", "slo_e2e_ms", "session")}
        self.skipped_unparsable = 0
        self.guessed_output = 0

    def add(self, arrival_ns: int, row: dict[str, Any]) -> int:
        self.arrival_ns.append(arrival_ns)
        for key, values in self.cols.items():
            values.append(row.get(key))
        return len(self.arrival_ns) - 1

    def fill_from_usage(self, index: int, tail: bytes) -> None:
        """Use the response's ``usage`` for what the request body did not say."""
        cols = self.cols
        prompt = _PROMPT_RE.findall(tail)
        completion = _COMPLETION_RE.findall(tail)
        if prompt:  # the server's tokenizer beats the word count of the body
            per_text = int(prompt[-1]) / max(cols["batch_size"][index] or 1, 1)
            cols["input_tokens"][index] = int(round(per_text))
            cols["input_tokens_source"][index] = "usage"
        if cols["kind"][index] != "embedding" and cols["output_tokens"][index] is None \
                and completion:
            cols["output_tokens"][index] = max(int(completion[-1]), 1)

    def table(self) -> pa.Table:
        """The capture as a trace table (offsets from the first arrival, sorted)."""
        t = np.asarray(self.arrival_ns, dtype=np.int64)
        order = np.argsort(t, kind="stable")
        t = t[order] - (t.min() if t.size else 0)
        c = {k: [v[i] for i in order] for k, v in self.cols.items()}
        kinds = c["kind"]
        for i, kind in enumerate(kinds):
            if kind != "embedding" and c["output_tokens"][i] is None:
                c["output_tokens"][i] = FALLBACK_MAX_TOKENS
                self.guessed_output += 1
            if c["input_tokens"][i] is None:
                c["input_tokens"][i] = 0
        return pa.table({
            "arrival_ns": pa.array(t, pa.int64()),
            "kind": pa.array(kinds, pa.string()).dictionary_encode(),
            "model": pa.array(c["model"], pa.string()).dictionary_encode(),
            "input_tokens": pa.array(c["input_tokens"], pa.int32()),
            "input_tokens_source": pa.array(c["input_tokens_source"],
                                            pa.string()).dictionary_encode(),
            "output_tokens": pa.array([None if k == "embedding" else v
                                       for k, v in zip(kinds, c["output_tokens"])], pa.int32()),
            "batch_size": pa.array(c["batch_size"], pa.int16()),
            "priority": pa.array(c["priority"], pa.string()).dictionary_encode(),
            "slo_e2e_ms": pa.array(c["slo_e2e_ms"], pa.float32()),
            "session": pa.array(c["session"], pa.string()),
        })


def _text_tokens(value: Any) -> int | None:
    """Tokens of one prompt/input: words of a string, length of a token-id list."""
    if isinstance(value, str):
        return count_tokens(value)
    if _is_token_ids(value):
        return len(value)
    return None


def _is_token_ids(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(x, int) for x in value)


def _chat_tokens(messages: Any) -> int | None:
    if not isinstance(messages, list):
        return None
    total = 0
    for message in messages:
        content = message.get("content") if isinstance(message, dict) else None
        if isinstance(content, str):
            total += count_tokens(content)
        elif isinstance(content, list):   # content parts: count the text ones
            total += sum(count_tokens(p.get("text", "")) for p in content
                         if isinstance(p, dict) and isinstance(p.get("text"), str))
    return total


def _priority(headers: Any, body: dict) -> str:
    value = headers.get("X-Request-Priority", "").strip().upper()
    if value in _PRIORITIES:
        return value
    prio = body.get("priority")
    if isinstance(prio, int) and not isinstance(prio, bool):
        # vLLM: lower runs earlier; cpbench sends HIGH=0, NORMAL=1, LOW=2.
        return "HIGH" if prio <= 0 else "NORMAL" if prio == 1 else "LOW"
    return "NORMAL"


def describe_request(kind: str, body: dict, headers: Any) -> dict[str, Any]:
    """The trace row of one request from its parsed JSON body and headers."""
    row: dict[str, Any] = {"kind": kind, "model": str(body.get("model") or "unknown"),
                           "priority": _priority(headers, body), "batch_size": 1}
    if kind == "embedding":
        inputs = body.get("input")
        if isinstance(inputs, list) and inputs and not all(isinstance(x, int) for x in inputs):
            counts = [_text_tokens(x) for x in inputs]
            row["batch_size"] = len(inputs)
            known = [c for c in counts if c is not None]
            row["input_tokens"] = int(round(sum(known) / len(known))) if known else None
        else:
            row["input_tokens"] = _text_tokens(inputs)
    else:
        if kind == "chat":
            row["input_tokens"] = _chat_tokens(body.get("messages"))
        else:
            prompt = body.get("prompt")
            row["input_tokens"] = _text_tokens(prompt[0] if isinstance(prompt, list) and prompt
                                               and not isinstance(prompt[0], int) else prompt)
        max_tokens = body.get("max_completion_tokens", body.get("max_tokens"))
        ok = isinstance(max_tokens, int) and not isinstance(max_tokens, bool) and max_tokens > 0
        row["output_tokens"] = max_tokens if ok else None
    try:
        deadline = float(headers.get("X-SLO-Deadline-Ms", ""))
        row["slo_e2e_ms"] = deadline if deadline > 0 else None
    except ValueError:
        row["slo_e2e_ms"] = None
    row["session"] = headers.get("X-Session-ID") or None
    if row.get("input_tokens") is not None:
        body_input = body.get("input") if kind == "embedding" else body.get("prompt")
        first = body_input[0] if isinstance(body_input, list) and body_input else None
        ids = _is_token_ids(body_input) or _is_token_ids(first)
        row["input_tokens_source"] = "token_ids" if ids and kind != "chat" else "words"
    return row


def public_url(url: str) -> str:
    """``url`` without user, password, query or fragment: safe to store."""
    u = URL(url)
    return str(u.with_user(None).with_password(None).with_query(None).with_fragment(None))


class Proxy:
    """The aiohttp application: one catch-all handler forwarding to ``upstream``."""

    def __init__(self, upstream: str, timeout_s: float) -> None:
        u = URL(upstream)
        if u.scheme not in ("http", "https") or not u.host:
            raise ConfigError(f"--upstream must be an http(s) URL; got {public_url(upstream)!r}")
        # Credentials in the URL become a Basic Authorization header sent only when the client
        # sent none: the client's own header (its API key) is forwarded unchanged, and aiohttp
        # refuses a request that has both.
        self.upstream_auth = None
        if u.user is not None or u.password is not None:
            self.upstream_auth = aiohttp.BasicAuth(u.user or "", u.password or "").encode()
        self.upstream = str(u.with_user(None).with_password(None)).rstrip("/")
        self.timeout_s = timeout_s
        self.recorder = Recorder()
        self.session: aiohttp.ClientSession | None = None

    def kind_of(self, request: web.Request) -> str | None:
        if request.method != "POST":
            return None
        path = request.path.rstrip("/")
        for suffix, kind in KIND_BY_SUFFIX:
            if path.endswith(suffix):
                return kind
        return None

    async def handle(self, request: web.Request) -> web.StreamResponse:
        arrival_ns = time.monotonic_ns()
        body = await request.read()
        kind = self.kind_of(request)
        index = None
        if kind is not None:
            try:
                parsed = json.loads(body)
                if not isinstance(parsed, dict):
                    raise ValueError("not an object")
            except ValueError:
                self.recorder.skipped_unparsable += 1
            else:
                index = self.recorder.add(arrival_ns, describe_request(kind, parsed,
                                                                       request.headers))
        headers = [(k, v) for k, v in request.headers.items() if k.lower() not in _HOP]
        if self.upstream_auth and "Authorization" not in request.headers:
            headers.append(("Authorization", self.upstream_auth))
        assert self.session is not None
        try:
            async with self.session.request(
                    request.method, self.upstream + str(request.rel_url), headers=headers,
                    data=body, allow_redirects=False) as up:
                return await self._relay(request, up, index)
        except (aiohttp.ClientError, asyncio.TimeoutError) as exc:
            detail = type(exc).__name__
            return web.json_response({"error": {"message": f"cpbench capture: upstream "
                                                f"failed ({detail})", "type": "proxy_error"}},
                                     status=502)

    async def _relay(self, request: web.Request, up: aiohttp.ClientResponse,
                     index: int | None) -> web.StreamResponse:
        resp = web.StreamResponse(status=up.status, reason=up.reason)
        for key, value in up.headers.items():
            if key.lower() not in _HOP or key.lower() == "content-length":
                resp.headers.add(key, value)
        await resp.prepare(request)
        tail = b""
        try:
            async for chunk in up.content.iter_any():
                await resp.write(chunk)
                if index is not None:
                    tail = (tail + chunk)[-_TAIL_BYTES:]
            await resp.write_eof()
        except (ConnectionResetError, aiohttp.ClientError):
            pass   # the client or upstream went away; the row is kept as it arrived
        finally:
            if index is not None and tail:
                self.recorder.fill_from_usage(index, tail)
        return resp


async def _serve(host: str, port: int, upstream: str, out: str, *, ready_file: str | None,
                 drain_s: float, timeout_s: float) -> int:
    proxy = Proxy(upstream, timeout_s)
    app = web.Application(client_max_size=256 << 20)
    app.router.add_route("*", "/{tail:.*}", proxy.handle)
    runner = web.AppRunner(app, handle_signals=False, access_log=None)
    await runner.setup()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    started_utc = datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds")
    proxy.session = aiohttp.ClientSession(
        auto_decompress=False, timeout=aiohttp.ClientTimeout(total=timeout_s),
        connector=aiohttp.TCPConnector(limit=0))
    listening, count = False, 0
    try:
        site = web.TCPSite(runner, host, port, shutdown_timeout=drain_s)
        try:
            await site.start()
        except OSError as exc:
            raise ConfigError(f"--listen {host}:{port}: cannot listen ({exc.strerror or exc}); "
                              "pick another port") from None
        listening = True
        bound = site._server.sockets[0].getsockname()   # type: ignore[union-attr]
        url = f"http://{bound[0]}:{bound[1]}"
        if ready_file:
            atomic_write(ready_file, json.dumps({"url": url, "pid": os.getpid()}), fsync=False)
        print(url, flush=True)
        await stop.wait()
    finally:
        # Stops listening, lets handlers in flight finish for up to drain_s, then cancels them;
        # whatever stopped the proxy, the rows recorded so far are written.
        await runner.cleanup()
        await proxy.session.close()
        if listening:
            count = _write(proxy, out, upstream=upstream, listen=f"{host}:{port}",
                           started_utc=started_utc)
    return count


def _write(proxy: Proxy, out: str, **params: Any) -> int:
    from cpbench.trace import write_trace
    rec = proxy.recorder
    if not rec.arrival_ns:
        print(f"cpbench capture: no requests captured; {out} not written", file=sys.stderr,
              flush=True)
        return 0
    table = rec.table()
    meta = {"listen": params["listen"], "upstream": public_url(params["upstream"]),
            "started_utc": params["started_utc"],
            "skipped_unparsable": rec.skipped_unparsable,
            "guessed_output_tokens": rec.guessed_output,
            "fallback_max_tokens": FALLBACK_MAX_TOKENS}
    write_trace(table, out, metadata={"generator": "cpbench record capture", "params": meta,
                                      "seed": None, "source": public_url(params["upstream"])})
    return table.num_rows


def run_capture(host: str, port: int, upstream: str, out: str, *,
                ready_file: str | None = None, drain_s: float = 5.0,
                timeout_s: float = 600.0) -> int:
    """Run the recording proxy until SIGINT/SIGTERM; returns the number of rows written."""
    if drain_s < 0 or timeout_s <= 0:
        raise ConfigError(f"--drain-s must be >= 0 and --timeout-s > 0; got {drain_s}, "
                          f"{timeout_s}")
    coro = _serve(host, port, upstream, out, ready_file=ready_file, drain_s=drain_s,
                  timeout_s=timeout_s)
    try:
        import uvloop
    except ImportError:   # pragma: no cover - uvloop is a dependency off Windows
        return asyncio.run(coro)
    return uvloop.run(coro)

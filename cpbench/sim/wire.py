"""What the embedded control plane puts on the wire: one ``SimRequest`` per accepted request.

A ``SimRequest`` carries the scheduling facts the policies and engines read (rank, deadline,
tokens) and writes its own response. For a stream it pre-encodes, once, the HTTP chunk that
carries one token as an OpenAI SSE event, so emitting a token is a single ``transport.write``
of constant bytes from the engine's step, with no coroutine and no JSON encoding per token.
The final events (finish reason, ``usage``, the optional ``cpbench_server_timing`` stamps and
``data: [DONE]``) are written by ``finish``; the request handler then ends the HTTP response.
"""
from __future__ import annotations

import asyncio
import json
import time
from typing import Any

TOKEN_WORD = "the"   # one token = one word, as cpbench.prompts.count_tokens counts
_monotonic_ns = time.monotonic_ns


def _frame(event: bytes) -> bytes:
    """``event`` as one HTTP/1.1 chunk (the response uses chunked transfer encoding)."""
    return b"%x\r\n%b\r\n" % (len(event), event)


def _take_headers(writer: Any) -> bytes:
    """The response's status line and headers, if aiohttp still holds them back.

    aiohttp (3.10+) buffers the headers of a prepared response until the first body write;
    taking them here lets headers and first token leave in one ``write`` (one syscall, one
    segment) instead of two. This reads aiohttp's writer internals, so it falls back to the
    public ``send_headers()`` (or to nothing, where ``prepare()`` already sent them).
    """
    buf = getattr(writer, "_headers_buf", None)
    if buf and getattr(writer, "_headers_written", True) is False:
        writer._headers_buf = None
        writer._headers_written = True
        return bytes(buf)
    send = getattr(writer, "send_headers", None)
    if send is not None:
        send()
    return b""


class SimRequest:
    """One request on its way through policy queue, engine and response."""

    __slots__ = ("seq", "rid", "kind", "engine_kind", "model", "policy", "rank", "deadline_ns",
                 "received_ns", "admitted_ns", "first_token_ns", "done_ns", "min_service_ns",
                 "prompt_tokens", "max_tokens", "kv_tokens", "n_inputs", "prefill_left",
                 "generated", "slow_factor", "slow_count", "disconnect_at", "malformed_at",
                 "stream", "include_usage", "report_timing", "aborted", "done", "transport", "client",
                 "writer", "created", "_prefix", "_token_frame", "_first_frame",
                 "prefix_hashes", "cached_tokens", "engine_index")

    def __init__(self, *, seq: int, rid: str, kind: str, model: str, policy: str, rank: int,
                 received_ns: int, deadline_ns: int, prompt_tokens: int, max_tokens: int,
                 n_inputs: int, stream: bool, include_usage: bool, report_timing: bool) -> None:
        self.seq, self.rid, self.kind, self.model, self.policy = seq, rid, kind, model, policy
        self.engine_kind = "embedding" if kind == "embedding" else "llm"
        self.rank, self.received_ns, self.deadline_ns = rank, received_ns, deadline_ns
        self.prompt_tokens, self.max_tokens, self.n_inputs = prompt_tokens, max_tokens, n_inputs
        self.kv_tokens = prompt_tokens + max_tokens
        self.stream, self.include_usage, self.report_timing = stream, include_usage, report_timing
        self.admitted_ns = self.first_token_ns = self.done_ns = 0
        self.min_service_ns = self.prefill_left = self.generated = self.slow_count = 0
        self.slow_factor = 1
        self.disconnect_at = self.malformed_at = -1
        self.aborted = False
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self.transport: Any = None
        self.client: Any = None   # the connection, to notice a client that left (any request)
        self.writer: Any = None
        self.created = int(time.time())
        self._prefix = self._token_frame = self._first_frame = b""
        self.prefix_hashes: list[int] = []     # chained block hashes (sim.prefix_cache)
        self.cached_tokens = 0
        self.engine_index = 0                   # the LLM engine instance that served it

    # -- streaming ------------------------------------------------------------------------------
    def attach_stream(self, transport: Any, writer: Any) -> None:
        """Write tokens to ``transport``; ``writer`` is aiohttp's payload writer of the response
        (prepared, chunked), whose buffered headers go out with the first token."""
        self.transport, self.writer = transport, writer
        obj = "chat.completion.chunk" if self.kind == "chat" else "text_completion"
        prefix = (f'data: {{"id":"{self.rid}","object":"{obj}","created":{self.created},'
                  f'"model":{json.dumps(self.model)},"choices":[')
        self._prefix = prefix.encode()
        if self.kind == "chat":
            first = f'{{"index":0,"delta":{{"role":"assistant","content":"{TOKEN_WORD}"}},' \
                    f'"finish_reason":null}}]}}\n\n'
            token = f'{{"index":0,"delta":{{"content":" {TOKEN_WORD}"}},"finish_reason":null}}]}}\n\n'
        else:
            first = f'{{"index":0,"text":"{TOKEN_WORD}","logprobs":null,"finish_reason":null}}]}}\n\n'
            token = f'{{"index":0,"text":" {TOKEN_WORD}","logprobs":null,"finish_reason":null}}]}}\n\n'
        self._first_frame = _frame(self._prefix + first.encode())
        self._token_frame = _frame(self._prefix + token.encode())

    def token(self, now_ns: int) -> bool:
        """Emit one token; False when the client is gone (the engine then aborts the request)."""
        n = self.generated
        self.generated = n + 1
        transport = self.transport
        if transport is None:
            if n == 0:
                self.first_token_ns = now_ns
            client = self.client
            return not (self.aborted or (client is not None and client.is_closing()))
        if transport.is_closing():
            return False
        if n == 0:
            head = _take_headers(self.writer)
            # Stamped at the write, not at the step: what the client can see, to the microsecond.
            self.first_token_ns = _monotonic_ns()
            transport.write(head + self._first_frame)
        elif n == self.malformed_at:
            # Cut JSON: a client must classify this chunk as a bad payload.
            transport.write(_frame(self._prefix + b'{"index":0,"delta":{"content":" the\n\n'))
        else:
            transport.write(self._token_frame)
        if n + 1 == self.disconnect_at:
            transport.close()
            return False
        return True

    def finish(self, now_ns: int, *, aborted: bool = False) -> None:
        """The engine is done with this request: write the stream's end, wake the handler."""
        if self.done.done():
            return
        self.done_ns = now_ns
        self.aborted = aborted
        transport = self.transport
        if transport is not None and not aborted and not transport.is_closing():
            end = self._final_frames()
            writer = self.writer
            if getattr(writer, "_eof", None) is False and getattr(writer, "chunked", False):
                # End the chunked body in the same write; the handler's write_eof() then
                # finds the writer at EOF and writes nothing more.
                end += b"0\r\n\r\n"
                writer._eof = True
            transport.write(end)
        self.done.set_result(None)

    def timing(self) -> dict[str, Any]:
        """The server's stamps, for ``cpbench_server_timing`` (monotonic clock, ns)."""
        return {"received_ns": self.received_ns, "first_token_ns": self.first_token_ns,
                "done_ns": self.done_ns, "clock": "monotonic"}

    def usage(self) -> dict[str, int]:
        """OpenAI ``usage`` with the true token counts."""
        done = self.generated if self.engine_kind == "llm" else 0
        usage = {"prompt_tokens": self.prompt_tokens, "total_tokens": self.prompt_tokens + done}
        if self.engine_kind == "llm":
            usage["completion_tokens"] = done
        return usage

    def _final_frames(self) -> bytes:
        head = _take_headers(self.writer) if self.generated == 0 else b""
        timing = ""
        if self.report_timing:
            timing = ',"cpbench_server_timing":' + json.dumps(self.timing(), separators=(",", ":"))
        if self.kind == "chat":
            finish = '{"index":0,"delta":{},"finish_reason":"length"}]'
        else:
            finish = '{"index":0,"text":"","logprobs":null,"finish_reason":"length"}]'
        events = []
        if self.include_usage:
            events.append(finish + "}\n\n")
            usage = json.dumps(self.usage(), separators=(",", ":"))
            events.append(f'],"usage":{usage}{timing}}}\n\n')
        else:
            events.append(finish + timing + "}\n\n")
        body = b"".join(self._prefix + e.encode() for e in events) + b"data: [DONE]\n\n"
        return head + _frame(body)

    # -- non-streaming bodies -----------------------------------------------------------------
    def completion_body(self) -> dict[str, Any]:
        """The JSON body of a non-streamed chat or text completion."""
        text = " ".join([TOKEN_WORD] * self.generated)
        if self.kind == "chat":
            choice: dict[str, Any] = {"index": 0, "finish_reason": "length", "logprobs": None,
                                      "message": {"role": "assistant", "content": text}}
            obj = "chat.completion"
        else:
            choice = {"index": 0, "text": text, "logprobs": None, "finish_reason": "length"}
            obj = "text_completion"
        body: dict[str, Any] = {"id": self.rid, "object": obj, "created": self.created,
                                "model": self.model, "choices": [choice], "usage": self.usage()}
        if self.report_timing:
            body["cpbench_server_timing"] = self.timing()
        return body

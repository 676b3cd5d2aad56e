"""The one OpenAI-like test server: correct answers, and every fault the tests inject.

It speaks HTTP/1.1 by hand on ``asyncio`` streams (no web framework between the test and the
bytes), so it can do what a well-behaved server library never would: stall before the
headers, cut a stream after k chunks, send SSE without ``data:``, split one event across many
TCP segments, send a 1 MB event, never finish, send gzip garbage, dribble a byte per second,
send a Content-Length or chunk size that is not a number, close a kept-alive connection under
a request, accept and never read, or stop listening mid-run.

Behaviour is chosen per request by the model name, so one replay can mix healthy and faulty
requests and the test knows which row should fail how. The vocabulary (times in seconds):

- ``ok`` (and any name without a ``:`` that is not a mode): a correct answer — chat and
  completions stream ``max_tokens`` (default ``TOKENS``) content events, a ``usage`` event and
  ``[DONE]``; embeddings get one vector per input;
- ``delay:<s>``: the same, after ``s`` seconds; ``stall:<s>``: nothing for ``s`` seconds, then
  the connection closes;
- ``status:<code>[:body[:message]|:empty|:close]``: that HTTP status (``body``: an OpenAI error
  object whose message is ``message`` or ``injected <code>``);
- ``cut:<k>``: the stream breaks after ``k`` content events; ``neverend``: a content event every
  50 ms, forever; ``nousage``: no ``usage`` event, only ``[DONE]``;
- ``nodata`` (events without ``data:``), ``badjson`` (an event, or the embeddings body, that is
  not JSON), ``fewvectors`` (one embedding fewer than inputs), ``gzip`` (a gzip body never asked
  for), ``badlength:<value>`` (that Content-Length), ``badchunk`` (a chunk size that is not
  hexadecimal): bad payloads;
- ``split`` (7-byte writes), ``bigchunk`` (a 1 MB event), ``slowloris`` (a byte a second);
- ``dropreused``: the first request of a connection is answered; one that arrives on a
  kept-alive connection has the connection closed under it, unanswered (a server's idle
  timeout).

Two faults are per server instead, set with the constructor's ``server_mode``:
``accept-never-read`` (connections are accepted and never read) and ``refuse-after:<n>``
(after ``n`` requests the listener closes and every connection is dropped, so later requests
are refused). ``tls=True`` serves HTTPS with the test certificate in ``tests/data/tls`` (a
client trusts it through ``SSL_CERT_FILE``). ``GET /health`` and ``GET /v1/models`` answer as a
server would. Runs on its own
event loop in a daemon thread; ``stop()`` closes everything. Every POST is recorded in
``seen`` (``head`` bytes, ``headers`` as sent, JSON ``body``).
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import ssl
import threading
from pathlib import Path

TOKENS = 4
TLS_CERT = Path(__file__).resolve().parent.parent / "data" / "tls" / "cert.pem"
MODES = ("ok", "delay", "status", "stall", "cut", "nodata", "badjson", "split", "bigchunk",
         "neverend", "gzip", "slowloris", "badlength", "badchunk", "nousage", "fewvectors",
         "dropreused")


def _event(content: str | None = None, usage: dict | None = None, chat: bool = True) -> bytes:
    piece = {"delta": {"content": content}} if chat else {"text": content}
    choices = [] if content is None else [{"index": 0, **piece}]
    kind = "chat.completion.chunk" if chat else "text_completion"
    return b"data: " + json.dumps({"object": kind, "choices": choices,
                                   "usage": usage}).encode() + b"\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def chat_events(n: int, *, big: bool = False, chat: bool = True,
                usage: bool = True) -> list[bytes]:
    """A correct stream: (chat: a role event), ``n`` content events, usage, ``[DONE]``."""
    out = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n'
           ] if chat else []
    for i in range(n):
        out.append(_event(("w" * (1 << 20)) if big and i == 0 else f"w{i} ", chat=chat))
    if usage:
        out.append(_event(None, {"prompt_tokens": 5, "completion_tokens": n,
                                 "total_tokens": n + 5}, chat=chat))
    out.append(b"data: [DONE]\n\n")
    return out


SSE_HEAD = (b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n")


def embedding_body(n_inputs: int) -> bytes:
    data = [{"object": "embedding", "index": i, "embedding": [0.25] * 8} for i in range(n_inputs)]
    return json.dumps({"object": "list", "data": data, "model": "ok",
                       "usage": {"prompt_tokens": 7, "total_tokens": 7}}).encode()


def _response(status: int, body: bytes, ctype: bytes = b"application/json",
              extra: bytes = b"") -> bytes:
    reason = {200: b"OK", 404: b"Not Found", 429: b"Too Many Requests",
              500: b"Internal Server Error", 503: b"Service Unavailable"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, ctype, len(body), extra, body))


def _headers(head: bytes) -> dict[str, str]:
    """A request head's header fields, names as the client wrote them."""
    out = {}
    for line in head.decode("latin-1").split("\r\n")[1:]:
        name, sep, value = line.partition(":")
        if sep:
            out[name.strip()] = value.strip()
    return out


class FaultyServer:
    """``with FaultyServer() as server:`` (or ``start()``/``stop()``); ``url``, ``requests``
    (POSTs answered or faulted), ``seen`` (every POST: head, headers, body), ``heads``."""

    def __init__(self, server_mode: str | None = None, tls: bool = False) -> None:
        self.server_mode = server_mode
        self.tls = tls                          # HTTPS with tests/data/tls's certificate
        self.requests = 0
        self.seen: list[dict] = []                # every POST: {"head", "headers", "body"}
        self.url = ""
        self._loop = asyncio.new_event_loop()
        self._ready = threading.Event()
        self._writers: set[asyncio.StreamWriter] = set()
        self._tasks: set[asyncio.Task] = set()
        self._server: asyncio.base_events.Server | None = None
        self._thread = threading.Thread(target=self._run, daemon=True)

    def start(self) -> "FaultyServer":
        self._thread.start()
        if not self._ready.wait(10):
            raise RuntimeError("faulty server did not start")
        return self

    def stop(self) -> None:
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._close(), self._loop).result(10)
            self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)

    @property
    def heads(self) -> list[bytes]:
        """The raw heads of the POSTs seen."""
        return [r["head"] for r in self.seen]

    def __enter__(self) -> "FaultyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- plumbing ----------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        ctx = None
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(TLS_CERT, TLS_CERT.with_name("key.pem"))
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096, ssl=ctx))
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"{'https' if self.tls else 'http'}://127.0.0.1:{port}"
        self._ready.set()
        self._loop.run_forever()
        self._loop.close()

    async def _close(self) -> None:
        if self._server is not None:
            self._server.close()
        for w in list(self._writers):
            w.transport.abort()
        self._writers.clear()
        # Handlers still sleeping (stalls, accept-never-read) end here, not at loop teardown.
        me = asyncio.current_task()
        others = [t for t in self._tasks if t is not me and not t.done()]
        for t in others:
            t.cancel()
        await asyncio.gather(*others, return_exceptions=True)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.add(writer)
        self._tasks.add(asyncio.current_task())
        sock = writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            if self.server_mode == "accept-never-read":
                await asyncio.sleep(3600)
            nth = 0                                   # requests so far on this connection
            while True:
                try:
                    head = await reader.readuntil(b"\r\n\r\n")
                except (asyncio.IncompleteReadError, asyncio.LimitOverrunError):
                    return
                lower = head.lower()
                i = lower.find(b"content-length:")
                length = int(lower[i + 15:lower.find(b"\r\n", i)]) if i >= 0 else 0
                body = json.loads(await reader.readexactly(length)) if length else {}
                # Only the replayed requests count: the GETs a run makes around them (the
                # manifest's /v1/models probe) are answered but are not trace rows.
                replayed = head.startswith(b"POST ")
                # Routed on the path alone, as a server does; the query is only recorded.
                path = head.split(b" ", 2)[1].split(b"?", 1)[0]
                if not replayed:
                    writer.write(_response(200, b'{"status": "ok"}' if path == b"/health" else
                                           b'{"object": "list", "data": [{"id": "ok"}]}'))
                    await writer.drain()
                    continue
                self.requests += 1
                nth += 1
                self.seen.append({"head": head, "headers": _headers(head), "body": body})
                if replayed and self.server_mode and \
                        self.server_mode.startswith("refuse-after:") and \
                        self.requests > int(self.server_mode.split(":")[1]):
                    await self._close()
                    return
                if not await self._answer(writer, path, body, nth):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(asyncio.current_task())
            writer.transport.abort()

    # -- behaviours ----------------------------------------------------------------------
    async def _answer(self, w: asyncio.StreamWriter, path: bytes, body: dict, nth: int) -> bool:
        """Write one response to the ``nth`` request of a connection; False closes it."""
        mode, _, arg = str(body.get("model", "ok")).partition(":")
        if mode not in MODES:
            mode = "ok"
        embedding = path.endswith(b"/embeddings")
        n = int(body.get("max_tokens") or TOKENS)
        if mode == "dropreused" and nth > 1:
            return False                     # closed under the request, unanswered
        if mode == "delay":                  # a correct answer, after arg seconds
            await asyncio.sleep(float(arg))
        if mode == "status":                 # status:CODE[:body[:MESSAGE]|:empty|:close]
            code, _, how = arg.partition(":")
            how, _, message = how.partition(":")
            if how == "body":
                w.write(_response(int(code), json.dumps(
                    {"error": {"message": message or f"injected {code}",
                               "type": "server_error"}}).encode()))
            elif how == "close":            # no Content-Length: the body ends with the close
                w.write(b"HTTP/1.1 %s Oops\r\nConnection: close\r\n\r\n" % code.encode())
                await w.drain()
                return False
            else:
                w.write(_response(int(code), b""))
            await w.drain()
            return True
        if mode == "stall":
            await asyncio.sleep(float(arg))
            return False
        if mode == "gzip":
            w.write(_response(200, os.urandom(512),
                              b"application/json" if embedding else b"text/event-stream",
                              b"Content-Encoding: gzip\r\n"))
            await w.drain()
            return True
        if mode == "badlength":            # badlength:VALUE, e.g. -5 or 12abc
            w.write(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n"
                    b"Content-Length: %s\r\n\r\n{}" % (arg or "x").encode())
            await w.drain()
            return False
        if mode == "badchunk":             # a chunk size that is not hexadecimal
            w.write(SSE_HEAD + b"zz\r\n" + b"data: {}\r\n\r\n")
            await w.drain()
            return False
        if mode == "slowloris":
            data = (_response(200, embedding_body(len(body.get("input") or [1])))
                    if embedding else SSE_HEAD + b"".join(_chunk(e) for e in chat_events(n)))
            for b in data:
                w.write(bytes([b]))
                await w.drain()
                await asyncio.sleep(1.0)
            return True
        if embedding:
            inputs = len(body.get("input") or [1])
            w.write(_response(200, b'{"object": "list", "data": [{"embedding": [0.25,'
                              if mode == "badjson" else
                              embedding_body(inputs - (mode == "fewvectors"))))
            await w.drain()
            return True
        return await self._stream(w, mode, arg, n, chat=path.endswith(b"/chat/completions"))

    async def _stream(self, w: asyncio.StreamWriter, mode: str, arg: str, n: int,
                      chat: bool) -> bool:
        w.write(SSE_HEAD)
        events = chat_events(n, big=mode == "bigchunk", chat=chat, usage=mode != "nousage")
        if mode == "cut":
            for e in events[:1 + int(arg)]:
                w.write(_chunk(e))
            await w.drain()
            await asyncio.sleep(0.01)
            return False
        if mode == "nodata":
            events = [e[len(b"data: "):] for e in events]
        elif mode == "badjson":
            events[2] = b'data: {"choices":[{"delta":{"content":"w1 "\n\n'
        elif mode == "neverend":
            i = 0
            while True:                       # until the client gives up and closes
                w.write(_chunk(_event(f"w{i} ", chat=chat)))
                await w.drain()
                i += 1
                await asyncio.sleep(0.05)
        if mode == "split":
            # Every event crosses TCP reads: 7-byte writes, each flushed and paused.
            raw = b"".join(_chunk(e) for e in events) + b"0\r\n\r\n"
            for i in range(0, len(raw), 7):
                w.write(raw[i:i + 7])
                await w.drain()
                await asyncio.sleep(0.001)
            return True
        for e in events:
            w.write(_chunk(e))
        w.write(b"0\r\n\r\n")
        await w.drain()
        return True

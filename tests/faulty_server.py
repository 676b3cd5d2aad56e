"""A raw-socket OpenAI-like server that misbehaves on purpose, for the reliability tests.

It speaks HTTP/1.1 by hand on ``asyncio`` streams (no web framework between the test and the
bytes), so it can do what a well-behaved server library never would: stall before the
headers, cut a stream after k chunks, send SSE without ``data:``, split one event across many
TCP segments, send a 1 MB event, never finish, send gzip garbage, dribble a byte per second,
accept and never read, or stop listening mid-run.

Behaviour is chosen per request by the model name, so one replay can mix healthy and faulty
requests and the test knows which row should fail how: a request for model ``ok`` (any name
without a ``:``) gets a correct answer, ``delay:<s>`` the same after ``s`` seconds;
``<mode>[:<arg>]`` gets that fault (see ``MODES``).
Two faults are per server instead, set with the constructor's ``server_mode``:
``accept-never-read`` (connections are accepted and never read) and ``refuse-after:<n>``
(after ``n`` requests the listener closes and every connection is dropped, so later requests
are refused). Runs on its own event loop in a daemon thread; ``stop()`` closes everything.
"""
from __future__ import annotations

import asyncio
import json
import os
import socket
import threading

TOKENS = 4
MODES = ("ok", "delay", "status", "stall", "cut", "nodata", "badjson", "split", "bigchunk",
         "neverend", "gzip", "slowloris", "badlength", "badchunk")


def _event(content: str | None = None, usage: dict | None = None) -> bytes:
    choices = [] if content is None else [{"index": 0, "delta": {"content": content}}]
    return b"data: " + json.dumps({"object": "chat.completion.chunk", "choices": choices,
                                   "usage": usage}).encode() + b"\n\n"


def _chunk(payload: bytes) -> bytes:
    return b"%x\r\n%s\r\n" % (len(payload), payload)


def chat_events(n: int, *, big: bool = False) -> list[bytes]:
    """A correct stream: role event, ``n`` content events, usage, ``[DONE]``."""
    out = [b'data: {"choices":[{"index":0,"delta":{"role":"assistant","content":""}}]}\n\n']
    for i in range(n):
        out.append(_event(("w" * (1 << 20)) if big and i == 0 else f"w{i} "))
    out.append(_event(None, {"prompt_tokens": 5, "completion_tokens": n, "total_tokens": n + 5}))
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
    reason = {200: b"OK", 429: b"Too Many Requests", 500: b"Internal Server Error",
              503: b"Service Unavailable"}.get(status, b"Error")
    return (b"HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %d\r\n%s\r\n%s"
            % (status, reason, ctype, len(body), extra, body))


class FaultyServer:
    """Start with ``FaultyServer().start()``; ``url``, ``requests`` (count seen), ``heads``
    (the first request heads, raw), ``stop()``."""

    def __init__(self, server_mode: str | None = None) -> None:
        self.server_mode = server_mode
        self.requests = 0
        self.heads: list[bytes] = []              # request heads seen (the first 64)
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

    def __enter__(self) -> "FaultyServer":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- plumbing ----------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._server = self._loop.run_until_complete(
            asyncio.start_server(self._serve, "127.0.0.1", 0, backlog=4096))
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
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
                self.requests += replayed
                if len(self.heads) < 64 and replayed:
                    self.heads.append(head)
                if replayed and self.server_mode and \
                        self.server_mode.startswith("refuse-after:") and \
                        self.requests > int(self.server_mode.split(":")[1]):
                    await self._close()
                    return
                path = head.split(b" ", 2)[1]
                if not await self._answer(writer, path, body):
                    return
        except (ConnectionError, asyncio.CancelledError):
            return
        finally:
            self._writers.discard(writer)
            self._tasks.discard(asyncio.current_task())
            writer.transport.abort()

    # -- behaviours ----------------------------------------------------------------------
    async def _answer(self, w: asyncio.StreamWriter, path: bytes, body: dict) -> bool:
        """Write one response; False closes the connection."""
        mode, _, arg = str(body.get("model", "ok")).partition(":")
        if mode not in MODES:
            mode = "ok"
        embedding = path.endswith(b"/embeddings")
        n = int(body.get("max_tokens") or TOKENS)
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
            w.write(_response(200, embedding_body(len(body.get("input") or [1]))))
            await w.drain()
            return True
        return await self._stream(w, mode, arg, n)

    async def _stream(self, w: asyncio.StreamWriter, mode: str, arg: str, n: int) -> bool:
        w.write(SSE_HEAD)
        events = chat_events(n, big=mode == "bigchunk")
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
                w.write(_chunk(_event(f"w{i} ")))
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


# -- helpers the reliability tests share ----------------------------------------------------

def write_trace_for(path, models: list[str], n: int, gap_ms: float, *, embed_every: int = 4,
                    output_tokens: int = TOKENS, llm_model: str | None = None,
                    embed_model: str | None = None, prompt: str | None = None):
    """A trace of ``n`` requests ``gap_ms`` apart; row ``i`` asks for ``models[i % len]``
    (or the fixed ``llm_model``/``embed_model``); every ``embed_every``-th row is an
    embedding with 2 inputs (0: none), the rest chat; ``prompt`` is every row's literal prompt
    (None: built from the corpus)."""
    import numpy as np
    import pyarrow as pa

    from cpbench.trace import write_trace

    kinds = ["embedding" if embed_every and i % embed_every == 0 else "chat" for i in range(n)]
    names = []
    for i, k in enumerate(kinds):
        fixed = embed_model if k == "embedding" else llm_model
        names.append(fixed or models[i % len(models)])
    table = pa.table({
        "arrival_ns": pa.array((np.arange(n) * gap_ms * 1e6).astype(np.int64)),
        "kind": pa.array(kinds), "model": pa.array(names),
        "input_tokens": pa.array([8] * n, pa.int32()),
        "output_tokens": pa.array([None if k == "embedding" else output_tokens for k in kinds],
                                  pa.int32()),
        "batch_size": pa.array([2 if k == "embedding" else 1 for k in kinds], pa.int16()),
        "priority": pa.array([("HIGH", "NORMAL", "LOW")[i % 3] for i in range(n)]),
        "prompt": pa.array([prompt] * n, pa.string()),
    })
    write_trace(table, path, metadata={"generator": "tests.faulty_server", "seed": 0})
    return path


def run_cli(*argv: str, timeout_s: float = 120, env: dict | None = None, cwd=None):
    """``python -m cpbench ARGV`` as a child process; returns the CompletedProcess."""
    import subprocess
    import sys

    return subprocess.run([sys.executable, "-m", "cpbench", *argv], capture_output=True,
                          text=True, timeout=timeout_s, env=env, cwd=cwd)


def load_run(out) -> tuple:
    """``(results table, summary dict)`` of a results directory."""
    from pathlib import Path

    import pyarrow as pa

    out = Path(out)
    with pa.memory_map(str(out / "results.arrow")) as source:
        table = pa.ipc.open_file(source).read_all()
    summary = json.loads((out / "summary.json").read_text())
    return table, summary


def check_accounting(table, summary: dict, n_expected: int | None = None) -> dict:
    """Every request in ``results.arrow`` exactly once, and the summary agreeing with it.

    Returns ``{error_class: count}`` (None for successes) from the results file.
    """
    from collections import Counter

    rows = table.column("row").to_pylist()
    assert len(rows) == len(set(rows)), "a request appears twice in results.arrow"
    if n_expected is not None:
        assert sorted(rows) == list(range(n_expected)), "requests missing from results.arrow"
    classes = Counter(table.column("error_class").to_pylist())
    req = summary["requests"]
    assert req["sent"] == table.num_rows
    errors = table.num_rows - classes.get(None, 0)
    assert req["errors"] == errors
    assert req["completed"] == classes.get(None, 0)
    by_class = {k: v for k, v in (req.get("by_error_class") or {}).items() if v}
    assert by_class == {k: v for k, v in classes.items() if k is not None}
    return dict(classes)


def check_report_shows(out, classes: dict) -> None:
    """The report lists each error class with its count: report.html and report.md when the
    run wrote them, else the Markdown report rendered here from the results directory."""
    from pathlib import Path

    out = Path(out)
    texts = []
    if (out / "report.html").exists():
        texts = [(out / "report.html").read_text(), (out / "report.md").read_text()]
    else:
        from cpbench.reporting.load import load_run as load_report_run
        from cpbench.reporting.markdown import render_markdown
        texts = [render_markdown([load_report_run(out)])]
    for text in texts:
        for cls, n in classes.items():
            if cls is not None:
                md = cls.replace("_", "\\_")
                assert f"{cls}: {n:,}" in text or f"{md}: {n:,}" in text, (cls, n)

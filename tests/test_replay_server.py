"""Test support (no tests here): a small aiohttp OpenAI-like server for the replay tests.

Controllable TTFT, token pacing, stalls and error codes; started on 127.0.0.1 port 0 in its own
thread (``ServerThread``). Behaviour is chosen per request by the model name, so one server covers every
case: ``ok`` (default), ``stall:<ms>`` (wait before the first byte), ``slow:<ms>`` (per-token
delay), ``http:<code>`` (that status), ``break`` (close mid-stream), ``garble`` (malformed
SSE / a missing vector), ``nousage`` (no usage chunk, only [DONE]), ``dropreused`` (a request
that arrives on a kept-alive connection gets the connection closed under it, unanswered, as a
server's idle timeout would; the first request of a connection is answered).
"""
from __future__ import annotations

import asyncio
import json
import threading

from aiohttp import web

TOKENS = 8
SEEN = web.AppKey("seen", list)
CONNECTIONS = web.AppKey("connections", set)


def _chunk(content: str | None, usage: dict | None = None, chat: bool = True) -> bytes:
    piece = {"delta": {"content": content}} if chat else {"text": content}
    choices = [] if content is None else [{"index": 0, **piece}]
    body = {"object": "chat.completion.chunk", "choices": choices, "usage": usage}
    return b"data: " + json.dumps(body).encode() + b"\n\n"


async def chat(request: web.Request) -> web.StreamResponse:
    body = await request.json()
    request.app[SEEN].append({"headers": dict(request.headers), "body": body})
    model = body.get("model", "ok")
    mode, _, arg = model.partition(":")
    if mode == "http":
        return web.json_response({"error": {"message": "injected"}}, status=int(arg))
    if mode == "stall":
        await asyncio.sleep(int(arg) / 1000)
    if mode == "dropreused":
        seen = request.app[CONNECTIONS]
        if id(request.transport) in seen:
            request.transport.close()
            return web.Response()               # never sent: the connection is gone
        seen.add(id(request.transport))
    n = int(body.get("max_tokens") or TOKENS)
    is_chat = request.path.endswith("/chat/completions")
    resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
    await resp.prepare(request)
    if is_chat:
        await resp.write(b'data: {"choices":[{"index":0,"delta":{"role":"assistant",'
                         b'"content":""}}]}\n\n')
    for i in range(n):
        if mode == "slow":
            await asyncio.sleep(int(arg) / 1000)
        if mode == "break" and i == n // 2:
            request.transport.close()
            return resp
        if mode == "garble" and i == 1:
            await resp.write(b"data: {not json\n\n")
            continue
        await resp.write(_chunk(f"w{i} ", chat=is_chat))
    if mode != "nousage":
        await resp.write(_chunk(None, {"prompt_tokens": 5, "completion_tokens": n,
                                       "total_tokens": n + 5}))
    await resp.write(b"data: [DONE]\n\n")
    await resp.write_eof()
    return resp


async def embeddings(request: web.Request) -> web.Response:
    body = await request.json()
    request.app[SEEN].append({"headers": dict(request.headers), "body": body})
    mode, _, arg = body.get("model", "ok").partition(":")
    if mode == "http":
        return web.json_response({"error": {"message": "injected"}}, status=int(arg))
    if mode == "stall":
        await asyncio.sleep(int(arg) / 1000)
    inputs = body["input"] if isinstance(body["input"], list) else [body["input"]]
    data = [{"object": "embedding", "index": i, "embedding": [0.5] * 8} for i in range(len(inputs))]
    if mode == "garble":
        data = data[:-1]
    return web.json_response({"object": "list", "data": data, "model": "x",
                              "usage": {"prompt_tokens": 7, "total_tokens": 7}})


async def health(request: web.Request) -> web.Response:
    return web.json_response({"status": "ok"})


class ServerThread:
    """Runs the app on its own loop in a daemon thread; ``url`` once started."""

    def __init__(self) -> None:
        self.seen: list[dict] = []
        self._ready = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self.url = ""

    def _run(self) -> None:
        self.loop = asyncio.new_event_loop()
        app = web.Application()
        app[SEEN] = self.seen
        app[CONNECTIONS] = set()
        app.router.add_post("/v1/chat/completions", chat)
        app.router.add_post("/v1/completions", chat)
        app.router.add_post("/v1/embeddings", embeddings)
        app.router.add_get("/health", health)
        self.runner = web.AppRunner(app)
        self.loop.run_until_complete(self.runner.setup())
        site = web.TCPSite(self.runner, "127.0.0.1", 0)
        self.loop.run_until_complete(site.start())
        port = site._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        self._ready.set()
        self.loop.run_forever()

    def start(self) -> "ServerThread":
        self._thread.start()
        self._ready.wait(10)
        return self

    def stop(self) -> None:
        async def _stop() -> None:
            await self.runner.cleanup()
        asyncio.run_coroutine_threadsafe(_stop(), self.loop).result(10)
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(10)


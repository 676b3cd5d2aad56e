"""The embedded control plane's HTTP server: OpenAI endpoints, admin, health and metrics.

``build_app(config)`` returns an ``aiohttp.web.Application``; ``running_sim`` (async) and
``SimThread`` (a background thread, for synchronous callers such as the ``openai`` SDK) run it
on 127.0.0.1, port 0 by default, and hand back the URL; ``serve`` is the CLI's entry point.
Handlers validate, apply injected faults, build a ``SimRequest`` and hand it to the
scheduler; the engines write the tokens; the handler ends the response once the request is done.
"""
from __future__ import annotations

import asyncio
import base64
import contextlib
import functools
import json
import logging
import os
import signal
import struct
import threading
import time
from typing import Any, AsyncIterator, Callable

from aiohttp import web

from cpbench.atomic import atomic_write
from cpbench.errors import ConfigError
from cpbench.sim.config import POLICY_NAMES, SimConfig
from cpbench.sim.faults import FaultInjector
from cpbench.sim.metrics import CONTENT_TYPE, SimMetrics, llm_waiting
from cpbench.sim.parse import ApiError, parse_chat, parse_completion, parse_embeddings, parse_hints
from cpbench.sim.prefix_cache import block_hashes
from cpbench.sim.scheduler import Scheduler
from cpbench.sim.wire import SimRequest
from cpbench.vocab import POLICY_PATH

_monotonic_ns = time.monotonic_ns
_log = logging.getLogger("cpbench.sim")


class _SseResponse(web.StreamResponse):
    """A stream whose headers wait for the first body bytes (aiohttp sends a StreamResponse's
    headers at ``prepare`` otherwise): headers and first token then leave in one write, as
    the first byte a client sees. Older aiohttp ignores the flag and sends them at prepare."""

    _send_headers_immediately = False


class _State:
    """Per-app state: the scheduler, faults, metrics and request counter."""

    def __init__(self, config: SimConfig) -> None:
        self.config = config.validate()
        self.scheduler = Scheduler(config)
        self.faults = FaultInjector(config.faults, config.seed)
        self.metrics = SimMetrics(self.scheduler, self.faults)
        self.seq = 0
        self.deadline_ns = {k: int(v * 1e6) for k, v in config.deadline_ms.items()}
        self.ttft_deadline_ns = {k: int(v * 1e6) for k, v in config.ttft_deadline_ms.items()}


STATE: web.AppKey[_State] = web.AppKey("cpbench_sim_state", _State)


def _error(status: int, message: str, **kw: Any) -> web.Response:
    return _json_response(ApiError(status, message, **kw).body(), status)


def _json_response(body: dict[str, Any], status: int = 200,
                   headers: dict[str, str] | None = None) -> web.Response:
    return web.Response(body=json.dumps(body, separators=(",", ":")).encode(), status=status,
                        content_type="application/json", headers=headers)


@web.middleware
async def _errors_as_json(request: web.Request, handler: Callable[..., Any]) -> web.StreamResponse:
    """Every error leaves as OpenAI-style JSON: routing errors (404, 405), bad bodies, bugs."""
    try:
        return await handler(request)
    except ApiError as exc:
        return _json_response(exc.body(), exc.status)
    except web.HTTPException as exc:
        if exc.status < 400:
            raise
        return _error(exc.status, f"{request.method} {request.path}: {exc.reason}",
                      err_type="invalid_request_error" if exc.status < 500 else "server_error")
    except (ConnectionError, asyncio.CancelledError):
        raise
    except Exception as exc:  # a bug: answer 500 as JSON, keep serving, say what broke
        _log.exception("sim handler failed")
        return _error(500, f"internal error: {type(exc).__name__}: {exc}", err_type="server_error")


async def _read_json(request: web.Request) -> Any:
    try:
        raw = await request.read()
    except web.HTTPRequestEntityTooLarge as exc:
        raise ApiError(413, f"request body is too large ({exc.actual_size} bytes)") from exc
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as exc:
        raise ApiError(400, f"request body is not valid JSON: {exc}") from exc


def _fault_response(state: _State, kind: str, policy: str) -> web.Response | None:
    status = state.faults.error_status()
    if status is None:
        return None
    state.metrics.rejected(kind, policy, status)
    headers = {"Retry-After": "1"} if status == 429 else None
    kinds = {429: "rate_limit_error"}
    return _json_response(ApiError(status, f"injected fault: HTTP {status}",
                                   err_type=kinds.get(status, "server_error")).body(),
                          status, headers)


def _new_request(state: _State, request: web.Request, *, kind: str, model: str,
                 prompt_tokens: int, max_tokens: int, n_inputs: int, stream: bool,
                 include_usage: bool, body_priority: int | None, received_ns: int) -> SimRequest:
    rank, deadline_ms = parse_hints(request.headers, body_priority)
    deadline_ns = int(deadline_ms * 1e6) if deadline_ms is not None else state.deadline_ns[kind]
    state.seq += 1
    prefix = {"chat": "chatcmpl", "completion": "cmpl", "embedding": "embd"}[kind]
    return SimRequest(seq=state.seq, rid=f"{prefix}-{state.seq}", kind=kind, model=model,
                      policy=state.scheduler.policy.name, rank=rank, received_ns=received_ns,
                      deadline_ns=received_ns + deadline_ns,
                      ttft_deadline_ns=received_ns + min(state.ttft_deadline_ns[kind], deadline_ns),
                      prompt_tokens=prompt_tokens,
                      max_tokens=max_tokens, n_inputs=n_inputs, stream=stream,
                      include_usage=include_usage, report_timing=state.config.report_timing)


async def _llm(request: web.Request, kind: str) -> web.StreamResponse:
    received_ns = _monotonic_ns()
    state = request.app[STATE]
    sched = state.scheduler
    body = await _read_json(request)
    call = parse_chat(body) if kind == "chat" else parse_completion(body)
    model = sched.resolve_model(call.model, "llm")
    if model is None:
        raise ApiError(404, f"model {call.model!r} is not served here; GET /v1/models lists "
                       "the models", param="model", code="model_not_found")
    max_tokens = call.max_tokens or state.config.default_max_tokens
    req = _new_request(state, request, kind=kind, model=model, prompt_tokens=call.prompt_tokens,
                       max_tokens=max_tokens, n_inputs=1, stream=call.stream,
                       include_usage=call.include_usage, body_priority=call.body_priority,
                       received_ns=received_ns)
    cfg = sched.engines[model][0].cfg
    if cfg.prefix_cache:
        req.prefix_hashes = block_hashes(call.words, cfg.prefix_block_tokens)
    if not sched.engines[model][0].fits_ever(req):
        raise ApiError(400, f"prompt ({call.prompt_tokens} tokens) plus max_tokens "
                       f"({max_tokens}) exceeds this model's limit of "
                       f"{min(cfg.max_model_len, cfg.kv_cache_tokens)} tokens",
                       param="max_tokens", code="context_length_exceeded")
    if state.faults.enabled:
        if (fault := _fault_response(state, kind, req.policy)) is not None:
            return fault
        if stall_s := state.faults.stall_s():
            await asyncio.sleep(stall_s)
        state.faults.mark(req, call.stream)
    headers = {"X-Request-ID": request.headers.get("X-Request-ID", req.rid)}
    req.client = request.transport
    if not call.stream:
        sched.submit(req)
        await req.done
        state.metrics.finished(req)
        if req.aborted:   # shut down, or the client left: nobody may be reading this
            return _error(503, "the request was aborted before it finished",
                          err_type="server_error")
        return _json_response(req.completion_body(), headers=headers)
    resp = _SseResponse(headers={"Content-Type": "text/event-stream",
                                       "Cache-Control": "no-cache", **headers})
    resp.enable_chunked_encoding()
    writer = await resp.prepare(request)
    if request.transport is None:
        return resp   # the client left before we could answer
    req.attach_stream(request.transport, writer)
    sched.submit(req)
    await req.done
    state.metrics.finished(req)
    with contextlib.suppress(ConnectionError, RuntimeError):
        await resp.write_eof()
    return resp


async def chat_completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/chat/completions``."""
    return await _llm(request, "chat")


async def completions(request: web.Request) -> web.StreamResponse:
    """``POST /v1/completions``."""
    return await _llm(request, "completion")


@functools.lru_cache(maxsize=64)
def _vector(dimensions: int, fmt: str) -> bytes:
    """A fixed unit vector (embeddings carry no meaning here), JSON-encoded once per shape."""
    value = 1.0 / dimensions ** 0.5
    if fmt == "base64":
        return b'"' + base64.b64encode(struct.pack(f"<{dimensions}f", *[value] * dimensions)) + b'"'
    return json.dumps([value] * dimensions).encode()


async def embeddings(request: web.Request) -> web.StreamResponse:
    """``POST /v1/embeddings``: input is a string, a list of strings, or token-id lists."""
    received_ns = _monotonic_ns()
    state = request.app[STATE]
    sched = state.scheduler
    body = await _read_json(request)
    pre = body.get("model") if isinstance(body, dict) else None
    model = sched.resolve_model(pre, "embedding") if isinstance(pre, str) else None
    cfg = sched.engines[model][0].cfg if model else None
    call = parse_embeddings(body, cfg.max_input_tokens if cfg else None)
    if model is None or cfg is None:
        raise ApiError(404, f"embedding model {call.model!r} is not served here; GET /v1/models "
                       "lists the models", param="model", code="model_not_found")
    req = _new_request(state, request, kind="embedding", model=model,
                       prompt_tokens=sum(call.input_tokens), max_tokens=0,
                       n_inputs=len(call.input_tokens), stream=False, include_usage=False,
                       body_priority=call.body_priority, received_ns=received_ns)
    if state.faults.enabled:
        if (fault := _fault_response(state, "embedding", req.policy)) is not None:
            return fault
        if stall_s := state.faults.stall_s():
            await asyncio.sleep(stall_s)
    req.client = request.transport
    sched.submit(req)
    await req.done
    state.metrics.finished(req)
    if req.aborted:
        return _error(503, "the sim shut down before this request finished", err_type="server_error")
    vector = _vector(min(call.dimensions or cfg.dimensions, cfg.dimensions), call.encoding_format)
    items = b",".join(b'{"object":"embedding","index":%d,"embedding":%b}' % (i, vector)
                      for i in range(len(call.input_tokens)))
    extra = {"model": model, "usage": req.usage()}
    req.first_token_ns = _monotonic_ns()
    if req.report_timing:
        extra["cpbench_server_timing"] = req.timing()
    tail = json.dumps(extra, separators=(",", ":")).encode()[1:]
    headers = {"X-Request-ID": request.headers.get("X-Request-ID", req.rid)}
    return web.Response(body=b'{"object":"list","data":[' + items + b"]," + tail,
                        content_type="application/json", headers=headers)


async def models(request: web.Request) -> web.Response:
    """``GET /v1/models``."""
    data = [{"id": name, "object": "model", "created": 0, "owned_by": "cpbench-sim",
             "cpbench_engine": kind} for name, kind in request.app[STATE].scheduler.models()]
    return _json_response({"object": "list", "data": data})


async def health(request: web.Request) -> web.Response:
    """``GET /health``."""
    return _json_response({"status": "ok"})


async def metrics(request: web.Request) -> web.Response:
    """``GET /metrics``: Prometheus text."""
    body = request.app[STATE].metrics.render()
    return web.Response(body=body, headers={"Content-Type": CONTENT_TYPE})


async def get_load(request: web.Request) -> web.Response:
    """``GET /get_load``: SGLang's load report, one object per LLM engine (SGLang: per DP rank;
    python/sglang/srt/managers/io_struct.py ``GetLoadReqOutput``). ``num_reqs`` counts running
    and waiting requests, ``num_tokens`` the KV cache reserved on the engine."""
    sched = request.app[STATE].scheduler
    out = []
    for engine in sched.all_engines():
        if engine.engine_kind == "llm":
            waiting = llm_waiting(sched, engine.cfg.model) if engine.index == 0 else 0
            out.append({"dp_rank": engine.index, "num_reqs": engine.load() + waiting,
                        "num_waiting_reqs": waiting, "num_tokens": engine.kv_used_tokens})
    return web.Response(body=json.dumps(out, separators=(",", ":")).encode(),
                        content_type="application/json")


async def policy_get(request: web.Request) -> web.Response:
    """``GET /admin/policy``: the active policy and the choices."""
    name = request.app[STATE].scheduler.policy.name
    return _json_response({"policy": name, "available": list(POLICY_NAMES)})


async def policy_set(request: web.Request) -> web.Response:
    """``POST /admin/policy {"policy": NAME}``: switch policy; waiting requests move over."""
    body = await _read_json(request)
    name = body.get("policy") if isinstance(body, dict) else None
    if name not in POLICY_NAMES:
        raise ApiError(400, f"policy must be one of {', '.join(POLICY_NAMES)}; got {name!r}",
                       param="policy")
    sched = request.app[STATE].scheduler
    previous = sched.policy.name
    sched.set_policy(name)
    return _json_response({"policy": name, "previous": previous, "available": list(POLICY_NAMES)})


async def stats(request: web.Request) -> web.Response:
    """``GET /admin/stats``: the scheduler's counts (``Scheduler.stats``) as JSON."""
    return _json_response(request.app[STATE].scheduler.stats())


def build_app(config: SimConfig | None = None) -> web.Application:
    """The sim as an aiohttp application; engines start and stop with the app."""
    app = web.Application(middlewares=[_errors_as_json], client_max_size=64 * 1024 * 1024)
    state = _State(config or SimConfig())
    app[STATE] = state

    async def _start(app: web.Application) -> None:
        state.scheduler.start()

    async def _stop(app: web.Application) -> None:
        await state.scheduler.stop()

    app.on_startup.append(_start)
    app.on_cleanup.append(_stop)
    app.router.add_post("/v1/chat/completions", chat_completions)
    app.router.add_post("/v1/completions", completions)
    app.router.add_post("/v1/embeddings", embeddings)
    app.router.add_get("/v1/models", models)
    app.router.add_get("/health", health)
    app.router.add_get("/metrics", metrics)
    app.router.add_get("/get_load", get_load)
    app.router.add_get(POLICY_PATH, policy_get)
    app.router.add_post(POLICY_PATH, policy_set)
    app.router.add_get("/admin/stats", stats)
    return app


class SimServer:
    """A running sim: its ``url``, ``app`` and ``port``."""

    def __init__(self, app: web.Application, runner: web.AppRunner, host: str, port: int) -> None:
        self.app, self.runner, self.host, self.port = app, runner, host, port
        self.url = f"http://{host}:{port}"

    @property
    def scheduler(self) -> Scheduler:
        """The live scheduler (engines, policy), for tests and inspection."""
        return self.app[STATE].scheduler


async def start_sim(config: SimConfig | None = None, host: str = "127.0.0.1",
                    port: int = 0) -> SimServer:
    """Start the sim on the running loop; ``port=0`` binds a free port. Stop with ``stop_sim``."""
    app = build_app(config)
    runner = web.AppRunner(app, access_log=None, handle_signals=False, shutdown_timeout=5.0)
    await runner.setup()
    site = web.TCPSite(runner, host, port, backlog=1024)
    try:
        await site.start()
    except OSError as exc:
        await runner.cleanup()
        raise ConfigError(f"cannot listen on {host}:{port}: {exc.strerror}; "
                          "pick another --port (0 picks a free one)") from exc
    bound = site._server.sockets[0].getsockname()[1]  # type: ignore[union-attr]
    return SimServer(app, runner, host, bound)


async def stop_sim(server: SimServer) -> None:
    """Stop a sim started with ``start_sim``; waiting and running requests are aborted."""
    # Engines first: their requests end at once, so no handler holds the shutdown open.
    await server.scheduler.stop()
    await server.runner.cleanup()


@contextlib.asynccontextmanager
async def running_sim(config: SimConfig | None = None, host: str = "127.0.0.1",
                      port: int = 0) -> AsyncIterator[SimServer]:
    """``async with running_sim(cfg) as sim: ... sim.url ...`` on the running loop."""
    server = await start_sim(config, host, port)
    try:
        yield server
    finally:
        await stop_sim(server)


class SimThread:
    """The sim in a background thread with its own event loop, for synchronous callers.

    ``with SimThread(cfg) as sim: OpenAI(base_url=sim.url + "/v1")...``
    """

    def __init__(self, config: SimConfig | None = None, host: str = "127.0.0.1",
                 port: int = 0) -> None:
        self.config, self.host, self.port = config, host, port
        self.url = ""
        self.server: SimServer | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def __enter__(self) -> SimThread:
        self._thread = threading.Thread(target=self._main, name="cpbench-sim", daemon=True)
        self._thread.start()
        self._ready.wait(30)
        if self._error is not None:
            raise self._error
        return self

    def _main(self) -> None:
        loop = asyncio.new_event_loop()
        self._loop = loop
        try:
            self.server = loop.run_until_complete(start_sim(self.config, self.host, self.port))
            self.url = self.server.url
        except BaseException as exc:  # handed to the caller's thread by __enter__
            self._error = exc
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        loop.run_forever()
        loop.run_until_complete(stop_sim(self.server))
        loop.close()

    def __exit__(self, *exc: object) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(30)


def write_ready_file(path: str, payload: dict[str, Any]) -> None:
    """Write ``payload`` as JSON to ``path`` atomically (a reader never sees half of it)."""
    try:
        atomic_write(path, json.dumps(payload), fsync=False)
    except OSError as exc:
        raise ConfigError(f"cannot write the ready file {path!r}: {exc.strerror}; "
                          "pass a writable --ready-file path") from exc


async def serve(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
                ready_file: str | None = None) -> None:
    """Run the sim until SIGINT or SIGTERM; announce the URL on stdout and in ``ready_file``."""
    server = await start_sim(config, host, port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    try:
        if ready_file:
            write_ready_file(ready_file, {"url": server.url, "pid": os.getpid()})
        print(server.url, flush=True)
        await stop.wait()
    finally:
        await stop_sim(server)


def run(config: SimConfig, host: str = "127.0.0.1", port: int = 0,
        ready_file: str | None = None) -> int:
    """The CLI entry point: start uvloop (here, never at import) and serve; returns 0."""
    import gc

    import uvloop

    gc.freeze()   # the long-lived start-up objects need no more collection passes
    uvloop.run(serve(config, host, port, ready_file))
    return 0

"""The recording proxy, end to end: a real aiohttp client sends a known schedule through
``cpbench record capture`` (a subprocess) to a loopback aiohttp server; the trace written on
SIGINT/SIGTERM must match what was sent, and never contain the API key."""
from __future__ import annotations

import asyncio
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request

import aiohttp
import pyarrow as pa
import pytest
from aiohttp import web

from cpbench.prompts import build_prompt
from cpbench.record.capture import Recorder, describe_request, public_url
from cpbench.trace import read_trace, validate_table

pytestmark = pytest.mark.integration

KEY = "sk-planted-4f7c2e9a1b3d5c7e-DO-NOT-WRITE"
# (gap before this request in ms, kind, input tokens, max_tokens, batch, priority header)
SCHEDULE = [
    (0, "chat", 12, 5, 1, "HIGH"), (35, "embedding", 7, None, 3, None),
    (20, "completion", 30, 4, 1, "LOW"), (60, "chat", 3, 8, 1, None),
    (15, "embedding", 40, None, 1, "HIGH"), (45, "chat", 100, 2, 1, "NORMAL"),
    (25, "completion", 9, 6, 1, None), (80, "embedding", 5, None, 16, "LOW"),
    (10, "chat", 64, 3, 1, "HIGH"), (50, "chat", 1, 1, 1, None),
    (30, "embedding", 20, None, 2, None), (40, "completion", 17, 9, 1, "HIGH"),
    (20, "chat", 8, 4, 1, "LOW"), (70, "embedding", 11, None, 5, None),
    (15, "chat", 22, 7, 1, None), (35, "completion", 2, 2, 1, "NORMAL"),
]


# The upstream's tokenizer: two tokens per word, so a row that took the response's usage
# differs from one that counted the body's words.
TOKENS_PER_WORD = 2


def _usage_prompt_tokens(body: dict) -> int:
    if "messages" in body:
        texts = [m["content"] for m in body["messages"]]
    elif "prompt" in body:
        texts = [body["prompt"]]
    else:
        texts = body["input"] if isinstance(body["input"], list) else [body["input"]]
    return TOKENS_PER_WORD * sum(len(str(t).split()) for t in texts)


def _sse_body(n_tokens: int, prompt_tokens: int) -> bytes:
    chunks = [b'data: {"choices":[{"delta":{"content":"tok "}}]}\n\n'] * n_tokens
    usage = b'data: {"choices":[],"usage":{"prompt_tokens":%d,"completion_tokens":%d}}\n\n' \
        % (prompt_tokens, n_tokens)
    return b"".join(chunks) + usage + b"data: [DONE]\n\n"


class UpstreamApp:
    """A loopback OpenAI-ish server. It runs in its own process (``python THIS_FILE --serve
    READY``) so that it never holds the client's GIL between a send and its timestamp."""

    def __init__(self) -> None:
        self.seen_auth: list[str] = []

    async def _chat(self, request: web.Request) -> web.StreamResponse:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        body = await request.json()
        if request.headers.get("X-Test-Stall-Ms"):
            await asyncio.sleep(float(request.headers["X-Test-Stall-Ms"]) / 1000)
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await resp.prepare(request)
        data = _sse_body(body["max_tokens"], _usage_prompt_tokens(body))
        for i in range(0, len(data), 40):   # several writes, as a real server streams
            await resp.write(data[i:i + 40])
            await asyncio.sleep(0.002)
        return resp

    async def _json(self, request: web.Request) -> web.Response:
        self.seen_auth.append(request.headers.get("Authorization", ""))
        body = await request.json()
        inputs = body.get("input", [])
        count = len(inputs) if isinstance(inputs, list) else 1
        data = [{"object": "embedding", "index": i, "embedding": [0.5, 0.25]}
                for i in range(count)] if "input" in body else []
        return web.json_response({"object": "list", "data": data, "model": body["model"],
                                  "usage": {"prompt_tokens": _usage_prompt_tokens(body),
                                            "completion_tokens": 2}})

    async def _models(self, request: web.Request) -> web.Response:
        return web.json_response({"data": [{"id": "m"}]})

    async def _seen(self, request: web.Request) -> web.Response:
        seen = list(self.seen_auth)
        if request.method == "DELETE":
            self.seen_auth.clear()
        return web.json_response(seen)

    def serve(self, ready_file: str) -> None:
        app = web.Application()
        app.router.add_post("/v1/chat/completions", self._chat)
        app.router.add_post("/v1/completions", self._json)
        app.router.add_post("/v1/embeddings", self._json)
        app.router.add_get("/v1/models", self._models)
        app.router.add_route("*", "/_seen", self._seen)

        async def main() -> None:
            runner = web.AppRunner(app)
            await runner.setup()
            site = web.TCPSite(runner, "127.0.0.1", 0)
            await site.start()
            port = site._server.sockets[0].getsockname()[1]
            with open(ready_file + ".tmp", "w") as fh:
                fh.write(f"http://127.0.0.1:{port}")
            os.replace(ready_file + ".tmp", ready_file)
            await asyncio.Event().wait()

        asyncio.run(main())


class Upstream:
    """Handle on the upstream process: its URL and the Authorization headers it saw."""

    def __init__(self, tmp_path) -> None:
        ready = str(tmp_path / "upstream.ready")
        self.proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), "--serve",
                                      ready])
        deadline = time.monotonic() + 20
        while not os.path.exists(ready):
            assert self.proc.poll() is None and time.monotonic() < deadline, "no upstream"
            time.sleep(0.05)
        with open(ready) as fh:
            self.url = fh.read()

    def seen_auth(self, *, clear: bool = False) -> list[str]:
        request = urllib.request.Request(self.url + "/_seen",
                                         method="DELETE" if clear else "GET")
        with urllib.request.urlopen(request, timeout=10) as resp:
            return json.loads(resp.read())

    def close(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture
def upstream(tmp_path_factory):
    server = Upstream(tmp_path_factory.mktemp("upstream"))
    yield server
    server.close()


def _start_proxy(tmp_path, upstream_url: str) -> tuple[subprocess.Popen, str, str]:
    out = str(tmp_path / "captured.arrow")
    ready = str(tmp_path / "proxy.ready")
    proc = subprocess.Popen(
        [sys.executable, "-m", "cpbench", "record", "capture", "--listen", "127.0.0.1:0",
         "--upstream", upstream_url, "-o", out, "--ready-file", ready, "--drain-s", "5"],
        stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.monotonic() + 20
    while not os.path.exists(ready):
        if proc.poll() is not None or time.monotonic() > deadline:
            proc.kill()
            raise AssertionError(f"proxy did not start: {proc.communicate()}")
        time.sleep(0.05)
    with open(ready) as fh:
        return proc, json.load(fh)["url"], out


def _body(kind: str, n_in: int, max_tokens: int | None, batch: int, row: int) -> dict:
    text = build_prompt(n_in, row)
    if kind == "chat":
        return {"model": "llm-a", "messages": [{"role": "user", "content": text}],
                "max_tokens": max_tokens, "stream": True}
    if kind == "completion":
        return {"model": "llm-a", "prompt": text, "max_tokens": max_tokens}
    return {"model": "emb-b", "input": [text] * batch if batch > 1 else text}


async def _send_schedule(url: str) -> tuple[list[int], list[bytes]]:
    headers = {"Authorization": f"Bearer {KEY}", "api-key": KEY}
    sent_ns: list[int] = [0] * len(SCHEDULE)
    bodies: list[bytes] = [b""] * len(SCHEDULE)

    # Stamp the moment the request headers hit the socket, not when the coroutine started.
    async def on_headers_sent(session, ctx, params) -> None:
        if ctx.trace_request_ctx is not None:
            sent_ns[ctx.trace_request_ctx["i"]] = time.monotonic_ns()

    tracing = aiohttp.TraceConfig()
    tracing.on_request_headers_sent.append(on_headers_sent)
    async with aiohttp.ClientSession(headers=headers, trace_configs=[tracing]) as session:
        # Open keep-alive connections and warm both processes' POST paths first (GETs and
        # unknown paths are forwarded but never recorded).
        async def warm() -> None:
            async with session.get(url + "/v1/models") as resp:
                await resp.read()
            async with session.post(url + "/v1/warmup", data=b"{}") as resp:
                await resp.read()

        await asyncio.gather(*(warm() for _ in range(6)))
        payloads = [json.dumps(_body(k, n, m, b, i)).encode()
                    for i, (_, k, n, m, b, _) in enumerate(SCHEDULE)]

        async def one(i: int, at_ns: int) -> None:
            _, kind, _, _, _, prio = SCHEDULE[i]
            await asyncio.sleep(max(0.0, (at_ns - time.monotonic_ns()) / 1e9))
            extra = {"X-Request-Priority": prio} if prio else {}
            extra["Content-Type"] = "application/json"
            path = {"chat": "/v1/chat/completions", "completion": "/v1/completions",
                    "embedding": "/v1/embeddings"}[kind]
            async with session.post(url + path, data=payloads[i], headers=extra,
                                    trace_request_ctx={"i": i}) as resp:
                bodies[i] = await resp.read()

        start = time.monotonic_ns() + 50_000_000
        offsets, at = [], 0
        for gap_ms, *_ in SCHEDULE:
            at += gap_ms * 1_000_000
            offsets.append(start + at)
        await asyncio.gather(*(one(i, t) for i, t in enumerate(offsets)))
    return sent_ns, bodies


def _capture_once(tmp_path, upstream: Upstream, sig: int) -> list[int]:
    """Send SCHEDULE through a fresh proxy stopped by ``sig``; check everything but timing
    exactly; return each arrival's timing error in ns, sorted."""
    tmp_path.mkdir(parents=True, exist_ok=True)
    upstream.seen_auth(clear=True)
    proc, url, out = _start_proxy(tmp_path, upstream.url)
    try:
        sent_ns, bodies = asyncio.run(_send_schedule(url))
    finally:
        proc.send_signal(sig)
        stdout, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert f"{len(SCHEDULE)} requests".encode() in stderr
    # Responses were relayed unchanged (SSE bytes included) and the key reached the upstream.
    for (_, kind, n_in, max_tokens, _, _), body in zip(SCHEDULE, bodies):
        if kind == "chat":
            assert body == _sse_body(max_tokens, TOKENS_PER_WORD * n_in)
        else:
            assert json.loads(body)["usage"]["completion_tokens"] == 2
    assert upstream.seen_auth().count(f"Bearer {KEY}") == len(SCHEDULE)
    raw = open(out, "rb").read()
    assert KEY.encode() not in raw and b"planted" not in raw

    table = read_trace(out).to_pydict()
    assert len(table["arrival_ns"]) == len(SCHEDULE)
    assert sorted(range(len(SCHEDULE)), key=lambda i: sent_ns[i]) == list(range(len(SCHEDULE)))
    for i, (_, kind, n_in, max_tokens, batch, prio) in enumerate(SCHEDULE):
        assert table["kind"][i] == kind
        # The server's count (its usage, per text for embeddings) wins over the word count.
        assert table["input_tokens"][i] == TOKENS_PER_WORD * n_in
        assert table["input_tokens_source"][i] == "usage"
        assert table["batch_size"][i] == batch
        assert table["output_tokens"][i] == (max_tokens if kind != "embedding" else None)
        assert table["priority"][i] == (prio or "NORMAL")
        assert table["model"][i] == ("emb-b" if kind == "embedding" else "llm-a")
    # Per-arrival error against the sent schedule, aligned on the median offset: one stamp
    # delayed by the OS shows as one outlier here (as two adjacent gap errors otherwise).
    offsets = [table["arrival_ns"][i] - sent_ns[i] for i in range(len(SCHEDULE))]
    median = sorted(offsets)[len(offsets) // 2]
    return sorted(abs(x - median) for x in offsets)


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_capture_matches_schedule_and_hides_key(tmp_path, upstream, sig):
    # Arrivals are stamped in two processes; on this 2-core box under load (load average 5-7
    # while other suites run) either may be descheduled for a few ms at any moment — idle, the
    # worst error measured was 1.1 ms. Count, order, kinds and lengths must match on every
    # attempt. Timing: in one of three attempts, all arrivals but at most two (of 16) are within
    # 2 ms of the schedule as sent, so all gaps between them are too, and none is off by more
    # than 50 ms. A proxy that stamped rows after the upstream answered (a chat stream here
    # takes 8-25 ms, an embedding ~1 ms) fails this on most rows.
    def ok(errors: list[int]) -> bool:
        return errors[-3] <= 2_000_000 and errors[-1] <= 50_000_000

    attempts = []
    for attempt in range(3):
        attempts.append(_capture_once(tmp_path / f"try{attempt}", upstream, sig))
        if ok(attempts[-1]):
            break
    assert ok(attempts[-1]), \
        f"largest three arrival errors per attempt (ns): {[e[-3:] for e in attempts]}"


def test_signal_during_request_drains_and_keeps_row(tmp_path, upstream):
    proc, url, out = _start_proxy(tmp_path, upstream.url)

    async def stalled() -> bytes:
        async with aiohttp.ClientSession() as session:
            async with session.post(url + "/v1/chat/completions",
                                    json=_body("chat", 5, 3, 1, 0),
                                    headers={"X-Test-Stall-Ms": "800"}) as resp:
                await asyncio.sleep(0.2)
                proc.send_signal(signal.SIGTERM)   # arrives while the upstream stalls
                return await resp.read()

    try:
        body = asyncio.run(stalled())
    finally:
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert body == _sse_body(3, TOKENS_PER_WORD * 5)
    table = read_trace(out)
    assert table.num_rows == 1 and table["input_tokens"][0].as_py() == TOKENS_PER_WORD * 5


def test_describe_request_forms():
    headers = {"X-SLO-Deadline-Ms": "750", "X-Session-ID": "s1"}
    row = describe_request("embedding", {"model": "e", "input": [[1, 2, 3], [4, 5]]}, headers)
    assert (row["batch_size"], row["input_tokens"], row["slo_e2e_ms"], row["session"]) == \
        (2, 2, 750.0, "s1")
    row = describe_request("completion", {"model": "m", "prompt": [5, 6, 7, 8],
                                          "max_completion_tokens": 9, "priority": 2}, {})
    assert (row["input_tokens"], row["output_tokens"], row["priority"]) == (4, 9, "LOW")
    row = describe_request("chat", {"messages": [{"role": "user", "content": [
        {"type": "text", "text": "one two"}, {"type": "image_url"}]}]}, {})
    assert (row["model"], row["input_tokens"], row["output_tokens"]) == ("unknown", 2, None)
    assert row["input_tokens_source"] == "words"


def test_usage_prompt_tokens_beat_the_word_count_and_the_source_is_recorded():
    """aiperf's 64-token prompts were recorded as 19 words; the server's usage is the truth."""
    rec = Recorder()
    words = rec.add(0, describe_request("chat", {"messages": [
        {"role": "user", "content": "a b c"}], "max_tokens": 4}, {}))
    ids = rec.add(1, describe_request("completion", {"prompt": [1, 2, 3, 4, 5],
                                                     "max_tokens": 4}, {}))
    told = rec.add(2, describe_request("embedding", {"input": ["a b", "c d"]}, {}))
    rec.fill_from_usage(told, b'{"usage":{"prompt_tokens":64,"total_tokens":64}}')
    table = rec.table()
    assert table["input_tokens"].to_pylist() == [3, 5, 32]
    assert table["input_tokens_source"].to_pylist() == ["words", "token_ids", "usage"]
    assert (words, ids) == (0, 1)
    # The column round-trips through the trace schema, which validates its values.
    assert validate_table(table) == []
    bad = table.set_column(table.schema.get_field_index("input_tokens_source"),
                           "input_tokens_source", pa.array(["words", "guess", None]))
    assert "column 'input_tokens_source' has unknown value 'guess' at row 1" in \
        validate_table(bad)[0]


def test_public_url_drops_credentials():
    assert public_url("http://u:secret@h:8000/v1?api_key=k#f") == "http://h:8000/v1"


def test_openai_sdk_through_the_proxy(tmp_path, upstream):
    openai = pytest.importorskip("openai")
    proc, url, out = _start_proxy(tmp_path, upstream.url)

    async def use_sdk() -> list[str]:
        client = openai.AsyncOpenAI(base_url=url + "/v1", api_key=KEY, max_retries=0)
        stream = await client.chat.completions.create(
            model="llm-a", messages=[{"role": "user", "content": build_prompt(21, 1)}],
            max_tokens=3, stream=True, extra_headers={"X-Request-Priority": "LOW"})
        pieces = [c.choices[0].delta.content async for c in stream if c.choices]
        await client.embeddings.create(model="emb-b", input=["one two three", "four five"])
        await client.close()
        return pieces

    try:
        pieces = asyncio.run(use_sdk())
    finally:
        proc.send_signal(signal.SIGINT)
        _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0, stderr.decode()
    assert pieces == ["tok "] * 3
    assert KEY.encode() not in open(out, "rb").read()
    rows = read_trace(out).to_pylist()
    assert [(r["kind"], r["input_tokens"], r["output_tokens"], r["batch_size"], r["priority"])
            for r in rows] == [("chat", 42, 3, 1, "LOW"), ("embedding", 5, None, 2, "NORMAL")]
    assert [r["input_tokens_source"] for r in rows] == ["usage", "usage"]


def test_nothing_captured_and_port_in_use(tmp_path, upstream):
    proc, url, out = _start_proxy(tmp_path, upstream.url)
    proc.send_signal(signal.SIGTERM)
    _, stderr = proc.communicate(timeout=30)
    assert proc.returncode == 0 and b"no requests captured" in stderr
    assert not os.path.exists(out)
    import socket
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        result = subprocess.run(
            [sys.executable, "-m", "cpbench", "record", "capture", "--listen",
             f"127.0.0.1:{port}", "--upstream", upstream.url, "-o", out],
            capture_output=True, text=True, timeout=30)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(lines) == 1 and "cannot listen" in lines[0]


if __name__ == "__main__":   # the upstream process of these tests
    if sys.argv[1:2] == ["--serve"]:
        UpstreamApp().serve(sys.argv[2])


def test_upstream_url_credentials(tmp_path, upstream):
    import base64
    creds_url = upstream.url.replace("http://", "http://proxyuser:pw-secret-77@")
    proc, url, out = _start_proxy(tmp_path, creds_url)
    upstream.seen_auth(clear=True)

    async def send() -> list[int]:
        statuses = []
        async with aiohttp.ClientSession() as session:
            for headers in ({}, {"Authorization": f"Bearer {KEY}"}):
                async with session.post(url + "/v1/embeddings", headers=headers,
                                        json={"model": "e", "input": "a b c"}) as resp:
                    statuses.append(resp.status)
        return statuses

    try:
        statuses = asyncio.run(send())
    finally:
        proc.send_signal(signal.SIGTERM)
        _, stderr = proc.communicate(timeout=30)
    assert statuses == [200, 200] and proc.returncode == 0, stderr.decode()
    basic = "Basic " + base64.b64encode(b"proxyuser:pw-secret-77").decode()
    assert upstream.seen_auth() == [basic, f"Bearer {KEY}"]   # the client's header wins
    raw = open(out, "rb").read()
    assert b"pw-secret-77" not in raw and KEY.encode() not in raw
    assert b"pw-secret-77" not in stderr

"""One keep-alive HTTP/1.1 client connection: carry a request, parse and classify its answer.

A plain :class:`asyncio.Protocol` (uvloop or the stock loop) that parses its own responses with
``bytes.find``: Content-Length, chunked and until-close bodies, SSE scanned one read at a
time by :class:`cpbench.replaying.wire.StreamScan`, embeddings checked whole. It stamps the first
byte, the first token and each token read on the monotonic clock, and hands the outcome of
every request to its owner (the dispatcher) as one :meth:`finished` call: no object per
request.

The owner provides ``forget(conn)`` (an idle connection closed), ``due_abs_ns`` and
``send_due()`` (a send that falls due while
reading goes first), ``itl_append`` (inter-token gaps, ns), ``retry(conn, j)`` and
``finished(conn, j, ...)``.
"""
from __future__ import annotations

import asyncio
import time

from cpbench.replaying.wire import StreamScan, check_completion, check_embedding
from cpbench.replaying.rows import ERROR_CODE
from cpbench.vocab import KINDS

_MAX_HEAD_BYTES = 65_536
E_CONNECT, E_TIMEOUT = ERROR_CODE["connect"], ERROR_CODE["timeout"]
E_4XX, E_5XX = ERROR_CODE["http_4xx"], ERROR_CODE["http_5xx"]
E_BROKEN, E_PAYLOAD = ERROR_CODE["stream_broken"], ERROR_CODE["bad_payload"]
E_INTERRUPTED = ERROR_CODE["interrupted"]
_EMBEDDING = KINDS.index("embedding")
__all__ = ["HttpConn", "E_CONNECT", "E_TIMEOUT", "E_4XX", "E_5XX", "E_BROKEN", "E_PAYLOAD",
           "E_INTERRUPTED"]


class HttpConn(asyncio.Protocol):
    """One keep-alive connection and the state of the request it carries (``j``, or None)."""

    def __init__(self, owner) -> None:
        self.d = owner
        self.stream_llm = owner.options.stream  # chat/completions answer in SSE events
        self.transport: asyncio.Transport | None = None
        self.j: int | None = None
        self.served = 0                 # requests answered on this connection so far
        self.idle_since_ns = 0          # when it last went back to the idle pool
        self.scan = StreamScan()
        self.buf = bytearray()
        self.body = bytearray()

    # -- asyncio callbacks -------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def connection_lost(self, exc: Exception | None) -> None:
        d = self.d
        self.transport = None
        if self.j is None:
            d.forget(self)
        elif self.head_done and self.mode == 2:     # body delimited by the close
            self._complete(time.monotonic_ns())
        elif self.first_byte < 0 and self.served and not self.retried:
            # The server closed a reused keep-alive connection as the request went out
            # (its idle timeout): nothing was answered, so it goes again on a new one.
            j, self.j = self.j, None
            d.retry(self, j)
        elif self.first_byte < 0:
            self.fail(E_CONNECT, "connection closed before any response byte")
        else:
            self.fail(E_BROKEN, "connection closed mid-response")

    def data_received(self, data: bytes) -> None:
        now = time.monotonic_ns()
        if now >= self.d.due_abs_ns:
            # A send fell due while the loop was reading: it goes first, not after every
            # ready socket has been read.
            self.d.send_due()
        if self.j is None:
            return                                   # late bytes of a timed-out request
        if self.first_byte < 0:
            self.first_byte = now
        if not self.head_done:
            self.buf += data
            if self.buf.startswith(b"\r\n"):     # a late CRLF of the previous chunked body
                del self.buf[:2]
            end = self.buf.find(b"\r\n\r\n")
            if end < 0:
                if len(self.buf) > _MAX_HEAD_BYTES:
                    self.fail(E_PAYLOAD, "response headers too long", close=True)
                return
            if not self._parse_head(bytes(self.buf[:end]).lower()):
                return
            data = bytes(self.buf[end + 4:])
            self.buf.clear()
            if self.mode == 0 and self.left <= 0:
                self._complete(now)
                return
        if self.mode == 1:
            payload, last = self._dechunk(data)
            if self.j is None:                      # a bad chunk size ended the request
                return
        else:
            payload = data
            if self.mode == 0:
                self.left -= len(data)
            last = self.mode == 0 and self.left <= 0
        if payload:
            if self.streaming:
                self._tokens(self.scan.feed(payload), now)
            else:
                self.body += payload
        if last:
            self._complete(now)

    # -- request life ------------------------------------------------------------------
    def begin(self, j: int, kind: int, batch_size: int, sent_abs_ns: int,
              retried: bool = False) -> None:
        """Start carrying plan row ``j`` of kind code ``kind``, sent at ``sent_abs_ns``."""
        self.j = j
        self.kind = kind
        self.batch_size = batch_size
        self.retried = retried
        self.sent_abs = sent_abs_ns
        self.first_byte = self.first_token = self.last_token = -1
        self.tokens = self.itl_max = self.itl_sum = 0
        self.head_done = False
        self.status = 0
        self.mode = 0               # 0 content-length, 1 chunked, 2 until close
        self.left = 0
        self.chunk_left = 0
        self.close_after = False
        self.streaming = False
        self.encoding = None
        self.buf.clear()
        self.body.clear()

    def _parse_head(self, head: bytes) -> bool:
        try:
            self.status = int(head[9:12])
        except ValueError:
            self.fail(E_PAYLOAD, f"not an HTTP response: {head[:40]!r}", close=True)
            return False
        self.head_done = True
        self.close_after = b"\r\nconnection: close" in head or head.startswith(b"http/1.0")
        i = head.find(b"\r\ncontent-length:")
        if b"\r\ntransfer-encoding: chunked" in head:
            self.mode = 1
        elif i >= 0:
            self.mode = 0
            j = head.find(b"\r\n", i + 2)
            value = head[i + 17: j if j >= 0 else len(head)].strip()
            if not value.isdigit():     # int() would take "-5", "+5" and "1_0" as well
                self.fail(E_PAYLOAD, f"bad Content-Length: {value[:40]!r}", close=True)
                return False
            self.left = int(value)
        else:
            self.mode = 2
            self.close_after = True
        i = head.find(b"\r\ncontent-encoding:")
        if i >= 0:
            j = head.find(b"\r\n", i + 2)
            coding = head[i + 19: j if j >= 0 else len(head)].strip()
            # We send Accept-Encoding: identity; anything else cannot be scanned as text.
            self.encoding = None if coding in (b"identity", b"") else coding.decode("latin-1")
        self.streaming = self.status == 200 and self.kind != _EMBEDDING and self.stream_llm
        if self.streaming:
            self.scan.reset(KINDS[self.kind])
        return True

    def _dechunk(self, data: bytes) -> tuple[bytes, bool]:
        # Payload of every complete part of the chunked encoding in data; partial parts wait.
        buf = self.buf
        buf += data
        out = []
        pos, n = 0, len(buf)
        last = False
        while pos < n:
            if self.chunk_left > 0:
                take = min(self.chunk_left, n - pos)
                out.append(bytes(buf[pos:pos + take]))
                self.chunk_left -= take
                pos += take
                if self.chunk_left:
                    break
                self.chunk_left = -2            # the CRLF after the chunk data
            if self.chunk_left == -2:
                if n - pos < 2:
                    break
                pos += 2
                self.chunk_left = 0
                continue
            eol = buf.find(b"\r\n", pos)
            if eol < 0:
                break
            field = bytes(buf[pos:eol]).split(b";", 1)[0].strip()
            if not field or field.strip(b"0123456789abcdefABCDEF"):
                self.fail(E_PAYLOAD, f"bad chunk size: {field[:40]!r}", close=True)
                return b"", False
            size = int(field, 16)
            pos = eol + 2
            if size == 0:
                last = True                     # trailers (none expected) are ignored
                pos = n
                break
            self.chunk_left = size
        del buf[:pos]
        return b"".join(out), last

    def _tokens(self, n: int, now: int) -> None:
        if n <= 0:
            return
        if self.first_token < 0:
            self.first_token = now
            n -= 1
            self.tokens += 1
            self.last_token = now
        if n > 0:
            gap = now - self.last_token
            self.d.itl_append(gap)
            # Tokens that arrived in the same read are 0 ns apart, as the client saw them.
            for _ in range(n - 1):
                self.d.itl_append(0)
            self.itl_sum += gap
            if gap > self.itl_max:
                self.itl_max = gap
            self.tokens += n
            self.last_token = now

    def _complete(self, now: int) -> None:
        status = self.status
        if status >= 400 or status < 200:
            detail = f"HTTP {status}: " + bytes(self.body[:120]).decode("utf-8", "replace")
            self.fail(E_5XX if status >= 500 else E_4XX, detail.strip(), status=status)
            return
        if self.encoding is not None:
            self.fail(E_PAYLOAD, f"response has Content-Encoding {self.encoding}, which "
                       "was not asked for", status=status)
            return
        if not self.streaming:
            # One JSON body: the answer arrives whole, so its first token is its last.
            if self.kind == _EMBEDDING:
                problem, prompt_tokens = check_embedding(self.body, self.batch_size)
                completion_tokens = 0
            else:
                problem, prompt_tokens, completion_tokens = check_completion(self.body)
            if problem is not None:
                self.fail(E_PAYLOAD, problem, status=status)
                return
            self.first_token = now
            self._finish(now, -1, None, prompt_tokens, completion_tokens or 0)
            return
        scan = self.scan
        if scan.malformed:
            self.fail(E_PAYLOAD, "malformed SSE event", status=status)
            return
        if scan.error is not None:
            self.fail(E_BROKEN, "error event in stream: "
                       + scan.error.decode("utf-8", "replace"), status=status)
            return
        if not scan.done and scan.usage is None:
            self.fail(E_BROKEN, "stream ended without [DONE]", status=status)
            return
        prompt_tokens, completion_tokens = scan.usage_tokens()
        out = self.tokens if completion_tokens is None else completion_tokens
        self._finish(now, -1, None, prompt_tokens, out)

    def fail(self, code: int, detail: str, *, status: int | None = None,
             close: bool = False) -> None:
        """End the current request as failed with error code ``code`` (timeouts, stops)."""
        if status is not None:
            self.status = status
        if close:
            self.close_after = True
        self._finish(time.monotonic_ns(), code, detail, None, self.tokens)

    def _finish(self, now: int, code: int, detail: str | None, prompt_tokens: int | None,
                out_tokens: int) -> None:
        j, self.j = self.j, None
        self.served += 1
        gaps = self.tokens - 1
        reusable = (code < 0 or code in (E_4XX, E_5XX)) and not self.close_after \
            and self.transport is not None
        self.d.finished(self, j, reusable, self.sent_abs, self.first_byte, self.first_token,
                        now, self.status, code, detail, prompt_tokens, out_tokens,
                        self.itl_sum // gaps if gaps > 0 else -1,
                        self.itl_max if gaps > 0 else -1)

"""Request bodies and byte-level response scanning (cpbench.replaying.wire)."""
from __future__ import annotations

import json

import pytest

from cpbench.replaying.wire import (StreamScan, check_completion, check_embedding, header_block,
                                   int_after, request_body)
from cpbench.prompts import count_tokens


def _event(obj) -> bytes:
    return b"data: " + json.dumps(obj).encode() + b"\n\n"


def _content(text: str) -> bytes:
    return _event({"choices": [{"index": 0, "delta": {"content": text}}], "usage": None})


USAGE = _event({"choices": [], "usage": {"prompt_tokens": 11, "completion_tokens": 42,
                                         "total_tokens": 53}})


def test_chat_body_is_openai_json_with_streamed_usage():
    body = json.loads(request_body("chat", "m", 7, 12, 30, 1, None, "HIGH", "sagellm"))
    assert body["model"] == "m"
    assert body["max_tokens"] == 30
    assert body["stream"] is True and body["stream_options"] == {"include_usage": True}
    assert count_tokens(body["messages"][0]["content"]) == 12
    assert "priority" not in body


@pytest.mark.parametrize("kind", ["chat", "completion"])
def test_unstreamed_body_asks_for_one_json_answer(kind):
    body = json.loads(request_body(kind, "m", 7, 12, 30, 1, None, "LOW", "vllm", stream=False))
    assert body["stream"] is False and "stream_options" not in body
    assert body["max_tokens"] == 30 and body["priority"] == 2


def test_check_completion_reads_usage_and_refuses_what_is_not_one_answer():
    answer = json.dumps({"id": "x", "object": "chat.completion", "choices": [
        {"index": 0, "message": {"role": "assistant", "content": "hi there"}}],
        "usage": {"prompt_tokens": 11, "completion_tokens": 42, "total_tokens": 53}}).encode()
    assert check_completion(answer) == (None, 11, 42)
    assert check_completion(b'{"choices": []}') == (None, None, None)     # no usage: unknown
    problem, *_ = check_completion(_content("a") + USAGE)                  # an SSE stream
    assert problem.startswith("completion body is not a JSON object")
    problem, *_ = check_completion(b'{"object": "error"}')
    assert problem.startswith("completion body has no choices")


def test_literal_prompt_is_escaped_and_vllm_priority_added():
    prompt = 'say "hi"\n\\ ünïcode'
    body = json.loads(request_body("completion", "m", 0, 3, None, 1, prompt, "LOW", "vllm"))
    assert body["prompt"] == prompt
    assert "max_tokens" not in body
    assert body["priority"] == 2


def test_embedding_body_has_batch_inputs():
    body = json.loads(request_body("embedding", "e", 3, 5, None, 4, None, "NORMAL", "none"))
    assert len(body["input"]) == 4
    assert all(count_tokens(t) == 5 for t in body["input"])
    assert "stream" not in body


def test_header_block_hints_and_auth():
    # The static head only: the per-request X-Request-ID and X-SLO-Deadline-Ms are the
    # renderer's (tests/test_render.py pins the whole request's bytes).
    head = header_block("chat", "h:1", bearer="sk-x", priority="HIGH", hints="sagellm",
                        path_prefix="/api").decode()
    assert head == ("POST /api/v1/chat/completions HTTP/1.1\r\nHost: h:1\r\n"
                    "Content-Type: application/json\r\nAccept: */*\r\n"
                    "Accept-Encoding: identity\r\nAuthorization: Bearer sk-x\r\n"
                    "X-Request-Priority: HIGH\r\n")
    plain = header_block("embedding", "h:1", bearer=None, priority="LOW", hints="none").decode()
    assert "X-Request" not in plain and "Authorization" not in plain


def test_stream_scan_counts_content_and_reads_usage_across_split_reads():
    body = (_event({"choices": [{"delta": {"role": "assistant", "content": ""}}]})
            + b"".join(_content(f"w{i}") for i in range(5)) + USAGE + b"data: [DONE]\n\n")
    for cut in range(1, len(body), 37):          # every way of splitting into two reads
        scan = StreamScan()
        scan.reset("chat")
        tokens = scan.feed(body[:cut]) + scan.feed(body[cut:])
        assert tokens == 5
        assert scan.done and not scan.malformed
        assert scan.usage_tokens() == (11, 42)


def test_stream_scan_reset_drops_a_partial_event_held_from_the_last_response():
    # A response cut mid-event leaves bytes in the tail; the next response starts clean.
    scan = StreamScan()
    scan.reset("chat")
    assert scan.feed(_content("a") + b'data: {"choices":[{"delta":{"content":"b') == 1
    scan.reset("chat")
    assert scan.feed(_content("c") + b"data: [DONE]\n\n") == 1
    assert scan.done and not scan.malformed


def test_stream_scan_crlf_events_completions_and_no_usage():
    scan = StreamScan()
    scan.reset("completion")
    body = b'data: {"choices":[{"text":"a"}]}\r\n\r\ndata: {"choices":[{"text": "b"}]}\r\n\r\n' \
           b"data: [DONE]\r\n\r\n"
    assert scan.feed(body) == 2
    assert scan.done and scan.usage_tokens() == (None, None)


def test_stream_scan_flags_malformed_and_error_events():
    scan = StreamScan()
    scan.reset("chat")
    scan.feed(_content("a") + b"data: {not json\n\n")
    assert scan.malformed
    scan.reset("chat")
    scan.feed(_event({"error": {"message": "engine died"}}))
    assert scan.error is not None and b"engine died" in scan.error
    assert not scan.malformed


def test_check_embedding_counts_vectors_without_decoding():
    good = json.dumps({"data": [{"object": "embedding", "index": i, "embedding": [0.1]}
                                for i in range(3)], "usage": {"prompt_tokens": 9}}).encode()
    assert check_embedding(good, 3) == (None, 9)
    problem, _ = check_embedding(good, 4)
    assert "3 vectors for 4 inputs" in problem
    problem, _ = check_embedding(b"<html>oops</html>", 1)
    assert problem.startswith("embeddings body is not a JSON object")


@pytest.mark.parametrize("buf,expected", [(b'"k": 12,', 12), (b'"k":0}', 0), (b'"k":x', None),
                                          (b"nothing", None)])
def test_int_after(buf, expected):
    assert int_after(buf, b'"k":') == expected


@pytest.mark.parametrize("url, says", [
    ("http://127.0.0.1:8000/v1#frag", "no #fragment"),
    ("http://127.0.0.1:99999/?key=s3cret", "not 0-65535"),
    ("ftp://127.0.0.1:8000/?key=s3cret", "must look like http://host:port"),
])
def test_a_url_cpbench_cannot_honour_is_refused_without_its_secret(url, says):
    from cpbench.errors import ConfigError
    from cpbench.replaying.wire import Target
    with pytest.raises(ConfigError, match=says) as err:
        Target.from_url(url)
    assert "s3cret" not in str(err.value)


def test_a_query_string_reaches_every_request_path():
    """An Azure-style gateway wants ?api-version=... on each request: it is kept, not dropped."""
    from cpbench.replaying.wire import Target
    t = Target.from_url("https://gw.example:8443/openai/v1?api-version=2024-06-01")
    assert (t.base_path, t.query, t.tls) == ("/openai", "?api-version=2024-06-01", True)
    head = header_block("embedding", t.host_header, bearer=None, priority="NORMAL",
                        hints="none", path_prefix=t.base_path, query=t.query)
    assert head.startswith(b"POST /openai/v1/embeddings?api-version=2024-06-01 HTTP/1.1\r\n")


def test_built_prompts_need_no_escaping_and_bodies_are_json():
    from cpbench.prompts import _VOCABULARY, build_prompt
    assert all(w.isascii() and w.isalpha() and w.islower() for w in _VOCABULARY)
    for n in (1, 2, 32, 1000, 200_000):
        chat = json.loads(request_body("chat", "m", 5, n, 7, 1, None, "NORMAL", "none"))
        assert chat["messages"][0]["content"] == build_prompt(n, 5)
        emb = json.loads(request_body("embedding", "m", 5, n, None, 3, None, "LOW", "none"))
        assert emb["input"] == [build_prompt(n, 5)] * 3
    quoted = json.loads(request_body("completion", "m", 5, 4, None, 1, 'say "hi"\\', "LOW",
                                     "none"))
    assert quoted["prompt"] == 'say "hi"\\'

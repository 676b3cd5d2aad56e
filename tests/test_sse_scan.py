"""cpbench._core.sse.scan_events: one C pass that must count what a dozen bytes.count did,
16 bytes a step (SSE2) and byte by byte alike."""
from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpbench._core.sse import SCAN_BLOCK, scan_events


def reference(seg: bytes, chat: bool) -> tuple[int, int, int, int, int, int]:
    """The counts by plain bytes.count, as StreamScan computed them before the C pass."""
    key = b'"content":' if chat else b'"text":'
    tokens = (seg.count(key + b'"') + seg.count(key + b' "')
              - seg.count(key + b'""') - seg.count(key + b' ""'))
    objects = seg.count(b"data: {") + seg.count(b"data:{")
    ends = seg.count(b"}\n\n") + seg.count(b"}\r\n\r\n")
    return (tokens, seg.count(b"data:"), objects, ends, seg.count(b"[DONE]"),
            seg.find(b'"error"'))


EVENTS = [
    b'data: {"choices":[{"delta":{"content":"tok "}}]}',
    b'data: {"choices": [{"delta": {"content": "tok "}}]}',
    b'data:{"choices":[{"delta":{"role":"assistant","content":""}}]}',
    b'data: {"choices":[{"delta":{"content": ""}}]}',
    b'data: {"choices":[{"text":"w"}]}',
    b'data: {"choices":[{"text": ""}]}',
    b'data: {"choices":[],"usage":{"prompt_tokens":3,"completion_tokens":2}}',
    b'data: {"error": {"message": "overloaded"}}',
    b"data: [DONE]",
    b"data: {not json",
    b": keep-alive comment",
]


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(EVENTS), st.sampled_from([b"\n\n", b"\r\n\r\n"])),
                max_size=30), st.booleans())
def test_matches_the_bytes_count_reference(events, chat):
    seg = b"".join(e + sep for e, sep in events)
    assert scan_events(seg, chat) == reference(seg, chat)
    assert scan_events(seg, chat, blocks=False) == reference(seg, chat)


# Pieces of every marker and its near misses, glued at random: markers straddle the 16-byte
# steps, overlap and end the segment cut off. bytes.count's arithmetic means nothing on such
# overlaps, so here the two paths are held to each other, and to the reference where the
# markers do not overlap.
FRAGMENTS = [b'"', b'"content":', b'"content": ', b'"text":', b'"', b'""', b'"error"', b'"err',
             b'"usage":', b'"usage": {', b"{", b"null", b"data:", b"data: ", b"da", b"ta:",
             b"}", b"\n", b"\r", b"\n\n", b"\r\n\r\n", b"[DONE]", b"[D", b"ONE]", b"x", b"e",
             b"u", b"c", b"a", b" ",
             # the block filter's three-byte prefixes, and their halves
             b'"co', b'"te', b'"er', b'"us', b"o", b"t", b"r", b"s"]


@settings(max_examples=500, deadline=None)
@given(st.lists(st.sampled_from(FRAGMENTS), max_size=80), st.booleans())
def test_fragments_across_the_16_byte_steps(pieces, chat):
    seg = b"".join(pieces)
    assert scan_events(seg, chat) == scan_events(seg, chat, blocks=False)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.sampled_from(EVENTS), max_size=12), st.integers(0, 15), st.booleans())
def test_events_at_every_offset_of_the_16_byte_step(events, pad, chat):
    seg = b"x" * pad + b"".join(e + b"\n\n" for e in events)
    assert scan_events(seg, chat) == reference(seg, chat)


def test_the_block_step_is_compiled_in_on_x86_64():
    import platform
    if platform.machine() not in ("x86_64", "AMD64"):
        pytest.skip("SSE2 is the x86-64 baseline only")
    assert SCAN_BLOCK == 16


def test_exact_counts_of_a_chat_stream():
    seg = (b'data: {"choices":[{"delta":{"role":"assistant","content":""}}]}\n\n'
           b'data: {"choices": [{"delta": {"content": "a"}}]}\n\n'
           b'data: {"choices":[{"delta":{"content":"b"}}]}\n\n'
           b'data: {"choices":[],"usage":{"completion_tokens":2}}\n\n'
           b"data: [DONE]\n\n")
    assert scan_events(seg, True) == (2, 5, 4, 4, 1, -1)
    assert scan_events(seg, False) == (0, 5, 4, 4, 1, -1)      # no "text" markers
    assert scan_events(b"", True) == (0, 0, 0, 0, 0, -1)
    # A marker cut off at the end of the segment counts nothing.
    assert scan_events(b'"content":', True) == (0, 0, 0, 0, 0, -1)
    assert scan_events(b'x "error": 1', True)[5] == 2

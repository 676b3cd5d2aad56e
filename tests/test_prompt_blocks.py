"""Prompts rendered from prefix blocks: deterministic, prefix-stable, exact length; multi-turn
sessions as growing message lists; rendered ahead of the send into the plan."""
from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
from hypothesis import given, settings
from hypothesis import strategies as st

from cpbench.replaying.plan import load_plan, save_plan
from cpbench.prompts import BlockRenderer, block_text, count_tokens, render_rows, session_cuts
from cpbench.replaying.planning import build_plan, select_rows

ids = st.lists(st.integers(0, 2 ** 40), min_size=0, max_size=12)


def test_block_text_known_answer():
    """The promise is bytes: block 0 at 8 words renders the same on every machine/release."""
    assert block_text(0, 8) == "tuno pupe nasu gove keno biva dago befa"
    assert block_text(123456789, 4) == "vobu beza pazi vomi"
    assert len(block_text(7, 8).split()) == 8
    assert block_text(7, 16).startswith(block_text(7, 8) + " ")
    assert block_text(1, 8) != block_text(2, 8)


@settings(max_examples=150, deadline=None)
@given(ids, st.integers(1, 64), st.integers(0, 2000), st.integers(0, 10 ** 6),
       st.integers(16, 200))
def test_rendering_is_deterministic_and_exact(blocks, size, extra, tag, cache_words):
    n_tokens = max(len(blocks) - 1, 0) * size + 1 + extra      # blocks cover <= n rounded up
    fresh = BlockRenderer(size).text(blocks, n_tokens, tag)
    small = BlockRenderer(size, cache_words=cache_words)       # a cache that must evict
    assert small.text(blocks, n_tokens, tag) == fresh
    assert small.text(blocks, n_tokens, tag) == fresh
    assert count_tokens(fresh) == n_tokens
    assert fresh.isascii() and '"' not in fresh and "\\" not in fresh


@settings(max_examples=150, deadline=None)
@given(ids, ids, ids, st.integers(1, 32), st.integers(0, 50), st.integers(0, 50))
def test_shared_leading_blocks_are_shared_leading_bytes(common, a, b, size, ta, tb):
    """Two prompts whose block lists share their first k ids share their first k blocks'
    bytes, whatever follows (and a prompt's blocks render the same in any request)."""
    ra, rb = common + a, common + b
    text_a = BlockRenderer(size).text(ra, len(ra) * size + ta, 1)
    text_b = BlockRenderer(size).text(rb, len(rb) * size + tb, 2)
    shared = " ".join(block_text(x, size) for x in common)
    assert text_a.startswith(shared) and text_b.startswith(shared)
    words_a, words_b = text_a.split(), text_b.split()
    k = len(common) * size
    assert words_a[:k] == words_b[:k]
    if a and b and a[0] != b[0]:
        assert words_a[k:k + size] != words_b[k:k + size]


def test_session_turns_are_growing_message_lists():
    size = 4
    # turn 0: blocks 0,1 (8 tokens), answer 5 tokens -> 2 blocks (2, 3), new text block 4.
    blocks = [[0, 1], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4, 5, 6]]
    tin = [8, 20, 28]
    tout = [5, 4, 9]
    sessions = ["s", "s", "s"]
    assert session_cuts(blocks, tin, tout, sessions, size) == {1: [2, 4], 2: [2, 4, 5, 6]}
    texts, messages = render_rows([0, 1, 2], blocks, tin, tout, sessions, [True] * 3, size)
    assert messages[0] is None
    m1, m2 = json.loads(messages[1]), json.loads(messages[2])
    assert [m["role"] for m in m2] == ["user", "assistant", "user", "assistant", "user"]
    assert m2[:2] == m1[:2]                                   # the list grows
    assert m1[0]["content"] == texts[0]
    for text, msgs in ((texts[1], m1), (texts[2], m2)):
        assert " ".join(m["content"] for m in msgs) == text   # contents = the whole prompt
    assert texts[2].startswith(texts[1])


def _blocks_table() -> pa.Table:
    n = 6
    table = pa.table({
        "arrival_ns": pa.array(np.arange(n) * 1000, pa.int64()),
        "kind": pa.array(["chat", "completion", "chat", "embedding", "chat", "chat"]),
        "model": pa.array(["m"] * n),
        "input_tokens": pa.array([10, 10, 10, 5, 8, 20], pa.int32()),
        "output_tokens": pa.array([4, 4, 4, None, 5, 4], pa.int32()),
        "batch_size": pa.array([1, 1, 1, 2, 1, 1], pa.int16()),
        "priority": pa.array(["NORMAL"] * n),
        "prompt": pa.array([None, None, "literal words", None, None, None]),
        "session": pa.array([None, None, None, None, "s", "s"]),
        "prefix_blocks": pa.array([[1, 2], [1, 2], None, None, [7, 8], [7, 8, 9, 10, 11]],
                                  pa.list_(pa.int64())),
    })
    from cpbench.trace import normalize
    return normalize(table).replace_schema_metadata({b"cpbench.block_tokens": b"4"})


def test_plan_carries_rendered_prompts_and_session_messages(tmp_path):
    table = _blocks_table()
    sel = select_rows(table)
    plans = [build_plan(table, sel, w, 2) for w in range(2)]
    for w, plan in enumerate(plans):
        save_plan(plan, tmp_path / str(w))
        loaded = load_plan(tmp_path / str(w))
        for j in range(len(plan)):
            assert loaded.prompts[j] == plan.prompts[j]
            got = loaded.messages[j] if loaded.messages is not None else None
            assert got == (plan.messages[j] if plan.messages is not None else None)
    by_row = {int(p.rows[j]): (p.prompts[j], p.messages[j] if p.messages is not None else None)
              for p in plans for j in range(len(p))}
    size = 4
    assert by_row[0][0].startswith(block_text(1, size) + " " + block_text(2, size) + " r0 ")
    assert by_row[1][0].split()[:8] == by_row[0][0].split()[:8]
    assert by_row[2] == ("literal words", None)
    assert by_row[3] == (None, None)                  # embedding: built at send time as before
    assert by_row[4][1] is None and count_tokens(by_row[4][0]) == 8
    # row 5 continues row 4 (another worker's row): user [7, 8], assistant [9, 10], user [11]
    msgs = json.loads(by_row[5][1])
    assert [m["role"] for m in msgs] == ["user", "assistant", "user"]
    assert msgs[0]["content"] == by_row[4][0]


def test_request_body_sends_session_messages_as_given():
    from cpbench.replaying.wire import request_body
    messages = json.dumps([{"role": "user", "content": "a b"},
                           {"role": "assistant", "content": "c"},
                           {"role": "user", "content": "d"}])
    body = json.loads(request_body("chat", "m", 3, 4, 2, 1, "a b c d", "NORMAL", "none",
                                   messages))
    assert body["messages"] == json.loads(messages)
    body = json.loads(request_body("completion", "m", 3, 4, 2, 1, "a b c d", "NORMAL", "none",
                                   messages))
    assert body["prompt"] == "a b c d"


def test_block_lists_read_rows_of_chunked_and_sliced_columns():
    from cpbench.blocks import BlockLists
    rows = [[1, 2], None, [], [3], None, [4, 5, 6]]
    column = pa.chunked_array([pa.array(rows[:3], pa.list_(pa.int64())),
                               pa.array(rows[3:], pa.list_(pa.int32()))
                               .cast(pa.list_(pa.int64()))])
    lists = BlockLists(column)
    assert len(lists) == 6 and [lists[i] for i in range(6)] == rows
    sliced = BlockLists(pa.array(rows, pa.list_(pa.int64())).slice(2, 3))
    assert [sliced[i] for i in range(3)] == rows[2:5]
    assert BlockLists(pa.nulls(2))[1] is None

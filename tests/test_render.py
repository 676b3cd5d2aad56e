"""cpbench._core.render: every request byte for byte as the Python rendering made it
(tests/support/request_reference.py), over kinds, priorities, hint styles, literal prompts that
need escaping, session messages, batches, built prompts short and long, odd model names."""
from __future__ import annotations

import json
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cpbench.prompts import build_prompt, prompt_text_and_cuts
from cpbench._core.render import Renderer
from cpbench.replaying.plan import COLUMNS, Plan, PromptColumn
from cpbench.replaying.wire import Target, model_json, renderer
from cpbench.vocab import KINDS, PRIORITIES
from support.request_reference import encode

MODELS = ["bench", "meta-llama/Llama-3.1-8B", "e5 \"quoted\" é"]
TARGET = Target.from_url("http://127.0.0.1:8123/gw?api-version=1")

prompts = st.one_of(st.none(), st.text(max_size=40),
                    st.sampled_from(["", "plain words", 'say "hi"', "back\\slash", "tab\there",
                                     "é ünïcode", "line\nbreak", "\x7f"]))
messages = st.one_of(st.none(), st.sampled_from(
    ['[{"role":"user","content":"a"}]',
     '[{"role":"user","content":"a"},{"role":"assistant","content":"b \\u00e9"}]']))
rows = st.tuples(
    st.sampled_from(KINDS), st.sampled_from(PRIORITIES),
    st.one_of(st.integers(0, 10**12), st.sampled_from([0, 9, 10, 2**63 - 1])),
    st.integers(0, len(MODELS) - 1), st.integers(0, 300), st.integers(-1, 5000),
    st.integers(0, 20),
    st.one_of(st.floats(allow_nan=True, allow_infinity=True),
              st.sampled_from([5000.0, 1e-5, 12345678.9, 0.1, 250.0, 0.0, -0.0])),
    prompts, messages)


def plan_of(rows_: list[tuple]) -> Plan:
    kinds, prios, trows, models, inp, out, batch, slo, texts, msgs = zip(*rows_)
    n = len(rows_)
    return Plan(rows=np.array(trows, np.int64), intended_ns=np.zeros(n, np.int64),
                kind=np.array([KINDS.index(k) for k in kinds], np.int32),
                priority=np.array([PRIORITIES.index(p) for p in prios], np.int32),
                model=np.array(models, np.int32), input_tokens=np.array(inp, np.int32),
                output_tokens=np.array(out, np.int32), batch_size=np.array(batch, np.int32),
                slo_ttft_ms=np.zeros(n), slo_e2e_ms=np.array(slo, np.float64),
                warmup=np.zeros(n, np.int32),
                prompts=None if all(t is None for t in texts) else PromptColumn.from_texts(
                    list(texts)),
                models=MODELS,
                messages=None if all(m is None for m in msgs) else PromptColumn.from_texts(
                    list(msgs)))


def renderer_of(plan: Plan, hints: str, stream: bool, bearer: str | None = None) -> Renderer:
    return renderer({name: getattr(plan, name) for name in COLUMNS}, plan.prompts,
                    plan.messages, plan.models, hints=hints, stream=stream, target=TARGET,
                    bearer=bearer)


def expected(row: tuple, hints: str, stream: bool, bearer: str | None = None) -> bytes:
    kind, prio, trow, model, inp, out, batch, slo, text, msgs = row
    return encode(kind, prio, trow, MODELS[model], inp, out, batch, slo, text, msgs,
                  hints=hints, stream=stream, host=TARGET.host_header, bearer=bearer,
                  path_prefix=TARGET.base_path, query=TARGET.query)


@settings(max_examples=300, deadline=None)
@given(st.lists(rows, min_size=1, max_size=12), st.sampled_from(["sagellm", "vllm", "none"]),
       st.booleans())
def test_every_request_matches_the_python_rendering(rows_, hints, stream):
    plan = plan_of(rows_)
    rend = renderer_of(plan, hints, stream)
    for j, row in enumerate(rows_):
        assert rend.render(j) == expected(row, hints, stream)


def test_exact_bytes_of_a_chat_request_with_sagellm_hints():
    row = ("chat", "HIGH", 7, 0, 3, 16, 1, 250.0, None, None)
    plan = plan_of([row])
    rend = renderer_of(plan, "sagellm", True, bearer="sk-x")
    body = (b'{"model":"bench","messages":[{"role":"user","content":"r7 the control"}],'
            b'"max_tokens":16,"stream":true,"stream_options":{"include_usage":true}}')
    assert rend.render(0) == (
        b"POST /gw/v1/chat/completions?api-version=1 HTTP/1.1\r\nHost: 127.0.0.1:8123\r\n"
        b"Content-Type: application/json\r\nAccept: */*\r\nAccept-Encoding: identity\r\n"
        b"Authorization: Bearer sk-x\r\nX-Request-Priority: HIGH\r\n"
        b"X-Request-ID: cpbench-7\r\nX-SLO-Deadline-Ms: 250\r\n"
        b"Content-Length: %d\r\n\r\n" % len(body) + body)
    assert json.loads(rend.body_of(0))["messages"][0]["content"] == build_prompt(3, 7)


def test_embedding_batch_repeats_the_prompt_and_vllm_priority_closes_the_body():
    row = ("embedding", "LOW", 3, 1, 2, -1, 4, math.nan, None, None)
    plan = plan_of([row])
    rend = renderer_of(plan, "vllm", True)
    assert rend.body_of(0) == (b'{"model":"meta-llama/Llama-3.1-8B","input":["r3 the",'
                                   b'"r3 the","r3 the","r3 the"],"priority":2}')


def test_prompts_longer_than_the_shared_text_are_built_in_python():
    # A renderer given a short text must hand longer prompts to build_prompt, and agree.
    row = ("completion", "NORMAL", 1, 0, 40, -1, 1, 1.0, None, None)
    plan = plan_of([row])
    rend = renderer_of(plan, "none", False)
    text, cuts = prompt_text_and_cuts()
    assert len(cuts) > 40
    short = Renderer({name: getattr(plan, name) for name in COLUMNS}, None, None,
                     [model_json("bench")],
                     [b""] * (len(KINDS) * len(PRIORITIES)), len(PRIORITIES),
                     np.ones(len(PRIORITIES), np.int64), False, False, False,
                     KINDS.index("embedding"), KINDS.index("chat"), text, cuts[:10],
                     build_prompt)
    assert short.body_of(0) == rend.body_of(0) == expected(row, "none", False).split(
        b"\r\n\r\n", 1)[1]


@pytest.mark.parametrize("n", [0, 1, 2, 1000])
def test_built_prompts_have_the_asked_word_count(n):
    row = ("completion", "NORMAL", 42, 0, n, -1, 1, 1.0, None, None)
    plan = plan_of([row])
    rend = renderer_of(plan, "none", True)
    assert len(json.loads(rend.body_of(0))["prompt"].split()) == n

"""The embedded control plane's HTTP surface: the official openai SDK, malformed requests,
admin, health, models and metrics, and its configuration."""
from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest
from openai import OpenAI

from cpbench.errors import ConfigError
from cpbench.prompts import build_prompt
from cpbench.sim import SimConfig, SimThread, config_from_dict
from cpbench.sim.config import EmbeddingEngineConfig, LLMEngineConfig, resolve_config

pytestmark = pytest.mark.integration

LLM = "cpbench-llm-7b"
EMB = "cpbench-embed-bge"


def _fast_config(**kw: object) -> SimConfig:
    llm = LLMEngineConfig(decode_base_ns=1_000_000, prefill_ns_per_token=1_000,
                          max_model_len=4096, kv_cache_tokens=100_000)
    emb = EmbeddingEngineConfig(batch_base_ns=1_000_000, max_input_tokens=512)
    return SimConfig(llm=[llm], embedding=[emb], **kw)


@pytest.fixture(scope="module")
def sim():
    with SimThread(_fast_config(report_timing=True)) as s:
        yield s


@pytest.fixture(scope="module")
def client(sim):
    return OpenAI(base_url=sim.url + "/v1", api_key="test", max_retries=0, timeout=10)


def _post(url: str, body: object, headers: dict[str, str] | None = None) -> tuple[int, dict]:
    data = body if isinstance(body, bytes) else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, method="POST",
                                 headers={"Content-Type": "application/json", **(headers or {})})
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, json.loads(resp.read())
    except urllib.error.HTTPError as exc:
        return exc.code, json.loads(exc.read())


def _get(url: str) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=10) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def test_openai_sdk_streaming_chat_counts_tokens_and_usage(client):
    prompt = build_prompt(37, tag=1)
    stream = client.chat.completions.create(
        model=LLM, messages=[{"role": "user", "content": prompt}], max_tokens=7, stream=True,
        stream_options={"include_usage": True})
    chunks = list(stream)
    content = [c.choices[0].delta.content for c in chunks if c.choices and c.choices[0].delta.content]
    assert len(content) == 7
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    usage = chunks[-1].usage
    assert (usage.prompt_tokens, usage.completion_tokens, usage.total_tokens) == (37, 7, 44)
    timing = chunks[-1].model_extra["cpbench_server_timing"]
    assert timing["clock"] == "monotonic"
    assert timing["received_ns"] < timing["first_token_ns"] <= timing["done_ns"]


def test_openai_sdk_plain_chat_exact_max_tokens(client):
    messages = [{"role": "system", "content": "be brief"},
                {"role": "user", "content": [{"type": "text", "text": "one two three"}]}]
    resp = client.chat.completions.create(model=LLM, messages=messages, max_tokens=12)
    assert resp.choices[0].message.role == "assistant"
    assert len(resp.choices[0].message.content.split()) == 12
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (5, 12)
    assert resp.model_extra["cpbench_server_timing"]["first_token_ns"] > 0


def test_openai_sdk_completions_stream_and_plain(client):
    resp = client.completions.create(model=LLM, prompt="a b c d", max_tokens=5)
    assert len(resp.choices[0].text.split()) == 5
    assert (resp.usage.prompt_tokens, resp.usage.completion_tokens) == (4, 5)
    chunks = list(client.completions.create(model=LLM, prompt="a b c d", max_tokens=5, stream=True,
                                            stream_options={"include_usage": True}))
    assert len([c for c in chunks if c.choices and c.choices[0].text]) == 5
    assert chunks[-1].usage.completion_tokens == 5


def test_openai_sdk_embeddings_string_list_and_base64(client):
    one = client.embeddings.create(model=EMB, input="hello embedding world")   # SDK asks base64
    assert len(one.data) == 1 and len(one.data[0].embedding) == 768
    assert one.usage.prompt_tokens == 3
    many = client.embeddings.create(model=EMB, input=["a b", "c d e", "f"], encoding_format="float",
                                    dimensions=64)
    assert [d.index for d in many.data] == [0, 1, 2]
    assert len(many.data[2].embedding) == 64
    assert many.usage.prompt_tokens == many.usage.total_tokens == 6


def test_models_health_and_admin_policy_switch(sim):
    status, body = _get(sim.url + "/v1/models")
    assert status == 200 and {m["id"] for m in json.loads(body)["data"]} == {LLM, EMB}
    assert _get(sim.url + "/health") == (200, b'{"status":"ok"}')
    status, body = _get(sim.url + "/admin/policy")
    assert json.loads(body) == {"policy": "fifo",
                                "available": ["fifo", "priority", "slo_aware", "hybrid_slo"]}
    status, body = _post(sim.url + "/admin/policy", {"policy": "hybrid_slo"})
    assert status == 200 and body["policy"] == "hybrid_slo" and body["previous"] == "fifo"
    status, body = _post(sim.url + "/admin/policy", {"policy": "fastest"})
    assert status == 400 and "fifo, priority" in body["error"]["message"]
    assert json.loads(_get(sim.url + "/admin/policy")[1])["policy"] == "hybrid_slo"
    _post(sim.url + "/admin/policy", {"policy": "fifo"})


def test_metrics_expose_queues_engines_and_requests(sim, client):
    client.chat.completions.create(model=LLM, messages=[{"role": "user", "content": "x"}],
                                   max_tokens=2)
    status, body = _get(sim.url + "/metrics")
    text = body.decode()
    assert status == 200
    for name in ("cpbench_sim_queue_depth{", "cpbench_sim_running_sequences{",
                 "cpbench_sim_kv_cache_usage_percent{", "cpbench_sim_requests_total{",
                 "cpbench_sim_request_latency_seconds_bucket{", "cpbench_sim_faults_total{"):
        assert name in text, name
    assert 'cpbench_sim_requests_total{kind="chat",outcome="ok",policy="fifo"}' in text


MALFORMED = [
    ("/v1/chat/completions", b"{not json", 400),
    ("/v1/chat/completions", [1, 2], 400),
    ("/v1/chat/completions", {"messages": [{"role": "user", "content": "x"}]}, 400),
    ("/v1/chat/completions", {"model": 5, "messages": []}, 422),
    ("/v1/chat/completions", {"model": LLM}, 400),
    ("/v1/chat/completions", {"model": LLM, "messages": []}, 400),
    ("/v1/chat/completions", {"model": LLM, "messages": "hi"}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"content": "x"}]}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user", "content": 3}]}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "max_tokens": 0}, 400),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "max_tokens": "9"}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "max_tokens": True}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "stream": "yes"}, 422),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "n": 3}, 400),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user"}], "priority": "urgent"}, 400),
    ("/v1/chat/completions", {"model": "gpt-9", "messages": [{"role": "user"}]}, 404),
    ("/v1/chat/completions", {"model": EMB, "messages": [{"role": "user"}]}, 404),
    ("/v1/chat/completions", {"model": LLM, "messages": [{"role": "user", "content": "x"}],
                              "max_tokens": 5000}, 400),
    ("/v1/completions", {"model": LLM}, 400),
    ("/v1/completions", {"model": LLM, "prompt": {"a": 1}}, 422),
    ("/v1/completions", {"model": LLM, "prompt": ["a", "b"]}, 400),
    ("/v1/embeddings", {"model": EMB}, 400),
    ("/v1/embeddings", {"model": EMB, "input": []}, 400),
    ("/v1/embeddings", {"model": EMB, "input": [""]}, 400),
    ("/v1/embeddings", {"model": EMB, "input": [1.5]}, 422),
    ("/v1/embeddings", {"model": EMB, "input": 7}, 422),
    ("/v1/embeddings", {"model": EMB, "input": "x", "encoding_format": "int8"}, 400),
    ("/v1/embeddings", {"model": EMB, "input": " ".join(["w"] * 600)}, 400),
    ("/v1/embeddings", {"model": LLM, "input": "x"}, 404),
    ("/v1/nothing", {"model": LLM}, 404),
]


@pytest.mark.parametrize("path,body,status", MALFORMED)
def test_malformed_requests_get_openai_errors(sim, path, body, status):
    got, payload = _post(sim.url + path, body)
    assert got == status
    assert set(payload["error"]) == {"message", "type", "param", "code"}
    assert payload["error"]["message"]


@pytest.mark.parametrize("headers", [{"X-Request-Priority": "URGENT"},
                                     {"X-SLO-Deadline-Ms": "soon"}, {"X-SLO-Deadline-Ms": "-5"},
                                     {"X-SLO-Deadline-Ms": "nan"}])
def test_bad_hint_headers_are_400(sim, headers):
    status, payload = _post(sim.url + "/v1/chat/completions",
                            {"model": LLM, "messages": [{"role": "user", "content": "x"}]}, headers)
    assert status == 400 and "X-" in payload["error"]["message"]


def test_wrong_method_is_a_json_error_and_request_id_echoed(sim):
    status, body = _get(sim.url + "/v1/chat/completions")
    assert status == 405 and "error" in json.loads(body)
    req = urllib.request.Request(
        sim.url + "/v1/completions", method="POST", headers={"X-Request-ID": "abc-1"},
        data=json.dumps({"model": LLM, "prompt": "q", "max_tokens": 1}).encode())
    with urllib.request.urlopen(req, timeout=10) as resp:
        assert resp.headers["X-Request-ID"] == "abc-1"


def test_accept_any_model_routes_unknown_names():
    with SimThread(_fast_config(accept_any_model=True)) as s:
        c = OpenAI(base_url=s.url + "/v1", api_key="t", max_retries=0, timeout=10)
        r = c.chat.completions.create(model="llama-3-70b", messages=[{"role": "user", "content": "x"}],
                                      max_tokens=2)
        assert r.model == LLM and r.usage.completion_tokens == 2
        assert len(c.embeddings.create(model="text-embedding-3-small", input="x").data) == 1


def test_config_from_dict_and_errors(tmp_path):
    cfg = config_from_dict({"policy": "priority", "llm": [{"model": "a", "instances": 2},
                                                          {"model": "b"}],
                            "deadline_ms": {"embedding": 100}, "faults": {"error_percent": 5,
                                                                          "error_statuses": [503]}})
    assert [e.model for e in cfg.llm] == ["a", "b"] and cfg.llm[0].instances == 2
    assert cfg.deadline_ms == {"chat": 5000.0, "completion": 5000.0, "embedding": 100}
    assert cfg.faults.error_statuses == (503,)
    bad = [{"polcy": "fifo"}, {"policy": "lifo"}, {"llm": [{"model": "a", "max_running_seqs": 0}]},
           {"llm": [{"model": "a"}], "embedding": [{"model": "a"}]},
           {"faults": {"error_percent": 101}}, {"faults": {"error_statuses": [200]}},
           {"deadline_ms": {"chat": 0}}, {"deadline_ms": {"chta": 100}}, {"llm": [{"model": "a", "kv_cache_tokens": "big"}]}]
    for data in bad:
        with pytest.raises(ConfigError):
            config_from_dict(data)
    path = tmp_path / "sim.json"
    path.write_text(json.dumps({"seed": 3, "llm": [{"model": "m"}]}))
    cfg = resolve_config(path, top={"policy": "slo_aware", "seed": None},
                         llm={"max_running_seqs": 8}, faults={"stall_percent": 1.0})
    assert (cfg.seed, cfg.policy, cfg.llm[0].max_running_seqs) == (3, "slo_aware", 8)
    assert cfg.faults.stall_percent == 1.0
    path.write_text("{oops")
    with pytest.raises(ConfigError, match="not valid JSON"):
        resolve_config(path)


def test_streams_keep_the_connection_alive_with_valid_chunked_framing(sim):
    """Headers, tokens and the chunked terminator are written by the engine, bypassing
    aiohttp's writer: http.client would fail the second request on a broken framing."""
    import http.client
    from urllib.parse import urlsplit

    host = urlsplit(sim.url)
    conn = http.client.HTTPConnection(host.hostname, host.port, timeout=10)
    try:
        for n in (3, 1, 5):
            body = json.dumps({"model": LLM, "messages": [{"role": "user", "content": "k"}],
                               "max_tokens": n, "stream": True})
            conn.request("POST", "/v1/chat/completions", body,
                         {"Content-Type": "application/json"})
            resp = conn.getresponse()
            assert resp.status == 200 and resp.getheader("Transfer-Encoding") == "chunked"
            assert resp.getheader("Content-Type").startswith("text/event-stream")
            text = resp.read().decode()
            assert text.count('"content":') == n and text.endswith("data: [DONE]\n\n")
            events = [json.loads(line[6:]) for line in text.split("\n\n")
                      if line.startswith("data: {")]
            assert events[-1]["choices"][0]["finish_reason"] == "length"
            assert events[-1]["cpbench_server_timing"]["first_token_ns"] > 0
            assert not resp.will_close
    finally:
        conn.close()

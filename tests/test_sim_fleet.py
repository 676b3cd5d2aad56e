"""``cpbench sim --fleet N``: N independent engine servers, each with vLLM's metric names,
SGLang's /get_load and a prefix cache of its own; run through the real CLI."""
from __future__ import annotations

import json
import re
import urllib.request

import pytest

from support import running_fleet

pytestmark = pytest.mark.integration


def _get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as resp:
        return resp.read()


def _chat(url: str, text: str) -> dict:
    body = {"model": "cpbench-llm-7b", "max_tokens": 2,
            "messages": [{"role": "user", "content": text}]}
    req = urllib.request.Request(url + "/v1/chat/completions", json.dumps(body).encode(),
                                 {"Content-Type": "application/json"})
    with urllib.request.urlopen(req, timeout=10) as resp:
        return json.loads(resp.read())


def _metric(text: str, name: str) -> float:
    m = re.search(rf'^{re.escape(name)}{{[^}}]*model_name="cpbench-llm-7b"[^}}]*}} (\S+)$',
                  text, re.M)
    assert m, f"{name} missing"
    return float(m.group(1))


@pytest.fixture()
def fleet(tmp_path):
    with running_fleet(tmp_path / "fleet.json", 2) as started:
        yield started


def test_fleet_ready_file_urls_and_endpoints(fleet):
    proc, ready = fleet
    assert set(ready) == {"urls", "pid"} and ready["pid"] == proc.pid
    urls = ready["urls"]
    assert len(urls) == 2 and len(set(urls)) == 2
    assert all(u.startswith("http://127.0.0.1:") for u in urls)
    printed = [proc.stdout.readline().strip() for _ in urls]
    assert printed == urls
    for url in urls:
        assert json.loads(_get(url + "/health")) == {"status": "ok"}
        models = [m["id"] for m in json.loads(_get(url + "/v1/models"))["data"]]
        assert models == ["cpbench-llm-7b"]                    # one LLM engine, no embeddings
        load = json.loads(_get(url + "/get_load"))
        assert load == [{"dp_rank": 0, "num_reqs": 0, "num_waiting_reqs": 0, "num_tokens": 0}]


def test_fleet_engines_cache_prefixes_independently(fleet):
    _, ready = fleet
    first, second = ready["urls"]
    shared = " ".join(f"s{i}" for i in range(64))          # 4 blocks of 16 words
    _chat(first, shared + " one")
    _chat(first, shared + " two")
    text = _get(first + "/metrics").decode()
    assert _metric(text, "vllm:prefix_cache_queries_total") == 130.0
    assert _metric(text, "vllm:prefix_cache_hits_total") == 64.0
    assert _metric(text, "vllm:num_requests_running") == 0.0
    assert _metric(text, "vllm:num_requests_waiting") == 0.0
    assert _metric(text, "vllm:kv_cache_usage_perc") == 0.0
    assert _metric(text, "vllm:time_to_first_token_seconds_count") == 2.0
    other = _get(second + "/metrics").decode()
    assert _metric(other, "vllm:prefix_cache_queries_total") == 0.0   # nothing shared
    # the same prefix on the second engine misses there: its cache is its own
    _chat(second, shared + " three")
    assert _metric(_get(second + "/metrics").decode(), "vllm:prefix_cache_hits_total") == 0.0


def test_bad_fleet_size_is_one_line_and_fleet_seeds_are_spawned(tmp_path):
    from cpbench.cli import main
    from cpbench.errors import ConfigError
    from cpbench.sim.config import SimConfig
    from cpbench.sim.fleet import fleet_configs

    with pytest.raises(ConfigError, match="--fleet must be 1..256"):
        fleet_configs(SimConfig(), 0)
    cfgs = fleet_configs(SimConfig(seed=7), 3)
    assert len({c.seed for c in cfgs}) == 3 and all(c.embedding == [] for c in cfgs)
    assert [c.seed for c in cfgs] == [c.seed for c in fleet_configs(SimConfig(seed=7), 3)]
    assert main(["sim", "--fleet", "0", "--port", "0"]) == 2

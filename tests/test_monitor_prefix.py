"""The run's prefix-cache hit ratio from vLLM's counters in monitor data: exact increases,
summed over instances, counter resets counted; nothing reported without counters."""
from __future__ import annotations

import pyarrow as pa

from cpbench.monitor.prefix import format_prefix_cache, prefix_cache_summary
from cpbench.monitor.store import MONITOR_SCHEMA


def _table(rows: list[tuple[int, str, str, float]]) -> pa.Table:
    cols = list(zip(*rows))
    return pa.Table.from_arrays([pa.array(c) for c in cols], schema=MONITOR_SCHEMA)


Q = 'vllm:prefix_cache_queries_total{engine="0",model_name="m"}'
H = 'vllm:prefix_cache_hits_total{engine="0",model_name="m"}'


def test_hit_ratio_is_summed_increase_over_instances():
    a, b = "http://127.0.0.1:1/metrics", "http://127.0.0.1:2/metrics"
    table = _table([
        (0, a, Q, 100.0), (0, a, H, 40.0), (0, b, Q, 0.0), (0, b, H, 0.0),
        (1, a, Q, 300.0), (1, a, H, 140.0), (1, b, Q, 50.0), (1, b, H, 0.0),
        (2, a, Q, 500.0), (2, a, H, 240.0), (2, b, Q, 20.0), (2, b, H, 10.0),   # b restarted
        (1, a, "vllm:num_requests_running", 3.0),
    ])
    out = prefix_cache_summary(table)
    # a: queries +400, hits +200; b: +50 then reset to 20 -> +70 queries, hits +10
    assert out["prefix_cache"] == {"hit_ratio": 210 / 470, "hits_tokens": 210,
                                   "queries_tokens": 470, "instances": 2}
    assert out["prefix_hit_ratio"] == 210 / 470
    assert format_prefix_cache(out) == ("prefix cache  hit ratio 44.7%  (210 of 470 prompt "
                                        "tokens, 2 instances)")


def test_nothing_without_counters_and_none_without_queries():
    assert prefix_cache_summary(_table([(0, "s", "vllm:num_requests_running", 1.0)])) == {}
    assert prefix_cache_summary(pa.Table.from_pylist([], schema=MONITOR_SCHEMA)) == {}
    idle = prefix_cache_summary(_table([(0, "s", Q, 5.0), (1, "s", Q, 5.0), (0, "s", H, 1.0)]))
    assert idle["prefix_hit_ratio"] is None and idle["prefix_cache"]["queries_tokens"] == 0

"""The prefix-cache hit ratio of a run, from vLLM's counters in the scraped ``/metrics``.

vLLM counts prompt tokens looked up in its prefix cache (``vllm:prefix_cache_queries``) and
the tokens found there (``vllm:prefix_cache_hits``), per engine (labels ``model_name``,
``engine``); cpbench's sim fleet exposes the same counters. Over a run, the ratio is the sum
over every scraped series of each counter's increase, hits over queries: the share of prompt
tokens the engines did not have to prefill. A counter that goes down (an engine restarted)
counts its value after the reset as increase, as Prometheus' ``increase`` does.

It reads the long ``monitor.arrow`` table (``t_ns, source, metric, value``) and hands the
summary a small dict; nothing is reported for runs whose targets expose no such counters.
"""
from __future__ import annotations

from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc

HITS = "vllm:prefix_cache_hits_total"
QUERIES = "vllm:prefix_cache_queries_total"
SERIES = (QUERIES, HITS)        # for the scraper's default selection


def _increase(values: np.ndarray) -> float:
    """A counter's increase over its samples (in time order), resets counted."""
    if values.size < 2:
        return 0.0
    steps = np.diff(values)
    return float(np.where(steps >= 0, steps, values[1:]).sum())


def prefix_cache_summary(monitor: pa.Table) -> dict[str, Any]:
    """``{"prefix_hit_ratio": ..., "prefix_cache": {...}}`` of a run, or ``{}`` without
    counters.

    ``prefix_cache`` holds ``hits_tokens`` and ``queries_tokens`` (increases summed over
    instances), ``instances`` (series scraped) and ``hit_ratio`` (same as
    ``prefix_hit_ratio``; None when nothing was queried during the run).
    """
    if monitor.num_rows == 0:
        return {}
    metric = monitor.column("metric")
    totals = {}
    instances = 0
    for name in SERIES:
        mask = pc.starts_with(metric, name + "{")
        mask = pc.or_(mask, pc.equal(metric, name))
        rows = monitor.filter(mask)
        if rows.num_rows == 0:
            return {}
        keys = pc.binary_join_element_wise(rows.column("source"), rows.column("metric"), "\n")
        order = np.lexsort((rows.column("t_ns").to_numpy(), ))
        keys_sorted = keys.to_numpy(zero_copy_only=False)[order]
        values = rows.column("value").to_numpy()[order]
        total = 0.0
        series = np.unique(keys_sorted)
        for key in series:
            total += _increase(values[keys_sorted == key])
        totals[name] = total
        if name == QUERIES:
            instances = len(series)
    hits, queries = totals[HITS], totals[QUERIES]
    ratio = hits / queries if queries > 0 else None
    return {"prefix_hit_ratio": ratio,
            "prefix_cache": {"hit_ratio": ratio, "hits_tokens": int(round(hits)),
                             "queries_tokens": int(round(queries)), "instances": instances}}


def format_prefix_cache(summary: dict[str, Any]) -> str:
    """The console line of a summary's prefix-cache entry."""
    pc_ = summary["prefix_cache"]
    ratio = pc_["hit_ratio"]
    shown = "-" if ratio is None else f"{100.0 * ratio:.1f}%"
    return (f"prefix cache  hit ratio {shown}  ({pc_['hits_tokens']:,} of "
            f"{pc_['queries_tokens']:,} prompt tokens, {pc_['instances']} "
            f"instance{'s' if pc_['instances'] != 1 else ''})")

"""Prometheus metrics of the embedded control plane, served as text at ``GET /metrics``.

Counters and latency histograms are updated once per finished request; queue depths, running
sequences, KV-cache use and fault counts are read from the live scheduler at scrape time, so
the hot path pays nothing for them. Each app has its own registry (several sims may share a
process in tests). cpbench's own ``cpbench_sim_*`` percents are in [0, 100]; latencies are
seconds, as Prometheus expects.

Each LLM engine also reports under vLLM's names and labels (``model_name``, ``engine``), so
a router or dashboard built for vLLM reads the sim unchanged (vllm/v1/metrics/loggers.py,
``PrometheusStatLogger``): ``vllm:num_requests_running``, ``vllm:num_requests_waiting``,
``vllm:kv_cache_usage_perc`` (a fraction, 1 = full, as vLLM's), the counters
``vllm:prefix_cache_queries_total`` and ``vllm:prefix_cache_hits_total`` (tokens) and the
``vllm:time_to_first_token_seconds`` histogram with vLLM's buckets.
"""
from __future__ import annotations

from typing import Any, Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_BUCKETS_S = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)
# vLLM's buckets for vllm:time_to_first_token_seconds.
_VLLM_TTFT_BUCKETS_S = (0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0,
                        2.5, 5.0, 7.5, 10.0, 20.0, 40.0, 80.0, 160.0, 640.0, 2560.0)
_VLLM_LABELS = ["model_name", "engine"]


def llm_waiting(scheduler: Any, model: str) -> int:
    """Requests for ``model`` waiting in the control plane (vLLM's waiting queue).

    The sim's policy queue is shared by every model; it is attributed to a model exactly when
    the sim serves one LLM model and nothing else (a fleet engine), else to the first LLM model.
    """
    llm = [name for name, kind in scheduler.models() if kind == "llm"]
    return len(scheduler.policy) if llm and model == llm[0] else 0


class _VllmCollector:
    """vLLM's gauges and prefix-cache counters, read from the LLM engines when scraped."""

    def __init__(self, scheduler: Any) -> None:
        self._scheduler = scheduler

    def collect(self) -> Iterator[Any]:
        sched = self._scheduler
        running = GaugeMetricFamily("vllm:num_requests_running", "Number of requests in model "
                                    "execution batches.", labels=_VLLM_LABELS)
        waiting = GaugeMetricFamily("vllm:num_requests_waiting", "Number of requests waiting "
                                    "to be processed.", labels=_VLLM_LABELS)
        usage = GaugeMetricFamily("vllm:kv_cache_usage_perc", "KV-cache usage. 1 means 100 "
                                  "percent usage.", labels=_VLLM_LABELS)
        queries = CounterMetricFamily("vllm:prefix_cache_queries", "Prefix cache queries, in "
                                      "terms of number of queried tokens.", labels=_VLLM_LABELS)
        hits = CounterMetricFamily("vllm:prefix_cache_hits", "Prefix cache hits, in terms of "
                                   "number of cached tokens.", labels=_VLLM_LABELS)
        for engine in sched.all_engines():
            if engine.engine_kind != "llm":
                continue
            labels = [engine.cfg.model, str(engine.index)]
            running.add_metric(labels, engine.load())
            waiting.add_metric(labels, llm_waiting(sched, engine.cfg.model)
                               if engine.index == 0 else 0)
            usage.add_metric(labels, engine.kv_used_tokens / engine.cfg.kv_cache_tokens)
            if engine.prefix_cache.enabled:
                queries.add_metric(labels, engine.prefix_cache.queries_tokens)
                hits.add_metric(labels, engine.prefix_cache.hits_tokens)
        yield from (running, waiting, usage, queries, hits)
        evictions = CounterMetricFamily("cpbench_sim_prefix_cache_evictions", "Prefix-cache "
                                        "blocks evicted (LRU)", labels=["engine", "model"])
        blocks = GaugeMetricFamily("cpbench_sim_prefix_cache_blocks", "Prefix-cache blocks "
                                   "held", labels=["engine", "model"])
        for engine in sched.all_engines():
            if engine.engine_kind == "llm" and engine.prefix_cache.enabled:
                labels = [engine.name, engine.cfg.model]
                evictions.add_metric(labels, engine.prefix_cache.evictions_blocks)
                blocks.add_metric(labels, len(engine.prefix_cache))
        yield from (evictions, blocks)


class _LiveCollector:
    """Gauges read from the scheduler when scraped."""

    def __init__(self, scheduler: Any, faults: Any) -> None:
        self._scheduler = scheduler
        self._faults = faults

    def collect(self) -> Iterator[Any]:
        sched = self._scheduler
        policy = sched.policy
        depth = GaugeMetricFamily("cpbench_sim_queue_depth", "Requests waiting in the control "
                                  "plane, per policy queue", labels=["queue", "policy"])
        for queue, n in policy.depths().items():
            depth.add_metric([queue, policy.name], n)
        yield depth
        info = GaugeMetricFamily("cpbench_sim_policy", "The active scheduling policy (1)",
                                 labels=["policy"])
        info.add_metric([policy.name], 1)
        yield info
        running = GaugeMetricFamily("cpbench_sim_running_sequences", "Sequences (LLM) or "
                                    "requests (embedding) on an engine", labels=["engine", "model"])
        waiting = GaugeMetricFamily("cpbench_sim_engine_waiting", "Admitted, waiting for prefill "
                                    "(LLM) or the next batch (embedding)", labels=["engine", "model"])
        kv_pct = GaugeMetricFamily("cpbench_sim_kv_cache_usage_percent", "KV cache reserved, "
                                   "percent of capacity", labels=["engine", "model"])
        kv_tok = GaugeMetricFamily("cpbench_sim_kv_cache_used_tokens", "KV cache reserved, tokens",
                                   labels=["engine", "model"])
        for engine in sched.all_engines():
            labels = [engine.name, engine.cfg.model]
            if engine.engine_kind == "llm":
                running.add_metric(labels, len(engine.running))
                waiting.add_metric(labels, len(engine.prefilling))
                kv_tok.add_metric(labels, engine.kv_used_tokens)
                kv_pct.add_metric(labels, 100.0 * engine.kv_used_tokens
                                  / engine.cfg.kv_cache_tokens)
            else:
                running.add_metric(labels, len(engine.running))
                waiting.add_metric(labels, len(engine.pending))
        yield from (running, waiting, kv_pct, kv_tok)
        steps = CounterMetricFamily("cpbench_sim_engine_steps", "GPU steps run by an LLM engine "
                                    "(decode steps, with any co-located embedding batch)",
                                    labels=["engine", "model"])
        modelled = CounterMetricFamily("cpbench_sim_engine_modelled_step_seconds", "Sum of the "
                                       "modelled step times", labels=["engine", "model"])
        actual = CounterMetricFamily("cpbench_sim_engine_actual_step_seconds", "Sum of the times "
                                     "between consecutive steps' token writes (pacing as run)",
                                     labels=["engine", "model"])
        for engine in sched.all_engines():
            if engine.engine_kind == "llm":
                labels = [engine.name, engine.cfg.model]
                steps.add_metric(labels, engine.steps)
                modelled.add_metric(labels, engine.modelled_ns_total / 1e9)
                actual.add_metric(labels, engine.actual_ns_total / 1e9)
        yield from (steps, modelled, actual)
        counts = sched.stats()
        preempted = CounterMetricFamily("cpbench_sim_preemptions", "LLM sequences preempted "
                                        "(KV cache freed, recomputed when admitted again)",
                                        labels=["policy"])
        for name, n in counts["preempted"].items():
            preempted.add_metric([name], n)
        hopeless = CounterMetricFamily("cpbench_sim_hopeless_requests", "Requests a "
                                       "deadline-aware policy set aside as unable to meet their "
                                       "deadline (served last)", labels=["policy", "kind"])
        for name, kinds in counts["hopeless"].items():
            for kind, n in kinds.items():
                hopeless.add_metric([name, kind], n)
        yield from (preempted, hopeless)
        faults = CounterMetricFamily("cpbench_sim_faults", "Faults injected, by mode",
                                     labels=["mode"])
        for mode, n in self._faults.counts.items():
            faults.add_metric([mode], n)
        yield faults


class SimMetrics:
    """The registry of one sim app and the per-request updates."""

    def __init__(self, scheduler: Any, faults: Any) -> None:
        self.registry = CollectorRegistry(auto_describe=False)
        self.requests = Counter("cpbench_sim_requests", "Requests answered, by kind, policy and "
                                "outcome", ["kind", "policy", "outcome"], registry=self.registry)
        self.latency = Histogram("cpbench_sim_request_latency_seconds", "Server-side latency "
                                 "from arrival: queue (until an engine took it), ttft (first "
                                 "token or embedding result), e2e", ["kind", "policy", "phase"],
                                 buckets=_BUCKETS_S, registry=self.registry)
        self.registry.register(_LiveCollector(scheduler, faults))
        self.registry.register(_VllmCollector(scheduler))
        self.vllm_ttft = Histogram("vllm:time_to_first_token_seconds", "Histogram of time to "
                                   "first token in seconds.", _VLLM_LABELS,
                                   buckets=_VLLM_TTFT_BUCKETS_S, registry=self.registry)
        # vLLM's counters (vllm/v1/metrics/loggers.py): per engine, success by finish reason.
        self.vllm_success = Counter("vllm:request_success", "Count of successfully processed "
                                    "requests.", _VLLM_LABELS + ["finished_reason"],
                                    registry=self.registry)
        self.vllm_prompt_tokens = Counter("vllm:prompt_tokens", "Number of prefill tokens "
                                          "processed.", _VLLM_LABELS, registry=self.registry)
        self.vllm_generation_tokens = Counter("vllm:generation_tokens", "Number of generation "
                                              "tokens processed.", _VLLM_LABELS,
                                              registry=self.registry)
        # Label lookups cost more than the updates; the label sets are few, so keep them.
        self._children: dict[tuple[str, str], tuple[Any, Any, Any, Any, Any]] = {}

    def finished(self, req: Any) -> None:
        """Count one request the engines finished (completed or aborted)."""
        key = (req.kind, req.policy)
        children = self._children.get(key)
        if children is None:
            children = self._children[key] = (
                self.requests.labels(req.kind, req.policy, "ok"),
                self.requests.labels(req.kind, req.policy, "aborted"),
                self.latency.labels(req.kind, req.policy, "queue"),
                self.latency.labels(req.kind, req.policy, "ttft"),
                self.latency.labels(req.kind, req.policy, "e2e"))
        ok, aborted, queue, ttft, e2e = children
        if req.aborted:
            aborted.inc()
            return
        ok.inc()
        received = req.received_ns
        if req.admitted_ns:
            queue.observe((req.admitted_ns - received) / 1e9)
        ttft_s = ((req.first_token_ns or req.done_ns) - received) / 1e9
        ttft.observe(ttft_s)
        if req.engine_kind == "llm":
            self.vllm_ttft.labels(req.model, str(req.engine_index)).observe(ttft_s)
            self._vllm_finished(req)
        e2e.observe((req.done_ns - received) / 1e9)

    def _vllm_finished(self, req: Any) -> None:
        """vLLM's per-engine request and token counters, so a router's balance across a fleet
        is read from the engines (requests and tokens each one served), as from real vLLM."""
        engine = (req.model, str(req.engine_index))
        reason = "length" if req.generated >= req.max_tokens else "stop"
        self.vllm_success.labels(*engine, reason).inc()
        self.vllm_prompt_tokens.labels(*engine).inc(req.prompt_tokens)
        self.vllm_generation_tokens.labels(*engine).inc(req.generated)

    def rejected(self, kind: str, policy: str, status: int) -> None:
        """Count one request answered with an error status."""
        self.requests.labels(kind, policy, f"http_{status}").inc()

    def render(self) -> bytes:
        """The Prometheus text exposition."""
        return generate_latest(self.registry)

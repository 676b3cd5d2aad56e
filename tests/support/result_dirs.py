"""A factory of realistic result directories for the report tests and benchmark.

Writes ``results.arrow`` and ``monitor.arrow`` as docs/formats.md describes, from a seeded
synthetic run (Poisson arrivals, lognormal TTFT and inter-token gaps, embedding batches, a small
error share, SLO flags from the intended time), and ``summary.json`` through the real
``cpbench.summary.summarize``, so the report is tested against the shape replay writes.
Everything is vectorised so the 10^6-row benchmark builds its input in seconds.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pyarrow as pa

PRIORITIES = ("HIGH", "NORMAL", "LOW")
NS_PER_MS = 1_000_000


def _dict_array(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values))


def make_results_table(n_requests: int, *, rate_rps: float, llm_ratio: float, seed: int,
                       model_name: str, error_detail: str, error_ratio: float,
                       stall_ms: float = 0.0) -> pa.Table:
    """One synthetic run's ``results.arrow`` table (columns of docs/formats.md)."""
    rng = np.random.default_rng(seed)
    n = n_requests
    intended = np.cumsum(rng.exponential(1e9 / rate_rps, n)).astype(np.int64)
    lag = rng.exponential(60_000, n).astype(np.int64)
    lag[rng.random(n) < 0.002] += int(5 * NS_PER_MS)  # occasional client hiccup
    sent = intended + lag
    is_chat = rng.random(n) < llm_ratio
    prio = rng.choice(3, n, p=[0.2, 0.6, 0.2])
    batch = np.where(is_chat, 1, rng.choice([1, 4, 8, 16, 32], n)).astype(np.int16)
    out_tokens = np.where(is_chat, rng.integers(16, 256, n), 0).astype(np.int32)
    in_tokens = np.where(is_chat, rng.integers(64, 1024, n), 128).astype(np.int32)
    # Load grows over the run so the time charts have a visible trend.
    load = 1.0 + 1.5 * np.arange(n) / max(n - 1, 1)
    ttft = (rng.lognormal(np.log(40e6), 0.5, n) * load).astype(np.int64)
    ttft += (prio * 15 * NS_PER_MS).astype(np.int64)  # lower priority waits longer
    emb = (rng.lognormal(np.log(4e6), 0.3, n) * (1 + batch / 8.0)).astype(np.int64)
    itl_mean = rng.lognormal(np.log(15e6), 0.25, n).astype(np.int64)
    if stall_ms:
        stall = (intended > intended[n // 2]) & (intended < intended[n // 2] + 1e9)
        ttft[stall] += int(stall_ms * NS_PER_MS)
    first_token = np.where(is_chat, sent + ttft, sent + emb)
    done = np.where(is_chat, first_token + itl_mean * np.maximum(out_tokens - 1, 0), first_token)
    first_byte = first_token - rng.integers(0, 200_000, n)
    failed = rng.random(n) < error_ratio
    err_kind = rng.choice(2, n)
    status = np.where(failed, np.where(err_kind == 0, 500, 0), 200).astype(np.int16)
    slo_ttft = np.where(is_chat, np.where(prio == 0, 150.0, 400.0), 100.0).astype(np.float32)
    slo_e2e = np.where(is_chat, 8000.0, 100.0).astype(np.float32)
    ttft_met = (first_token - intended) / NS_PER_MS <= slo_ttft
    e2e_met = (done - intended) / NS_PER_MS <= slo_e2e
    ttft_met &= ~failed
    e2e_met &= ~failed
    detail = np.where(failed, np.where(err_kind == 0, error_detail, "read timeout after 30 s"),
                      None)
    err = pa.DictionaryArray.from_arrays(
        pa.array(err_kind.astype(np.int32), mask=~failed), pa.array(["http_5xx", "timeout"]))
    columns = {
        "row": pa.array(np.arange(n, dtype=np.int64)),
        "kind": _dict_array(np.where(is_chat, 0, 1), ["chat", "embedding"]),
        "priority": _dict_array(prio, list(PRIORITIES)),
        "model": _dict_array(np.where(is_chat, 0, 1), [model_name, "bge-small-en"]),
        "worker": pa.array((np.arange(n) % 2).astype(np.int16)),
        "intended_ns": pa.array(intended),
        "sent_ns": pa.array(sent),
        "first_byte_ns": pa.array(first_byte, mask=failed),
        "first_token_ns": pa.array(first_token, mask=failed),
        "done_ns": pa.array(np.where(failed, sent + 30 * NS_PER_MS, done)),
        "input_tokens": pa.array(in_tokens),
        "output_tokens": pa.array(np.where(failed, 0, out_tokens).astype(np.int32)),
        "batch_size": pa.array(batch),
        "status": pa.array(status),
        "error_class": err,
        "error_detail": pa.array(detail, type=pa.string()),
        "itl_mean_ns": pa.array(itl_mean, mask=failed | ~is_chat),
        "itl_max_ns": pa.array(itl_mean * 3, mask=failed | ~is_chat),
        "slo_ttft_ms": pa.array(slo_ttft),
        "slo_e2e_ms": pa.array(slo_e2e),
        "slo_ttft_met": pa.array(ttft_met),
        "slo_e2e_met": pa.array(e2e_met),
        "slo_met": pa.array(ttft_met & e2e_met),
        "warmup": pa.array(np.arange(n) < n // 100),
    }
    return pa.table(columns)


def make_summary(table: pa.Table, *, policy: str | None, options: dict,
                 gpu_available: bool, with_histograms: bool = True) -> dict:
    """``summary.json`` for ``table``, written by the real ``cpbench.summary.summarize``.

    The run and monitor blocks are the caller's (replay's) part; they are filled in here as
    docs/formats.md shows them. The per-request mean gaps stand in for the streamed ITL
    histogram, which only a live run records.
    """
    from cpbench._core.hist import Histogram
    from cpbench.summary import summarize

    live = ~table.column("warmup").to_numpy(zero_copy_only=False)
    intended = table.column("intended_ns").to_numpy()[live]
    done = table.column("done_ns").to_numpy()[live]
    itl = Histogram()
    itl.record_array(table.filter(pa.array(live)).column("itl_mean_ns").drop_null().to_numpy())
    run = {"trace": "traces/medium.arrow", "trace_sha256": "0" * 64,
           "target": "http://127.0.0.1:8000", "embedded_target": True, "policy": policy,
           "started_utc": "2026-11-28T02:00:00Z",
           "duration_s": float(done.max() - intended.min()) / 1e9 if live.any() else 0.0,
           "interrupted": False, "workers": 2, "options": options}
    summary = summarize(table, itl_hist=itl, run=run)
    if not with_histograms:
        del summary["histograms"]
    gpu = {"available": True, "devices": ["gpu0", "gpu1"]} if gpu_available else {
        "available": False, "reason": "NVML could not start: NVML Shared Library Not Found"}
    summary["monitor"] = {
        "gpu": gpu,
        "prometheus": [{"url": "http://127.0.0.1:8000/metrics", "scrapes": 60, "failures": 0,
                        "last_error": None, "series": 3, "interval_s": 1.0}],
        "client_cpu": {"cores": 2, "mean_pct": 41.0, "max_pct": 88.0, "host_mean_pct": 63.0,
                       "host_max_pct": 100.0, "source": "/proc"}}
    return summary


def make_monitor_table(duration_s: float, *, gpu: bool, seed: int,
                       server_label: str = "fifo") -> pa.Table:
    """A long-format ``monitor.arrow`` table: GPU, server and client series every 0.5 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, duration_s, 0.5)
    rows: list[tuple[str, str, np.ndarray]] = []
    if gpu:
        for g in ("gpu0", "gpu1"):
            rows.append((g, "gpu_util_pct", np.clip(rng.normal(70, 10, t.size), 0, 100)))
            rows.append((g, "memory_used_bytes", 40e9 + 1e8 * np.arange(t.size)))
            rows.append((g, "memory_total_bytes", np.full(t.size, 80e9)))
            rows.append((g, "power_w", rng.normal(450, 30, t.size)))
    # Series names as cpbench.monitor stores them: Prometheus labels kept in the metric.
    url = "http://127.0.0.1:8000/metrics"
    rows.append((url, f'cpbench_sim_queue_depth{{policy="{server_label}",queue="global"}}',
                 rng.poisson(5, t.size).astype(float)))
    for engine in ("llm", "embed"):
        rows.append((url, f'cpbench_sim_running_sequences{{engine="{engine}/0"}}',
                     rng.poisson(20, t.size).astype(float)))
    rows.append(("client", "cpu_tree_pct", np.clip(rng.normal(40, 8, t.size), 0, 100)))
    rows.append(("client", "cpu_host_pct", np.clip(rng.normal(60, 8, t.size), 0, 100)))
    rows.append(("client", "processes", np.full(t.size, 3.0)))
    t_ns = (t * 1e9).astype(np.int64)
    return pa.table({
        "t_ns": pa.array(np.concatenate([t_ns for _ in rows])),
        "source": pa.array(np.concatenate([[s] * t.size for s, _, _ in rows]).tolist()),
        "metric": pa.array(np.concatenate([[m] * t.size for _, m, _ in rows]).tolist()),
        "value": pa.array(np.concatenate([v for _, _, v in rows])),
    })


def write_arrow(table: pa.Table, path: Path, metadata: dict | None = None) -> None:
    if metadata:
        table = table.replace_schema_metadata(metadata)
    with pa.OSFile(str(path), "wb") as sink, pa.ipc.new_file(sink, table.schema) as writer:
        writer.write_table(table, max_chunksize=65_536)


def make_result_dir(path: Path, *, n_requests: int = 3000, rate_rps: float = 100.0,
                    llm_ratio: float = 0.7, seed: int = 1, policy: str | None = "fifo",
                    model_name: str = "llama-3-8b", error_detail: str = "HTTP 500: overloaded",
                    error_ratio: float = 0.01, monitor: bool = True, gpu: bool = False,
                    with_histograms: bool = True, options: dict | None = None,
                    server_label: str = "fifo") -> Path:
    """Write a results directory (results.arrow, summary.json, monitor.arrow) and return it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    table = make_results_table(n_requests, rate_rps=rate_rps, llm_ratio=llm_ratio, seed=seed,
                               model_name=model_name, error_detail=error_detail,
                               error_ratio=error_ratio)
    opts = {"rate": rate_rps, "llm_ratio": llm_ratio} if options is None else options
    summary = make_summary(table, policy=policy, options=opts, gpu_available=gpu,
                           with_histograms=with_histograms)
    run_meta = {k: summary["run"][k] for k in ("target", "policy", "started_utc")}
    write_arrow(table, path / "results.arrow", {b"cpbench.run": json.dumps(run_meta).encode()})
    (path / "summary.json").write_text(json.dumps(summary, indent=1))
    if monitor:
        write_arrow(make_monitor_table(summary["run"]["duration_s"], gpu=gpu, seed=seed,
                                       server_label=server_label), path / "monitor.arrow")
    return path

"""A factory of realistic result directories for the report tests and benchmark.

The replay, stats and monitor stages write these files for real; the report must not wait for
them, so this module writes ``results.arrow``, ``summary.json`` and ``monitor.arrow`` exactly as
docs/formats.md describes, from a seeded synthetic run: Poisson arrivals, lognormal TTFT and
inter-token gaps, embedding batches, a small error share, SLO flags from the intended time.
Everything is vectorised so the 10^6-row benchmark builds its input in seconds.
"""
from __future__ import annotations

import base64
import json
from pathlib import Path

import numpy as np
import pyarrow as pa

PRIORITIES = ("HIGH", "NORMAL", "LOW")
PERCENTS = (50.0, 90.0, 95.0, 99.0, 99.9)
NS_PER_MS = 1_000_000


def _histogram_class():
    """The stats core's histogram, or None while it is not built yet."""
    try:
        from cpbench._core.hist import Histogram
    except ImportError:
        return None
    return Histogram


def _dict_array(indices: np.ndarray, values: list[str]) -> pa.DictionaryArray:
    return pa.DictionaryArray.from_arrays(pa.array(indices.astype(np.int32)), pa.array(values))


def _latency_summary(values_ns: np.ndarray) -> dict:
    if values_ns.size == 0:
        return {"count": 0}
    ms = values_ns / NS_PER_MS
    out = {"count": int(ms.size), "mean": float(ms.mean()), "min": float(ms.min()),
           "max": float(ms.max())}
    for p, v in zip(PERCENTS, np.percentile(ms, PERCENTS)):
        out[f"p{p:g}"] = float(v)
    return out


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
    detail = np.where(failed, np.where(err_kind == 0, error_detail, "read timeout after 30 s"), None)
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


def _class_entry(t: dict, sel: np.ndarray, duration_s: float, **keys) -> dict:
    ok = sel & ~t["failed"]
    entry = dict(keys)
    entry.update({
        "requests": int(sel.sum()), "completed": int(ok.sum()),
        "errors": int((sel & t["failed"]).sum()),
        "ttft_met": int(t["ttft_met"][sel].sum()), "e2e_met": int(t["e2e_met"][sel].sum()),
        "slo_met": int(t["slo_met"][sel].sum()),
    })
    entry["attainment"] = 100.0 * entry["slo_met"] / max(entry["requests"], 1)
    entry["goodput_rps"] = entry["slo_met"] / duration_s
    entry["latency_ms"] = {
        "ttft_from_intended": _latency_summary(t["ttft_i"][ok]),
        "e2e_from_intended": _latency_summary(t["e2e_i"][ok]),
    }
    return entry


def _timeslices(t: dict, slice_s: float) -> dict:
    slice_ns = int(slice_s * 1e9)
    n_slices = int(t["done"].max() // slice_ns) + 1
    bins = lambda ns: np.bincount((ns // slice_ns).astype(np.int64), minlength=n_slices)[:n_slices]  # noqa: E731
    ok = ~t["failed"]
    done_slice = (t["done"] // slice_ns).astype(np.int64)
    ts = {"slice_s": slice_s, "t_s": [i * slice_s for i in range(n_slices)],
          "scheduled": bins(t["intended"]).tolist(), "sent": bins(t["sent"]).tolist(),
          "completed": bins(t["done"][ok]).tolist(), "errors": bins(t["done"][~ok]).tolist(),
          "output_tokens": np.bincount(done_slice, weights=t["out"], minlength=n_slices)
          [:n_slices].astype(np.int64).tolist(),
          "slo_met": bins(t["done"][t["slo_met"]]).tolist()}
    started = np.cumsum(bins(t["sent"]))
    ts["in_flight"] = (started - np.cumsum(bins(t["done"]))).tolist()
    order = np.argsort(done_slice[ok], kind="stable")
    groups = np.split(order, np.searchsorted(done_slice[ok][order], np.arange(1, n_slices)))
    for name, values in (("ttft", t["ttft_i"][ok]), ("e2e", t["e2e_i"][ok]),
                         ("lag", t["lag"][ok])):
        p50, p99 = [], []
        for g in groups:
            if g.size:
                a, b = np.percentile(values[g], [50, 99]) / NS_PER_MS
                p50.append(float(a))
                p99.append(float(b))
            else:
                p50.append(None)
                p99.append(None)
        if name != "lag":
            ts[f"{name}_p50_ms"] = p50
        ts[f"{name}_p99_ms"] = p99
    return ts


def make_summary(table: pa.Table, *, policy: str | None, options: dict,
                 gpu_available: bool, with_histograms: bool = True) -> dict:
    """A ``summary.json`` dict for ``table`` in the shape of docs/formats.md."""
    c = {name: table.column(name) for name in table.column_names}
    live = ~c["warmup"].to_numpy(zero_copy_only=False)
    np_col = lambda name, fill=0: c[name].fill_null(fill).to_numpy(zero_copy_only=False)[live]  # noqa: E731
    t = {"intended": np_col("intended_ns"), "sent": np_col("sent_ns"), "done": np_col("done_ns"),
         "first": np_col("first_token_ns"), "out": np_col("output_tokens"),
         "failed": c["error_class"].is_valid().to_numpy(zero_copy_only=False)[live],
         "ttft_met": np_col("slo_ttft_met", False), "e2e_met": np_col("slo_e2e_met", False),
         "slo_met": np_col("slo_met", False), "itl": np_col("itl_mean_ns")}
    kind = np.asarray(c["kind"].to_numpy(zero_copy_only=False))[live]
    prio = np.asarray(c["priority"].to_numpy(zero_copy_only=False))[live]
    t["lag"] = t["sent"] - t["intended"]
    t["ttft_i"], t["ttft_s"] = t["first"] - t["intended"], t["first"] - t["sent"]
    t["e2e_i"], t["e2e_s"] = t["done"] - t["intended"], t["done"] - t["sent"]
    ok = ~t["failed"]
    duration_s = float(t["done"].max() - t["intended"].min()) / 1e9
    n_live = int(live.sum())
    summary = {
        "cpbench_version": "0.1.0",
        "run": {"trace": "traces/medium.arrow", "trace_sha256": "0" * 64,
                "target": "http://127.0.0.1:8000", "embedded_target": True, "policy": policy,
                "started_utc": "2026-11-28T02:00:00Z", "duration_s": duration_s,
                "interrupted": False, "workers": 2, "options": options},
        "requests": {"scheduled": int(table.num_rows), "sent": int(table.num_rows),
                     "completed": int(ok.sum()), "errors": int(t["failed"].sum()),
                     "warmup": int(table.num_rows - n_live),
                     "by_error_class": {}},
        "rates": {"scheduled_rps": n_live / duration_s, "achieved_rps": n_live / duration_s,
                  "completed_rps": float(ok.sum()) / duration_s,
                  "output_tps": float(t["out"].sum()) / duration_s},
    }
    lag = _latency_summary(t["lag"])
    summary["dispatch_lag_ms"] = {k: v for k, v in lag.items() if k != "count"}
    errs = c["error_class"].dictionary_decode() if hasattr(c["error_class"], "dictionary_decode") \
        else c["error_class"].cast(pa.string())
    names, counts = np.unique(np.asarray(errs.to_numpy(zero_copy_only=False))[live][t["failed"]],
                              return_counts=True)
    summary["requests"]["by_error_class"] = {str(k): int(v) for k, v in zip(names, counts)}
    chat_ok = ok & (kind == "chat")
    summary["latency_ms"] = {
        "ttft_from_sent": _latency_summary(t["ttft_s"][ok]),
        "ttft_from_intended": _latency_summary(t["ttft_i"][ok]),
        "e2e_from_sent": _latency_summary(t["e2e_s"][ok]),
        "e2e_from_intended": _latency_summary(t["e2e_i"][ok]),
        "itl": _latency_summary(t["itl"][chat_ok]),
    }
    met = int(t["slo_met"].sum())
    summary["slo"] = {"attainment": 100.0 * met / max(n_live, 1), "goodput_rps": met / duration_s}
    summary["by_class"] = [_class_entry(t, (kind == k) & (prio == p), duration_s, kind=k, priority=p)
                           for k in ("chat", "embedding") for p in PRIORITIES
                           if ((kind == k) & (prio == p)).any()]
    summary["by_kind"] = [_class_entry(t, kind == k, duration_s, kind=k)
                          for k in ("chat", "embedding") if (kind == k).any()]
    summary["timeslices"] = _timeslices(t, 1.0)
    hist_cls = _histogram_class() if with_histograms else None
    if hist_cls is not None:
        summary["histograms"] = {}
        for name, values in (("ttft_from_sent", t["ttft_s"][ok]),
                             ("ttft_from_intended", t["ttft_i"][ok]),
                             ("e2e_from_sent", t["e2e_s"][ok]), ("e2e_from_intended", t["e2e_i"][ok]),
                             ("itl", t["itl"][chat_ok]), ("dispatch_lag", t["lag"])):
            h = hist_cls()
            h.record_array(np.ascontiguousarray(np.maximum(values, 1_000), dtype=np.int64))
            summary["histograms"][name] = base64.b64encode(h.encode()).decode("ascii")
    gpu = {"available": True} if gpu_available else {
        "available": False, "reason": "NVML Shared Library Not Found"}
    summary["monitor"] = {"gpu": gpu, "prometheus": ["http://127.0.0.1:8000/metrics"],
                          "client_cpu": {"mean_pct": 41.0, "max_pct": 88.0}}
    return summary


def make_monitor_table(duration_s: float, *, gpu: bool, seed: int) -> pa.Table:
    """A long-format ``monitor.arrow`` table: GPU, server and client series every 0.5 s."""
    rng = np.random.default_rng(seed)
    t = np.arange(0, duration_s, 0.5)
    rows: list[tuple[str, str, np.ndarray]] = []
    if gpu:
        for g in ("gpu0", "gpu1"):
            rows.append((g, "utilization_pct", np.clip(rng.normal(70, 10, t.size), 0, 100)))
            rows.append((g, "memory_used_bytes", 40e9 + 1e8 * np.arange(t.size)))
    url = "http://127.0.0.1:8000/metrics"
    rows.append((url, "cpbench_sim_queue_depth", rng.poisson(5, t.size).astype(float)))
    rows.append((url, "vllm:num_requests_running", rng.poisson(20, t.size).astype(float)))
    rows.append(("client", "cpu_pct", np.clip(rng.normal(40, 8, t.size), 0, 100)))
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
                    with_histograms: bool = True, options: dict | None = None) -> Path:
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
        write_arrow(make_monitor_table(summary["run"]["duration_s"], gpu=gpu, seed=seed),
                    path / "monitor.arrow")
    return path

"""Benchmark: CPU cost of the monitor's samplers, which run inside the dispatcher's process.

Each sample holds the GIL while it runs, so its cost is time the dispatcher cannot send.
Measures, median of repeats: one client-CPU sample (/proc scan), one GPU sample against a
fake in-process NVML (cpbench's own overhead; real NVML calls add the driver's), and parsing
a vLLM-sized /metrics page with the default selection (pre-filtered lines) versus handing the
whole page to prometheus_client's parser. Prints a table and writes JSON.

    python tools/bench_monitor.py [--repeats 50] [--json bench_monitor.json]
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
import types

from prometheus_client.parser import text_string_to_metric_families

from cpbench.monitor.client import ClientCpuSampler
from cpbench.monitor.gpu import GpuSampler
from cpbench.monitor.prometheus import DEFAULT_SERIES, SeriesSelector, parse_selected


def vllm_like_page(models: int = 4) -> str:
    """A /metrics page shaped like vLLM's: gauges, counters and many-bucket histograms."""
    lines = []
    buckets = [0.001 * 2 ** i for i in range(24)] + ["+Inf"]
    for m in range(models):
        lab = f'engine="{m}",model_name="model-{m}"'
        for g in ("num_requests_running", "num_requests_waiting", "kv_cache_usage_perc",
                  "num_preemptions", "cache_config_info", "lora_requests_info"):
            lines += [f"# HELP vllm:{g} g", f"# TYPE vllm:{g} gauge", f"vllm:{g}{{{lab}}} 1.0"]
        for c in ("prompt_tokens", "generation_tokens", "request_success", "preemptions"):
            lines += [f"# TYPE vllm:{c} counter", f"vllm:{c}_total{{{lab}}} 12345.0"]
        for h in ("time_to_first_token_seconds", "inter_token_latency_seconds",
                  "e2e_request_latency_seconds", "request_queue_time_seconds",
                  "request_prefill_time_seconds", "request_decode_time_seconds",
                  "request_prompt_tokens", "request_generation_tokens",
                  "iteration_tokens_total", "request_max_num_generation_tokens"):
            lines.append(f"# TYPE vllm:{h} histogram")
            lines += [f'vllm:{h}_bucket{{{lab},le="{b}"}} 7.0' for b in buckets]
            lines += [f"vllm:{h}_count{{{lab}}} 7.0", f"vllm:{h}_sum{{{lab}}} 3.5"]
    for i in range(40):
        lines.append(f'python_gc_objects_collected_total{{generation="{i}"}} 1.0')
    return "\n".join(lines) + "\n"


def fake_nvml(devices: int) -> types.ModuleType:
    m = types.ModuleType("pynvml")
    m.NVMLError = type("NVMLError", (Exception,), {"value": 0})
    m.nvmlInit = m.nvmlShutdown = lambda: None
    m.nvmlDeviceGetCount = lambda: devices
    m.nvmlDeviceGetHandleByIndex = lambda i: i
    m.nvmlDeviceGetName = lambda h: "fake"
    m.nvmlDeviceGetUUID = lambda h: "GPU-fake"
    m.nvmlDeviceGetUtilizationRates = lambda h: types.SimpleNamespace(gpu=50, memory=10)
    m.nvmlDeviceGetMemoryInfo = lambda h: types.SimpleNamespace(used=1, total=2, free=1)
    m.nvmlDeviceGetPowerUsage = lambda h: 300_000
    m.nvmlDeviceGetClockInfo = lambda h, c: 1980
    m.nvmlDeviceGetTemperature = lambda h, s: 60
    return m


def median_us(fn, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter_ns()
        fn()
        times.append(time.perf_counter_ns() - start)
    return statistics.median(times) / 1e3


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeats", type=int, default=50)
    parser.add_argument("--json", default=None, help="write results here")
    args = parser.parse_args()

    client = ClientCpuSampler(1.0, time.monotonic_ns())
    client.sample()
    full_scan = ClientCpuSampler(1.0, time.monotonic_ns(), rescan_s=0.0)
    sys.modules["pynvml"] = fake_nvml(8)
    gpu = GpuSampler(1.0, time.monotonic_ns())
    assert gpu.setup()
    page = vllm_like_page()
    selector = SeriesSelector(DEFAULT_SERIES)

    def parse_all() -> int:
        return sum(len(f.samples) for f in text_string_to_metric_families(page))

    cases = [  # (name, function, samples per second at the default interval)
        ("client cpu sample (known tree)", client.sample, 2.0),
        ("client cpu sample, full /proc scan (every 2 s)", full_scan.sample, 0.5),
        ("gpu sample, 8 fake GPUs", gpu.sample, 2.0),
        (f"scrape parse, default selection ({len(page) // 1024} KB page)",
         lambda: parse_selected(page, selector), 1.0),
        ("scrape parse, whole page (what filtering avoids)", parse_all, 1.0),
    ]
    rows = []
    for name, fn, per_s in cases:
        us = median_us(fn, args.repeats)
        rows.append({"case": name, "median_us": round(us, 1),
                     "cpu_pct_of_one_core_at_default_interval": round(us * per_s / 1e4, 3)})
    print(f"{'case':<48} {'median µs':>10} {'% of a core':>12}")
    for r in rows:
        print(f"{r['case']:<48} {r['median_us']:>10.1f} "
              f"{r['cpu_pct_of_one_core_at_default_interval']:>12.3f}")
    result = {"host": platform.node(), "python": platform.python_version(),
              "repeats": args.repeats, "page_bytes": len(page),
              "page_samples": parse_all(), "processes_scanned": len(__import__("os").listdir(
                  "/proc")) if sys.platform == "linux" else None, "cases": rows}
    if args.json:
        with open(args.json, "w") as f:
            json.dump(result, f, indent=2)


if __name__ == "__main__":
    main()

"""One-shot check of GPU monitoring on a machine with an NVIDIA GPU and driver.

Runs cpbench's GPU sampler for a few seconds, reads the same quantities straight from NVML
as a cross-check, and prints one JSON document (also written with --json): the monitor
status, every sample per device, and the direct readings. Exit status 0 when GPU monitoring
was available and sampled, 1 otherwise (the JSON says why).

    python tools/gpu_check.py [--duration-s 3] [--interval-s 0.25] [--json gpu_check.json]
"""
from __future__ import annotations

import argparse
import json
import sys
import time

from cpbench.monitor import MonitorSet


def direct_readings() -> dict:
    """The same quantities read once straight from pynvml, not through cpbench."""
    import pynvml

    pynvml.nvmlInit()
    try:
        out = {"driver": str(pynvml.nvmlSystemGetDriverVersion()), "devices": []}
        for i in range(pynvml.nvmlDeviceGetCount()):
            h = pynvml.nvmlDeviceGetHandleByIndex(i)
            mem = pynvml.nvmlDeviceGetMemoryInfo(h)
            dev = {"index": i, "name": str(pynvml.nvmlDeviceGetName(h)),
                   "memory_used_bytes": mem.used, "memory_total_bytes": mem.total}
            for key, fn in (
                ("gpu_util_pct", lambda: pynvml.nvmlDeviceGetUtilizationRates(h).gpu),
                ("power_w", lambda: pynvml.nvmlDeviceGetPowerUsage(h) / 1000.0),
                ("sm_clock_mhz", lambda: pynvml.nvmlDeviceGetClockInfo(h, pynvml.NVML_CLOCK_SM)),
                ("temperature_c",
                 lambda: pynvml.nvmlDeviceGetTemperature(h, pynvml.NVML_TEMPERATURE_GPU)),
            ):
                try:
                    dev[key] = fn()
                except pynvml.NVMLError as exc:
                    dev[key] = f"error: {exc}"
            out["devices"].append(dev)
        return out
    finally:
        pynvml.nvmlShutdown()


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--duration-s", type=float, default=3.0)
    parser.add_argument("--interval-s", type=float, default=0.25)
    parser.add_argument("--json", default=None, help="also write the JSON here")
    args = parser.parse_args()

    monitors = MonitorSet(gpu_interval_s=args.interval_s, client_interval_s=args.interval_s,
                          clock_origin_ns=time.monotonic_ns())
    monitors.start()
    time.sleep(args.duration_s)
    monitors.stop()
    status = monitors.status()
    samples: dict[str, dict[str, list]] = {}
    for row in monitors.table().to_pylist():
        if row["source"].startswith("gpu"):
            series = samples.setdefault(row["source"], {}).setdefault(row["metric"], [])
            series.append([round(row["t_ns"] / 1e9, 3), row["value"]])
    report = {"status": status["gpu"], "samples": samples}
    if status["gpu"]["available"]:
        try:
            report["direct"] = direct_readings()
        except Exception as exc:  # noqa: BLE001 - a cross-check failing is itself the finding
            report["direct"] = f"error: {type(exc).__name__}: {exc}"
    text = json.dumps(report, indent=2)
    print(text)
    if args.json:
        with open(args.json, "w") as f:
            f.write(text + "\n")
    ok = status["gpu"]["available"] and status["gpu"]["samples"] > 0
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())

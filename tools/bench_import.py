"""Import speed: 10^6 source rows per format converted to a written cpbench trace (target <= 5 s).

Source files are generated in a temporary folder in each format's exact layout (Azure 2023 CSV
with 7-digit fractional timestamps and CRLF; Mooncake JSONL lines with their ``hash_ids``
lists, taken from the shipped sample's own lines when present; BurstGPT CSV), then converted
with ``import_to_file`` — parse, window, fill-ins, validation, Arrow IPC write, sha256 of the
source — exactly what ``cpbench record import`` does. Prints a table, writes JSON.

Usage: python tools/bench_import.py [--rows 1000000] [--json bench_import.json]
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import tempfile
import time

import numpy as np

from cpbench.record.importers import import_to_file

TARGET_S = 5.0
SAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      "tests", "data", "public", "mooncake_conversation.sample.jsonl")


def _arrivals_ns(rows: int, seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return np.cumsum(rng.exponential(0.25e9, rows)).astype(np.int64)


def write_azure(path: str, rows: int) -> None:
    t = _arrivals_ns(rows, 1)
    base = datetime.datetime(2023, 11, 16, 18, 0, 0)
    secs = t // 10**9
    frac = (t % 10**9) // 100
    rng = np.random.default_rng(2)
    tin, tout = rng.integers(2, 8000, rows), rng.integers(1, 700, rows)
    day = [(base + datetime.timedelta(seconds=int(s))).strftime("%Y-%m-%d %H:%M:%S")
           for s in range(int(secs[-1]) + 1)]
    with open(path, "w", newline="") as fh:
        fh.write("TIMESTAMP,ContextTokens,GeneratedTokens\r\n")
        fh.write("\r\n".join(f"{day[s]}.{f:07d},{a},{b}"
                             for s, f, a, b in zip(secs.tolist(), frac.tolist(), tin.tolist(),
                                                   tout.tolist())))


def write_mooncake(path: str, rows: int) -> None:
    t_ms = _arrivals_ns(rows, 3) // 10**6
    if os.path.exists(SAMPLE):
        with open(SAMPLE) as fh:
            lines = [json.loads(line) for line in fh]
    else:   # same shape: ~26 prefix-block ids per request
        lines = [{"input_length": 13000, "output_length": 350, "hash_ids": list(range(26))}]
    with open(path, "w") as fh:
        for i, ts in enumerate(t_ms.tolist()):
            src = lines[i % len(lines)]
            fh.write(json.dumps({"timestamp": ts, "input_length": src["input_length"],
                                 "output_length": src["output_length"],
                                 "hash_ids": src["hash_ids"]}) + "\n")


def write_burstgpt(path: str, rows: int) -> None:
    t = _arrivals_ns(rows, 4) / 1e9
    rng = np.random.default_rng(5)
    tin, tout = rng.integers(1, 4000, rows), rng.integers(0, 900, rows)
    models = np.where(rng.random(rows) < 0.8, "ChatGPT", "GPT-4")
    logs = np.where(rng.random(rows) < 0.6, "Conversation log", "API log")
    with open(path, "w") as fh:
        fh.write("Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n")
        fh.write("\n".join(f"{a:.3f},{m},{b},{c},{b + c},{g}" for a, m, b, c, g in
                           zip(t.tolist(), models.tolist(), tin.tolist(), tout.tolist(),
                               logs.tolist())))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3, help="best of N conversions")
    parser.add_argument("--json", default="bench_import.json")
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for fmt, writer, ext in (("azure", write_azure, "csv"), ("mooncake", write_mooncake,
                                 "jsonl"), ("burstgpt", write_burstgpt, "csv")):
            src = os.path.join(tmp, f"{fmt}.{ext}")
            writer(src, args.rows)
            out = os.path.join(tmp, f"{fmt}.arrow")
            times = []
            for _ in range(args.repeat):
                start = time.perf_counter()
                table = import_to_file(fmt, src, out)
                times.append(time.perf_counter() - start)
            results.append({"format": fmt, "source_rows": args.rows, "trace_rows": table.num_rows,
                            "source_mb": round(os.path.getsize(src) / 1e6, 1),
                            "best_s": round(min(times), 3), "median_s": round(
                                float(np.median(times)), 3), "target_s": TARGET_S,
                            "ok": min(times) <= TARGET_S})
            os.unlink(src)
    print(f"{'format':<10}{'source rows':>12}{'trace rows':>12}{'source MB':>11}"
          f"{'best s':>8}{'median s':>10}  target <= {TARGET_S:g} s")
    for r in results:
        print(f"{r['format']:<10}{r['source_rows']:>12}{r['trace_rows']:>12}{r['source_mb']:>11}"
              f"{r['best_s']:>8}{r['median_s']:>10}  {'ok' if r['ok'] else 'MISSED'}")
    with open(args.json, "w") as fh:
        json.dump({"cpus": os.cpu_count(), "results": results}, fh, indent=2)
    return 0 if all(r["ok"] for r in results) else 1


if __name__ == "__main__":
    sys.exit(main())

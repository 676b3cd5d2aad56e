"""Public LLM-serving traces to cpbench traces: Azure 2023, Mooncake FAST'25, BurstGPT, ServeGen.

Per-request sources (Azure, Mooncake, BurstGPT) keep their arrival times and token lengths
exactly; arrivals become int64 nanoseconds from the source's first arrival (then from
``start_s`` when a window is cut, divided by ``speed``). What the sources lack — kind,
priority, deadlines, model — comes from options. ServeGen publishes per-window statistics,
not requests, so its importer synthesizes a seeded trace that follows them (``servegen``).
Formats, units and provenance of the public samples: tests/data/public/PROVENANCE.md. Parsing is columnar
(pyarrow.csv / pyarrow.json) so 10^6 source rows convert in seconds (tools/bench_import.py).
"""
from __future__ import annotations

import ast
import json
import math
import os
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa
import pyarrow.csv as pcsv
import pyarrow.json as pjson

from cpbench.errors import ConfigError, TraceError
from cpbench.vocab import PRIORITIES
from cpbench.record.lengths import DEFAULT_LENGTHS, parse_length, with_pool
from cpbench.vocab import DEFAULT_MODELS, DEFAULT_SLO_E2E_MS

FORMATS = ("azure", "mooncake", "burstgpt", "servegen")
NS_PER_S = 1_000_000_000
# Mooncake's hash_ids name 512-token blocks of the prompt (kvcache-ai/Mooncake, FAST'25 traces).
MOONCAKE_BLOCK_TOKENS = 512


# --- readers: source file -> (arrival_ns absolute-ish int64, input, output, model or None) ----

def _read_csv(path: str, columns: dict[str, pa.DataType], what: str) -> pa.Table:
    try:
        return pcsv.read_csv(path, convert_options=pcsv.ConvertOptions(
            column_types=columns, include_columns=list(columns)))
    except (pa.ArrowInvalid, pa.ArrowException, OSError, KeyError) as exc:
        raise TraceError(f"{path}: not a {what} CSV with columns {', '.join(columns)}: "
                         f"{' '.join(str(exc).split())[:200]}") from None


def read_azure(path: str) -> dict[str, np.ndarray]:
    """Azure LLM inference trace 2023: ``TIMESTAMP,ContextTokens,GeneratedTokens``."""
    table = _read_csv(path, {"TIMESTAMP": pa.timestamp("ns"), "ContextTokens": pa.int64(),
                             "GeneratedTokens": pa.int64()}, "Azure LLM inference")
    return {"t_ns": table["TIMESTAMP"].cast(pa.int64()).to_numpy(),
            "input": table["ContextTokens"].to_numpy(),
            "output": table["GeneratedTokens"].to_numpy()}


def read_mooncake(path: str) -> dict[str, np.ndarray]:
    """Mooncake FAST'25 JSONL: ``timestamp`` (ms from trace start), ``input_length``,
    ``output_length`` and ``hash_ids`` (the prompt's 512-token blocks, kept exactly as
    ``prefix_blocks``)."""
    schema = pa.schema([("timestamp", pa.int64()), ("input_length", pa.int64()),
                        ("output_length", pa.int64()), ("hash_ids", pa.list_(pa.int64()))])
    try:
        table = pjson.read_json(path, parse_options=pjson.ParseOptions(
            explicit_schema=schema, unexpected_field_behavior="ignore"))
    except (pa.ArrowInvalid, pa.ArrowException, OSError) as exc:
        raise TraceError(f"{path}: not a Mooncake JSONL trace (timestamp, input_length, "
                         f"output_length): {' '.join(str(exc).split())[:200]}") from None
    out = {"t_ns": table["timestamp"].to_numpy(zero_copy_only=False) * 1_000_000,
           "input": table["input_length"].to_numpy(zero_copy_only=False),
           "output": table["output_length"].to_numpy(zero_copy_only=False)}
    hash_ids = table["hash_ids"].combine_chunks()
    if hash_ids.null_count < len(hash_ids):
        out["prefix_blocks"] = hash_ids
    return out


def read_burstgpt(path: str) -> dict[str, np.ndarray]:
    """BurstGPT CSV: ``Timestamp`` (s), ``Model``, ``Request tokens``, ``Response tokens``,
    ``Total tokens``, ``Log Type`` (columns as its README documents them)."""
    table = _read_csv(path, {"Timestamp": pa.float64(), "Model": pa.string(),
                             "Request tokens": pa.int64(), "Response tokens": pa.int64()},
                      "BurstGPT")
    return {"t_ns": np.rint(table["Timestamp"].to_numpy(zero_copy_only=False) * 1e9)
            .astype(np.int64),
            "input": table["Request tokens"].to_numpy(zero_copy_only=False),
            "output": table["Response tokens"].to_numpy(zero_copy_only=False),
            "model": table["Model"].combine_chunks()}


# --- shared finishing: window, speed, fill-ins, table -----------------------------------------

def _window(src: dict[str, Any], start_s: float | None, end_s: float | None,
            speed: float, path: str) -> tuple[dict[str, Any], int]:
    t = np.asarray(src["t_ns"], dtype=np.int64)
    if t.size == 0:
        raise TraceError(f"{path}: source has no rows")
    order = None
    if (np.diff(t) < 0).any():
        order = np.argsort(t, kind="stable")   # keep equal-time rows in file order
        src = {k: (v.take(pa.array(order)) if isinstance(v, pa.Array) else v[order])
               for k, v in src.items()}
        t = src["t_ns"]
    rel = t - t[0]
    lo = 0 if start_s is None else int(round(start_s * NS_PER_S))
    hi = None if end_s is None else int(round(end_s * NS_PER_S))
    keep = rel >= lo
    if hi is not None:
        keep &= rel < hi
    if not keep.all():
        idx = np.flatnonzero(keep)
        if idx.size == 0:
            raise TraceError(f"{path}: window [{start_s}, {end_s}) s holds no rows; the source "
                             f"spans {rel[-1] / NS_PER_S:.3f} s")
        sl = slice(int(idx[0]), int(idx[-1]) + 1)
        src = {k: v[sl] for k, v in src.items()}
        rel = rel[sl]
    offsets = rel - lo
    if speed != 1.0:
        offsets = np.rint(offsets / speed).astype(np.int64)
    src = dict(src, t_ns=offsets)
    return src, (0 if order is None else 1)


def _priorities(n: int, priority: str | Mapping[str, float], seed: int) -> pa.Array:
    if isinstance(priority, str):
        if priority not in PRIORITIES:
            raise ConfigError(f"--priority must be one of {', '.join(PRIORITIES)} or a mix "
                              f"like HIGH=0.2,NORMAL=0.6,LOW=0.2; got {priority!r}")
        return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)),
                                              pa.array([priority]))
    w = np.array([float(priority.get(k, 0.0)) for k in PRIORITIES])
    if set(priority) - set(PRIORITIES) or (w < 0).any() or w.sum() <= 0:
        raise ConfigError(f"--priority mix takes weights for {', '.join(PRIORITIES)}; "
                          f"got {dict(priority)!r}")
    rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed).spawn(1)[0]))
    idx = rng.choice(3, size=n, p=w / w.sum()).astype(np.int32)
    return pa.DictionaryArray.from_arrays(pa.array(idx), pa.array(PRIORITIES))


def _const_dict(n: int, value: str) -> pa.Array:
    return pa.DictionaryArray.from_arrays(pa.array(np.zeros(n, np.int32)), pa.array([value]))


def build_table(src: dict[str, Any], *, kind: str, model: str | None, priority: Any,
                slo_e2e_ms: float | None, slo_ttft_ms: float | None, seed: int,
                path: str) -> pa.Table:
    """The trace table for LLM rows ``src`` (``t_ns``, ``input``, ``output``, opt. ``model``)."""
    if kind not in ("chat", "completion"):
        raise ConfigError(f"--kind must be chat or completion for an imported LLM trace; "
                          f"got {kind!r}")
    n = len(src["t_ns"])
    if model is None and "model" in src:
        models = pa.array(src["model"]).dictionary_encode()
    else:
        models = _const_dict(n, model or DEFAULT_MODELS["llm"])
    tin = np.asarray(src["input"], dtype=np.int64)
    tout = np.asarray(src["output"], dtype=np.int64)
    for name, values in (("input", tin), ("output", tout)):
        if values.size and (values.min() < 0 or values.max() > 2**31 - 1):
            bad = int(np.flatnonzero((values < 0) | (values > 2**31 - 1))[0])
            raise TraceError(f"{path}: {name} token count {values[bad]} at source row {bad} "
                             "is out of range")
    e2e = DEFAULT_SLO_E2E_MS["llm"] if slo_e2e_ms is None else slo_e2e_ms
    table = pa.table({
        "arrival_ns": pa.array(src["t_ns"], pa.int64()),
        "kind": _const_dict(n, kind),
        "model": models,
        "input_tokens": pa.array(tin.astype(np.int32)),
        "output_tokens": pa.array(tout.astype(np.int32)),
        "batch_size": pa.array(np.ones(n, np.int16)),
        "priority": _priorities(n, priority, seed),
        "slo_ttft_ms": pa.nulls(n, pa.float32()) if slo_ttft_ms is None
        else pa.array(np.full(n, slo_ttft_ms, np.float32)),
        "slo_e2e_ms": pa.array(np.full(n, e2e, np.float32)),
    })
    if "prefix_blocks" in src:
        table = table.append_column("prefix_blocks", src["prefix_blocks"])
    return table


def import_trace(fmt: str, path: str, *, kind: str = "chat", model: str | None = None,
                 priority: str | Mapping[str, float] = "NORMAL",
                 slo_e2e_ms: float | None = None, slo_ttft_ms: float | None = None,
                 start_s: float | None = None, end_s: float | None = None,
                 speed: float = 1.0, seed: int = 0, jitter_s: float = 0.0,
                 dataset: str | None = None, input_tokens: str = DEFAULT_LENGTHS["input_tokens"],
                 output_tokens: str = DEFAULT_LENGTHS["output_tokens"]) -> tuple[pa.Table, dict]:
    """Convert ``path`` (format ``fmt``) to a trace table; returns it and its params record.

    Parameters
    ----------
    kind, model, priority, slo_e2e_ms, slo_ttft_ms
        Fill-ins the sources lack. ``model=None`` keeps BurstGPT's own model names and
        otherwise uses ``cpbench-llm-7b``; ``priority`` is one level or a weight mix drawn
        with ``seed``.
    start_s, end_s
        Keep arrivals in [start_s, end_s) seconds from the source's first arrival; the output
        starts at ``start_s``.
    speed
        Divide every offset by this (2 = twice as fast).
    jitter_s
        Mooncake only: spread each arrival uniformly over ``jitter_s`` after it (seeded), for
        traces whose timestamps sit on a coarse grid (Mooncake conversation: 3 s). 0 = exact.
    dataset, input_tokens, output_tokens
        ServeGen only: the length-PMF file (default: found beside the trace) and the length
        specs used when there is none.
    """
    if fmt not in FORMATS:
        raise ConfigError(f"import format must be one of {', '.join(FORMATS)}; got {fmt!r}")
    if not (isinstance(speed, (int, float)) and math.isfinite(speed) and speed > 0):
        raise ConfigError(f"--speed must be a positive number; got {speed!r}")
    if not os.path.isfile(path):
        raise TraceError(f"{path}: no such file")
    params = {"format": fmt, "kind": kind, "model": model, "priority": priority,
              "slo_e2e_ms": slo_e2e_ms, "slo_ttft_ms": slo_ttft_ms, "start_s": start_s,
              "end_s": end_s, "speed": speed, "seed": seed}
    if fmt == "servegen":
        src = servegen_source(path, dataset=dataset, start_s=start_s, end_s=end_s, seed=seed,
                              input_tokens=with_pool(parse_length(
                                  input_tokens, what="--input-tokens"), load_any),
                              output_tokens=with_pool(parse_length(
                                  output_tokens, what="--output-tokens"), load_any))
        params.update(dataset=src.pop("dataset"), input_tokens=input_tokens,
                      output_tokens=output_tokens)
    else:
        src = {"azure": read_azure, "mooncake": read_mooncake, "burstgpt": read_burstgpt}[fmt](
            path)
    if fmt == "burstgpt":
        # BurstGPT marks failed requests with 0 response tokens; they asked for no output a
        # replay could request, so they are dropped — and counted in the metadata.
        ok = src["output"] > 0
        params["dropped_zero_output_rows"] = int((~ok).sum())
        if not ok.all():
            src = {k: (v.filter(pa.array(ok)) if isinstance(v, pa.Array) else v[ok])
                   for k, v in src.items()}
    if jitter_s:
        if fmt != "mooncake" or jitter_s < 0:
            raise ConfigError("--jitter-s applies to mooncake imports and must be >= 0")
        rng = np.random.Generator(np.random.PCG64(np.random.SeedSequence(seed).spawn(2)[1]))
        src["t_ns"] = src["t_ns"] + np.rint(rng.random(len(src["t_ns"])) * jitter_s * 1e9
                                            ).astype(np.int64)
        params["jitter_s"] = jitter_s
    if fmt == "servegen":
        # Already cut to windows and relative to start_s: keep window boundaries where they are.
        if speed != 1.0:
            src["t_ns"] = np.rint(src["t_ns"] / speed).astype(np.int64)
    else:
        src, resorted = _window(src, start_s, end_s, float(speed), path)
        params["resorted"] = bool(resorted)
    table = build_table(src, kind=kind, model=model, priority=priority, slo_e2e_ms=slo_e2e_ms,
                        slo_ttft_ms=slo_ttft_ms, seed=seed, path=path)
    return table, params


def import_to_file(fmt: str, path: str, out: str, **options: Any) -> pa.Table:
    """``import_trace`` written to ``out`` with provenance metadata."""
    from cpbench.trace import sha256_file, write_trace
    table, params = import_trace(fmt, path, **options)
    params["source_sha256"] = sha256_file(path)
    write_trace(table, out, metadata={"generator": f"cpbench record import {fmt}",
                                      "params": params, "seed": params.get("seed"),
                                      "source": os.path.basename(path),
                                      "block_tokens": MOONCAKE_BLOCK_TOKENS
                                      if "prefix_blocks" in table.column_names else None})
    return table


def load_any(path: str) -> pa.Table:
    """A trace table from a cpbench trace or an Azure CSV / Mooncake JSONL (by extension)."""
    lower = path.lower()
    if lower.endswith(".csv"):
        return import_trace("azure", path)[0]
    if lower.endswith((".jsonl", ".json")):
        return import_trace("mooncake", path)[0]
    from cpbench.trace import read_trace
    return read_trace(path)


def parse_mix(text: str) -> str | dict[str, float]:
    """``NORMAL`` or ``HIGH=0.2,NORMAL=0.6,LOW=0.2`` (CLI form of a priority option)."""
    if "=" not in text:
        return text.strip()
    out: dict[str, float] = {}
    for part in text.split(","):
        key, _, value = part.partition("=")
        try:
            out[key.strip()] = float(value)
        except ValueError:
            raise ConfigError(f"priority mix entries look like HIGH=0.2; got {part!r}") from None
    return out


# --- ServeGen: per-window statistics -> a seeded per-request trace ------------------------------

SERVEGEN_WINDOW_S = 600.0


def read_servegen_windows(path: str) -> list[tuple[float, float, float, str]]:
    """Rows ``(window_start_s, rate_rps, cv, family)`` of a ServeGen ``chunk-*-trace.csv``
    (no header; ``start, rate, cv, Weibull|Gamma|'', p1, p2``)."""
    rows = []
    try:
        with open(path, encoding="utf-8") as fh:
            for lineno, line in enumerate(fh, start=1):
                if not line.strip():
                    continue
                parts = line.rstrip("\r\n").split(",")
                if len(parts) != 6:
                    raise ValueError(f"expected 6 fields, got {len(parts)}")
                start, rate, cv = float(parts[0]), float(parts[1]), float(parts[2])
                if not (math.isfinite(rate) and rate >= 0 and math.isfinite(start)):
                    raise ValueError(f"rate {parts[1]!r} at window {parts[0]!r}")
                rows.append((start, rate, cv if math.isfinite(cv) else 1.0, parts[3].strip()))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        where = f" line {lineno}" if "lineno" in locals() else ""
        raise TraceError(f"{path}:{where} not a ServeGen window CSV (start_s, rate, cv, "
                         f"distribution, p1, p2): {exc}") from None
    if not rows:
        raise TraceError(f"{path}: ServeGen window file has no rows")
    return rows


def _weibull_shape_for_cv(cv: float) -> float:
    """Weibull shape k whose CV is ``cv`` (bisection on log k; CV falls as k grows)."""
    from scipy.special import gammaln

    def cv_of(k: float) -> float:
        return math.sqrt(max(math.exp(gammaln(1 + 2 / k) - 2 * gammaln(1 + 1 / k)) - 1, 0.0))

    lo, hi = math.log(0.05), math.log(50.0)
    for _ in range(60):
        mid = 0.5 * (lo + hi)
        if cv_of(math.exp(mid)) > cv:
            lo = mid
        else:
            hi = mid
    return math.exp(0.5 * (lo + hi))


def _log_gaps(rng: np.random.Generator, n: int, cv: float, family: str) -> np.ndarray:
    """log of ``n`` gaps from the window's family with population CV ``cv`` (scale free)."""
    if family.lower() == "weibull":
        k = _weibull_shape_for_cv(cv)
        return np.log(rng.standard_exponential(n)) / k
    shape = 1.0 / (cv * cv)
    # log Gamma(k) = log Gamma(k+1) + log(U)/k stays finite for the tiny shapes of CV ~ 10.
    return np.log(rng.standard_gamma(shape + 1.0, n)) + np.log(rng.random(n)) / shape


def _tuned_offsets(lg: np.ndarray, cv: float, n: int, window_ns: float) -> np.ndarray:
    """Place ``n`` arrivals in the window from ``n + 1`` log-gaps, with the inner gaps' sample
    CV tuned to ``cv``.

    A finite window's sample CV strays far from the population CV when the tail is heavy
    (CV ~ 10 with a few hundred arrivals), so the gaps are raised to a power ``a`` found by
    bisection until the inner gaps' CV matches; for Weibull gaps that is exactly a Weibull with
    shape k/a. Rescaling the cumulative sum to the window then fixes the count at n.
    """
    lg = lg - lg.max()
    if n >= 3:
        target = cv

        def cv_at(a: float) -> float:
            g = np.exp(a * lg[1:n])
            return float(g.std() / g.mean())

        lo, hi = -7.0, 4.0
        for _ in range(50):
            mid = 0.5 * (lo + hi)
            if cv_at(math.exp(mid)) < target:
                lo = mid
            else:
                hi = mid
        lg = lg * math.exp(0.5 * (lo + hi))
    g = np.exp(lg)
    c = np.cumsum(g)
    # When the last gap is negligible, c[n-1]/c[n] rounds to 1.0: keep it inside the window.
    return np.minimum(np.floor(c[:n] / c[n] * window_ns), window_ns - 1).astype(np.int64)


def _pmf(text: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    mapping = ast.literal_eval(text) if isinstance(text, str) else text
    if not isinstance(mapping, dict) or not mapping:
        raise TraceError(f"ServeGen dataset {what} is not a value->probability mapping")
    values = np.array([int(k) for k in mapping], dtype=np.int64)
    probs = np.array([float(v) for v in mapping.values()])
    return values, probs / probs.sum()


def read_servegen_dataset(path: str) -> list[tuple[float, tuple, tuple]]:
    """``[(window_start_s, input_pmf, output_pmf)]`` sorted by start, from ``-dataset.json``."""
    try:
        with open(path, encoding="utf-8") as fh:
            raw = json.load(fh)
        out = [(float(k), _pmf(v["input_tokens"], "input_tokens"),
                _pmf(v["output_tokens"], "output_tokens")) for k, v in raw.items()]
    except (OSError, ValueError, KeyError, TypeError, SyntaxError, AttributeError) as exc:
        raise TraceError(f"{path}: not a ServeGen dataset JSON (window -> input_tokens / "
                         f"output_tokens PMFs): {' '.join(str(exc).split())[:200]}") from None
    return sorted(out, key=lambda item: item[0])


def servegen_source(path: str, *, dataset: str | None, start_s: float | None,
                    end_s: float | None, seed: int, input_tokens: Any,
                    output_tokens: Any) -> dict[str, Any]:
    """Per-request rows following ServeGen's windows: each active window of length W gets
    exactly ``round(rate * W)`` arrivals whose inner gaps have the window's CV, drawn from its
    family (Weibull, else Gamma). The fitted parameters (p1, p2) are not used: they do not
    reproduce the window's own rate and CV (window 0 of the shipped sample: Weibull(0.375,
    0.397) has mean gap 1.59 s and CV 3.5, the row says rate 1.33/s and CV 8.6)."""
    windows = read_servegen_windows(path)
    if dataset is None:
        folder, name = os.path.split(path)
        guess = os.path.join(folder, name.replace("-trace", "-dataset").rsplit(".", 1)[0]
                             + ".json")
        dataset = guess if guess != path and os.path.isfile(guess) else None
    pmfs = read_servegen_dataset(dataset) if dataset else None
    seq = np.random.SeedSequence(seed)
    arr_seq, len_seq = seq.spawn(2)
    win_seqs = arr_seq.spawn(len(windows))   # one stream per window: a cut keeps the others
    lo = -math.inf if start_s is None else start_s
    hi = math.inf if end_s is None else end_s
    parts = []
    for i, (w0, rate, cv, family) in enumerate(windows):
        if not lo <= w0 < hi:
            continue
        width = windows[i + 1][0] - w0 if i + 1 < len(windows) else SERVEGEN_WINDOW_S
        n = int(round(rate * width))
        if n == 0 or not family:
            continue
        rng = np.random.Generator(np.random.PCG64(win_seqs[i]))
        lg = _log_gaps(rng, n + 1, cv if cv > 0 else 1.0, family)
        base = int(round((w0 - (0.0 if start_s is None else start_s)) * NS_PER_S))
        parts.append(base + _tuned_offsets(lg, cv if cv > 0 else 1.0, n, width * 1e9))
    if not parts:
        raise TraceError(f"{path}: no active ServeGen window in [{start_s}, {end_s}) s")
    t = np.concatenate(parts)
    rng = np.random.Generator(np.random.PCG64(len_seq))
    if pmfs:
        starts = np.array([p[0] for p in pmfs])
        abs_s = t / 1e9 + (0.0 if start_s is None else start_s)
        which = np.clip(np.searchsorted(starts, abs_s, side="right") - 1, 0, len(pmfs) - 1)
        tin = np.empty(len(t), np.int64)
        tout = np.empty(len(t), np.int64)
        for j in np.unique(which):
            sel = which == j
            (iv, ip), (ov, op) = pmfs[j][1], pmfs[j][2]
            tin[sel] = rng.choice(iv, size=int(sel.sum()), p=ip)
            tout[sel] = np.maximum(rng.choice(ov, size=int(sel.sum()), p=op), 1)
    else:
        tin = input_tokens.sample(rng, len(t))
        tout = output_tokens.sample(rng, len(t))
    return {"t_ns": t, "input": tin, "output": tout, "dataset": dataset}

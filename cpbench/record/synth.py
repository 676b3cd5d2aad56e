"""Synthesize a trace from a spec: arrival pattern, rate, request mix and length distributions.

Arrival times come from the compiled ``cpbench._core.schedule``; everything else is drawn
here with NumPy. Reproducibility promise: the same arguments and seed give the same table,
and ``write_trace`` turns it into the same bytes. Each random quantity has its own stream,
``numpy.random.SeedSequence(seed).spawn(...)[k]`` with a fixed ``k`` (``_STREAMS``), so adding
a new quantity never shifts the existing ones.
"""
from __future__ import annotations

import inspect
import math
from collections.abc import Mapping
from typing import Any

import numpy as np
import pyarrow as pa

from cpbench._core import schedule
from cpbench.errors import ConfigError
from cpbench.record.lengths import DEFAULT_LENGTHS, LengthSpec, parse_length, with_pool
from cpbench.vocab import DEFAULT_MODELS, DEFAULT_SLO_E2E_MS

PATTERNS = ("uniform", "poisson", "gamma", "burst", "ramp")
MODES = ("llm", "hybrid")
DEFAULT_PRIORITY_MIX = {"HIGH": 0.2, "NORMAL": 0.6, "LOW": 0.2}

# Stream index per random quantity: fixed forever (append, never reorder).
_STREAMS = ("arrivals", "kind", "llm_kind", "priority", "input_tokens", "output_tokens",
            "embed_batch", "embed_tokens", "prefix_group")
DEFAULT_BLOCK_TOKENS = 16
_PREFIX_PARAMS = ("prefix_groups", "prefix_tokens", "prefix_zipf", "turns", "block_tokens")


def _load_table(path: str) -> pa.Table:
    from cpbench.record import importers  # late: importers is heavier and optional here
    return importers.load_any(path)


def arrivals(pattern: str, *, rate_rps: float, requests: int | None, duration_s: float | None,
             seed: np.random.SeedSequence, shape: float = 1.0, burst_rps: float | None = None,
             burst_s: float = 1.0, period_s: float = 10.0,
             end_rps: float | None = None) -> np.ndarray:
    """Arrival offsets (int64 ns) for a pattern; ``burst`` uses ``rate_rps`` as the base rate
    between bursts and ``ramp`` moves from ``rate_rps`` to ``end_rps``."""
    if pattern not in PATTERNS:
        raise ConfigError(f"--pattern must be one of {', '.join(PATTERNS)}; got {pattern!r}")
    # Checked here, in the options' own names, before the kernels say "rate_rps".
    low_ok = rate_rps > 0 or (rate_rps == 0 and pattern == "burst")  # burst: 0 between bursts
    if not (math.isfinite(rate_rps) and low_ok):
        raise ConfigError(f"--rate must be requests/s > 0 (burst: >= 0); got {rate_rps:g}")
    if requests is not None and requests < 1:
        raise ConfigError(f"--requests must be at least 1; got {requests}")
    if duration_s is not None and not duration_s > 0:
        raise ConfigError(f"--duration-s must be positive seconds; got {duration_s:g}")
    extent = {"count": requests, "duration_s": duration_s}
    try:
        if pattern == "uniform":
            return schedule.uniform(rate_rps, **extent)
        if pattern == "poisson":
            return schedule.poisson(rate_rps, **extent, seed=seed)
        if pattern == "gamma":
            return schedule.gamma(rate_rps, shape, **extent, seed=seed)
        if pattern == "burst":
            if burst_rps is None:
                raise ConfigError("--pattern burst needs --burst-rps (the rate inside a burst)")
            return schedule.burst(rate_rps, burst_rps, burst_s, period_s, **extent, seed=seed)
        if end_rps is None:
            raise ConfigError("--pattern ramp needs --end-rps (the rate at the end)")
        return schedule.ramp(rate_rps, end_rps, **extent, seed=seed)
    except ValueError as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"pattern {pattern}: {exc}") from None


def _check_mix(mix: Mapping[str, float], allowed: tuple[str, ...], what: str) -> np.ndarray:
    unknown = set(mix) - set(allowed)
    weights = np.array([float(mix.get(k, 0.0)) for k in allowed])
    if unknown or (weights < 0).any() or not math.isfinite(weights.sum()) or weights.sum() <= 0:
        shown = ",".join(f"{k}={v:g}" if isinstance(v, (int, float)) else f"{k}={v}"
                         for k, v in mix.items())
        raise ConfigError(f"{what} takes weights >= 0 for {', '.join(allowed)} with a positive "
                          f"sum, like HIGH=0.2,NORMAL=0.6,LOW=0.2; got {shown}")
    return weights / weights.sum()


def _check_fraction(name: str, value: float) -> float:
    v = float(value)
    if not 0.0 <= v <= 1.0:
        raise ConfigError(f"{name} must be in [0, 1]; got {value!r}")
    return v


def synthesize(*, pattern: str = "poisson", rate_rps: float, requests: int | None = None,
               duration_s: float | None = None, mode: str = "llm", llm_ratio: float = 1.0,
               chat_share: float = 1.0, priority_mix: Mapping[str, float] | None = None,
               input_tokens: str | LengthSpec = DEFAULT_LENGTHS["input_tokens"],
               output_tokens: str | LengthSpec = DEFAULT_LENGTHS["output_tokens"],
               embed_tokens: str | LengthSpec = DEFAULT_LENGTHS["embed_tokens"],
               embed_batch: str | LengthSpec = DEFAULT_LENGTHS["embed_batch"],
               slo_e2e_ms: Mapping[str, float] | None = None,
               slo_ttft_ms: Mapping[str, float | None] | None = None,
               models: Mapping[str, str] | None = None, seed: int,
               shape: float = 1.0, burst_rps: float | None = None, burst_s: float = 1.0,
               period_s: float = 10.0, end_rps: float | None = None, prefix_groups: int = 0,
               prefix_tokens: int = 0, prefix_zipf: float = 1.0, turns: int = 1,
               block_tokens: int = DEFAULT_BLOCK_TOKENS) -> pa.Table:
    """A synthetic trace as a table (write it with ``cpbench.trace.write_trace``).

    Parameters
    ----------
    pattern, rate_rps, requests, duration_s, shape, burst_rps, burst_s, period_s, end_rps
        The arrival process (see ``arrivals``); exactly one of ``requests``/``duration_s``.
    mode
        ``llm`` (every request chat/completion) or ``hybrid`` (``llm_ratio`` of them LLM, the
        rest embeddings).
    chat_share
        Fraction of LLM requests that are ``chat``; the rest are ``completion``.
    priority_mix
        Weights per priority, default HIGH 0.2, NORMAL 0.6, LOW 0.2.
    input_tokens, output_tokens, embed_tokens, embed_batch
        Length specs (``parse_length``): LLM prompt and ``max_tokens``, tokens per embedding
        text, texts per embedding request.
    slo_e2e_ms, slo_ttft_ms
        Deadlines per class ``llm``/``embedding``; defaults: e2e LLM 5000 ms, embedding
        500 ms; no TTFT deadline.
    models
        Model names per class ``llm``/``embedding``.
    seed
        Required; see the module's reproducibility promise.
    prefix_groups, prefix_tokens, prefix_zipf
        Shared system prompts: each LLM request opens with one of ``prefix_groups`` prefixes
        of ``prefix_tokens`` tokens (whole blocks, rounded down), group ``g`` drawn with
        probability proportional to ``1 / (g + 1) ** prefix_zipf`` (0: uniform); its
        ``input_tokens`` draw is then the text after the prefix.
    turns
        Multi-turn sessions of ``turns`` LLM requests (``session`` column): LLM request ``i``
        is turn ``i // S`` of session ``i % S`` (``S`` sessions), so a session's turns are
        ``S`` requests apart; a turn's prompt is the previous turn's prompt, the previous
        answer (``output_tokens`` rounded up to blocks) and its own new text (its
        ``input_tokens`` draw rounded up to blocks).
    block_tokens
        Block size of ``prefix_blocks`` (the column exists only with prefix groups or turns).
    """
    if mode not in MODES:
        raise ConfigError(f"--mode must be one of {', '.join(MODES)}; got {mode!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ConfigError(f"--seed must be a non-negative integer; got {seed!r}")
    llm_ratio = 1.0 if mode == "llm" else _check_fraction("--llm-ratio", llm_ratio)
    chat_share = _check_fraction("--chat-share", chat_share)
    prio_p = _check_mix(priority_mix or DEFAULT_PRIORITY_MIX, ("HIGH", "NORMAL", "LOW"),
                        "--priority-mix")
    specs = {
        "input_tokens": parse_length(input_tokens, what="--input-tokens"),
        "output_tokens": parse_length(output_tokens, what="--output-tokens"),
        "embed_tokens": parse_length(embed_tokens, what="--embed-tokens"),
        "embed_batch": parse_length(embed_batch, what="--embed-batch", high=100_000),
    }
    specs = {k: with_pool(v, _load_table) for k, v in specs.items()}   # empirical: read it
    names = {**DEFAULT_MODELS, **(models or {})}
    e2e = {**DEFAULT_SLO_E2E_MS, **(slo_e2e_ms or {})}
    ttft = {"llm": None, "embedding": None, **(slo_ttft_ms or {})}
    streams = dict(zip(_STREAMS, np.random.SeedSequence(int(seed)).spawn(len(_STREAMS))))
    rngs = {k: np.random.Generator(np.random.PCG64(v)) for k, v in streams.items()}
    t = arrivals(pattern, rate_rps=rate_rps, requests=requests, duration_s=duration_s,
                 seed=streams["arrivals"], shape=shape, burst_rps=burst_rps, burst_s=burst_s,
                 period_s=period_s, end_rps=end_rps)
    n = len(t)
    if n == 0:
        raise ConfigError("the spec produced no requests; raise --rate or --duration-s")
    is_llm = rngs["kind"].random(n) < llm_ratio
    is_chat = rngs["llm_kind"].random(n) < chat_share
    kind = np.where(is_llm, np.where(is_chat, "chat", "completion"), "embedding")
    prio = np.array(["HIGH", "NORMAL", "LOW"])[rngs["priority"].choice(3, size=n, p=prio_p)]
    draw = {k: specs[k].sample(rngs[k], n) for k in specs}
    tin = np.where(is_llm, draw["input_tokens"], draw["embed_tokens"])
    e2e_col = np.where(is_llm, e2e["llm"], e2e["embedding"]).astype(np.float32)
    nan = float("nan")
    ttft_col = np.where(is_llm, nan if ttft["llm"] is None else ttft["llm"],
                        nan if ttft["embedding"] is None else ttft["embedding"])
    table = pa.table({
        "arrival_ns": pa.array(t, pa.int64()),
        "kind": pa.array(kind).dictionary_encode(),
        "model": pa.array(np.where(is_llm, names["llm"], names["embedding"])).dictionary_encode(),
        "input_tokens": pa.array(tin, pa.int32()),
        "output_tokens": pa.array(draw["output_tokens"], pa.int32(), mask=~is_llm),
        "batch_size": pa.array(np.where(is_llm, 1, draw["embed_batch"]), pa.int16()),
        "priority": pa.array(prio).dictionary_encode(),
        "slo_ttft_ms": pa.nulls(n, pa.float32()) if np.isnan(ttft_col).all()
        else pa.array(ttft_col, pa.float32(), from_pandas=True),   # NaN -> null
        "slo_e2e_ms": pa.array(e2e_col, pa.float32()),
    })
    if prefix_groups or turns != 1:
        blocks, tin, sessions = _prefix_structure(
            is_llm, draw["input_tokens"], draw["output_tokens"], rngs["prefix_group"],
            groups=prefix_groups, group_tokens=prefix_tokens, zipf=prefix_zipf, turns=turns,
            block_tokens=block_tokens)
        table = table.set_column(table.schema.get_field_index("input_tokens"), "input_tokens",
                                 pa.array(np.where(is_llm, tin, table.column(
                                     "input_tokens").to_numpy()), pa.int32()))
        table = table.append_column("session", pa.array(sessions, pa.string()))
        table = table.append_column("prefix_blocks", pa.array(blocks, pa.list_(pa.int64())))
    return table


def _prefix_structure(is_llm: np.ndarray, own_tokens: np.ndarray, output_tokens: np.ndarray,
                      rng: np.random.Generator, *, groups: int, group_tokens: int, zipf: float,
                      turns: int, block_tokens: int) -> tuple[list, np.ndarray, list]:
    """Block ids, prompt lengths and session names of every row (see ``synthesize``)."""
    b = int(block_tokens)
    if b < 1 or groups < 0 or turns < 1 or zipf < 0 or not math.isfinite(zipf):
        raise ConfigError(f"--block-tokens and --turns must be >= 1, --prefix-groups and "
                          f"--prefix-zipf >= 0; got {b}, {turns}, {groups}, {zipf}")
    per_group = group_tokens // b if groups else 0
    if groups and per_group < 1:
        raise ConfigError(f"--prefix-tokens must be at least one block ({b} tokens) with "
                          f"--prefix-groups; got {group_tokens}")
    n = len(is_llm)
    llm_rows = np.flatnonzero(is_llm)
    weights = 1.0 / np.arange(1, groups + 1, dtype=np.float64) ** zipf if groups else None
    group = rng.choice(groups, size=len(llm_rows), p=weights / weights.sum()) \
        if groups else np.zeros(len(llm_rows), np.int64)
    next_id = groups * per_group                   # ids below are the groups' prefixes
    blocks: list[list[int] | None] = [None] * n
    sessions: list[str | None] = [None] * n
    tin = np.zeros(n, np.int64)
    n_sessions = -(-len(llm_rows) // turns)
    last: dict[int, int] = {}                      # session -> its latest row
    for i, row in enumerate(llm_rows.tolist()):
        own = int(own_tokens[row])
        if turns == 1:
            g = int(group[i])
            blocks[row] = list(range(g * per_group, (g + 1) * per_group))
            tin[row] = per_group * b + own
            continue
        sid = i % n_sessions
        prev = last.get(sid)
        if prev is None:
            g = int(group[i])
            head = list(range(g * per_group, (g + 1) * per_group))
        else:
            answer = -(-int(output_tokens[prev]) // b)
            head = blocks[prev] + list(range(next_id, next_id + answer))
            next_id += answer
        new = max(-(-own // b), 1)
        blocks[row] = head + list(range(next_id, next_id + new))
        next_id += new
        tin[row] = len(blocks[row]) * b
        sessions[row] = f"s{sid}"
        last[sid] = row
    return blocks, tin, sessions


def synth_params(**kwargs: Any) -> dict[str, Any]:
    """The JSON-able parameter record stored in a synthetic trace's metadata."""
    out = {}
    for key, value in sorted(kwargs.items()):
        if isinstance(value, LengthSpec):
            value = value.describe()
        elif isinstance(value, Mapping):
            value = dict(value)
        out[key] = value
    return out


def synth_to_file(path: str, **kwargs: Any) -> pa.Table:
    """``synthesize(**kwargs)`` written to ``path`` with its parameters and seed as metadata."""
    from cpbench.trace import write_trace
    table = synthesize(**kwargs)
    # Record every effective parameter, defaults included, so the metadata alone rebuilds it.
    bound = inspect.signature(synthesize).bind(**kwargs)
    bound.apply_defaults()
    has_blocks = "prefix_blocks" in table.column_names
    # The prefix parameters are recorded only when used: their defaults build the same table
    # as before they existed, so traces built without them keep their bytes (and sha256).
    params = synth_params(**{k: v for k, v in bound.arguments.items() if k != "seed"
                             and (has_blocks or k not in _PREFIX_PARAMS)})
    write_trace(table, path, metadata={"generator": "cpbench record synth", "params": params,
                                       "seed": kwargs.get("seed"), "source": "synthetic",
                                       "block_tokens": params["block_tokens"] if has_blocks
                                       else None})
    return table

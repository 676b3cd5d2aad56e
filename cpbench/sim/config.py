"""Configuration of the embedded control plane: engines, policy, deadlines, faults.

A ``SimConfig`` is plain data. It comes from defaults, a JSON file (``load_config``) and CLI
flags, is checked once here (``SimConfig.validate``), and is handed to ``server.build_app``.
Times are integer nanoseconds (``*_ns``) or milliseconds where a user types them (``*_ms``);
fault rates are percents in [0, 100].

JSON file shape (every key optional; unknown keys are an error so typos do not pass silently)::

    {"policy": "hybrid_slo", "seed": 7, "report_timing": true, "accept_any_model": false,
     "default_max_tokens": 16, "max_wait_ms": 30000, "colocate": true,
     "deadline_ms": {"chat": 5000, "completion": 5000, "embedding": 500},
     "ttft_deadline_ms": {"chat": 1000, "completion": 1000, "embedding": 500},
     "llm": [{"model": "cpbench-llm-7b", "instances": 2, "max_running_seqs": 256}],
     "embedding": [{"model": "cpbench-embed-bge", "max_batch_inputs": 32}],
     "faults": {"error_percent": 1.0, "error_statuses": [429, 503]}}
"""
from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from cpbench.errors import ConfigError
from cpbench.vocab import DEFAULT_MODELS, DEFAULT_SLO_MS, KINDS, POLICIES

POLICY_NAMES = POLICIES


@dataclass
class LLMEngineConfig:
    """One LLM model served by ``instances`` identical engines with continuous batching.

    Defaults model Llama-2-7B (fp16, multi-head attention) on one NVIDIA H100-80GB SXM under
    vLLM, from first principles checked against published vLLM figures:

    - weights 13.5 GB read once per decode step at ~3.35 TB/s HBM3 → ~4 ms floor; vLLM's
      measured inter-token latency at batch 1 is 6–8 ms → ``decode_base_ns`` = 7 ms;
    - per running sequence, sampling and scheduling overhead ≈ 30 µs (``decode_ns_per_seq``);
    - KV cache is 2 × 32 layers × 4096 × 2 bytes = 512 KiB per token; reading it at
      3.35 TB/s costs ≈ 160 ns per context token per step (``decode_ns_per_context_token``);
    - prefill is compute bound: 2 × 7e9 FLOP per token at ~50 % of 989 TFLOP/s bf16 →
      ≈ 28 µs per prompt token (``prefill_ns_per_token``), i.e. ~35k prompt tokens/s;
    - KV capacity: 0.9 × 80 GB − 13.5 GB weights ≈ 58 GB / 512 KiB ≈ 110k tokens;
    - ``max_running_seqs`` 256 and a 2048-token chunked-prefill budget per step are vLLM's
      defaults (``max_num_seqs``, ``max_num_batched_tokens`` with chunked prefill);
    - automatic prefix caching is on, as in vLLM v1, over 16-token blocks (vLLM's default
      ``--block-size``), bounded by the KV cache (``sim/prefix_cache.py``).
    """

    model: str = DEFAULT_MODELS["llm"]
    instances: int = 1
    max_running_seqs: int = 256
    kv_cache_tokens: int = 110_000
    max_model_len: int = 32_768
    max_prefill_tokens_per_step: int = 2_048
    prefill_ns_per_token: int = 28_000
    decode_base_ns: int = 7_000_000
    decode_ns_per_seq: int = 30_000
    decode_ns_per_context_token: int = 160
    # Automatic prefix caching (vLLM v1 has it on by default; 16-token blocks).
    prefix_cache: bool = True
    prefix_block_tokens: int = 16


@dataclass
class EmbeddingEngineConfig:
    """One embedding model served by ``instances`` engines that run one batch at a time.

    Defaults model BAAI/bge-base-en-v1.5 (110M parameters, 768 dimensions) under Hugging Face
    text-embeddings-inference on one H100: 2 × 110e6 FLOP per token at ~100 TFLOP/s effective
    ≈ 2 µs per token, plus ≈ 3 ms per batch for tokenization, launch and pooling.
    ``max_batch_inputs`` 32 and ``max_batch_tokens`` 16384 are TEI's defaults
    (``max_client_batch_size``, ``max_batch_tokens``). ``max_input_tokens`` is bge-m3's
    8192 rather than bge-base's 512 so long inputs from traces are accepted.
    """

    model: str = DEFAULT_MODELS["embedding"]
    instances: int = 1
    max_batch_inputs: int = 32
    max_batch_tokens: int = 16_384
    max_input_tokens: int = 8_192
    batch_base_ns: int = 3_000_000
    ns_per_token: int = 2_000
    dimensions: int = 768


@dataclass
class FaultConfig:
    """Injected failures, each decided per request from one seeded generator; all off by default.

    ``error_percent`` of requests get one of ``error_statuses`` at once; ``stall_percent`` wait
    ``stall_ms`` before their first byte; ``disconnect_percent`` of streams are closed after
    ``disconnect_after_tokens`` tokens; ``malformed_percent`` of streams get one chunk of broken
    JSON in the middle; ``slow_percent`` of requests emit one token every ``slow_factor`` steps.
    """

    error_percent: float = 0.0
    error_statuses: tuple[int, ...] = (429, 500, 503)
    stall_percent: float = 0.0
    stall_ms: float = 1000.0
    disconnect_percent: float = 0.0
    disconnect_after_tokens: int = 2
    malformed_percent: float = 0.0
    slow_percent: float = 0.0
    slow_factor: int = 4

    def any_enabled(self) -> bool:
        """Whether any fault can fire."""
        return any(p > 0 for p in (self.error_percent, self.stall_percent,
                                   self.disconnect_percent, self.malformed_percent,
                                   self.slow_percent))


@dataclass
class SimConfig:
    """Everything ``build_app`` needs.

    Deadlines are per kind, relative to when a request arrived: ``deadline_ms`` for the last
    token (``X-SLO-Deadline-Ms`` overrides it per request) and ``ttft_deadline_ms`` for the
    first; the defaults are the ones a replay judges by when a trace gives none
    (``cpbench.vocab.DEFAULT_SLO_MS``), so the deadline-aware policies aim at what is measured.
    ``max_wait_ms`` bounds how long a request the deadline-aware policies set aside as already
    late may wait (no starvation).

    ``colocate`` (default on) puts each embedding engine on the GPU of an LLM engine of the
    first LLM model (instance ``i`` on LLM instance ``i mod n``), as a hybrid control plane
    serving both from one GPU does: embedding batches run inside decode steps and each delays
    the other. The BGE weights (0.2 GB) would take ~0.4 % of the KV cache; the model ignores
    that. Off, each embedding engine has a GPU of its own. A sim without both kinds of engine
    behaves the same either way.
    """

    llm: list[LLMEngineConfig] = field(default_factory=lambda: [LLMEngineConfig()])
    embedding: list[EmbeddingEngineConfig] = field(
        default_factory=lambda: [EmbeddingEngineConfig()])
    policy: str = "fifo"
    seed: int = 0
    report_timing: bool = False
    accept_any_model: bool = False
    default_max_tokens: int = 16
    max_wait_ms: float = 30_000.0
    deadline_ms: dict[str, float] = field(
        default_factory=lambda: {kind: e2e for kind, (_, e2e) in DEFAULT_SLO_MS.items()})
    ttft_deadline_ms: dict[str, float] = field(
        default_factory=lambda: {kind: ttft for kind, (ttft, _) in DEFAULT_SLO_MS.items()})
    colocate: bool = True
    faults: FaultConfig = field(default_factory=FaultConfig)

    def validate(self) -> SimConfig:
        """Check every value once; raises ``ConfigError`` naming the field and the fix."""
        if self.policy not in POLICY_NAMES:
            raise ConfigError(f"policy must be one of {', '.join(POLICY_NAMES)}; "
                              f"got {self.policy!r}")
        if not self.llm and not self.embedding:
            raise ConfigError("the sim needs at least one engine; add an 'llm' or 'embedding' entry")
        names = [e.model for e in self.llm] + [e.model for e in self.embedding]
        if len(set(names)) != len(names):
            raise ConfigError(f"model names must be unique across engines; got {names}")
        for engine in [*self.llm, *self.embedding]:
            for key, value in dataclasses.asdict(engine).items():
                if key != "model" and (not isinstance(value, int) or value < 0):
                    raise ConfigError(f"engine {engine.model!r}: {key} must be a non-negative "
                                      f"integer; got {value!r}")
            for key in ("instances", "max_running_seqs", "kv_cache_tokens", "max_model_len",
                        "max_prefill_tokens_per_step", "max_batch_inputs", "max_batch_tokens",
                        "max_input_tokens", "dimensions", "prefix_block_tokens"):
                if getattr(engine, key, 1) < 1:
                    raise ConfigError(f"engine {engine.model!r}: {key} must be at least 1")
        for name in ("deadline_ms", "ttft_deadline_ms"):
            deadlines = getattr(self, name)
            unknown = sorted(set(deadlines) - set(KINDS))
            if unknown:
                raise ConfigError(f"{name} has unknown kind(s) {unknown}; kinds are "
                                  f"{', '.join(KINDS)}")
            for kind in KINDS:
                if not float(deadlines.get(kind, 0)) > 0:
                    raise ConfigError(f"{name}.{kind} must be a positive number of "
                                      f"milliseconds; got {deadlines.get(kind)!r}")
        if not isinstance(self.colocate, bool):
            raise ConfigError(f"colocate must be true or false; got {self.colocate!r}")
        if self.default_max_tokens < 1 or self.max_wait_ms <= 0:
            raise ConfigError("default_max_tokens must be >= 1 and max_wait_ms > 0")
        f = self.faults
        for key in ("error_percent", "stall_percent", "disconnect_percent",
                    "malformed_percent", "slow_percent"):
            if not 0.0 <= float(getattr(f, key)) <= 100.0:
                raise ConfigError(f"faults.{key} is a percent in [0, 100]; "
                                  f"got {getattr(f, key)!r}")
        bad = [s for s in f.error_statuses if not 400 <= int(s) <= 599]
        if not f.error_statuses or bad:
            raise ConfigError(f"faults.error_statuses must be HTTP error codes like 429,500,503; "
                              f"got {list(f.error_statuses)}")
        if f.stall_ms < 0 or f.disconnect_after_tokens < 0 or f.slow_factor < 2:
            raise ConfigError("faults: stall_ms and disconnect_after_tokens must be >= 0 and "
                              "slow_factor >= 2")
        return self


def _build(cls: type, data: Any, where: str) -> Any:
    if not isinstance(data, dict):
        raise ConfigError(f"{where} must be a JSON object; got {type(data).__name__}")
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"{where} has unknown key(s) {unknown}; known keys: {sorted(known)}")
    return cls(**data)


def config_from_dict(data: dict[str, Any]) -> SimConfig:
    """A validated ``SimConfig`` from the JSON shape in this module's docstring."""
    if not isinstance(data, dict):
        raise ConfigError(f"sim config must be a JSON object; got {type(data).__name__}")
    data = dict(data)
    known = {f.name for f in dataclasses.fields(SimConfig)}
    unknown = sorted(set(data) - known)
    if unknown:
        raise ConfigError(f"sim config has unknown key(s) {unknown}; known keys: {sorted(known)}")
    try:
        if "llm" in data:
            data["llm"] = [_build(LLMEngineConfig, e, f"llm[{i}]")
                           for i, e in enumerate(data["llm"])]
        if "embedding" in data:
            data["embedding"] = [_build(EmbeddingEngineConfig, e, f"embedding[{i}]")
                                 for i, e in enumerate(data["embedding"])]
        if "faults" in data:
            data["faults"] = _build(FaultConfig, data["faults"], "faults")
            data["faults"].error_statuses = tuple(int(s) for s in data["faults"].error_statuses)
        for name in ("deadline_ms", "ttft_deadline_ms"):
            if name in data:
                if not isinstance(data[name], dict):
                    raise ConfigError(f"{name} must be a JSON object of kind: milliseconds; "
                                      f"got {data[name]!r}")
                data[name] = {**getattr(SimConfig(), name), **data[name]}
        return SimConfig(**data).validate()
    except (TypeError, ValueError) as exc:
        if isinstance(exc, ConfigError):
            raise
        raise ConfigError(f"sim config: {exc}") from exc


def load_config(path: str | Path) -> SimConfig:
    """Read a JSON sim configuration file; raises ``ConfigError`` when unreadable or invalid."""
    try:
        data = json.loads(Path(path).read_text(encoding="utf-8"))
    except OSError as exc:
        raise ConfigError(f"cannot read sim config {str(path)!r}: {exc.strerror}") from exc
    except json.JSONDecodeError as exc:
        raise ConfigError(f"sim config {str(path)!r} is not valid JSON: {exc}") from exc
    return config_from_dict(data)


def resolve_config(path: str | Path | None = None, *, top: dict[str, Any] | None = None,
                   llm: dict[str, Any] | None = None, embedding: dict[str, Any] | None = None,
                   faults: dict[str, Any] | None = None) -> SimConfig:
    """The config file at ``path`` (or defaults) with overrides applied, validated.

    ``top`` overrides ``SimConfig`` fields; ``llm`` and ``embedding`` override fields of the
    first engine of that kind (use a config file for several models); ``faults`` overrides
    ``FaultConfig`` fields. ``None`` values are ignored, so CLI flags left unset change nothing.
    """
    config = load_config(path) if path is not None else SimConfig()
    def pick(d: dict[str, Any] | None) -> dict[str, Any]:
        return {k: v for k, v in (d or {}).items() if v is not None}
    for key, value in pick(top).items():
        setattr(config, key, value)
    for engines, over in ((config.llm, pick(llm)), (config.embedding, pick(embedding))):
        if over and not engines:
            raise ConfigError("engine flags given, but the config file defines no engine of "
                              "that kind; add it to the file")
        for key, value in over.items():
            setattr(engines[0], key, value)
    for key, value in pick(faults).items():
        setattr(config.faults, key, value)
    return config.validate()

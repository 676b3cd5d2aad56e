"""The words cpbench's files, options and statistics share, each defined once.

Request kinds, priorities, failure classes, the deadlines applied where a trace has none,
the hint styles and the embedded control plane's policy names. The trace schema, the result
rows, the embedded sim, the statistics, the CLI's ``choices`` and the Cython core's tables all
read them from here, so a new word is added in one place. Standard library only: the replay
child process and the compiled core import it.
"""
from __future__ import annotations

# Request kinds, in the order of their integer codes (result rows, plan columns, _core.slo).
KINDS: tuple[str, ...] = ("chat", "completion", "embedding")
LLM_KINDS: tuple[str, ...] = ("chat", "completion")

# Priorities, most urgent first, in the order of their integer codes.
PRIORITIES: tuple[str, ...] = ("HIGH", "NORMAL", "LOW")

# Why a request did not complete, in the order of their integer codes (append only: the
# codes are stored in results.arrow). `interrupted`: the client stopped the run (Ctrl-C,
# SIGTERM, --max-error-ratio) while the request was in flight; it is not a server fault.
ERROR_CLASSES: tuple[str, ...] = ("connect", "timeout", "http_4xx", "http_5xx", "stream_broken",
                                  "bad_payload", "interrupted")
SERVER_ERROR_CLASSES: tuple[str, ...] = tuple(c for c in ERROR_CLASSES if c != "interrupted")

# Model names a synthesized or imported trace asks for where its source names none; the
# embedded control plane serves them (and, with --accept-any-model, any other name).
DEFAULT_MODELS: dict[str, str] = {"llm": "cpbench-llm-7b", "embedding": "cpbench-embed-bge"}

# End-to-end deadlines `record synth` writes and the embedded control plane schedules by, per
# workload family: an LLM answer in 5 s, an embedding in 0.5 s.
DEFAULT_SLO_E2E_MS: dict[str, float] = {"llm": 5_000.0, "embedding": 500.0}
# Deadlines applied where a trace's slo_*_ms is null, (ttft_ms, e2e_ms) per kind, so a trace
# without deadlines is judged as a synthesized one.
DEFAULT_SLO_MS: dict[str, tuple[float, float]] = {
    "chat": (1_000.0, DEFAULT_SLO_E2E_MS["llm"]),
    "completion": (1_000.0, DEFAULT_SLO_E2E_MS["llm"]),
    "embedding": (DEFAULT_SLO_E2E_MS["embedding"], DEFAULT_SLO_E2E_MS["embedding"]),
}

# Where a control plane reports and switches its scheduling policy (GET/POST {"policy": NAME}):
# sageLLM's admin API, which `cpbench sim` serves too.
POLICY_PATH = "/admin/policy"

# How a request tells the control plane its priority and deadline: sageLLM's headers, vLLM's
# `priority` body field, or not at all.
HINTS: tuple[str, ...] = ("sagellm", "vllm", "none")

# The embedded control plane's scheduling policies (docs/policies.md).
POLICIES: tuple[str, ...] = ("fifo", "priority", "slo_aware", "hybrid_slo")


def family(kind: str) -> str:
    """``llm`` for chat and completion, ``embedding`` for embedding."""
    return "llm" if kind in LLM_KINDS else "embedding"
